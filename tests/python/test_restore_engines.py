"""`ipcontroller --restore` takes back the engines of the controller before it.

The Hub keeps an engine state file, `<profile_dir>/log/engines<cluster_id>.json`
(`{"engines": {"<id>": "<uuid>"}, "next_id": N}`, spec §2.1), rewritten whenever an engine
registers or goes away. A controller restarted with `--restore` (which implies `--reuse`:
same ports, same key) reads it, and engines that outlived the restart rejoin with their
ids: the real `ipengine`, which never registers again, and our own engines, which do and
are told their uuid is still known. Run against ipyparallel's controller too, so the
expectations are the reference's.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from ipyparallel import interactive

from ippcluster import Cluster, log_tail

TIMEOUT = 60


@interactive
def noop_pid():
    import os

    return os.getpid()


def state_file(cluster: Cluster):
    return cluster.profile_dir / "log" / "engines.json"


def wait_for_state(cluster: Cluster, engines: int) -> dict:
    """The engine state file once it lists `engines` engines."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            state = json.loads(state_file(cluster).read_text())
            if len(state["engines"]) == engines:
                return state
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no engine state with {engines} engines; log:\n{log_tail(cluster.controller_log)}"
            )
        time.sleep(0.05)


def restart_controller(cluster: Cluster, *args: str) -> None:
    """Stops the controller only (its engines keep running) and starts it again with `args`."""
    for client in cluster.clients:
        client.close(linger=0)
    cluster.clients.clear()
    cluster.remember_children()
    cluster._terminate([cluster.controller], cluster._children_of([cluster.controller]), 15)
    cluster.extra_args = args
    cluster.controller_log = cluster.tmp / "controller-restarted.log"
    cluster.start_controller()


@pytest.mark.parametrize(
    ("kind", "engine_kind"),
    [("reference", "ipengine"), ("ours", "ipengine"), ("ours", "ipp_rs")],
)
def test_engines_rejoin_a_restored_controller_with_their_ids(kind, engine_kind):
    cluster = Cluster(kind, extra_args=("--reuse",), engine_kind=engine_kind)
    try:
        cluster.start(engines=2)
        rc = cluster.client()
        rc.wait_for_engines(2, timeout=TIMEOUT)
        pids = rc[:].apply_sync(noop_pid)
        uuids = {str(eid): uuid for eid, uuid in rc._engines.items()}
        state = wait_for_state(cluster, 2)
        assert state == {"engines": uuids, "next_id": 2}

        restart_controller(cluster, "--restore")
        rc = cluster.client()
        try:
            rc.wait_for_engines(2, timeout=TIMEOUT)
        except TimeoutError as exc:
            raise AssertionError(
                f"restored engines did not rejoin: {exc}\n"
                f"controller log:\n{log_tail(cluster.controller_log)}\n"
                f"engine-0 log:\n{log_tail(cluster.tmp / 'engine-0.log')}"
            ) from exc
        assert {str(eid): uuid for eid, uuid in rc._engines.items()} == uuids
        if kind == "reference":
            # ipyparallel lists restored engines at once, before their sockets reconnect,
            # and its ROUTERs drop what is sent to them meanwhile. Ours announces each one
            # on its first heartbeat, when it is reachable again.
            time.sleep(3)
        # The same processes, reached directly and through the task scheduler.
        assert rc[:].apply_sync(noop_pid) == pids
        assert rc.load_balanced_view().apply_sync(noop_pid) in pids
        # The id counter went on where it was.
        cluster.start_engine()
        rc.wait_for_engines(3, timeout=TIMEOUT)
        assert sorted(rc.ids) == [0, 1, 2]
        assert wait_for_state(cluster, 3)["next_id"] == 3
    finally:
        cluster.stop()


def test_a_broken_engine_state_file_stops_restore_with_a_message_saying_what_to_do():
    cluster = Cluster("ours", extra_args=("--reuse",))
    try:
        cluster.start(engines=0)
        cluster._terminate([cluster.controller], [], 15)
        state_file(cluster).write_text("{not json")
        cluster.extra_args = ("--restore",)
        done = subprocess.run(
            cluster.controller_command(), env=cluster.env, capture_output=True, text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode != 0
        output = done.stdout + done.stderr
        assert "engines.json" in output and "delete it" in output, output
    finally:
        cluster.stop()


def test_without_restore_an_orphaned_ipengine_is_named_in_the_log():
    # ipyparallel's engine never registers again: a controller restarted without --restore
    # does not know it, and says so once, with what to do.
    cluster = Cluster("ours", extra_args=("--reuse",))
    try:
        cluster.start(engines=1)
        rc = cluster.client()
        rc.wait_for_engines(1, timeout=TIMEOUT)
        uuid = rc._engines[0]
        restart_controller(cluster, "--reuse")
        deadline = time.monotonic() + TIMEOUT
        while True:
            log = cluster.controller_log.read_text(errors="replace")
            lines = [line for line in log.splitlines() if "not registered here" in line]
            if lines:
                break
            assert time.monotonic() < deadline, f"no warning; log:\n{log_tail(cluster.controller_log)}"
            time.sleep(0.1)
        assert len(lines) == 1 and uuid in lines[0] and "--restore" in lines[0], lines
    finally:
        cluster.stop()
