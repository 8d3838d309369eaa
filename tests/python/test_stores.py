"""The task database behind the real ipyparallel client: `--sqlitedb` and `--mongodb`.

db_query (operators, keys, dates), hub_history, result_status, get_result of another
client's task, purge_results and resubmit against each store, and a controller restart on
the same SQLite file. MongoDB is nx-27017 (a MongoDB-wire server from PyPI, installed by
scripts/setup-test-env.sh), started here on 127.0.0.1 and stopped by its pid.

These test our controller's stores; the reference controller's are not under test.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import ipyparallel as ipp
import pytest

from ippcluster import Cluster, controller_under_test, log_tail, venv_tool

if controller_under_test() == "reference":
    pytest.skip(
        "store tests exercise our controller's --sqlitedb/--mongodb stores",
        allow_module_level=True,
    )

TIMEOUT = 60


@ipp.interactive
def triple(x):
    return 3 * x


@ipp.interactive
def shout(text):
    print(text)
    return text.upper()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MongoServer:
    """nx-27017 on a free loopback port, in memory."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.log = tmp_path / "nx-27017.log"
        exe = os.environ.get("IPP_TEST_NX27017") or venv_tool("nx-27017")
        self._log_handle = open(self.log, "wb")
        self.proc = subprocess.Popen(
            # nx-27017 refuses to start while another instance's pid file (by default the
            # machine-wide /tmp/nx_27017.pid) names a live process: give this one its own.
            [exe, "--db", "memory", "--host", "127.0.0.1", "-p", str(self.port),
             "--pid-file", str(tmp_path / "nx-27017.pid"),
             "--log-file", str(tmp_path / "nx-27017.server.log")],
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"nx-27017 exited early; log:\n{log_tail(self.log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nx-27017 did not listen in 60 s; log:\n{log_tail(self.log)}")
            time.sleep(0.05)
        self.url = f"mongodb://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log_handle.close()


@pytest.fixture(scope="module")
def mongo_server(tmp_path_factory):
    server = MongoServer(tmp_path_factory.mktemp("nx"))
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["sqlite", "mongodb"])
def store_cluster(request):
    """A controller recording in the given store, with two engines."""
    if request.param == "sqlite":
        cluster = Cluster(extra_args=("--sqlitedb",))
    else:
        server = request.getfixturevalue("mongo_server")
        cluster = Cluster(extra_args=("--mongodb",))
        cluster.profile_dir.mkdir(parents=True, exist_ok=True)
        (cluster.profile_dir / "ipcontroller.toml").write_text(
            f'[store]\ndb = "mongodb"\nurl = "{server.url}"\n'
            f'database = "ipp-pytest-{uuid.uuid4().hex[:8]}"\n'
        )
    cluster.start(engines=2)
    cluster.store = request.param
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def store_rc(store_cluster):
    client = store_cluster.client()
    client.wait_for_engines(2, timeout=TIMEOUT)
    return client


def run_tasks(rc, count=6):
    view = rc.load_balanced_view()
    ars = []
    for i in range(count):
        ars.append(view.apply_async(triple, i))
        time.sleep(0.01)  # distinct submission dates, to order on
    for ar in ars:
        ar.get(timeout=TIMEOUT)
    return [ar.msg_ids[0] for ar in ars]


def test_the_controller_uses_the_requested_store(store_cluster, store_rc):
    log = store_cluster.controller_log.read_text(errors="replace")
    assert f"{store_cluster.store} task database" in log or store_cluster.store in log
    if store_cluster.store == "sqlite":
        assert (store_cluster.profile_dir / "tasks.db").exists()


def test_db_query_operators_keys_and_dates(store_rc):
    rc = store_rc
    ids = run_tasks(rc)
    keys = ["msg_id", "submitted", "completed", "engine_uuid", "queue", "result_content"]
    records = rc.db_query({"msg_id": {"$in": ids}}, keys=keys)
    assert sorted(r["msg_id"] for r in records) == sorted(ids)
    by_id = {r["msg_id"]: r for r in records}
    for r in records:
        assert set(r) == set(keys)
        assert isinstance(r["submitted"], datetime) and isinstance(r["completed"], datetime)
        assert r["completed"] >= r["submitted"]
        assert r["queue"] == "task"
        assert r["result_content"]["status"] == "ok"
        assert r["engine_uuid"] in rc._engines.values()

    # Submission order, and each ordering operator around a pivot date.
    ordered = sorted(ids, key=lambda i: by_id[i]["submitted"])
    assert ordered == ids
    pivot = by_id[ids[2]]["submitted"]
    mine = {"$in": ids}
    cases = {
        "$lt": ids[:2],
        "$lte": ids[:3],
        "$gt": ids[3:],
        "$gte": ids[2:],
        "$eq": ids[2:3],
        "$ne": ids[:2] + ids[3:],
    }
    for op, expected in cases.items():
        found = rc.db_query({"msg_id": mine, "submitted": {op: pivot}}, keys=["submitted"])
        assert sorted(r["msg_id"] for r in found) == sorted(expected), op
    found = rc.db_query({"msg_id": mine, "submitted": pivot}, keys=["submitted"])
    assert [r["msg_id"] for r in found] == ids[2:3]
    window = rc.db_query(
        {"msg_id": mine, "submitted": {"$gt": by_id[ids[0]]["submitted"], "$lt": by_id[ids[5]]["submitted"]}},
        keys=["submitted"],
    )
    assert sorted(r["msg_id"] for r in window) == sorted(ids[1:5])

    # Strings, $nin, null.
    engine = by_id[ids[0]]["engine_uuid"]
    on_engine = rc.db_query({"msg_id": mine, "engine_uuid": engine}, keys=["engine_uuid"])
    assert sorted(r["msg_id"] for r in on_engine) == sorted(i for i in ids if by_id[i]["engine_uuid"] == engine)
    elsewhere = rc.db_query({"msg_id": mine, "engine_uuid": {"$ne": engine}}, keys=["engine_uuid"])
    assert sorted(r["msg_id"] for r in elsewhere) == sorted(i for i in ids if by_id[i]["engine_uuid"] != engine)
    nin = rc.db_query({"msg_id": {"$in": ids, "$nin": ids[:4]}}, keys=["msg_id"])
    assert sorted(r["msg_id"] for r in nin) == sorted(ids[4:])
    done = rc.db_query({"msg_id": mine, "completed": {"$ne": None}}, keys=["completed"])
    assert len(done) == len(ids)
    assert rc.db_query({"msg_id": mine, "completed": None}, keys=["completed"]) == []
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    assert rc.db_query({"submitted": {"$gte": future}}, keys=["submitted"]) == []

    # Buffers come back as frames.
    with_buffers = rc.db_query({"msg_id": ids[0]}, keys=["buffers", "result_buffers"])
    assert len(with_buffers) == 1
    assert with_buffers[0]["buffers"] and with_buffers[0]["result_buffers"]


def test_hub_history_is_in_submission_order(store_rc):
    ids = run_tasks(store_rc, 3)
    history = store_rc.hub_history()
    positions = [history.index(i) for i in ids]
    assert positions == sorted(positions)


def test_result_status_and_get_result_from_another_client(store_cluster, store_rc):
    ar = store_rc.load_balanced_view().apply_async(shout, "from the first client")
    assert ar.get(timeout=TIMEOUT) == "FROM THE FIRST CLIENT"
    other = store_cluster.client()
    status = other.result_status(ar.msg_ids)
    assert status["completed"] == ar.msg_ids and status["pending"] == []
    full = other.result_status(ar.msg_ids, status_only=False)
    assert full["completed"] == ar.msg_ids
    again = other.get_result(ar.msg_ids[0])
    assert again.get(timeout=TIMEOUT) == "FROM THE FIRST CLIENT"
    assert "from the first client" in again.stdout
    record = other.db_query({"msg_id": ar.msg_ids[0]}, keys=["stdout", "client_uuid"])[0]
    assert "from the first client" in record["stdout"]
    assert record["client_uuid"] == store_rc.session.session


def test_resubmit_runs_the_task_again(store_rc):
    ar = store_rc.load_balanced_view().apply_async(triple, 14)
    assert ar.get(timeout=TIMEOUT) == 42
    again = store_rc.resubmit(ar.msg_ids)
    assert again.get(timeout=TIMEOUT) == [42]
    assert again.msg_ids != ar.msg_ids
    old = store_rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["resubmitted"])[0]
    assert old["resubmitted"] == again.msg_ids[0]


def test_purge_results_removes_records(store_cluster, store_rc):
    rc = store_rc
    ids = run_tasks(rc, 3)
    rc.purge_results(ids[0])
    assert [r["msg_id"] for r in rc.db_query({"msg_id": {"$in": ids}}, keys=["msg_id"])] == ids[1:]
    # Another client (this one has the result cached) cannot fetch it any more (the Hub
    # still lists the id as completed, as ipyparallel's does, but has no record to send).
    with pytest.raises(ipp.error.RemoteError):
        store_cluster.client().result_status([ids[0]], status_only=False)
    rc.purge_results("all")
    assert rc.db_query({"msg_id": {"$in": ids}}, keys=["msg_id"]) == []
    assert rc.db_query({"completed": {"$ne": None}}, keys=["msg_id"]) == []
    assert all(i not in rc.hub_history() for i in ids)


def test_a_restarted_controller_serves_the_old_sqlite_records():
    cluster = Cluster(extra_args=("--sqlitedb",))
    try:
        cluster.start(engines=1)
        rc = cluster.client()
        rc.wait_for_engines(1, timeout=TIMEOUT)
        ars = [rc.load_balanced_view().apply_async(shout, f"task {i}") for i in range(3)]
        values = [ar.get(timeout=TIMEOUT) for ar in ars]
        ids = [ar.msg_ids[0] for ar in ars]

        # Stop the controller (and its clients and engine), keep the profile directory.
        for client in cluster.clients:
            client.close(linger=0)
        cluster.clients.clear()
        cluster.remember_children()
        cluster._terminate(cluster.engines, [], 10)
        cluster._terminate([cluster.controller], [], 15)
        first_log = cluster.controller_log.read_text(errors="replace")
        assert (cluster.profile_dir / "tasks.db").exists()

        # A new controller on the same profile (and so the same tasks.db).
        cluster.extra_args = ("--sqlitedb", "--restore")
        cluster.controller_log = cluster.tmp / "controller-restarted.log"
        cluster.start_controller()
        cluster.start_engine()
        rc = cluster.client()
        rc.wait_for_engines(1, timeout=TIMEOUT)

        found = rc.db_query({"msg_id": {"$in": ids}}, keys=["completed", "stdout"])
        assert sorted(r["msg_id"] for r in found) == sorted(ids), first_log[-2000:]
        assert all(isinstance(r["completed"], datetime) for r in found)
        assert all(i in rc.hub_history() for i in ids)
        status = rc.result_status(ids)
        assert sorted(status["completed"]) == sorted(ids) and status["pending"] == []
        assert rc.get_result(ids[1]).get(timeout=TIMEOUT) == values[1]
        again = rc.resubmit(ids[2])
        assert again.get(timeout=TIMEOUT) == [values[2]]
    finally:
        cluster.stop()


def check_a_stalled_store_degrades_recording(cluster, stall, resume):
    """Runs tasks while `stall()` holds the store up, then `resume()`s it: tasks keep
    running, queries say why they fail, and once the store answers again the Hub finds out
    by itself and records again. The store's queue must be tiny, so that it fills at once."""
    rc = cluster.client()
    rc.wait_for_engines(1, timeout=TIMEOUT)
    view = rc.load_balanced_view()
    before = view.apply_async(triple, 1)
    assert before.get(timeout=TIMEOUT) == 3

    stall()
    try:
        started = time.monotonic()
        ars = [view.apply_async(triple, i) for i in range(40)]
        assert [ar.get(timeout=TIMEOUT) for ar in ars] == [3 * i for i in range(40)]
        # The Hub waited for the store about once (a second), not per task.
        assert time.monotonic() - started < 20
        with pytest.raises(Exception) as refused:
            rc.db_query({"msg_id": before.msg_ids[0]}, keys=["msg_id"])
        assert "task database" in str(refused.value), refused.value
    finally:
        resume()

    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            found = rc.db_query({"msg_id": before.msg_ids[0]}, keys=["msg_id"])
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert [r["msg_id"] for r in found] == before.msg_ids
    after = view.apply_async(triple, 2)
    assert after.get(timeout=TIMEOUT) == 6
    found = rc.db_query({"msg_id": after.msg_ids[0]}, keys=["msg_id"])
    assert [r["msg_id"] for r in found] == after.msg_ids
    log = cluster.controller_log.read_text(errors="replace")
    assert "not keeping up" in log and "caught up" in log, log_tail(cluster.controller_log)


def test_a_locked_sqlite_file_drops_records_and_tasks_still_run():
    """Another process holds the SQLite file's write lock: the writer cannot commit."""
    cluster = Cluster(extra_args=("--sqlitedb",))
    cluster.profile_dir.mkdir(parents=True, exist_ok=True)
    # A queue of two writes, one per transaction: a blocked writer fills it at once.
    (cluster.profile_dir / "ipcontroller.toml").write_text(
        '[store]\ndb = "sqlite"\nbatch_size = 1\nqueue_capacity = 2\n'
    )
    lock = None

    def stall():
        nonlocal lock
        lock = sqlite3.connect(cluster.profile_dir / "tasks.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")

    def resume():
        lock.execute("ROLLBACK")
        lock.close()

    try:
        cluster.start(engines=1)
        check_a_stalled_store_degrades_recording(cluster, stall, resume)
    finally:
        cluster.stop()


def test_a_hung_mongodb_server_drops_records_and_tasks_still_run(tmp_path):
    """The MongoDB-wire server stops answering (SIGSTOP, as a hung server would)."""
    server = MongoServer(tmp_path)
    cluster = Cluster(extra_args=("--mongodb",))
    cluster.profile_dir.mkdir(parents=True, exist_ok=True)
    (cluster.profile_dir / "ipcontroller.toml").write_text(
        f'[store]\ndb = "mongodb"\nurl = "{server.url}"\nqueue_capacity = 2\n'
        f'database = "ipp-pytest-{uuid.uuid4().hex[:8]}"\n'
    )
    try:
        cluster.start(engines=1)
        check_a_stalled_store_degrades_recording(
            cluster,
            lambda: os.kill(server.proc.pid, signal.SIGSTOP),
            lambda: os.kill(server.proc.pid, signal.SIGCONT),
        )
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        cluster.stop()
        server.stop()
