"""`rc.shutdown(hub=True)` stops the engines and makes the controller process exit.

Own cluster: this module ends it.
"""

from __future__ import annotations

import subprocess

import ipyparallel as ipp
import pytest

DEADLINE = 30


@ipp.interactive
def double(x):
    return 2 * x


def test_shutdown_with_hub_stops_the_controller_and_the_engines(cluster, rc):
    assert rc[:].apply_sync(double, 1) == [2, 2]
    rc.shutdown(hub=True, block=True)
    try:
        code = cluster.controller.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the controller (pid {cluster.controller.pid}) still runs {DEADLINE} s after shutdown")
    assert code == 0, f"controller exited with {code}"
    for engine in cluster.engines:
        engine.wait(timeout=DEADLINE)
    assert not cluster.client_file.exists(), "connection files are removed on a clean exit"
