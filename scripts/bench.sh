#!/usr/bin/env bash
# Benchmark our controller against the Python ipcontroller (ipyparallel 9.2.0), same client
# and engines, and print a markdown table (see BENCHMARKS.md).
#   scripts/bench.sh [--quick] [--only reference|ours]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(scripts/setup-test-env.sh)"
cargo build --release --example ipcontroller >&2
export IPP_CONTROLLER_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/ipcontroller"
exec "$PY" benchmarks/bench_vs_ipyparallel.py "$@"
