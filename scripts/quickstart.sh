#!/usr/bin/env bash
# The quickstart: our Rust controller, two real ipyparallel engines, and a client script
# doing real work (pi digits, digit statistics, Monte Carlo), printing results and timing.
# Needs only Rust, Python 3 with venv and pip; installs ipyparallel into .venv-test.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(scripts/setup-test-env.sh)"
BIN_DIR="$(dirname "$PY")"
cargo build --release --example ipcontroller
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

export IPYTHONDIR
IPYTHONDIR="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$IPYTHONDIR"
}
trap cleanup EXIT

logs="$IPYTHONDIR/logs"
mkdir -p "$logs"
echo "quickstart: controller and engine logs go to $logs (removed on exit)" >&2
"$TARGET_DIR/release/examples/ipcontroller" --ip=127.0.0.1 --ping=1000 --log-level=WARN \
    2>"$logs/controller.log" &
pids+=($!)
security="$IPYTHONDIR/profile_default/security"
for _ in $(seq 100); do
    [[ -f "$security/ipcontroller-engine.json" ]] && break
    sleep 0.1
done
for n in 1 2; do
    "$BIN_DIR/ipengine" --file="$security/ipcontroller-engine.json" --log-level=ERROR \
        >"$logs/engine-$n.log" 2>&1 &
    pids+=($!)
done
if ! "$PY" examples/ipyparallel_quickstart.py; then
    echo "quickstart: failed; controller log:" >&2
    tail -n 20 "$logs/controller.log" >&2
    exit 1
fi
