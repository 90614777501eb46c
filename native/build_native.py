"""cffi build script for ``mindserve._native`` (out-of-line API mode).

setup.py names ``native/build_native.py:ffibuilder`` in ``cffi_modules``; running this file directly builds the
module in place for development: ``python native/build_native.py``.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["arena.c", "batch_copy.c", "channel.c", "infer_wire.c", "predict_wire.c", "segment.c"]
# what the generated module includes: the headers of the API that native.cdef declares
PREAMBLE = ('#include "batch_copy.h"\n#include "channel.h"\n#include "infer_wire.h"\n#include "ms_status.h"\n'
            '#include "predict_wire.h"\n#include "segment.h"\n')

ffibuilder = FFI()
with open(os.path.join(HERE, "native.cdef")) as f:
    ffibuilder.cdef(f.read())

ffibuilder.set_source(
    "mindserve._native",
    PREAMBLE,
    sources=[os.path.relpath(os.path.join(HERE, s)) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra"],
    libraries=["rt", "pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.dirname(HERE), verbose=True)
