"""Classify three flowers with the iris servable, once with server-made prediction ids, once with our own.

    python example/iris/serving_client.py [ADDRESS]
"""
import sys
from typing import Union

import numpy as np

from mindserve.client import Client

# one flower of each species (rows 0, 50 and 100 of scikit-learn's Iris data), in cm:
# sepal length, sepal width, petal length, petal width
FLOWERS = np.array([[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]], np.float32)


def show(results: Union[list, dict]) -> None:
    """One line per instance: its puid, label and probabilities (or its error); one error line when the whole
    request failed."""
    if isinstance(results, dict):
        print("  error:", results["error"])
        return
    for result in results:
        if "error" in result:
            print("  error:", result["error"])
        else:
            print(f"  {result['puid']}  {result['label']:<10}  {np.array2string(result['probabilities'], precision=4)}")


def run(address: str) -> None:
    """Call predict and predict_with_puid with the three flowers."""
    print("predict:")
    show(Client(address, "iris", "predict").infer([{"x": row} for row in FLOWERS]))
    print("predict_with_puid:")
    show(Client(address, "iris", "predict_with_puid").infer(
        [{"x": row, "puid": f"flower-{i}"} for i, row in enumerate(FLOWERS)]))


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:5500")
