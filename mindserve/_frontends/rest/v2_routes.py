"""The Open Inference Protocol's REST endpoints (KServe v2), so that standard clients such as
``tritonclient.http`` work unchanged. Models, versions, instances and error texts are those of the gRPC service
(``mindserve._frontends.oip``).

- ``GET /v2/health/live``: 200 while the server runs.
- ``GET /v2/health/ready``: 200 while every started servable version has a live worker, else 503.
- ``GET /v2``: server metadata (name, version, extensions: ``binary_tensor_data``).
- ``GET /v2/models/{model}[/versions/{version}]``: model metadata.
- ``GET /v2/models/{model}[/versions/{version}]/ready``: 200 when it has a live worker, 503 when it has none, 404
  when the model or version is not served.
- ``POST /v2/models/{model}[/versions/{version}]/infer``: inference (see ``v2_codec``).

Health answers have empty bodies; every error is ``{"error": text}`` with the status of its kind (``common``).
"""

from __future__ import annotations

import logging
from typing import Optional

from aiohttp import web

import mindserve
from mindserve._dispatch.dispatcher import Dispatcher
from mindserve._errors import InvalidInput, NotServed, clip
from mindserve._frontends.oip import models, statistics
from mindserve._frontends.oip.infer import infer, timeout_seconds
from mindserve._frontends.rest import v2_codec
from mindserve._frontends.rest.common import (
    answers_errors,
    check_content_type,
    error_response,
    json_response,
    parse_json,
    read_body,
)
from mindserve._frontends.shared_memory.regions import ClientRegions
from mindserve._frontends.shared_memory.tensors import CUDA_UNSUPPORTED, enabled

log = logging.getLogger("mindserve")

EXTENSIONS = ["binary_tensor_data", "statistics"]
SHM_EXTENSION = "system_shared_memory"


class V2Routes:
    def __init__(self, dispatcher: Dispatcher, limit: int, regions: Optional[ClientRegions] = None):
        self._dispatcher = dispatcher
        self._limit = limit
        self._regions = regions  # None: this server takes no client shared memory

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.ready)
        app.router.add_get("/v2", self.server_metadata)
        app.router.add_get("/v2/models/stats", self.statistics)  # before {model}, which "stats" would match
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            app.router.add_get(prefix, self.model_metadata)
            app.router.add_get(prefix + "/ready", self.model_ready)
            app.router.add_post(prefix + "/infer", self.infer)
            app.router.add_get(prefix + "/stats", self.statistics)
        for kind in ("systemsharedmemory", "cudasharedmemory"):
            system = kind == "systemsharedmemory"
            for prefix in (f"/v2/{kind}", f"/v2/{kind}/region/{{region}}"):
                app.router.add_get(prefix + "/status", self.shm_status if system else self.cuda_status)
                app.router.add_post(prefix + "/unregister", self.shm_unregister if system else self.cuda_unregister)
            app.router.add_post(
                f"/v2/{kind}/region/{{region}}/register", self.shm_register if system else self.cuda_register
            )

    async def live(self, request: web.Request) -> web.Response:
        return web.Response()

    @answers_errors("ServerReady")
    async def ready(self, request: web.Request) -> web.Response:
        down = self._dispatcher.not_ready()
        if not down:
            return web.Response()
        names = ", ".join(f"{g.name} version {g.version}" for g in down)
        return error_response(503, f"Server is not ready: no live worker for servable {names}")

    @answers_errors("ServerMetadata")
    async def server_metadata(self, request: web.Request) -> web.Response:
        extensions = EXTENSIONS + [SHM_EXTENSION] if self._regions is not None else EXTENSIONS
        return json_response({"name": models.SERVER_NAME, "version": mindserve.__version__, "extensions": extensions})

    @answers_errors("ModelMetadata")
    async def model_metadata(self, request: web.Request) -> web.Response:
        info = request.match_info
        metadata = models.model_metadata(self._dispatcher, info["model"], info.get("version", ""))
        return json_response(
            {
                "name": metadata.name,
                "versions": metadata.versions,
                "platform": metadata.platform,
                "inputs": [t._asdict() for t in metadata.inputs],
                "outputs": [t._asdict() for t in metadata.outputs],
            }
        )

    @answers_errors("ModelReady")
    async def model_ready(self, request: web.Request) -> web.Response:
        info = request.match_info
        model, served = models.served_model(self._dispatcher, info["model"], info.get("version", ""))
        if served.ready:
            return web.Response()
        return error_response(
            503, f"Model '{clip(model.name)}' version {served.version} is not ready: it has no live worker"
        )

    @answers_errors("ModelStatistics")
    async def statistics(self, request: web.Request) -> web.Response:
        info = request.match_info
        found = await statistics.model_statistics(self._dispatcher, info.get("model", ""), info.get("version", ""))
        return json_response({"model_stats": [model.to_json() for model in found]})

    @answers_errors("ModelInfer")
    async def infer(self, request: web.Request) -> web.Response:
        header_length = request.headers.get(v2_codec.HEADER_LENGTH)
        check_content_type(request, binary=header_length is not None)
        body = await read_body(request, self._limit)
        lease = self._regions.lease() if self._regions is not None else None
        try:
            parsed = v2_codec.parse_request(body, header_length, lease)
            name = request.match_info["model"]
            done = await infer(
                self._dispatcher,
                name,
                request.match_info.get("version", ""),
                lambda: parsed.inputs,
                parsed.outputs,
                lease,
                timeout_seconds(parsed.parameters),
            )
            return v2_codec.response(name, done.served_version, parsed, done.outputs)
        finally:
            if lease is not None:
                lease.release()

    # ---- shared memory: /v2/systemsharedmemory[/region/{region}]/status|register|unregister ----

    @answers_errors("SystemSharedMemoryStatus")
    async def shm_status(self, request: web.Request) -> web.Response:
        found = enabled(self._regions).status(request.match_info.get("region", ""))
        return json_response([region._asdict() for region in found])

    @answers_errors("SystemSharedMemoryRegister")
    async def shm_register(self, request: web.Request) -> web.Response:
        check_content_type(request)
        document = parse_json(await read_body(request, self._limit))
        if (
            not isinstance(document, dict)
            or set(document) - {"key", "offset", "byte_size"}
            or not isinstance(document.get("key"), str)
            or any(
                not isinstance(document.get(k, 0), int) or isinstance(document.get(k, 0), bool)
                for k in ("offset", "byte_size")
            )
        ):
            raise InvalidInput(
                "The registration should be a JSON object with key (a string), offset and byte_size (integers)"
            )
        enabled(self._regions).register(
            request.match_info["region"], document["key"], document.get("offset", 0), document.get("byte_size", 0)
        )
        return json_response({})

    @answers_errors("SystemSharedMemoryUnregister")
    async def shm_unregister(self, request: web.Request) -> web.Response:
        enabled(self._regions).unregister(request.match_info.get("region", ""))
        return json_response({})

    @answers_errors("CudaSharedMemoryStatus")
    async def cuda_status(self, request: web.Request) -> web.Response:
        region = request.match_info.get("region", "")
        if region:
            raise NotServed(f"Unable to find cuda shared memory region: '{clip(region)}'")
        return json_response([])

    @answers_errors("CudaSharedMemoryRegister")
    async def cuda_register(self, request: web.Request) -> web.Response:
        raise InvalidInput(CUDA_UNSUPPORTED)

    @answers_errors("CudaSharedMemoryUnregister")
    async def cuda_unregister(self, request: web.Request) -> web.Response:
        return json_response({})
