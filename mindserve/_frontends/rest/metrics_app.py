"""The metrics server: ``GET /metrics`` in Prometheus's text format, on its own address (Triton's and MLServer's
habit: port 8002 by default in ``mindserve serve``), with the same TLS and access options as the other
servers (access group ``metrics``)."""

from __future__ import annotations

from typing import Optional

from aiohttp import web

from mindserve._access.policy import AccessPolicy
from mindserve._frontends.rest.access import access_middleware
from mindserve._metrics.exposition import CONTENT_TYPE, ServerMetrics

METRICS_PATH = "/metrics"


@web.middleware
async def _plain_errors(request: web.Request, handler):
    """A path or method the server does not serve answered with a text that says what it does serve."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404:
            return web.Response(
                status=404,
                text=f"No endpoint {request.method} {request.path}; the metrics server serves GET {METRICS_PATH}\n",
            )
        if exc.status == 405:
            return web.Response(
                status=405,
                text=f"Method {request.method} is not allowed on {request.path}: use GET\n",
                headers={"Allow": "GET"},
            )
        raise


def make_metrics_app(metrics: ServerMetrics, policy: Optional[AccessPolicy] = None) -> web.Application:
    middlewares = [_plain_errors]
    if policy is not None:
        middlewares.append(access_middleware(policy))
    app = web.Application(middlewares=middlewares)

    async def scrape(request: web.Request) -> web.Response:
        body = await metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get(METRICS_PATH, scrape)
    return app
