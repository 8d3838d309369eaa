"""kill -9 of an engine while it runs a task: the client gets RemoteError(EngineError) for
that task, direct and load-balanced, and later work runs on the survivors.

This module kills engines, so it has its own cluster with three of them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import ipyparallel as ipp
import pytest
from ipyparallel import error

from ippcluster import Cluster

# Generous bounds: these are limits on hanging, not timing assertions.
DEADLINE = 30


@pytest.fixture(scope="module")
def cluster():
    c = Cluster().start(engines=3)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def rc(cluster):
    client = cluster.client()
    client.wait_for_engines(3, timeout=60)
    return client


@ipp.interactive
def mark_then_sleep(path, seconds):
    import os
    import time

    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(seconds)
    return "slept"


@ipp.interactive
def add_one(x):
    return x + 1


@ipp.interactive
def pid_of_engine(_):
    import os

    return os.getpid()


def wait_for(predicate, what, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"gave up after {deadline} s waiting for {what}")
        time.sleep(0.05)


def kill_engine_running(cluster, rc, marker: Path) -> int:
    """Waits until the task that writes `marker` runs, then SIGKILLs that engine process;
    returns the killed engine's id."""
    wait_for(marker.exists, f"the task to start ({marker.name})")
    pid = int(marker.read_text())
    engines = {p.pid: p for p in cluster.engines}
    assert pid in engines, f"task ran in pid {pid}, not one of our engines {sorted(engines)}"
    cluster.remember_children()
    engines[pid].kill()  # SIGKILL, by the pid we started
    engines[pid].wait(timeout=DEADLINE)
    return pid


def engine_pids(rc) -> dict[int, int]:
    return dict(zip(rc.ids, rc[rc.ids].apply_sync(os.getpid)))


def test_engine_pids_are_the_processes_we_started(cluster, rc):
    assert sorted(engine_pids(rc).values()) == sorted(p.pid for p in cluster.engines)


def test_direct_task_on_a_killed_engine_fails_with_engine_error(cluster, rc):
    victim = rc.ids[0]
    marker = cluster.tmp / "direct.started"
    ar = rc[victim].apply_async(mark_then_sleep, str(marker), 30)
    pid = kill_engine_running(cluster, rc, marker)
    with pytest.raises(error.RemoteError) as info:
        ar.get(timeout=DEADLINE)
    assert info.value.ename == "EngineError"
    wait_for(lambda: victim not in rc.ids, f"engine {victim} (pid {pid}) to leave rc.ids")


def test_load_balanced_task_on_a_killed_engine_fails_with_engine_error(cluster, rc):
    assert len(rc.ids) >= 2
    victim = rc.ids[0]
    marker = cluster.tmp / "task.started"
    lb = rc.load_balanced_view(targets=[victim])
    ar = lb.apply_async(mark_then_sleep, str(marker), 30)
    pid = kill_engine_running(cluster, rc, marker)
    with pytest.raises(error.RemoteError) as info:
        ar.get(timeout=DEADLINE)
    assert info.value.ename == "EngineError"
    wait_for(lambda: victim not in rc.ids, f"engine {victim} (pid {pid}) to leave rc.ids")


def test_later_tasks_run_on_the_survivor(cluster, rc):
    alive = [p.pid for p in cluster.engines if p.poll() is None]
    assert len(alive) == 1
    wait_for(lambda: len(rc.ids) == 1, "the client to see exactly one engine")
    assert rc[:].apply_sync(os.getpid) == alive
    lb = rc.load_balanced_view()
    assert lb.map_sync(add_one, range(10)) == list(range(1, 11))
    assert set(lb.map_sync(pid_of_engine, range(4))) == set(alive)
    # (The reference keeps reporting dead engines' queues for a while, so only the survivor's
    # entry is checked.)
    status = rc.queue_status()
    assert status[rc.ids[0]]["queue"] == 0 and status["unassigned"] == 0
