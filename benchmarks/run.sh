#!/usr/bin/env bash
# Runs ../shared/bench/run_peers.sh with mindserve beside the floor and MLServer.
#   benchmarks/run.sh [SECONDS] [DEVICE_IDS] [PROTO]      (from the repository root, after the README's install)
# PROTO: ms (MindSpore-style Predict, the default) or v2 (Open Inference Protocol ModelInfer; each servable has
# one method, so its bare name is its model name).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bench=${BENCH_DIR:-$root/../shared/bench}
S=${1:-5}
DEV=${2:-0}
PROTO=${3:-ms}
cache=${XDG_CACHE_HOME:-$HOME/.cache}
W=${BENCH_WORK:-$cache/mindserve-bench-work}
V=${BENCH_VENV:-$cache/mindserve-bench-venv}
mkdir -p "$W"
[ -x "$V/bin/python" ] || { python3 -m venv "$V" && "$V/bin/pip" install -q onnx numpy; }
"$V/bin/python" "$bench/make_models.py" "$W" >/dev/null
sock="$W/mindserve.sock"
"$root/.venv/bin/python" "$here/serve_bench_models.py" "$W" "unix:$sock" "$DEV" > "$W/mindserve.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 120); do grep -q listening "$W/mindserve.log" && break; sleep 1; done
grep -q listening "$W/mindserve.log" || { cat "$W/mindserve.log"; exit 1; }
PROJECT_ADDR="unix:$sock" PROJECT_PROTO=$PROTO bash "$bench/run_peers.sh" "$S"
