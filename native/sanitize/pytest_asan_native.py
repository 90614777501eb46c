"""pytest plugin (-p pytest_asan_native): tests import the sanitized build of mindserve._native, found in
MINDSERVE_ASAN_DIR/mindserve, in place of the regular one (the rest of the package is the regular one)."""
import os

import mindserve

mindserve.__path__.insert(0, os.path.join(os.environ["MINDSERVE_ASAN_DIR"], "mindserve"))
