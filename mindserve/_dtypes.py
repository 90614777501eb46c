"""The tensor data types of the wire contract and their numpy equivalents (shared by client and server)."""

from __future__ import annotations

import numpy as np

# DataType enum values of the wire contract (ms_service.proto).
MS_UNKNOWN, MS_BOOL, MS_INT8, MS_UINT8, MS_INT16, MS_UINT16, MS_INT32, MS_UINT32 = range(8)
MS_INT64, MS_UINT64, MS_FLOAT16, MS_FLOAT32, MS_FLOAT64, MS_STRING, MS_BYTES = range(8, 15)
# the text types: one str or bytes value each, never numeric data
TEXT_CODES = (MS_STRING, MS_BYTES)

# numeric enum value -> numpy dtype (little-endian, as on the wire)
NUMPY_OF: dict[int, np.dtype] = {
    MS_BOOL: np.dtype(np.bool_),
    MS_INT8: np.dtype("<i1"),
    MS_UINT8: np.dtype("<u1"),
    MS_INT16: np.dtype("<i2"),
    MS_UINT16: np.dtype("<u2"),
    MS_INT32: np.dtype("<i4"),
    MS_UINT32: np.dtype("<u4"),
    MS_INT64: np.dtype("<i8"),
    MS_UINT64: np.dtype("<u8"),
    MS_FLOAT16: np.dtype("<f2"),
    MS_FLOAT32: np.dtype("<f4"),
    MS_FLOAT64: np.dtype("<f8"),
}

# numpy dtype -> enum value (native byte order included)
CODE_OF: dict[np.dtype, int] = {}
for _code, _dt in NUMPY_OF.items():
    CODE_OF[_dt] = _code
    CODE_OF[_dt.newbyteorder("=")] = _code

# names used in error texts, as MindSpore Serving prints them ("... data type kMSI_Int32 not match ...")
NAME_OF: dict[int, str] = {
    MS_UNKNOWN: "kMSI_Unknown",
    MS_BOOL: "kMSI_Bool",
    MS_INT8: "kMSI_Int8",
    MS_UINT8: "kMSI_Uint8",
    MS_INT16: "kMSI_Int16",
    MS_UINT16: "kMSI_Uint16",
    MS_INT32: "kMSI_Int32",
    MS_UINT32: "kMSI_Uint32",
    MS_INT64: "kMSI_Int64",
    MS_UINT64: "kMSI_Uint64",
    MS_FLOAT16: "kMSI_Float16",
    MS_FLOAT32: "kMSI_Float32",
    MS_FLOAT64: "kMSI_Float64",
    MS_STRING: "kMSI_String",
    MS_BYTES: "kMSI_Bytes",
}


def code_of_array(array: np.ndarray) -> int | None:
    """The enum value for a numpy array's dtype, or None when the wire contract has no such type."""
    return CODE_OF.get(array.dtype)


# Open Inference Protocol (KServe v2) datatype names. Both text types travel as BYTES; a BYTES input becomes
# MS_BYTES unless the frontend knows the method takes a string (see the OIP frontend).
OIP_NAME_OF: dict[int, str] = {
    MS_BOOL: "BOOL",
    MS_INT8: "INT8",
    MS_UINT8: "UINT8",
    MS_INT16: "INT16",
    MS_UINT16: "UINT16",
    MS_INT32: "INT32",
    MS_UINT32: "UINT32",
    MS_INT64: "INT64",
    MS_UINT64: "UINT64",
    MS_FLOAT16: "FP16",
    MS_FLOAT32: "FP32",
    MS_FLOAT64: "FP64",
    MS_STRING: "BYTES",
    MS_BYTES: "BYTES",
}

# OIP datatype name -> enum value
CODE_OF_OIP_NAME: dict[str, int] = {name: code for code, name in OIP_NAME_OF.items() if code != MS_STRING}
