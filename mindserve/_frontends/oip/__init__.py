"""The Open Inference Protocol (KServe v2) without its transport: what the gRPC service
(``_frontends/grpc/oip_service.py``) and the REST routes (``_frontends/rest/v2_routes.py``) share.

- ``errors``: the kinds of failure (not found, bad request, unavailable, queue full, internal) that each transport
  maps to its own status, with one set of texts;
- ``models``: model names (``servable.method``, or a servable's bare name), versions, readiness, metadata;
- ``tensors``: input tensors cut into instances along dim 0, instances' outputs stacked along dim 0, the BYTES
  element format.
"""
