"""ipp_rs.Cluster: the in-process controller plus `python -m ipp_rs.engine` subprocesses,
driven through ipyparallel's Cluster API (sync, asyncio, context managers), and the native
Controller it runs on.

The client is whatever `Cluster.connect_client` returns: `ipp_rs.Client` once the package
has one, ipyparallel's Client before that.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ipp_rs._ipp_rs import Controller
from ipp_rs.cluster import Cluster, ClusterManager

# Fast heartbeats so stopped engines leave the controller quickly.
FAST = ["--ping=250"]


def alive(pid: int) -> bool:
    """Whether a process exists (a reaped child does not)."""
    return Path(f"/proc/{pid}").exists()


def wait_until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def connection_files(profile_dir: Path, cluster_id: str) -> tuple[Path, Path]:
    security = profile_dir / "security"
    return (
        security / f"ipcontroller-{cluster_id}-client.json",
        security / f"ipcontroller-{cluster_id}-engine.json",
    )


def test_context_manager_yields_a_client_with_all_engines_and_cleans_up(tmp_path):
    cluster = Cluster(n=2, profile_dir=str(tmp_path), cluster_id="ctx", controller_args=FAST)
    client_file, engine_file = connection_files(tmp_path, "ctx")
    with cluster as rc:
        assert sorted(rc.ids) == [0, 1]
        # The connection files are where ipyparallel puts them, with the controller's info.
        assert json.loads(client_file.read_text()) == cluster.controller.client_info
        assert json.loads(engine_file.read_text()) == cluster.controller.engine_info
        assert cluster.controller.client_file == client_file
        assert oct(client_file.stat().st_mode & 0o777) == oct(0o600)
        pids = cluster.engine_set.pids
        assert len(pids) == 2 and all(map(alive, pids))
        # The engines are those processes.
        assert sorted(rc[:].apply_sync(os.getpid)) == sorted(pids)
        assert "controller=<running>" in repr(cluster)
    assert not any(map(alive, pids))
    assert not client_file.exists() and not engine_file.exists()
    assert cluster.controller is None and cluster.engines == {}
    # Engine logs are removed with their set, as ipyparallel does.
    assert list((tmp_path / "log").glob("ipengine-ctx-*")) == []


def test_step_by_step_sync_api_with_two_engine_sets(tmp_path):
    cluster = Cluster(profile_dir=str(tmp_path), cluster_id="steps", controller_args=FAST)
    try:
        cluster.start_controller_sync(scheme="lru", hwm=0)
        assert cluster.controller.running
        assert cluster.controller.client_info["task_scheme"] == "lru"
        with pytest.raises(RuntimeError, match="already running"):
            cluster.start_controller_sync()
        first = cluster.start_engines_sync(1)
        second = cluster.start_engines_sync(2, engine_set_id="extra")
        assert second == "extra" and set(cluster.engines) == {first, "extra"}
        rc = cluster.connect_client_sync()
        try:
            cluster.wait_for_engines_sync(3, client=rc)
            assert len(rc.ids) == 3
            extra_pids = cluster.engines["extra"].pids
            cluster.stop_engines_sync("extra")
            assert not any(map(alive, extra_pids))
            assert list(cluster.engines) == [first]
            wait_until(lambda: len(rc.ids) == 1, what="the stopped engines to unregister")
            # restart keeps the set's id and size, with new processes.
            old = cluster.engine_set.pids
            cluster.restart_engines_sync(first)
            assert list(cluster.engines) == [first] and cluster.engine_set.pids != old
            cluster.wait_for_engines_sync(1, client=rc)
        finally:
            rc.close()
    finally:
        cluster.stop_cluster_sync()
    assert cluster.controller is None and cluster.engines == {}
    # Stopping again does nothing.
    cluster.stop_cluster_sync()
    cluster.stop_engines_sync()
    cluster.stop_controller_sync()


def test_asyncio_api_and_async_context_manager(tmp_path):
    async def main():
        cluster = Cluster(n=1, profile_dir=str(tmp_path), cluster_id="aio", controller_args=FAST)
        async with cluster as rc:
            assert len(rc.ids) == 1
            pids = cluster.engine_set.pids
            assert rc[:].apply_sync(os.getpid) == pids
        assert not any(map(alive, pids))
        assert cluster.controller is None

        cluster = Cluster(n=1, profile_dir=str(tmp_path), cluster_id="aio2", controller_args=FAST)
        assert await cluster.start_cluster() is cluster
        rc = await cluster.connect_client()
        await cluster.wait_for_engines(client=rc)
        assert len(rc.ids) == 1
        rc.close()
        await cluster.stop_cluster()
        assert not connection_files(tmp_path, "aio2")[0].exists()

    asyncio.run(main())


def test_sync_methods_work_while_an_event_loop_runs(tmp_path):
    """As in Jupyter: `_sync` calls from inside a running loop go to a helper thread."""

    async def main():
        cluster = Cluster(n=1, profile_dir=str(tmp_path), cluster_id="loop", controller_args=FAST)
        rc = cluster.start_and_connect_sync()
        try:
            assert len(rc.ids) == 1
        finally:
            rc.close()
            cluster.stop_cluster_sync()
        assert cluster.controller is None

    asyncio.run(main())


def test_start_and_connect_waits_for_the_engines_it_started(tmp_path):
    cluster = Cluster(n=2, profile_dir=str(tmp_path), cluster_id="sac", controller_args=FAST)
    rc = cluster.start_and_connect_sync()
    try:
        assert len(rc.ids) == 2
    finally:
        rc.close()
        cluster.stop_cluster_sync()


def test_engines_that_die_at_startup_fail_fast_with_their_output(tmp_path):
    cluster = Cluster(
        n=1,
        profile_dir=str(tmp_path),
        cluster_id="bad",
        engine_args=["--no-such-flag"],
        engine_timeout=60,
    )
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="no-such-flag"):
        cluster.start_and_connect_sync()
    assert time.monotonic() - started < 30
    # A failed start leaves nothing running.
    assert cluster.controller is None and cluster.engines == {}
    assert not connection_files(tmp_path, "bad")[0].exists()


def test_waiting_for_more_engines_than_come_times_out_naming_the_count(tmp_path):
    cluster = Cluster(n=1, profile_dir=str(tmp_path), cluster_id="few", controller_args=FAST)
    try:
        cluster.start_cluster_sync()
        with pytest.raises(TimeoutError, match=r"of 2 engines registered after 1 s"):
            cluster.wait_for_engines_sync(2, timeout=1)
    finally:
        cluster.stop_cluster_sync()


def test_a_collected_cluster_stops_its_engines_and_controller(tmp_path):
    cluster = Cluster(n=1, profile_dir=str(tmp_path), cluster_id="gc", controller_args=FAST)
    cluster.start_cluster_sync()
    pids = cluster.engine_set.pids
    client_file = cluster.controller.client_file
    assert all(map(alive, pids)) and client_file.exists()
    del cluster
    gc.collect()
    assert not any(map(alive, pids))
    assert not client_file.exists()


def test_engines_are_stopped_at_interpreter_exit(tmp_path):
    script = textwrap.dedent(
        f"""
        from ipp_rs.cluster import Cluster, ClusterManager
        cluster = Cluster(n=2, profile_dir={str(tmp_path)!r}, cluster_id="exit")
        cluster.start_cluster_sync()
        print(*cluster.engine_set.pids, flush=True)
        # no stop: the atexit finalizer must do it
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2
    assert "Stopping cluster" in done.stderr
    # The engines were reaped by the exiting process: gone, not zombies of it.
    wait_until(lambda: not any(map(alive, pids)), timeout=10, what="engines to exit")
    assert not connection_files(tmp_path, "exit")[0].exists()


def test_unsupported_launchers_and_options_say_what_exists(tmp_path):
    with pytest.raises(NotImplementedError, match="only engine launcher is 'local'"):
        Cluster(engines="mpi", profile_dir=str(tmp_path))
    with pytest.raises(NotImplementedError, match="in this process"):
        Cluster(controller="ssh", profile_dir=str(tmp_path))
    with pytest.raises(NotImplementedError, match="shutdown_atexit"):
        Cluster(shutdown_atexit=False, profile_dir=str(tmp_path))
    with pytest.raises(ValueError, match="supported flags"):
        Cluster(controller_args=["--reuse"], profile_dir=str(tmp_path))
    with pytest.raises(NotImplementedError):
        Cluster.from_file(profile_dir=str(tmp_path))
    Cluster(engines="local", controller="local", profile_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="start_controller"):
        Cluster(profile_dir=str(tmp_path)).start_engines_sync(1)


def test_profile_dir_defaults_to_the_named_profile_under_ipythondir(tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    cluster = Cluster(profile="work")
    assert cluster.profile_dir == str(tmp_path / "profile_work")
    assert (tmp_path / "profile_work" / "security").is_dir()
    assert "profile='work'" in repr(cluster)
    # ipyparallel's cluster id format: <unix time>-<4 characters>.
    stamp, _, suffix = cluster.cluster_id.partition("-")
    assert stamp.isdigit() and len(suffix) == 4


def test_native_controller_stores_and_lifecycle(tmp_path):
    controller = Controller(profile_dir=str(tmp_path), db="sqlite", cluster_id="db")
    assert "not started" in repr(controller)
    with pytest.raises(RuntimeError, match="not started"):
        controller.client_info
    with controller:
        assert controller.running
        assert (tmp_path / "tasks.db").exists()
        info = controller.client_info
        assert info["interface"] == "tcp://127.0.0.1" and info["registration"] > 0
        assert controller.engine_info["key"] == info["key"]
    assert not controller.running
    controller.stop()  # idempotent
    with pytest.raises(RuntimeError, match="stopped"):
        controller.start()
    # No profile_dir: no files; fixed key and location are used as given.
    with Controller(db="nodb", key="k", location="here") as bare:
        assert bare.client_file is None
        assert bare.client_info["key"] == "k" and bare.client_info["location"] == "here"
    with pytest.raises(ValueError, match="dictdb"):
        Controller(db="redis")
    with pytest.raises(ValueError, match="scheme"):
        Controller(scheme="fastest")


def test_a_client_shutdown_stops_the_native_controller(tmp_path):
    cluster = Cluster(n=1, profile_dir=str(tmp_path), cluster_id="down", controller_args=FAST)
    rc = cluster.start_and_connect_sync()
    try:
        pids = cluster.engine_set.pids
        rc.shutdown(hub=True, block=True)
        wait_until(lambda: not cluster.controller.running, what="the controller to stop")
        wait_until(lambda: not any(p.poll() is None for p in cluster.engine_set.processes),
                   what="the engines to exit")
    finally:
        rc.close()
        cluster.stop_cluster_sync()
    assert not any(map(alive, pids))


def test_cluster_manager_tracks_the_clusters_of_this_process(tmp_path):
    manager = ClusterManager()
    key, cluster = manager.new_cluster(profile_dir=str(tmp_path), cluster_id="m")
    assert key.endswith(":m") and manager.get_cluster(key) is cluster
    with pytest.raises(KeyError, match="already exists"):
        manager.new_cluster(profile_dir=str(tmp_path), cluster_id="m")
    manager.remove_cluster(key)
    assert manager.clusters == {}
    with pytest.raises(NotImplementedError, match="in-process"):
        manager.load_clusters()


def test_zero_engines_starts_only_the_controller(tmp_path):
    cluster = Cluster(n=0, profile_dir=str(tmp_path), cluster_id="zero")
    try:
        cluster.start_cluster_sync()
        assert cluster.controller.running and cluster.engine_set.pids == []
        # An engine started by hand (as on another machine) joins through the file.
        engine = subprocess.Popen(
            [sys.executable, "-m", "ipp_rs.engine", "--file", str(cluster.controller.engine_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            rc = cluster.connect_client_sync()
            try:
                cluster.wait_for_engines_sync(1, client=rc)
                assert len(rc.ids) == 1
            finally:
                rc.close()
        finally:
            engine.terminate()
            engine.wait(10)
    finally:
        cluster.stop_cluster_sync()
