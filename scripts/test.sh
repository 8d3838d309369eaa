#!/usr/bin/env bash
# THE test command: every Rust test, then the Python interop suite (real ipyparallel 9.2.0
# client and ipengines against our controller). Exits non-zero if anything fails.
#
#   scripts/test.sh                              # everything, against our controller
#   IPP_TEST_CONTROLLER=reference scripts/test.sh   # the interop suite against the Python
#                                                   # ipcontroller (checks the tests themselves)
#   scripts/test.sh -k db_query                  # extra arguments go to pytest
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# CI builds once from a fresh clone: incremental caches only cost disk there.
if [[ "${CI:-}" == true ]]; then export CARGO_INCREMENTAL=0; fi
echo "==> disk free where the build goes: $(df -h --output=avail "$ROOT" | tail -1 | tr -d ' ')" >&2

PY="$(scripts/setup-test-env.sh)" || { echo "test.sh: test environment setup failed" >&2; exit 1; }
export IPP_TEST_PYTHON="$PY"
export IPP_TEST_CONTROLLER="${IPP_TEST_CONTROLLER:-ours}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export IPP_CONTROLLER_BIN="${IPP_CONTROLLER_BIN:-$TARGET_DIR/debug/examples/ipcontroller}"

failed=()
step() {
    local name="$1"; shift
    echo "==> $name: $*" >&2
    if ! "$@"; then
        failed+=("$name")
        echo "==> $name FAILED" >&2
    fi
}

step "cargo build" cargo build --workspace --examples
step "cargo test" cargo test --workspace --all-features
# Every program in examples/ must run, not only build (small sizes: this is a debug build).
step "example: embedded_controller" cargo run -q --example embedded_controller
step "example: quickstart" cargo run -q --example quickstart -- --digits 500 --tasks 2000
step "example: bench" cargo run -q --example bench -- --quick --stores nodb,sqlite
step "example: bench (schemes)" cargo run -q --example bench -- --quick --schemes-only --deps 0,10
step "example tests" cargo test -q --examples
step "pytest" "$PY" -m pytest "$ROOT/tests/python" -v "$@"

if ((${#failed[@]})); then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test.sh: all tests passed" >&2
