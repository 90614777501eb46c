"""The ``name=value`` inputs of ``mindserve infer`` and the printing of its results.

A value is read, in this order, as:
- ``@file.npy``: the array saved in it (``numpy.load``, no pickles), dtype and shape kept;
- ``@file``: any other file (``@digit.png``, ``@photo.jpg``, ``@blob.bin``), its bytes as a bytes input;
- JSON: a number, bool or array typed as in MindSpore Serving's REST form (floats float32, ints int32, bools
  bool; an array of ints and floats is float32), a 0-d array for a single number; a JSON string ``'"5"'`` is
  the text ``5`` (the way to send text that looks like a number or starts with ``@``);
- anything else: the text itself, as a string input.

Numbers written in JSON then take the data type the method's metadata gives its input (``typed``): integers
sent to an FP32 input become float32; ``--dtype name=TYPE`` sets one explicitly. An ``--instances`` file is a
JSON array of objects, one instance each, with JSON values typed the same way.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence, Union

import numpy as np

INT32 = np.iinfo(np.int32)


class InputError(Exception):
    """An input that cannot be sent; the text names it."""


def _shape(name: str, value: Any) -> tuple:
    """The shape of a nested JSON list, which must be rectangular."""
    if not isinstance(value, list):
        return ()
    shapes = {_shape(name, item) for item in value}
    if len(shapes) > 1:
        raise InputError(f"{name}: a JSON array must be rectangular (nested lists of equal lengths)")
    return (len(value),) + (shapes.pop() if shapes else ())


def _leaves(value: Any):
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _array(name: str, value: Union[list, int, float, bool]) -> np.ndarray:
    shape = _shape(name, value)
    leaves = list(_leaves(value))
    for leaf in leaves:
        if not isinstance(leaf, (int, float)):  # bool is an int
            raise InputError(f"{name}: a JSON array may hold numbers or bools, got {json.dumps(leaf)}")
    bools = [isinstance(leaf, bool) for leaf in leaves]
    dtype: type[np.generic]
    if any(bools):
        if not all(bools):
            raise InputError(f"{name}: a JSON array may not mix bools and numbers")
        dtype = np.bool_
    elif any(isinstance(leaf, float) for leaf in leaves) or not leaves:
        dtype = np.float32
    else:
        dtype = np.int32
        for leaf in leaves:
            if not INT32.min <= leaf <= INT32.max:
                raise InputError(f"{name}: {leaf} does not fit int32 (write it as a float, or send a .npy file)")
    return np.array(value, dtype=dtype).reshape(shape)


def _file(name: str, path: str) -> Union[np.ndarray, bytes]:
    if not path:
        raise InputError(f"{name}: '@' must be followed by a file name")
    try:
        if path.lower().endswith(".npy"):
            return np.load(path, allow_pickle=False)
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InputError(f"{name}: cannot read '{path}': {exc.strerror or exc}") from None
    except ValueError as exc:  # not an .npy file, or one holding Python objects
        raise InputError(f"{name}: cannot load '{path}' as .npy: {exc}") from None


def parse_value(name: str, text: str) -> Union[np.ndarray, bytes, str]:
    """The input value written as ``text`` (see the module docstring)."""
    if text.startswith("@"):
        return _file(name, os.path.expanduser(text[1:]))
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    if isinstance(parsed, str):
        return parsed
    if isinstance(parsed, (list, int, float)):
        return _array(name, parsed)
    return text  # null or a JSON object: sent as written


def parse_inputs(items: Sequence[str]) -> dict:
    """One instance from ``name=value`` arguments."""
    instance: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise InputError(f"expected name=value, got {item!r}")
        if name in instance:
            raise InputError(f"{name}: given twice")
        instance[name] = parse_value(name, text)
    return instance


def json_names(items: Sequence[str]) -> set:
    """The inputs of ``name=value`` arguments written as JSON numbers or arrays (those ``typed`` may convert)."""
    names = set()
    for item in items:
        name, _, text = item.partition("=")
        try:
            if isinstance(json.loads(text), (list, int, float)):
                names.add(name)
        except ValueError:
            pass
    return names


def read_instances(path: str) -> list:
    """The instances of an ``--instances`` file: a JSON array of objects of input names and JSON values."""
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as exc:
        raise InputError(f"--instances: cannot read '{path}': {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"--instances: '{path}' is not JSON: {exc}") from None
    if not isinstance(document, list) or not document or not all(isinstance(i, dict) for i in document):
        raise InputError(f"--instances: '{path}' must hold a JSON array of objects (one per instance)")
    instances = []
    for i, item in enumerate(document):
        instance: dict = {}
        for name, value in item.items():
            where = f"instance {i}: {name}"
            if isinstance(value, str):
                instance[name] = value
            elif isinstance(value, (list, int, float)):
                instance[name] = _array(where, value)
            else:
                raise InputError(f"--instances: {where}: expected a number, bool, array or string")
        instances.append(instance)
    return instances


def parse_dtypes(items: Sequence[str]) -> dict:
    """``--dtype name=TYPE`` options as numpy dtypes by input name."""
    dtypes = {}
    for item in items:
        name, sep, text = item.partition("=")
        try:
            dtype = np.dtype(text)
        except TypeError:
            dtype = None
        if not sep or not name or dtype is None or dtype.kind not in "biuf":
            raise InputError(
                f"--dtype: expected name=TYPE with a numeric numpy type (float32, int64, bool, ...), got {item!r}"
            )
        dtypes[name] = dtype
    return dtypes


def typed(instance: dict, from_json: set, types: dict, explicit: dict) -> dict:
    """The instance with each JSON-written number or array in the data type the method takes (``types``, from
    its metadata: only where nothing is lost, ints to floats or to wider ints), and each ``explicit`` type
    applied whatever the value's source."""
    out = dict(instance)
    for name, value in instance.items():
        if not isinstance(value, np.ndarray):
            continue
        target = explicit.get(name)
        if target is None and name in from_json:
            wanted = types.get(name)
            if (
                wanted is not None
                and wanted != value.dtype
                and np.can_cast(value.dtype, wanted, "same_kind")
                or (wanted is not None and value.dtype.kind in "iu" and wanted.kind == "f")
            ):
                target = wanted
        if target is not None:
            if target.kind in "iu" and value.size and value.dtype.kind in "iuf":
                info = np.iinfo(target)
                if value.min() < info.min or value.max() > info.max or (value != np.round(value)).any():
                    raise InputError(f"{name}: its values do not fit {target}")
            out[name] = value.astype(target)
    return out


def format_value(value: Any) -> str:
    """numpy's repr on one line (rows joined by a space), repr for str, bytes and lists."""
    if isinstance(value, np.ndarray):
        return " ".join(line.strip() for line in repr(value).splitlines())
    return repr(value)


def format_instance(outputs: dict) -> str:
    """``name=value`` for each output, by name."""
    return " ".join(f"{name}={format_value(outputs[name])}" for name in sorted(outputs))
