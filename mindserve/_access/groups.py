"""The feature groups access is granted by, and the one table that puts every gRPC method and REST route of the
server in exactly one of them (Triton's groups, where Triton has them). A door added later adds its methods
here; a method or route missing from the table is refused, never let through (see ``grpc_group``)."""

from __future__ import annotations

from typing import Optional

HEALTH = "health"
METADATA = "metadata"
INFERENCE = "inference"
SHARED_MEMORY = "shared-memory"
STATISTICS = "statistics"
METRICS = "metrics"
GROUPS = (HEALTH, METADATA, INFERENCE, SHARED_MEMORY, STATISTICS, METRICS)

_OIP = "/inference.GRPCInferenceService/"
GRPC_METHODS: dict[str, str] = {
    "/mindspore.serving.proto.MSService/Predict": INFERENCE,
    _OIP + "ServerLive": HEALTH,
    _OIP + "ServerReady": HEALTH,
    _OIP + "ModelReady": HEALTH,
    _OIP + "ServerMetadata": METADATA,
    _OIP + "ModelMetadata": METADATA,
    _OIP + "ModelInfer": INFERENCE,
    _OIP + "ModelStreamInfer": INFERENCE,
    _OIP + "ModelStatistics": STATISTICS,
    **{
        f"{_OIP}{kind}SharedMemory{rpc}": SHARED_MEMORY
        for kind in ("System", "Cuda")
        for rpc in ("Status", "Register", "Unregister")
    },
    "/io.seldon.api.rpc.Classifier/Predict": INFERENCE,
    "/microsoft.azure.media.live_video_analytics.extensibility.grpc.v1.MediaGraphExtension/"
    "ProcessMediaStream": INFERENCE,
    "/grpc.health.v1.Health/Check": HEALTH,
    "/grpc.health.v1.Health/Watch": HEALTH,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": METADATA,
}

# (HTTP method, route pattern as aiohttp names it) -> group
REST_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/v2/health/live"): HEALTH,
    ("GET", "/v2/health/ready"): HEALTH,
    ("GET", "/v2"): METADATA,
}
for _prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
    REST_ROUTES[("GET", _prefix)] = METADATA
    REST_ROUTES[("GET", _prefix + "/ready")] = HEALTH
    REST_ROUTES[("POST", _prefix + "/infer")] = INFERENCE
    REST_ROUTES[("GET", _prefix + "/stats")] = STATISTICS
REST_ROUTES[("GET", "/v2/models/stats")] = STATISTICS
for _kind in ("systemsharedmemory", "cudasharedmemory"):
    for _prefix in (f"/v2/{_kind}", f"/v2/{_kind}/region/{{region}}"):
        REST_ROUTES[("GET", _prefix + "/status")] = SHARED_MEMORY
        REST_ROUTES[("POST", _prefix + "/unregister")] = SHARED_MEMORY
    REST_ROUTES[("POST", f"/v2/{_kind}/region/{{region}}/register")] = SHARED_MEMORY
REST_ROUTES[("GET", "/metrics")] = METRICS  # on the metrics server
# MindSpore Serving's REST form, POST /model/{servable}[/version/{version}]:{method}, whatever its segment patterns
REST_PREFIXES: dict[tuple[str, str], str] = {("POST", "/model/"): INFERENCE}


# routes every client may call: the token endpoints check the consumer's key and secret themselves
OPEN = "open"
REST_ROUTES[("GET", "/token")] = OPEN
REST_ROUTES[("POST", "/token")] = OPEN
REST_ROUTES[("POST", "/oauth/token")] = OPEN


def grpc_group(method: str) -> Optional[str]:
    """The group of a gRPC method (its full path, ``/package.Service/Method``); None when the table lacks it."""
    return GRPC_METHODS.get(method)


def rest_group(method: str, pattern: str) -> Optional[str]:
    """The group of a REST route (its HTTP method and route pattern; HEAD as GET), ``OPEN`` for the token
    endpoints; None when the table lacks it."""
    if method == "HEAD":
        method = "GET"
    group = REST_ROUTES.get((method, pattern))
    if group is None:
        for (prefix_method, prefix), prefix_group in REST_PREFIXES.items():
            if method == prefix_method and pattern.startswith(prefix):
                return prefix_group
    return group
