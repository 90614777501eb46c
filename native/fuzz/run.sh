#!/usr/bin/env bash
# Builds the libFuzzer targets of the C core with AddressSanitizer and UBSan and runs each for SECONDS
# (default 30), starting from the committed seed corpus (corpus/<target>; what the run finds is kept in
# build/fuzz/corpus/<target>, not committed). A crash, a sanitizer report or a failed check stops the run with
# the input that caused it and a non-zero exit.
#
#     bash native/fuzz/run.sh [SECONDS]          # CI runs 30 s per target; longer runs: 3600 and more
#
# Needs clang with libFuzzer (Debian: clang-14 and libfuzzer-14-dev), installed here when missing and
# allowed (root with apt-get).
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_TARGET="${1:-30}"

CLANG="$(command -v clang-14 || command -v clang || true)"
if [ -z "$CLANG" ] || ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' \
        | "$CLANG" -x c -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
    echo "fuzz: installing clang-14 and libfuzzer-14-dev"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq clang-14 libfuzzer-14-dev >/dev/null
    CLANG="$(command -v clang-14)"
fi

FLAGS=(-g -O1 -std=c11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Wall -Wextra -Werror
       -Inative)
declare -A SOURCES=(
    [predict_wire]="native/predict_wire.c"
    [infer_wire]="native/infer_wire.c"
    [channel]="native/channel.c native/arena.c"
)
mkdir -p build/fuzz
for target in predict_wire infer_wire channel; do
    # shellcheck disable=SC2086
    "$CLANG" "${FLAGS[@]}" "native/fuzz/fuzz_$target.c" ${SOURCES[$target]} -o "build/fuzz/fuzz_$target"
    mkdir -p "build/fuzz/corpus/$target"
    echo "fuzz: $target for $SECONDS_PER_TARGET s"
    "build/fuzz/fuzz_$target" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="build/fuzz/$target-" "build/fuzz/corpus/$target" "native/fuzz/corpus/$target" \
        2> "build/fuzz/$target.log" || { tail -60 "build/fuzz/$target.log"; exit 1; }
    grep -E "stat::number_of_executed_units|stat::new_units_added" "build/fuzz/$target.log" | tr '\n' ' '
    echo
done
echo "fuzz: no crash"
