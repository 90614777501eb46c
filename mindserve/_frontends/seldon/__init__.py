"""Seldon's Classifier (``io.seldon.api.rpc.Classifier/Predict``): what a request's ``data`` becomes
(``request_data``: a Struct, or a message of a type the servable's .proto declares) and the classification
that answers it (``classify``); ``_frontends/grpc/seldon_service.py`` is its gRPC door."""
