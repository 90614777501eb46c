"""The asyncio client: ``mindserve.client.aio.Client`` calls a servable method from a coroutine, over grpc.aio,
with the values, results, errors and options of ``mindserve.client.Client``.

Example::

    import asyncio
    import numpy as np
    from mindserve.client.aio import Client

    async def main():
        async with Client("127.0.0.1:5500", "add", "add_common") as client:
            x = np.ones((2, 2), np.float32)
            print(await client.infer({"x1": x, "x2": x}))   # [{'y': array([[2., 2.], [2., 2.]], dtype=float32)}]

    asyncio.run(main())

A client belongs to the event loop it was first used on (grpc.aio's rule for channels).
"""

from mindserve.client._aio import Client
from mindserve.client._client import SSLConfig

__all__ = ["Client", "SSLConfig"]
