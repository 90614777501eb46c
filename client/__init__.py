"""The mindserve client: call servable methods with numpy values, over TCP or unix sockets, with optional TLS.

Example::

    import numpy as np
    from mindserve.client import Client
    client = Client("127.0.0.1:5500", "add", "add_common")
    client.infer([{"x1": np.ones((2, 2), np.float32), "x2": np.ones((2, 2), np.float32)}])
    # [{'y': array([[2., 2.], [2., 2.]], dtype=float32)}]

Needs only grpcio, protobuf and numpy: it never imports the server side.
"""

from mindserve.client import aio
from mindserve.client._client import Client, ClientAsyncResult, SSLConfig

__all__ = ["Client", "ClientAsyncResult", "SSLConfig", "aio"]
