"""The video-analytics media-stream extension's protocol pieces, apart from their gRPC door
(``grpc/media_graph_service.py``): frame formats and decoding, the client's shared-memory region, and how a
method's outputs become inferences."""
