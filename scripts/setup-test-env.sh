#!/usr/bin/env bash
# Creates (idempotently) the test virtualenv at <repo>/.venv-test with the pinned real
# ipyparallel 9.2.0 (client + ipengine + reference ipcontroller), pytest and pytest-timeout,
# then builds and installs our own Python package `ipp_rs` (ipp-py, with maturin) into it.
# Needs python3 with the venv module and pip, and cargo. Prints the venv's python path on
# stdout.
#
# ipp_rs is rebuilt only when the Rust or Python sources it is built from (or
# $IPP_RS_BUILD_ARGS) change: a hash of them is kept in the venv. cargo's target dir
# ($CARGO_TARGET_DIR, default <repo>/target) caches the compiled dependencies between builds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IPP_TEST_VENV:-$ROOT/.venv-test}"
PYTHON="${PYTHON:-python3}"
# Everything the tests import; bump the stamp when this list changes.
# numpy, cloudpickle and joblib: buffers without copies, use_cloudpickle and the joblib
# backend are part of what the ipp_rs tests check (without them those tests would skip).
REQUIREMENTS=("ipyparallel==9.2.0" "pytest>=7,<9" "pytest-timeout>=2.1" "nx-27017==0.8.1"
    "maturin>=1.9,<2" "numpy>=1.24,<3" "cloudpickle>=2.2" "joblib>=1.2")
STAMP_TEXT="${REQUIREMENTS[*]}"
STAMP="$VENV/.ipp-test-env"
IPP_RS_STAMP="$VENV/.ipp-rs-build"

# A hash of everything the ipp_rs wheel is built from.
ipp_rs_sources_hash() {
    (
        cd "$ROOT"
        find Cargo.toml Cargo.lock rust-toolchain.toml ipp-core ipp-transport-zmq ipp-py \
            -path '*/target' -prune -o -path '*/__pycache__' -prune -o -type f \
            \( -name '*.rs' -o -name '*.toml' -o -name '*.lock' -o -name '*.py' -o -name '*.pyi' \
            -o -name 'py.typed' -o -name '*.md' \) -print0 2>/dev/null \
            | LC_ALL=C sort -z | xargs -0 sha256sum
        echo "build args: ${IPP_RS_BUILD_ARGS:-}"
    ) | sha256sum | cut -d' ' -f1
}

# Builds and installs ipp-py into the venv unless the installed build is from these sources.
install_ipp_rs() {
    local hash
    hash="$(ipp_rs_sources_hash)"
    if [[ -f "$IPP_RS_STAMP" && "$(cat "$IPP_RS_STAMP")" == "$hash" ]] \
        && "$VENV/bin/python" -c 'import ipp_rs' >/dev/null 2>&1; then
        return 0
    fi
    command -v cargo >/dev/null || { echo "setup-test-env: cargo is needed to build ipp-py" >&2; exit 1; }
    echo "setup-test-env: building and installing ipp-py (ipp_rs)" >&2
    # No build isolation: maturin comes from the venv, and the build shares cargo's target
    # dir with the workspace so compiled dependencies are reused.
    # maturin's build backend runs the `maturin` command: put the venv first on PATH.
    # The dev profile (unless $IPP_RS_BUILD_ARGS says otherwise, e.g. "--release" for
    # benchmarks) reuses the debug artifacts of `cargo build --workspace`: the wheel then
    # adds only pyo3 and ipp-py to the build.
    PATH="$VENV/bin:$PATH" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}" \
        MATURIN_PEP517_ARGS="${IPP_RS_BUILD_ARGS:---profile dev}" PYO3_BUILD_EXTENSION_MODULE=1 \
        "$VENV/bin/python" -m pip install \
        --disable-pip-version-check --quiet --no-build-isolation --force-reinstall --no-deps \
        "$ROOT/ipp-py" >&2
    "$VENV/bin/python" -c 'import ipp_rs, ipp_rs.engine' >&2
    echo "$hash" >"$IPP_RS_STAMP"
}

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_TEXT" ]] \
    && "$VENV/bin/python" -c 'import ipyparallel, pytest, pytest_timeout, zmq, numpy, cloudpickle, joblib' >/dev/null 2>&1; then
    install_ipp_rs
    echo "$VENV/bin/python"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup-test-env: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV" >&2
fi
echo "setup-test-env: installing ${REQUIREMENTS[*]}" >&2
"$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade pip >&2 || true
"$VENV/bin/python" -m pip install --disable-pip-version-check --quiet "${REQUIREMENTS[@]}" >&2
"$VENV/bin/python" -c 'import ipyparallel, pytest, pytest_timeout, zmq, numpy, cloudpickle, joblib' >&2
test -x "$VENV/bin/ipengine" && test -x "$VENV/bin/ipcontroller"
echo "$STAMP_TEXT" >"$STAMP"
install_ipp_rs
echo "$VENV/bin/python"
