"""The interop matrix: the same script in every cell of
{ipyparallel client, ipp_rs client} x {ipyparallel ``ipengine``, ipp_rs engine} through the
controller under test (ours by default, see ``IPP_TEST_CONTROLLER``), plus the ipp_rs client
against the Python ``ipcontroller`` (and the ipyparallel client there too, which checks the
script itself against the reference implementation).

The client package is a parameter: each cell imports ``ipyparallel`` or ``ipp_rs`` and uses
only the API they share (``ipp.Client``, views, ``AsyncResult``, ``ipp.error``,
``ipp.interactive``, ``ipp.Reference``, ``ipp.Dependency``, ``ipp.require``, ``ipp.depend``),
exactly as a program ported by changing its import would. While ``ipp_rs.Client`` does not
exist, the ipp_rs-client cells are skipped saying so.

One cluster (controller + 2 engines) per (controller, engine kind), started when the first
cell needing it runs and stopped when a cell needs another one; cells sharing a cluster each
have their own client. Engines are shared by the cells of a cluster, so no test relies on a
fresh namespace.

Run one cell: ``pytest tests/python/test_matrix.py -k "ipp_rs-client and ipengine/ours"``.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import ModuleType, SimpleNamespace

import pytest

from ippcluster import Cluster, client_unavailable, controller_under_test, start_cluster

# Limit on hanging, not a timing assertion.
TIMEOUT = 60


@dataclass(frozen=True)
class Cell:
    """One cell of the matrix: which client package, which engines, which controller
    ("ours" stands for the controller under test, ``IPP_TEST_CONTROLLER``)."""

    client: str
    engine: str
    controller: str

    @property
    def id(self) -> str:
        return f"{self.client}-client/{self.engine}/{self.controller}"


# Ordered so that cells sharing a cluster are neighbours (pytest runs a module-scoped
# parameter's tests together, in this order).
CELLS = [
    Cell("ipyparallel", "ipengine", "ours"),
    Cell("ipp_rs", "ipengine", "ours"),
    Cell("ipyparallel", "ipp_rs", "ours"),
    Cell("ipp_rs", "ipp_rs", "ours"),
    Cell("ipyparallel", "ipengine", "reference"),
    Cell("ipp_rs", "ipengine", "reference"),
]

pytestmark = [
    pytest.mark.parametrize(
        "cell", CELLS, ids=[c.id for c in CELLS], indirect=True, scope="module"
    ),
    # Every test takes a few seconds at most: a hang costs 45 s, not pytest.ini's 120 s.
    pytest.mark.timeout(45),
]


class ClusterPool:
    """At most one running cluster, keyed by (controller, engine kind)."""

    def __init__(self) -> None:
        self.key: tuple[str, str] | None = None
        self.cluster: Cluster | None = None

    def get(self, controller: str, engine: str) -> Cluster:
        if self.key != (controller, engine):
            self.stop()
            self.cluster = start_cluster(controller, engine, engines=2)
            self.key = (controller, engine)
        assert self.cluster is not None
        return self.cluster

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        self.cluster, self.key = None, None


@pytest.fixture(scope="module")
def cluster_pool():
    pool = ClusterPool()
    yield pool
    pool.stop()


@dataclass
class CellEnv:
    """What a test of one cell gets: the client package, a connected client, its cluster,
    and the test functions made interactive by that package."""

    spec: Cell
    ipp: ModuleType
    rc: object
    cluster: Cluster
    fn: SimpleNamespace


# Functions run on engines; each cell ships them made interactive by its own package.
REMOTE_FUNCTIONS = {}


def remote(f):
    REMOTE_FUNCTIONS[f.__name__] = f
    return f


@remote
def double(x):
    return 2 * x


@remote
def add(a, b):
    return a + b


@remote
def power(base, exp=2):
    return base**exp


@remote
def square(x):
    return x * x


@remote
def getpid():
    import os

    return os.getpid()


@remote
def total(a):
    return float(a.sum())


@remote
def echo(x):
    return x


@remote
def printer(text):
    print(text)
    return len(text)


@remote
def fail():
    return 1 / 0


@remote
def fail_with(message):
    raise ValueError(message)


@remote
def sleep_and_return(seconds, value):
    import time

    time.sleep(seconds)
    return value


@remote
def where_am_i():
    return globals().get("MATRIX_ENGINE_ID")


@remote
def engine_is(wanted):
    return globals().get("MATRIX_ENGINE_ID") == wanted


def resolve_controller(cell: Cell) -> str:
    return controller_under_test() if cell.controller == "ours" else cell.controller


@pytest.fixture(scope="module")
def cell(request, cluster_pool) -> CellEnv:
    spec: Cell = request.param
    reason = client_unavailable(spec.client)
    if reason:
        pytest.skip(reason)
    controller = resolve_controller(spec)
    if spec.controller == "reference" and controller_under_test() == "reference":
        pytest.skip("IPP_TEST_CONTROLLER=reference: the 'ours' cells already run there")
    ipp = importlib.import_module(spec.client)
    cluster = cluster_pool.get(controller, spec.engine)
    rc = cluster.client_from(spec.client)
    rc.wait_for_engines(2, timeout=TIMEOUT)
    # Every engine learns its own id in its namespace (for `follow` and `@depend`); with
    # push, which waits for the reply only (outputs are checked by the tests).
    for engine_id in rc.ids:
        rc[engine_id].push({"MATRIX_ENGINE_ID": engine_id}, block=True)
    fn = SimpleNamespace(**{name: ipp.interactive(f) for name, f in REMOTE_FUNCTIONS.items()})
    yield CellEnv(spec=spec, ipp=ipp, rc=rc, cluster=cluster, fn=fn)
    rc.close()


def remote_ename(exc: BaseException) -> str:
    return getattr(exc, "ename", type(exc).__name__)


# ---- connecting ------------------------------------------------------------------------


def test_client_sees_both_engines(cell):
    rc = cell.rc
    assert sorted(rc.ids) == [0, 1]
    assert len(rc) == 2
    rc.wait_for_engines(2, timeout=TIMEOUT)
    assert isinstance(rc[0], cell.ipp.DirectView)
    assert isinstance(rc.load_balanced_view(), cell.ipp.LoadBalancedView)
    assert rc[:].targets == "all" or sorted(rc[:].targets) == [0, 1]


# ---- apply -------------------------------------------------------------------------------


def test_apply_direct_load_balanced_and_broadcast(cell):
    rc, fn, ipp = cell.rc, cell.fn, cell.ipp
    dv = rc[:]
    assert dv.apply_sync(fn.double, 21) == [42, 42]
    assert rc[0].apply_sync(fn.double, 5) == 10
    assert rc[1].apply_sync(fn.power, 2, exp=10) == 1024
    assert rc[0].apply_sync(ipp.interactive(lambda x, y=1: x - y), 10, y=3) == 7

    ar = dv.apply_async(fn.getpid)
    pids = ar.get(timeout=TIMEOUT)
    assert len(pids) == 2 and len(set(pids)) == 2
    assert ar.ready() and ar.successful()
    assert sorted(ar.engine_id) == [0, 1]
    assert sorted(ar.get_dict(timeout=TIMEOUT)) == [0, 1]
    assert len(ar) == 2 and len(ar.msg_ids) == 2

    dv.push({"matrix_base": 100}, block=True)
    assert dv.apply_sync(fn.add, ipp.Reference("matrix_base"), 1) == [101, 101]

    lview = rc.load_balanced_view()
    assert lview.apply_sync(fn.double, 4) == 8
    lb = lview.apply_async(fn.sleep_and_return, 0.01, "lb")
    assert lb.get(timeout=TIMEOUT) == "lb"
    assert lb.engine_id in (0, 1)
    md = lb.metadata
    assert md["status"] == "ok"
    for key in ("submitted", "started", "completed"):
        assert isinstance(md[key], datetime), (key, md[key])
    assert md["submitted"] <= md["started"] <= md["completed"]
    assert lb.elapsed >= 0 and lb.wall_time >= 0 and lb.serial_time >= 0

    bv = rc.broadcast_view()
    assert bv.apply_sync(fn.double, 5) == [10, 10]


def test_apply_moves_bytes_and_numpy_arrays_as_buffers(cell):
    np = pytest.importorskip("numpy")
    rc, fn = cell.rc, cell.fn
    blob = os.urandom(1 << 20)
    assert rc[0].apply_sync(fn.echo, blob) == blob
    arr = np.arange(100_000, dtype=np.float64)
    assert rc[1].apply_sync(fn.total, arr) == float(arr.sum())
    back = rc[1].apply_sync(fn.echo, arr)
    assert isinstance(back, np.ndarray) and np.array_equal(back, arr)


# ---- map ---------------------------------------------------------------------------------


def test_map_direct_and_load_balanced(cell):
    rc, fn = cell.rc, cell.fn
    dv, lview = rc[:], rc.load_balanced_view()
    assert dv.map_sync(fn.square, range(25)) == [x * x for x in range(25)]
    assert dv.map_sync(fn.add, range(5), range(10, 15)) == [x + x + 10 for x in range(5)]
    assert lview.map_sync(fn.square, range(20), chunksize=3) == [x * x for x in range(20)]

    amr = lview.map(fn.double, range(30), chunksize=1)
    assert len(amr.msg_ids) == 30
    assert list(amr) == [2 * x for x in range(30)]  # iterates as results arrive

    unordered = lview.map(fn.sleep_and_return, [0.03, 0.0, 0.0, 0.0], range(4), ordered=False)
    assert sorted(unordered.get(timeout=TIMEOUT)) == [0, 1, 2, 3]


# ---- push / pull -------------------------------------------------------------------------


def test_push_pull_and_dictionary_access(cell):
    rc = cell.rc
    dv = rc[:]
    dv.push({"mx_a": 1, "mx_b": "text", "mx_c": b"\x00" * 2000}, block=True)
    assert dv.pull(("mx_a", "mx_b"), block=True) == [[1, "text"], [1, "text"]]
    assert dv.pull("mx_c", block=True) == [b"\x00" * 2000] * 2
    assert rc[1].pull("mx_a", block=True) == 1
    dv["mx_d"] = {"k": [1, 2]}
    assert dv["mx_d"] == [{"k": [1, 2]}] * 2
    assert rc[0]["mx_d"] == {"k": [1, 2]}
    big = os.urandom(3 << 20)
    rc[0].push({"mx_big": big}, block=True)
    assert rc[0].pull("mx_big", block=True) == big
    rc[0].execute("del mx_big", block=True)


def test_push_pull_numpy_arrays(cell):
    np = pytest.importorskip("numpy")
    dv = cell.rc[:]
    arr = np.arange(12.0).reshape(3, 4)
    dv.push({"mx_arr": arr}, block=True)
    for back in dv.pull("mx_arr", block=True):
        assert back.dtype == arr.dtype and np.array_equal(back, arr)


# ---- scatter / gather --------------------------------------------------------------------


def test_scatter_gather(cell):
    rc = cell.rc
    dv = rc[:]
    dv.scatter("mx_part", list(range(17)), block=True)
    assert sorted(len(p) for p in dv.pull("mx_part", block=True)) == [8, 9]
    assert dv.gather("mx_part", block=True) == list(range(17))
    dv.scatter("mx_eid", rc.ids, flatten=True, block=True)
    assert dv["mx_eid"] == rc.ids
    ar = dv.scatter("mx_later", list(range(6)), block=False)
    ar.get(timeout=TIMEOUT)
    assert dv.gather("mx_later", block=False).get(timeout=TIMEOUT) == list(range(6))


def test_scatter_gather_numpy(cell):
    np = pytest.importorskip("numpy")
    dv = cell.rc[:]
    arr = np.arange(10.0)
    dv.scatter("mx_np", arr, block=True)
    assert [len(p) for p in dv.pull("mx_np", block=True)] == [5, 5]
    gathered = dv.gather("mx_np", block=True)
    assert np.array_equal(np.asarray(gathered), arr)


# ---- execute with stdout -------------------------------------------------------------------


def test_execute_with_stdout_stderr_and_result(cell):
    rc, fn = cell.rc, cell.fn
    dv = rc[:]
    ar = dv.execute("print('hello from', 6 * 7)", silent=False, block=False)
    ar.get(timeout=TIMEOUT)
    ar.wait_for_output(timeout=TIMEOUT)
    assert ar.stdout == ["hello from 42\n"] * 2

    ar = dv.execute("import sys; print('oops', file=sys.stderr)", block=False)
    ar.get(timeout=TIMEOUT)
    ar.wait_for_output(timeout=TIMEOUT)
    assert ar.stderr == ["oops\n"] * 2

    dv.execute("mx_x = 6 * 7", block=True)
    assert dv["mx_x"] == [42, 42]

    ar = rc[0].execute("mx_x + 1", silent=False, block=False)
    reply = ar.get(timeout=TIMEOUT)
    # IOPub (execute_result) and the reply travel apart: wait for the outputs as well
    ar.wait_for_output(timeout=TIMEOUT)
    assert reply.execute_result["data"]["text/plain"] == "43"
    assert ar.execute_result["data"]["text/plain"] == "43"

    ar = rc[0].apply_async(fn.printer, "printed")
    assert ar.get(timeout=TIMEOUT) == len("printed")
    ar.wait_for_output(timeout=TIMEOUT)
    assert ar.stdout == "printed\n"


# ---- load balancing with dependencies ---------------------------------------------------------


def test_load_balanced_dependencies(cell):
    rc, fn, ipp = cell.rc, cell.fn, cell.ipp
    lview = rc.load_balanced_view()
    first = lview.apply_async(fn.sleep_and_return, 0.2, "first")
    second = lview.apply_async(fn.sleep_and_return, 0.05, "second")
    with lview.temp_flags(after=[first, second]):
        after = lview.apply_async(fn.sleep_and_return, 0, "after")
    with lview.temp_flags(follow=[first]):
        follow = lview.apply_async(fn.where_am_i)
    assert after.get(timeout=TIMEOUT) == "after"
    assert after.metadata["started"] >= first.metadata["completed"]
    assert after.metadata["started"] >= second.metadata["completed"]
    assert follow.get(timeout=TIMEOUT) == first.engine_id

    # failure dependencies: run only if the parent failed; impossible if it must succeed
    failed = lview.apply_async(fn.fail_with, "parent")
    with pytest.raises(ipp.error.RemoteError):
        failed.get(timeout=TIMEOUT)
    with lview.temp_flags(after=ipp.Dependency([failed], success=False, failure=True)):
        cleanup = lview.apply_async(fn.echo, "cleanup")
    with lview.temp_flags(after=[failed]):
        impossible = lview.apply_async(fn.echo, "never")
    assert cleanup.get(timeout=TIMEOUT) == "cleanup"
    with pytest.raises(ipp.error.KernelError) as info:
        impossible.get(timeout=TIMEOUT)
    assert remote_ename(info.value) == "ImpossibleDependency"

    # functional dependencies
    @ipp.require("os")
    @ipp.interactive
    def needs_os():
        return os.sep  # noqa: F821 - imported on the engine by @require

    assert lview.apply_sync(needs_os) == os.sep
    wanted = rc.ids[-1]
    on_wanted = ipp.depend(fn.engine_is, wanted)(fn.where_am_i)
    results = [lview.apply_async(on_wanted) for _ in range(4)]
    assert [r.get(timeout=TIMEOUT) for r in results] == [wanted] * 4


# ---- errors ---------------------------------------------------------------------------------


def test_remote_errors(cell):
    rc, fn, ipp = cell.rc, cell.fn, cell.ipp
    with pytest.raises(ipp.error.RemoteError) as info:
        rc[0].apply_sync(fn.fail)
    assert info.value.ename == "ZeroDivisionError"
    assert "ZeroDivisionError" in str(info.value)
    with pytest.raises(ipp.error.RemoteError) as info:
        rc.load_balanced_view().apply_sync(fn.fail_with, "balanced")
    assert info.value.ename == "ValueError" and "balanced" in info.value.evalue

    ar = rc[:].apply_async(fn.fail)
    with pytest.raises(ipp.error.CompositeError) as info:
        ar.get(timeout=TIMEOUT)
    assert [e[0] for e in info.value.elist] == ["ZeroDivisionError"] * 2
    assert not ar.successful()
    assert ar.metadata[0]["status"] == "error"

    with pytest.raises(ipp.error.CompositeError):
        rc[:].execute("1 / 0", block=True)
    with pytest.raises(ipp.error.RemoteError) as info:
        rc[1].execute("undefined_name_in_matrix", block=True)
    assert info.value.ename == "NameError"
    # the engines are still usable
    assert rc[:].apply_sync(fn.double, 1) == [2, 2]


# ---- abort ----------------------------------------------------------------------------------


def test_abort_of_queued_tasks(cell):
    rc, fn, ipp = cell.rc, cell.fn, cell.ipp
    view = rc[0]
    sleeper = view.apply_async(fn.sleep_and_return, 1.0, "slept")
    queued = [view.apply_async(fn.double, i) for i in range(3)]
    view.abort(queued)
    assert sleeper.get(timeout=TIMEOUT) == "slept"
    for ar in queued:
        with pytest.raises(ipp.error.TaskAborted):
            ar.get(timeout=TIMEOUT)
    assert view.apply_sync(fn.double, 1) == 2


# ---- the Hub's database -----------------------------------------------------------------------


def test_db_query_and_hub_state(cell):
    rc, fn = cell.rc, cell.fn
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    ar = rc.load_balanced_view().map(fn.double, range(4), chunksize=1)
    assert ar.get(timeout=TIMEOUT) == [0, 2, 4, 6]
    ids = ar.msg_ids
    keys = ["completed", "engine_uuid"]
    records = rc.db_query({"msg_id": {"$in": ids}}, keys=keys)
    if resolve_controller(cell.spec) == "reference":
        # The Python Hub learns of results through its own monitor queue, after the client
        # may have them: it can answer a query right after the results without them yet.
        # Ours handles the events already queued before a query.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            len(records) < len(ids) or any(r.get("completed") is None for r in records)
        ):
            time.sleep(0.1)
            records = rc.db_query({"msg_id": {"$in": ids}}, keys=keys)
    assert sorted(r["msg_id"] for r in records) == sorted(ids)
    engine_uuids = set(rc._engines.values()) if hasattr(rc, "_engines") else None
    for r in records:
        assert set(r) == {"msg_id", "completed", "engine_uuid"}
        assert isinstance(r["completed"], datetime)
        if engine_uuids is not None:
            assert r["engine_uuid"] in engine_uuids
    recent = rc.db_query({"submitted": {"$gte": before}}, keys=["submitted"])
    assert set(ids) <= {r["msg_id"] for r in recent}
    assert all(r["submitted"] >= before for r in recent)
    assert rc.db_query({"msg_id": {"$in": ["no-such-msg-id"]}}) == []

    assert set(ids) <= set(rc.hub_history())
    status = rc.result_status(ids)
    assert sorted(status["completed"]) == sorted(ids) and status["pending"] == []
    qs = rc.queue_status()
    assert set(qs) == {0, 1, "unassigned"}
    assert all(qs[e]["completed"] >= 1 for e in (0, 1))
    # a map's message is one chunk: its result is a list
    assert rc.get_result(ids[3]).get(timeout=TIMEOUT) == [6]


# ---- many tasks at once -------------------------------------------------------------------


def test_many_small_tasks_all_come_back(cell):
    rc, fn = cell.rc, cell.fn
    lview = rc.load_balanced_view()
    ars = [lview.apply_async(fn.double, i) for i in range(300)]
    rc.wait(ars, timeout=TIMEOUT)
    assert [ar.get(0) for ar in ars] == [2 * i for i in range(300)]
    assert not set(rc.outstanding) & {m for ar in ars for m in ar.msg_ids}
