"""Call the three methods of the add_sub servable, as MindSpore Serving's pipeline example does.

    python example/add_sub/serving_client.py [ADDRESS]

With x1 = x2 = x3 = i (i = 1, 2, 3) every element of y is i for add_sub_only_model (i + i - i) and i + 2 for
add_sub_complex and add_sub_call_model (i + i + 1 - i + 1).
"""
import sys

import numpy as np

from mindserve.client import Client

METHODS = ("add_sub_only_model", "add_sub_complex", "add_sub_call_model")


def instances() -> list[dict]:
    """Three instances of three float32 [2, 2] tensors filled with 1, 2 and 3."""
    return [{name: np.full((2, 2), i, np.float32) for name in ("x1", "x2", "x3")} for i in (1, 2, 3)]


def run(address: str) -> None:
    """Send the same three instances to each method and print the answers."""
    for method in METHODS:
        print(f"{method}:", Client(address, "add_sub", method).infer(instances()))


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:5500")
