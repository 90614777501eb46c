#!/usr/bin/env bash
# The C core's unit tests (the in-process ones that drive mindserve._native: native, wire reader, blocks,
# fast lane, reply encoder, channel) under AddressSanitizer and UBSan, with the extension built with -Werror.
# A sanitizer report fails the run and is printed.
#
#     bash native/sanitize/run.sh          (after the README's install; CI runs it)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/asan
rm -rf "$out" && mkdir -p "$out/pkg"
.venv/bin/python native/sanitize/build_asan.py "$out/pkg" > "$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
MINDSERVE_ASAN_DIR="$out/pkg" PYTHONPATH=native/sanitize LD_PRELOAD="$preload" \
ASAN_OPTIONS="detect_leaks=0:log_path=$out/report" UBSAN_OPTIONS="print_stacktrace=1:log_path=$out/report" \
    .venv/bin/python -m pytest -p pytest_asan_native -q -p no:cacheprovider tests/native \
    tests/frontends/test_ms_wire.py tests/frontends/test_oip_wire.py tests/transport/test_blocks.py \
    tests/workers/test_fast_lane.py tests/frontends/test_ms_reply.py || status=$?
if ls "$out"/report* > /dev/null 2>&1; then
    cat "$out"/report*
    exit 1
fi
exit "${status:-0}"
