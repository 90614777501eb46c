"""The REST frontend (``start_restful_server``): HTTP/1.1 on the master's asyncio loop, through aiohttp.

- ``server``: listening on ``host:port`` or ``unix:/path``, TLS, draining at stop;
- ``common``: reading bodies within the size limit, JSON answers and errors, status codes;
- ``v2_routes`` / ``v2_codec``: the Open Inference Protocol's REST form (KServe v2) with the binary tensor data
  extension that ``tritonclient.http`` uses;
- ``ms_routes``: MindSpore Serving's form, ``POST /model/{servable}[/version/{n}]:{method}``.

Both forms take their JSON values from outside the transport: ``_frontends/json_tensors.py`` (JSON arrays as
tensors) and ``_frontends/mindspore/values.py`` (MindSpore's value types).

aiohttp is an optional dependency (the ``rest`` extra): nothing here imports it until a REST server starts.
"""

from __future__ import annotations

MIN_AIOHTTP = (3, 9)  # AppRunner(shutdown_timeout=...) drains requests in flight at stop


def require_aiohttp() -> None:
    """RuntimeError, saying what to install, unless a usable aiohttp can be imported."""
    try:
        import aiohttp
    except ImportError:
        raise RuntimeError(
            "start_restful_server needs aiohttp, which is not installed: install mindserve[rest] "
            "(pip install 'mindserve[rest]')"
        ) from None
    try:
        version = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])
    except ValueError:
        return  # a development version: assume it is recent
    if version < MIN_AIOHTTP:
        raise RuntimeError(
            f"start_restful_server needs aiohttp >= {'.'.join(map(str, MIN_AIOHTTP))}, but "
            f"{aiohttp.__version__} is installed: install mindserve[rest] "
            f"(pip install -U 'mindserve[rest]')"
        )
