"""MindSpore Serving's protocol without its transport: what gRPC ``MSService.Predict``
(``_frontends/grpc/ms_service.py``) and REST ``POST /model/...`` (``_frontends/rest/ms_routes.py``) share.

- ``predict``: the one prediction both doors call: the instances checked one by one, the valid ones run, the
  outcomes merged in order, with MindSpore Serving's texts;
- ``values``: the JSON values of MindSpore's RESTful instances as tensors, and outputs as JSON values (Seldon's
  Struct data takes them too).
"""
