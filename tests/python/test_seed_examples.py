"""The seeds' examples, ported by changing the import line only, run as scripts against our
controller with our Python engines (``python -m ipp_rs.engine``), once with each client
package (``ipyparallel`` and ``ipp_rs``).

Each script holds exactly one ``import ipyparallel as ipp`` or ``import ipp_rs as ipp`` line;
the test rewrites that one line for the client under test, leaves everything else as it is,
and runs the result as a program:

* ``examples/ipyparallel_quickstart.py``: pi digits on one engine, digit counts on scattered
  chunks, Monte Carlo pi with load balancing (the quickstart of the README);
* ``examples/dag_dependencies.py``: the documentation's random DAG with ``after``
  dependencies, checked against the graph;
* ``examples/python/pi_digits.py``: the documentation's parallel pi-digits statistics;
* ``examples/python/task_interface.py``: the task-interface, getting-started, transition and
  AsyncResult examples of the documentation;
* ``examples/python/px_session.py``: the documentation's interactive ``%px`` session in an
  IPython shell.

While ``ipp_rs.Client`` does not exist, the ipp_rs runs are skipped saying so.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ippcluster import REPO_ROOT, client_unavailable, start_cluster

# Below pytest-timeout's 120 s, so a hanging script is reported with its output so far.
TIMEOUT = 100
IMPORT_LINE = re.compile(r"^import (ipyparallel|ipp_rs) as ipp$", re.M)
# The one-digit counts of the first 10,000 decimals of pi (a well-known table).
FIRST_10000_COUNTS = "0:968 1:1026 2:1021 3:974 4:1012 5:1046 6:1021 7:970 8:948 9:1014"


# The documentation's examples use numpy (on the client and on the engines).
needs_numpy = pytest.mark.skipif(
    importlib.util.find_spec("numpy") is None,
    reason="numpy is not installed in this Python (scripts/setup-test-env.sh must install it)",
)


@pytest.fixture(scope="module")
def cluster():
    """Our controller (the controller under test) with two ipp_rs engines."""
    c = start_cluster(controller=None, engine_kind="ipp_rs", engines=2)
    yield c
    c.stop()


@pytest.fixture(params=["ipyparallel", "ipp_rs"], ids=lambda m: f"{m}-client")
def client_module(request) -> str:
    reason = client_unavailable(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


def port(script: Path, module: str, directory: Path) -> Path:
    """A copy of `script` in `directory` whose one ipp import line imports `module`."""
    source = script.read_text()
    lines = IMPORT_LINE.findall(source)
    assert len(lines) == 1, f"{script} must have exactly one 'import ... as ipp' line"
    ported = directory / script.name
    ported.write_text(IMPORT_LINE.sub(f"import {module} as ipp", source))
    return ported


def run_example(cluster, module: str, tmp_path: Path, relpath: str, *args: str) -> str:
    """Runs the ported script with `args` against the cluster; returns its stdout."""
    script = port(REPO_ROOT / relpath, module, tmp_path)
    try:
        done = subprocess.run(
            [sys.executable, str(script), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=cluster.env,
            cwd=tmp_path,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(
            f"{relpath} with `import {module} as ipp` did not finish in {TIMEOUT} s\n"
            f"--- stdout\n{(out or '')[-6000:]}\n--- stderr\n{(err or '')[-6000:]}",
            pytrace=False,
        )
    assert done.returncode == 0, (
        f"{relpath} with `import {module} as ipp` exited {done.returncode}\n"
        f"--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
    )
    return done.stdout


def test_quickstart(cluster, client_module, tmp_path):
    out = run_example(cluster, client_module, tmp_path, "examples/ipyparallel_quickstart.py")
    assert "connected to engines [0, 1]" in out
    assert "pi = 3.14159265358979323846" in out
    assert "digit frequencies:" in out and "Monte Carlo pi ~ 3.1" in out


def test_dag_dependencies(cluster, client_module, tmp_path):
    out = run_example(
        cluster, client_module, tmp_path, "examples/dag_dependencies.py",
        "--file", str(cluster.client_file), "--nodes", "64", "--edges", "160", "--seed", "4",
    )
    assert "64 tasks, 160 dependencies, 2 engines" in out
    assert "dependencies respected" in out


@needs_numpy
def test_pi_digits(cluster, client_module, tmp_path):
    out = run_example(
        cluster, client_module, tmp_path, "examples/python/pi_digits.py",
        "--file", str(cluster.client_file), "--digits", "20000", "--files", "4",
    )
    assert f"one-digit counts in the first 10,000 digits: {FIRST_10000_COUNTS}" in out
    assert "two-digit counts over 19996 pairs in 4 files on 2 engines" in out
    assert "parallel counts equal the serial counts" in out


@needs_numpy
def test_task_interface(cluster, client_module, tmp_path):
    out = run_example(
        cluster, client_module, tmp_path, "examples/python/task_interface.py",
        "--file", str(cluster.client_file),
    )
    assert "FAILED" not in out and "all checks passed" in out


@needs_numpy
def test_px_session(cluster, client_module, tmp_path):
    out = run_example(
        cluster, client_module, tmp_path, "examples/python/px_session.py",
        "--file", str(cluster.client_file),
    )
    assert re.search(r"^\d+ cells, 0 failed$", out, re.M), out[-3000:]
