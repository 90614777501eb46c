"""mindserve: model serving in the style of MindSpore Serving.

Public surface:
- ``mindserve.server``: start servables, the gRPC server, stop (``mindserve.server.register`` for servable authors);
- ``mindserve.client``: the numpy-aware client (needs only grpcio, protobuf and numpy).

Importing ``mindserve`` alone loads nothing else, so that a client machine never pulls in the server side.
"""

__version__ = "0.1.0"
