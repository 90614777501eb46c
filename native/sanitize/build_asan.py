"""Builds mindserve._native with AddressSanitizer and UBSan (and -Werror) into the folder given, as a package
folder ``mindserve/`` holding only the extension: run.sh puts it in front of the real package's path."""
import os
import sys

from cffi import FFI

NATIVE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, NATIVE)
import build_native  # noqa: E402  (the real build: the same cdef, sources and headers)

ffi = FFI()
with open(os.path.join(NATIVE, "native.cdef")) as f:
    ffi.cdef(f.read())
ffi.set_source(
    "mindserve._native", build_native.PREAMBLE,
    sources=[os.path.join(NATIVE, s) for s in build_native.SOURCES], include_dirs=[NATIVE],
    extra_compile_args=["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-fno-omit-frame-pointer",
                        "-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
    extra_link_args=["-fsanitize=address,undefined"], libraries=["rt", "pthread"])
ffi.compile(tmpdir=sys.argv[1])
