"""Call the add servable as MindSpore Serving's add example does.

    python example/add/serving_client.py [ADDRESS]
"""
import sys

import numpy as np

from mindserve.client import Client


def run_add_common(address: str) -> None:
    """Three instances of two 2x2 float32 tensors: [[2,2],[2,2]], [[4,4],[4,4]], [[6,6],[6,6]]."""
    client = Client(address, "add", "add_common")
    instances = []
    for i in range(3):
        x = np.ones((2, 2), np.float32) * (i + 1)
        instances.append({"x1": x, "x2": x})
    print("add_common:", client.infer(instances))


def run_add_cast(address: str) -> None:
    """int32 inputs: add_common rejects the instance, add_cast casts it and answers."""
    instance = {"x1": np.ones((2, 2), np.int32), "x2": np.ones((2, 2), np.int32)}
    print("add_common with int32:", Client(address, "add", "add_common").infer([instance]))
    print("add_cast with int32:", Client(address, "add", "add_cast").infer([instance]))


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:5500"
    run_add_common(target)
    run_add_cast(target)
