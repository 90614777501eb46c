"""Argument checks with MindSpore Serving's error texts, shared by the server API and the client (so this
module must stay free of server-side imports)."""

from __future__ import annotations

from typing import Optional


def check_int(name: str, value, low: int, high: Optional[int] = None) -> int:
    """``value`` if it is an int (not a bool) in [low, high]; RuntimeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuntimeError(f"Parameter '{name}' should be int, but actually {type(value)}")
    if high is not None and not low <= value <= high:
        raise RuntimeError(f"Parameter '{name}' should be in range [{low},{high}]")
    if value < low:
        raise RuntimeError(f"Parameter '{name}' should be >= {low}")
    return value


def check_str(name: str, value) -> str:
    """``value`` if it is a non-empty str; RuntimeError otherwise."""
    if not isinstance(value, str):
        raise RuntimeError(f"Parameter '{name}' should be str, but actually {type(value)}")
    if not value:
        raise RuntimeError(f"Parameter '{name}' should not be empty str")
    return value
