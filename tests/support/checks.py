"""What a server must still answer after an error: the bundled add servable's add_common, with its exact result, on
each protocol."""

from __future__ import annotations

import numpy as np

from support.rest import request


def assert_add_still_serves(protocol: str, target) -> None:
    """A good add_common request right after an error still gets its exact result. ``protocol`` and ``target``:
    "ms_grpc" and an address (through mindserve.client.Client), "oip_grpc" and a tritonclient.grpc client,
    "oip_rest" and a tritonclient.http client (binary tensor data), "ms_rest" and a server process serving REST
    (MindSpore's /model/... form, plain HTTP)."""
    if protocol == "ms_grpc":
        from mindserve.client import Client

        instances = [
            {"x1": np.full((2, 2), value, np.float32), "x2": np.full((2, 2), value, np.float32)} for value in (1.0, 2.5)
        ]
        result = Client(target, "add", "add_common").infer(instances)
        assert isinstance(result, list) and len(result) == 2, result
        np.testing.assert_array_equal(result[0]["y"], np.full((2, 2), 2.0, np.float32))
        np.testing.assert_array_equal(result[1]["y"], np.full((2, 2), 5.0, np.float32))
    elif protocol == "oip_grpc" or protocol == "oip_rest":
        x = np.full((2, 2, 2), 1.5, np.float32)
        inputs = []
        for name in ("x1", "x2"):
            if protocol == "oip_grpc":
                import tritonclient.grpc as tg

                tensor = tg.InferInput(name, list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
            else:
                import tritonclient.http as th

                tensor = th.InferInput(name, list(x.shape), "FP32")
                tensor.set_data_from_numpy(x, binary_data=True)
            inputs.append(tensor)
        np.testing.assert_array_equal(
            target.infer("add.add_common", inputs).as_numpy("y"), np.full((2, 2, 2), 3.0, np.float32)
        )
    elif protocol == "ms_rest":
        reply = request(
            target.address,
            "POST",
            "/model/add:add_common",
            {"instances": [{"x1": [[1.0, 2.0], [3.0, 4.0]], "x2": [[1.0, 2.0], [3.0, 4.0]]}]},
        )
        assert reply.status == 200, reply
        assert reply.headers["Content-Type"] == "application/json"
        assert reply.json()["instances"] == [{"y": [[2.0, 4.0], [6.0, 8.0]]}]
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
