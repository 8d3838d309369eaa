#!/usr/bin/env bash
# Creates (idempotently) the test virtualenv at <repo>/.venv-test with the pinned real
# ipyparallel 9.2.0 (client + ipengine + reference ipcontroller), pytest and pytest-timeout.
# Needs only python3 with the venv module and pip. Prints the venv's python path on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IPP_TEST_VENV:-$ROOT/.venv-test}"
PYTHON="${PYTHON:-python3}"
# Everything the tests import; bump the stamp when this list changes.
REQUIREMENTS=("ipyparallel==9.2.0" "pytest>=7,<9" "pytest-timeout>=2.1" "nx-27017==0.8.1")
STAMP_TEXT="${REQUIREMENTS[*]}"
STAMP="$VENV/.ipp-test-env"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_TEXT" ]] \
    && "$VENV/bin/python" -c 'import ipyparallel, pytest, pytest_timeout, zmq' >/dev/null 2>&1; then
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
"$VENV/bin/python" -c 'import ipyparallel, pytest, pytest_timeout, zmq' >&2
test -x "$VENV/bin/ipengine" && test -x "$VENV/bin/ipcontroller"
echo "$STAMP_TEXT" >"$STAMP"
echo "$VENV/bin/python"
