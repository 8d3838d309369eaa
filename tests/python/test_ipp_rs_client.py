"""The ipp_rs client layer (``ipp_rs.Client``, views, AsyncResult, remote functions,
executor, joblib backend) against the controller under test (``IPP_TEST_CONTROLLER``), with
ipp_rs engines (``python -m ipp_rs.engine``) and with ipyparallel's ``ipengine``.

These are the client's own behaviours, beyond the shared-script interop matrix
(test_matrix.py): the Future side of AsyncResult, lazy results and metadata, what the
native client forgets, connection-file discovery, errors for what is not built.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import os
import subprocess
import sys
import time

import pytest

from blockipp import blocking_env
from ippcluster import client_unavailable, start_cluster

reason = client_unavailable("ipp_rs")
if reason:
    pytest.fail(reason, pytrace=False)

import ipp_rs as ipp  # noqa: E402
from ipp_rs import error  # noqa: E402

TIMEOUT = 60
# Functions shipped to engines are interactive (module __main__): sent by value.
rf = ipp.interactive


@pytest.fixture(scope="module", params=["ipp_rs", "ipengine"], ids=lambda k: f"{k}-engines")
def cluster(request):
    c = start_cluster(None, request.param, engines=2)
    c.engine_kind_name = request.param
    yield c
    c.stop()


@pytest.fixture(scope="module")
def rc(cluster):
    client = cluster.client_from("ipp_rs")
    client.wait_for_engines(2, timeout=TIMEOUT)
    return client


@pytest.fixture
def dview(rc):
    view = rc[:]
    view.block = True
    return view


@pytest.fixture
def lview(rc):
    return rc.load_balanced_view()


def _wait_until(condition, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


# -- connecting ----------------------------------------------------------------------------


def test_client_connects_by_file_by_dict_and_by_profile_dir(cluster, rc):
    info = json.loads(cluster.client_file.read_text())
    with ipp.Client(info) as by_dict:
        assert by_dict.ids == rc.ids
    with ipp.Client(profile_dir=str(cluster.profile_dir)) as by_profile:
        assert by_profile.ids == rc.ids
    with ipp.Client(ipython_dir=str(cluster.ipython_dir), profile="default") as by_name:
        assert by_name.ids == rc.ids
    assert by_dict._closed and by_profile._closed


def test_client_finds_the_cluster_id_file_of_a_profile(cluster, tmp_path):
    security = tmp_path / "profile_default" / "security"
    security.mkdir(parents=True)
    (security / "ipcontroller-mine-client.json").write_text(cluster.client_file.read_text())
    with ipp.Client(ipython_dir=str(tmp_path), cluster_id="mine") as client:
        assert len(client.ids) == 2


def test_missing_connection_file_and_ssh_are_clear_errors(tmp_path):
    with pytest.raises(OSError, match="not found"):
        ipp.Client(str(tmp_path / "nope.json"))
    with pytest.raises(OSError, match="no Controller could be found"):
        ipp.Client(profile_dir=str(tmp_path / "missing"), timeout=0)
    with pytest.raises(NotImplementedError, match="SSH"):
        ipp.Client(str(tmp_path / "nope.json"), sshserver="me@host")
    with pytest.raises(ValueError, match="url-files must be used"):
        ipp.Client("tcp://127.0.0.1:5555")


def test_unbuilt_features_raise_not_implemented(rc):
    with pytest.raises(NotImplementedError, match="dask"):
        rc.become_dask()
    with pytest.raises(NotImplementedError):
        ipp.bind_kernel()
    with pytest.raises(NotImplementedError, match="restart"):
        rc.shutdown(targets=[], restart=True)


def test_ids_indexing_and_views(rc):
    ids = rc.ids
    assert len(rc) == len(ids) == 2
    assert rc[0].targets == ids[0]
    assert rc[:].targets == ids
    assert rc[-1].targets == ids[-1]
    assert rc.direct_view().targets == "all"
    assert [v.targets for v in rc] == ids
    with pytest.raises(IndexError):
        rc[99]
    with pytest.raises(TypeError):
        rc["x"]


# -- apply and results -------------------------------------------------------------------


def test_apply_returns_a_list_for_views_and_a_value_for_one_engine(rc, dview):
    assert dview.apply(rf(lambda x: x * 2), 21) == [42, 42]
    assert rc[0].apply_sync(rf(lambda: "one")) == "one"
    ar = rc[1].apply_async(rf(lambda a, b=1: a + b), 1, b=2)
    assert isinstance(ar, ipp.AsyncResult)
    assert ar.get(timeout=TIMEOUT) == 3
    assert ar.successful() and ar.ready()


def test_remote_errors_are_remote_and_composite_errors(rc, dview):
    ar = rc[0].apply_async(rf(lambda: 1 / 0))
    with pytest.raises(error.RemoteError) as info:
        ar.get(TIMEOUT)
    assert info.value.ename == "ZeroDivisionError"
    assert info.value.engine_info["engine_id"] == rc.ids[0]
    assert not ar.successful()
    with pytest.raises(error.CompositeError) as info:
        dview.apply(rf(lambda: 1 / 0))
    assert len(info.value.elist) == 2
    mixed = dview.apply_async(rf(lambda x: 1 / x), 0)
    got = mixed.get(TIMEOUT, return_exceptions=True)
    assert all(isinstance(e, error.RemoteError) for e in got)


def test_get_times_out_and_wait_reports_readiness(lview):
    ar = lview.apply_async(rf(lambda: __import__("time").sleep(0.5)))
    with pytest.raises(TimeoutError):
        ar.get(timeout=0)
    assert ar.wait(0) is False or ar.ready()
    assert ar.wait(TIMEOUT) is True
    assert ar.get() is None


def test_async_result_is_a_concurrent_future(lview):
    ars = [lview.apply_async(rf(lambda i: i * i), i) for i in range(6)]
    assert all(isinstance(ar, concurrent.futures.Future) for ar in ars)
    done = sorted(f.result() for f in concurrent.futures.as_completed(ars, timeout=TIMEOUT))
    assert done == [i * i for i in range(6)]
    ar = lview.apply_async(rf(lambda: 7))
    called = concurrent.futures.Future()
    ar.add_done_callback(lambda f: called.set_result(f.result()))
    assert called.result(TIMEOUT) == 7
    waited, pending = concurrent.futures.wait(
        [lview.apply_async(rf(lambda: 1)) for _ in range(3)], timeout=TIMEOUT
    )
    assert len(waited) == 3 and not pending
    slow = lview.apply_async(rf(lambda: __import__("time").sleep(0.3)))
    with pytest.raises(concurrent.futures.TimeoutError):
        slow.result(timeout=0.01)
    assert slow.result(timeout=TIMEOUT) is None and slow.done()


def test_async_result_can_be_awaited(lview):
    async def main():
        first = await lview.apply_async(rf(lambda: 5))
        both = await asyncio.gather(
            asyncio.wrap_future(lview.apply_async(rf(lambda: 6))),
            lview.apply_async(rf(lambda: 7)),
        )
        return first, both

    assert asyncio.run(main()) == (5, [6, 7])


def test_metadata_describes_each_execution(rc, dview):
    ar = dview.apply_async(rf(lambda: print("out") or __import__("sys").stderr.write("err")))
    ar.get(TIMEOUT)
    ar.wait_for_output(TIMEOUT)
    assert ar.stdout == ["out\n", "out\n"]
    assert ar.stderr == ["err", "err"]
    assert ar["engine_id"] == rc.ids
    md = ar.metadata[0]
    assert isinstance(md, ipp.client.Metadata)
    assert md.status == "ok" and md.engine_uuid
    assert md.submitted <= md.started <= md.completed <= md.received
    assert ar.wall_time > 0 and ar.serial_time > 0
    assert ar.elapsed >= 0
    assert ar.get_dict() == dict.fromkeys(rc.ids, 3)
    assert len(ar) == 2 and ar.progress == 2
    with pytest.raises(AttributeError):
        ar.no_such_metadata_key


def test_execute_gives_execute_replies_and_outputs(rc, dview):
    ar = dview.execute("x = 6 * 7\nprint('ran')\nx", silent=False)
    reply = ar.get()[0]
    assert reply.execution_count >= 1
    assert reply.data["text/plain"] == "42"
    assert "42" in repr(reply)
    assert ar.stdout == ["ran\n", "ran\n"]
    assert ar.execute_result[0]["data"]["text/plain"] == "42"
    buf = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(buf):
        ar.display_outputs()
    assert "[stdout:" in buf.getvalue() and "ran" in buf.getvalue()


def test_run_executes_a_file(dview, tmp_path):
    script = tmp_path / "script.py"
    script.write_text("from_file = 'yes'\n")
    dview.run(str(script))
    assert dview["from_file"] == ["yes", "yes"]


# -- namespaces --------------------------------------------------------------------------


def test_push_pull_scatter_gather_and_dict_access(rc, dview):
    dview.push({"a": 1, "b": [1, 2]})
    assert dview.pull(["a", "b"]) == [[1, [1, 2]], [1, [1, 2]]]
    dview["c"] = "see"
    assert dview["c"] == ["see", "see"]
    assert rc[0].pull("a", block=True) == 1
    dview.scatter("part", list(range(7)))
    assert dview.gather("part") == list(range(7))
    dview.scatter("one", [10, 20], flatten=True)
    assert dview["one"] == [10, 20]
    dview.scatter("rr", list(range(6)), dist="r")
    assert dview.gather("rr", dist="r") == list(range(6))
    ar = dview.gather("part", block=False)
    assert isinstance(ar, ipp.AsyncMapResult)
    assert list(ar) == list(range(7))


def test_numpy_arrays_travel_as_buffers(dview):
    np = pytest.importorskip("numpy")
    data = np.arange(10000, dtype="float64")
    dview.push({"arr": data})
    back = dview.pull("arr")
    assert all(np.array_equal(part, data) for part in back)
    dview.scatter("chunks", data)
    assert np.array_equal(dview.gather("chunks"), data)


def test_clear_empties_namespaces(rc):
    view = rc[:]
    view.block = True
    view["to_clear"] = 1
    view.clear()
    with pytest.raises(error.CompositeError):
        view["to_clear"]


def test_sync_imports_imports_here_and_there(dview, capsys):
    with dview.sync_imports():
        import json as json_module  # noqa: F401
    assert "importing json on engine(s)" in capsys.readouterr().out
    assert dview.apply(rf(lambda: json.dumps([1]))) == ["[1]", "[1]"]


# -- map -----------------------------------------------------------------------------------


def test_direct_and_load_balanced_maps(dview, lview):
    assert dview.map_sync(rf(lambda x: x + 1), range(10)) == list(range(1, 11))
    assert dview.map(rf(lambda a, b: a * b), [1, 2, 3], [4, 5, 6]) == [4, 10, 18]
    assert lview.map_sync(rf(lambda x: -x), range(25)) == [-x for x in range(25)]
    amr = lview.map(rf(lambda x: x * 10), range(20), chunksize=3, block=False)
    assert len(amr) == 20
    assert list(amr) == [x * 10 for x in range(20)]
    assert amr.progress == 20
    unordered = lview.map(rf(lambda x: x), range(12), ordered=False, block=False)
    assert sorted(unordered) == list(range(12))
    assert lview.map_sync(rf(lambda x: x), (i for i in range(5))) == list(range(5))
    assert dview.map_sync(rf(lambda x: x), []) == []


def test_map_errors_and_return_exceptions(lview):
    with pytest.raises(error.CompositeError):
        lview.map_sync(rf(lambda x: 1 / x), [1, 0, 2])
    got = lview.map(rf(lambda x: 1 / x), [1, 0, 2], return_exceptions=True, block=True)
    assert got[0] == 1 and isinstance(got[1], error.RemoteError) and got[2] == 0.5


def test_imap_consumes_its_input_lazily(lview):
    consumed = []

    def numbers():
        for i in range(8):
            consumed.append(i)
            yield i

    it = lview.imap(rf(lambda x: x * 2), numbers(), max_outstanding=2)
    first = next(iter(it))
    assert first == 0
    assert len(consumed) < 8
    assert [first, *it] == [x * 2 for x in range(8)]
    unordered = lview.imap(rf(lambda x: x), range(6), ordered=False)
    assert sorted(unordered) == list(range(6))


def test_remote_and_parallel_decorators(dview, lview):
    @dview.remote(block=True)
    @rf
    def where():
        return "engine"

    assert where() == ["engine", "engine"]

    @lview.parallel(block=True)
    @rf
    def total(chunk):
        return sum(chunk)

    assert sum(total(list(range(10)))) == 45

    @dview.parallel(block=True)
    @rf
    def plus_one(x):
        return x + 1

    assert plus_one.map(range(4)) == [1, 2, 3, 4]


def test_executor_submits_maps_and_shuts_down(lview, rc):
    with rc.executor() as ex:
        fut = ex.submit(rf(lambda x: x + 1), 1)
        assert fut.result(TIMEOUT) == 2
        assert list(ex.map(rf(lambda x: x * 3), range(5))) == [0, 3, 6, 9, 12]
    assert lview.executor.submit(rf(lambda: 9)).result(TIMEOUT) == 9


# -- load balancing flags ----------------------------------------------------------------


def test_dependencies_targets_and_flags(rc, lview):
    first = lview.apply_async(rf(lambda: __import__("time").sleep(0.2) or "first"))
    with lview.temp_flags(after=[first]):
        second = lview.apply_async(rf(lambda: "second"))
    assert second.get(TIMEOUT) == "second"
    assert first.ready()
    assert second.metadata.started >= first.metadata.completed
    with lview.temp_flags(follow=first):
        followed = lview.apply_async(rf(lambda: "f"))
    followed.get(TIMEOUT)
    assert followed.metadata.engine_id == first.metadata.engine_id
    target = rc.ids[1]
    pinned = rc.load_balanced_view(targets=[target])
    assert {pinned.apply_async(rf(lambda: 0)).get(TIMEOUT) for _ in range(2)} == {0}
    ar = pinned.apply_async(rf(lambda: 0))
    ar.get(TIMEOUT)
    assert ar.metadata.engine_id == target
    with pytest.raises(KeyError):
        lview.set_flags(bogus=1)
    with pytest.raises(ValueError):
        lview.set_flags(after=[object()])
    with pytest.raises(ValueError):
        lview.set_flags(time_limit=-1)
    with lview.temp_flags(after=["no-such-msg-id"]):
        invalid = lview.apply_async(rf(lambda: 0))
    with pytest.raises(error.RemoteError) as info:
        invalid.get(TIMEOUT)
    assert info.value.ename == "InvalidDependency"


def test_time_limit_interrupts_a_task_on_ipp_rs_engines(cluster, lview):
    if cluster.engine_kind_name != "ipp_rs":
        pytest.skip("time_limit is our extension: only ipp_rs engines enforce it")
    with lview.temp_flags(time_limit=0.5):
        ar = lview.apply_async(rf(lambda: __import__("time").sleep(30)))
    with pytest.raises(error.TaskTimeLimit):
        ar.get(TIMEOUT)
    assert lview.apply_sync(rf(lambda: "next")) == "next"


def test_abort_of_queued_tasks(rc):
    engine = rc[rc.ids[0]]
    blocker = engine.apply_async(rf(lambda: __import__("time").sleep(1)))
    queued = engine.apply_async(rf(lambda: "never"))
    queued.abort()
    with pytest.raises(error.TaskAborted):
        queued.get(TIMEOUT)
    blocker.get(TIMEOUT)
    with pytest.raises(RuntimeError, match="already done"):
        blocker.abort()


# -- broadcast ---------------------------------------------------------------------------


def test_broadcast_view_apply_execute_map_and_coalescing(rc):
    bview = rc.broadcast_view()
    bview.block = True
    assert bview.apply(rf(lambda: 3)) == [3, 3]
    bview.execute("bcast = 'b'")
    assert bview.pull("bcast") == ["b", "b"]
    assert bview.map(rf(lambda x: x * 2), range(6)) == [0, 2, 4, 6, 8, 10]
    coalescing = rc.broadcast_view(is_coalescing=True)
    ar = coalescing.apply_async(rf(lambda: 4))
    assert ar.get(TIMEOUT) == [4, 4]
    assert sorted(ar.metadata.engine_id) == rc.ids


# -- client state and the Hub ------------------------------------------------------------


def test_results_and_metadata_are_read_on_demand(rc, lview):
    ar = lview.apply_async(rf(lambda: "kept"))
    ar.get(TIMEOUT)
    msg_id = ar.msg_ids[0]
    assert msg_id in rc.history
    assert msg_id in rc.results and rc.results[msg_id] == "kept"
    assert rc.metadata[msg_id].status == "ok"
    assert msg_id not in rc.outstanding
    rc.purge_local_results(ar)
    assert msg_id not in rc.results
    with pytest.raises(ValueError):
        rc.purge_local_results()


def test_dropped_results_are_forgotten_and_fetched_from_the_hub(rc, lview):
    ar = lview.apply_async(rf(lambda: "from the hub"))
    msg_id = ar.msg_ids[0]
    assert ar.get(TIMEOUT) == "from the hub"
    del ar
    _wait_until(lambda: rc._native.reply(msg_id) is None)
    again = rc.get_result(msg_id)
    assert isinstance(again, ipp.AsyncHubResult)
    assert again.get(TIMEOUT) == "from the hub"
    assert again.metadata.status == "ok"


def test_blocking_calls_keep_nothing_behind(rc, dview):
    before = len(rc.results)
    for _ in range(5):
        dview.apply(rf(lambda: None))
    _wait_until(lambda: len(rc.results) <= before)


def test_hub_queries(rc, lview):
    ar = lview.apply_async(rf(lambda: 1))
    ar.get(TIMEOUT)
    status = rc.queue_status()
    assert set(rc.ids) <= set(status) and "unassigned" in status
    assert rc.queue_status(targets=rc.ids[0])["queue"] >= 0
    assert ar.msg_ids[0] in rc.hub_history()
    records = rc.db_query({"msg_id": {"$in": ar.msg_ids}}, keys=["msg_id", "completed"])
    assert records[0]["msg_id"] == ar.msg_ids[0]
    assert records[0]["completed"].tzinfo is not None
    status = rc.result_status(ar.msg_ids, status_only=True)
    assert status["completed"] == ar.msg_ids
    rc.purge_hub_results(ar.msg_ids)


def test_resubmit_runs_a_task_again(rc, lview):
    ar = lview.apply_async(rf(lambda: "again"))
    ar.get(TIMEOUT)
    redo = rc.resubmit(ar.msg_ids)
    assert isinstance(redo, ipp.AsyncHubResult)
    assert redo.get(TIMEOUT) == ["again"]


def test_wait_and_wait_interactive(rc, lview, capsys):
    ars = [lview.apply_async(rf(lambda: None)) for _ in range(4)]
    assert rc.wait(ars, timeout=TIMEOUT)
    assert rc.wait(timeout=TIMEOUT)
    amr = lview.map_async(rf(lambda x: x), range(6))
    amr.wait_interactive(interval=0.05)
    assert amr.ready()
    assert "6/6" in capsys.readouterr().out


def test_wait_resolves_the_async_results_it_is_given_and_times_out(rc, lview, dview):
    ars = [lview.apply_async(rf(lambda i: i * i), i) for i in range(20)]
    failing = lview.apply_async(rf(lambda: 1 / 0))
    many = dview.apply_async(rf(lambda: "each"))  # one AsyncResult, one reply per engine
    assert rc.wait([*ars, failing, many, ars[0].msg_ids[0]], timeout=TIMEOUT)
    # Resolved while waiting (the Future itself is finished, not only the native reply
    # in), errors kept for get(), not raised by wait.
    assert all(concurrent.futures.Future.done(ar) for ar in [*ars, failing, many])
    assert [ar.get(0) for ar in ars] == [i * i for i in range(20)]
    assert many.get(0) == ["each"] * len(dview)
    with pytest.raises(error.RemoteError):
        failing.get(0)
    slow = lview.apply_async(rf(lambda: __import__("time").sleep(1)))
    assert rc.wait([slow], timeout=0.05) is False
    assert not concurrent.futures.Future.done(slow)
    assert rc.wait([slow], timeout=TIMEOUT)
    assert concurrent.futures.Future.done(slow) and slow.get(0) is None


def test_a_map_waited_in_parts_keeps_every_result_in_order(rc, lview):
    # The results that arrive while a wait times out are unpacked then; the rest after.
    def slow_at(x):
        import time

        if x == 5:
            time.sleep(1)
        if x == 7:
            raise ValueError(x)
        return x * 10

    amr = lview.map(rf(slow_at), range(12), block=False, return_exceptions=True)
    assert amr.wait(0.3) is False
    assert not amr.ready()
    assert amr.wait(TIMEOUT)
    got = amr.get(0)
    assert [r for i, r in enumerate(got) if i != 7] == [x * 10 for x in range(12) if x != 7]
    assert isinstance(got[7], error.RemoteError) and got[7].ename == "ValueError"
    with pytest.raises(error.RemoteError):
        lview.map(rf(slow_at), range(12), block=False).get(TIMEOUT)


def test_wait_for_engines_returns_and_times_out(rc):
    assert rc.wait_for_engines(2, timeout=TIMEOUT) is None
    fut = rc.wait_for_engines(1, block=False)
    assert fut.result(TIMEOUT) is None
    with pytest.raises(TimeoutError, match="3 engines not ready"):
        rc.wait_for_engines(3, timeout=0.2)


def test_serialization_switches_with_use_cloudpickle(rc, dview):
    pytest.importorskip("cloudpickle")
    base = 10

    def closure(x):
        return x + base

    try:
        dview.use_cloudpickle()
        assert dview.apply(closure, 1) == [11, 11]
    finally:
        dview.use_pickle()
    assert dview.apply(rf(lambda: 1)) == [1, 1]


def test_joblib_backend_runs_on_a_view(lview):
    joblib = pytest.importorskip("joblib")
    lview.register_joblib_backend(name="ipp_rs_test")
    with joblib.parallel_config(backend="ipp_rs_test"):
        got = joblib.Parallel(n_jobs=2)(joblib.delayed(pow)(i, 2) for i in range(6))
    assert got == [i * i for i in range(6)]


def test_default_joblib_backend_connects_to_the_default_profile(cluster, rc, monkeypatch):
    joblib = pytest.importorskip("joblib")
    monkeypatch.setenv("IPYTHONDIR", str(cluster.ipython_dir))
    ipp.register_joblib_backend(name="ipp_rs_default")
    try:
        with joblib.parallel_config(backend="ipp_rs_default"):
            got = joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(4))
    finally:
        # the default backend switched to cloudpickle, here and on the engines
        rc[:].use_pickle()
    assert got == [0, 1, 2, 3]


WITHOUT_IPYPARALLEL = """
import sys
import ipp_rs as ipp

rc = ipp.Client(sys.argv[1])
rc.wait_for_engines(2, timeout=60)
dv = rc[:]
dv.block = True
double = ipp.interactive(lambda x: x * 2)
assert dv.apply(double, 3) == [6, 6]
assert rc.load_balanced_view().map_sync(double, range(5)) == [0, 2, 4, 6, 8]
dv["blob"] = b"y" * 5000
assert dv["blob"] == [b"y" * 5000] * 2
dv.scatter("part", list(range(6)))
assert dv.gather("part") == list(range(6))
assert dv.execute("print('p')").stdout == ["p\\n", "p\\n"]
try:
    dv.apply(ipp.interactive(lambda: 1 / 0))
except ipp.CompositeError as exc:
    assert "ZeroDivisionError" in str(exc)
else:
    raise SystemExit("no remote error")
assert "ipyparallel" not in sys.modules, "ipyparallel was imported"
rc.close()
print("client ran without ipyparallel")
"""


def test_the_client_needs_no_ipyparallel(cluster, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(WITHOUT_IPYPARALLEL)
    env = blocking_env(tmp_path / "block")
    run = subprocess.run(
        [sys.executable, str(script), str(cluster.client_file)],
        env=env, capture_output=True, text=True, timeout=TIMEOUT * 2,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "client ran without ipyparallel" in run.stdout


def test_low_level_sends_and_the_engine_map(rc):
    engine_id = rc.ids[0]
    uuid = rc._engines[engine_id]
    assert rc._engines[uuid] == engine_id
    ar = rc.send_apply_request(rc._mux_socket, rf(lambda: "low"), ident=uuid.encode())
    assert ipp.AsyncResult(rc, ar).get(TIMEOUT) == "low"
    ar = rc.send_apply_request(rc._task_socket, rf(lambda x: x), [3], metadata={"label": "l"})
    assert ar.get(TIMEOUT) == 3
    ex = rc.send_execute_request(rc._mux_socket, "low_level = 1", ident=uuid)
    ex.get(TIMEOUT)
    assert rc[engine_id]["low_level"] == 1
    with pytest.raises(ValueError, match="channels"):
        rc.send_apply_request("nowhere", rf(lambda: 0))


def test_closing_the_client_ends_outstanding_results(cluster):
    client = cluster.client_from("ipp_rs")
    client.wait_for_engines(2, timeout=TIMEOUT)
    slow = client.load_balanced_view().apply_async(rf(lambda: __import__("time").sleep(2)))
    called = concurrent.futures.Future()
    slow.add_done_callback(lambda f: called.set_result(type(f.exception()).__name__))
    client.close()
    with pytest.raises(error.RemoteError) as info:
        slow.get(TIMEOUT)
    assert info.value.ename == "ConnectionError"
    assert called.result(TIMEOUT) == "RemoteError"
    with pytest.raises(RuntimeError, match="closed"):
        client[:].apply(rf(lambda: 0))


def test_shutdown_stops_one_engine(cluster, rc):
    # Last: it leaves one engine.
    victim = rc.ids[-1]
    rc.shutdown(targets=[victim], block=True)
    _wait_until(lambda: victim not in rc.ids)
    assert len(rc.ids) == 1
    assert os.environ.get("IPP_TEST_CONTROLLER", "ours") in ("ours", "reference")
