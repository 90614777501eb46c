"""Classify a folder of digit images with the digits servable: one line per image, then the accuracy when the
file names carry the true label (<anything>_<digit>.<ext>, as in example/digits/test_images/).

    python example/digits/serving_client.py [ADDRESS [FOLDER]]

The images go in one request to classify_top1_batch; then the first image goes to classify_top5.
"""
import os
import re
import sys
from typing import Optional

from mindserve.client import Client

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TRUE_LABEL = re.compile(r"_(\d)\.[^.]+$")


def image_files(folder: str) -> list[str]:
    """The image files of ``folder``, sorted by name."""
    return sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_SUFFIXES))


def true_label(file_name: str) -> Optional[str]:
    """The digit a file name ends with (``0004_4.png`` -> ``'4'``), or None."""
    match = TRUE_LABEL.search(file_name)
    return match.group(1) if match else None


def run(address: str, folder: str) -> None:
    """Print ``<file name>: <label>`` per image, the accuracy over the named ones, and one top-5 answer."""
    names = image_files(folder)
    if not names:
        print(f"no images in {folder}")
        return
    images = []
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            images.append({"image": f.read()})
    results = Client(address, "digits", "classify_top1_batch").infer(images)
    if isinstance(results, dict):  # the whole request failed
        print("error:", results["error"])
        return
    right = named = 0
    for name, result in zip(names, results):
        label = result.get("label", f"error: {result.get('error')}")
        print(f"{name}: {label}")
        expected = true_label(name)
        if expected is not None:
            named += 1
            right += label == expected
    if named:
        print(f"accuracy: {right}/{named} = {right / named:.4f}")
    top5 = Client(address, "digits", "classify_top5").infer(images[:1])
    print(f"top5 of {names[0]}: {top5}")


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:5500",
        sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "test_images"))
