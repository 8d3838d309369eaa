"""The real ipyparallel 9.2.0 client and real ipengines against the controller under test.

One cluster (controller + 2 engines) serves the whole module; each test leaves it usable.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

import ipyparallel as ipp
import pytest
from ipyparallel import error

TIMEOUT = 60

# Functions sent to engines are marked interactive so they are shipped by value (the
# engines cannot import this test module).


@ipp.interactive
def double(x):
    return 2 * x


@ipp.interactive
def fail_with_zero_division():
    return 1 / 0


def test_ids_lists_both_engines(rc):
    assert sorted(rc.ids) == [0, 1]
    assert len(rc) == 2


def test_wait_for_engines_returns_once_engines_are_registered(new_client):
    rc2 = new_client()
    rc2.wait_for_engines(2, timeout=TIMEOUT)
    assert sorted(rc2.ids) == [0, 1]


def test_direct_view_apply_sync_runs_on_every_engine(rc):
    assert rc[:].apply_sync(double, 21) == [42, 42]


def test_direct_view_apply_async_returns_results_per_engine(rc):
    ar = rc[:].apply_async(os.getpid)
    pids = ar.get(timeout=TIMEOUT)
    assert len(pids) == 2 and len(set(pids)) == 2
    assert sorted(ar.engine_id) == [0, 1]


def test_execute_delivers_engine_stdout_in_the_async_result(rc):
    ar = rc[:].execute("print('hello from', 6 * 7)", silent=False, block=False)
    ar.get(timeout=TIMEOUT)
    ar.wait_for_output(timeout=TIMEOUT)
    assert ar.stdout == ["hello from 42\n"] * 2


def test_push_then_pull_round_trips_values(rc):
    dv = rc[:]
    dv.push({"pushed_a": 1, "pushed_b": "text", "pushed_c": b"\x00" * 2000}, block=True)
    assert dv.pull(("pushed_a", "pushed_b"), block=True) == [[1, "text"], [1, "text"]]
    assert dv.pull("pushed_c", block=True) == [b"\x00" * 2000] * 2


def test_scatter_then_gather_restores_the_sequence(rc):
    dv = rc[:]
    dv.scatter("part", list(range(17)), block=True)
    parts = dv.pull("part", block=True)
    assert sorted(len(p) for p in parts) == [8, 9]
    assert dv.gather("part", block=True) == list(range(17))


def test_direct_view_map_sync_keeps_order(rc):
    assert rc[:].map_sync(double, range(25)) == [2 * x for x in range(25)]


def test_dictionary_access_sets_and_gets_a_name_on_every_engine(rc):
    dv = rc[:]
    dv["dict_a"] = 5
    assert dv["dict_a"] == [5, 5]
    assert rc[0]["dict_a"] == 5


def test_load_balanced_apply_returns_the_result(rc):
    lb = rc.load_balanced_view()
    assert lb.apply_sync(double, 21) == 42
    ar = lb.apply_async(double, 4)
    assert ar.get(timeout=TIMEOUT) == 8
    assert ar.engine_id in (0, 1)


@pytest.mark.parametrize("chunksize", [1, 4])
def test_load_balanced_map_with_chunksize(rc, chunksize):
    lb = rc.load_balanced_view()
    ar = lb.map(double, range(30), chunksize=chunksize)
    assert ar.get(timeout=TIMEOUT) == [2 * x for x in range(30)]
    assert len(ar.msg_ids) == -(-30 // chunksize)


def test_broadcast_view_apply_reaches_every_engine(rc):
    bv = rc.broadcast_view()
    pids = bv.apply_sync(os.getpid)
    assert len(pids) == 2 and len(set(pids)) == 2
    assert bv.apply_sync(double, 5) == [10, 10]


def test_coalescing_broadcast_view_apply_reaches_every_engine(rc):
    bv = rc.broadcast_view(is_coalescing=True)
    pids = bv.apply_sync(os.getpid)
    assert len(pids) == 2 and len(set(pids)) == 2
    assert bv.apply_sync(double, 5) == [10, 10]


def test_remote_zero_division_raises_remote_error(rc):
    with pytest.raises(error.RemoteError) as info:
        rc[0].apply_sync(fail_with_zero_division)
    assert info.value.ename == "ZeroDivisionError"
    with pytest.raises(error.RemoteError) as info:
        rc.load_balanced_view().apply_sync(fail_with_zero_division)
    assert info.value.ename == "ZeroDivisionError"


def test_failure_on_several_engines_raises_composite_error(rc):
    with pytest.raises(error.CompositeError) as info:
        rc[:].apply_sync(fail_with_zero_division)
    enames = [e[0] for e in info.value.elist]
    assert enames == ["ZeroDivisionError", "ZeroDivisionError"]


def test_metadata_timestamps_are_present_and_ordered(rc):
    for view in (rc[0], rc.load_balanced_view()):
        ar = view.apply_async(time.sleep, 0.05)
        ar.get(timeout=TIMEOUT)
        md = ar.metadata
        for key in ("submitted", "started", "completed"):
            assert isinstance(md[key], datetime), (key, md[key])
            assert md[key].tzinfo is not None, key
        assert md["submitted"] <= md["started"] <= md["completed"]
        assert md["status"] == "ok"
        assert md["engine_id"] in (0, 1)


def test_queue_status_reports_every_engine_and_unassigned(rc):
    rc[:].apply_sync(double, 1)
    qs = rc.queue_status()
    assert set(qs) == {0, 1, "unassigned"}
    assert isinstance(qs["unassigned"], int)
    for eid in (0, 1):
        assert set(qs[eid]) == {"queue", "completed", "tasks"}
        assert qs[eid]["queue"] == 0 and qs[eid]["tasks"] == 0
        assert qs[eid]["completed"] >= 1
    verbose = rc.queue_status(targets=[0], verbose=True)
    assert set(verbose) == {0, "unassigned"}
    assert isinstance(verbose[0]["completed"], list)
    assert isinstance(verbose["unassigned"], list)
    assert set(rc.queue_status(targets=1)) == {"queue", "completed", "tasks"}


def test_db_query_with_in_and_date_comparison_and_keys(rc):
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    ar = rc.load_balanced_view().map(double, range(4), chunksize=1)
    ar.get(timeout=TIMEOUT)
    ids = ar.msg_ids
    records = rc.db_query({"msg_id": {"$in": ids}}, keys=["completed", "engine_uuid"])
    assert sorted(r["msg_id"] for r in records) == sorted(ids)
    for r in records:
        assert set(r) == {"msg_id", "completed", "engine_uuid"}
        assert isinstance(r["completed"], datetime)
        assert r["engine_uuid"] in rc._engines.values()
    recent = rc.db_query({"submitted": {"$gte": before}}, keys=["submitted"])
    assert set(ids) <= {r["msg_id"] for r in recent}
    for r in recent:
        assert r["submitted"] >= before
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    assert rc.db_query({"submitted": {"$gte": future}}, keys=["submitted"]) == []
    none = rc.db_query({"msg_id": {"$in": ["no-such-msg-id"]}})
    assert none == []


def test_result_status_lists_completed_messages(rc):
    ar = rc[:].apply_async(double, 3)
    ar.get(timeout=TIMEOUT)
    status = rc.result_status(ar.msg_ids)
    assert sorted(status["completed"]) == sorted(ar.msg_ids)
    assert status["pending"] == []
    full = rc.result_status(ar.msg_ids, status_only=False)
    assert sorted(full["completed"]) == sorted(ar.msg_ids)


def test_hub_history_contains_submitted_tasks_in_order(rc):
    first = rc[0].apply_async(double, 1)
    first.get(timeout=TIMEOUT)
    second = rc.load_balanced_view().apply_async(double, 2)
    second.get(timeout=TIMEOUT)
    history = rc.hub_history()
    assert first.msg_ids[0] in history and second.msg_ids[0] in history
    assert history.index(first.msg_ids[0]) < history.index(second.msg_ids[0])


def test_second_client_gets_a_result_from_the_hub(rc, new_client):
    ar = rc.load_balanced_view().apply_async(double, 50)
    assert ar.get(timeout=TIMEOUT) == 100
    direct = rc[1].apply_async(double, 60)
    assert direct.get(timeout=TIMEOUT) == 120
    rc2 = new_client()
    assert rc2.get_result(ar.msg_ids[0]).get(timeout=TIMEOUT) == 100
    assert rc2.get_result(direct.msg_ids[0]).get(timeout=TIMEOUT) == 120


def test_purge_results_removes_records_from_the_hub(rc):
    ar = rc[:].apply_async(double, 7)
    ar.get(timeout=TIMEOUT)
    ids = ar.msg_ids
    assert len(rc.db_query({"msg_id": {"$in": ids}}, keys=["msg_id"])) == 2
    rc.purge_results(jobs=ids)
    assert rc.db_query({"msg_id": {"$in": ids}}, keys=["msg_id"]) == []
    history = rc.hub_history()
    assert not set(ids) & set(history)


def test_resubmit_runs_a_task_again(rc):
    ar = rc.load_balanced_view().apply_async(double, 11)
    assert ar.get(timeout=TIMEOUT) == 22
    again = rc.resubmit(ar.msg_ids)
    assert again.get(timeout=TIMEOUT) == [22]
    assert set(again.msg_ids).isdisjoint(ar.msg_ids)
    record = rc.db_query({"msg_id": ar.msg_ids[0]}, keys=["resubmitted"])[0]
    assert record["resubmitted"] == again.msg_ids[0]


def test_abort_of_queued_tasks_raises_task_aborted(rc):
    view = rc[0]
    sleeper = view.apply_async(time.sleep, 2)
    queued = [view.apply_async(double, i) for i in range(3)]
    view.abort(queued)
    sleeper.get(timeout=TIMEOUT)
    for ar in queued:
        with pytest.raises(error.TaskAborted):
            ar.get(timeout=TIMEOUT)
    assert view.apply_sync(double, 1) == 2
