"""Our Python engine (``python -m ipp_rs.engine``) in a Python where ipyparallel cannot be
imported (a ``sitecustomize`` refuses it, see blockipp.py), driven by the real ipyparallel
9.2.0 client through the controller under test (``IPP_TEST_CONTROLLER``).

The engine reads ipyparallel's pickles with ipp_rs's own canning (``ipyparallel.*`` names
read as ipp_rs's), runs ipyparallel's shipped helpers (push/pull, ``@require``) against its
namespace, and answers with pickles of ipp_rs's classes, which this client (ipp_rs
installed) reads.
"""

from __future__ import annotations

import functools
import subprocess

import ipyparallel as ipp
import numpy as np
import pytest
from ipyparallel import error

from blockipp import blocking_env
from ippcluster import Cluster, controller_under_test

TIMEOUT = 60
interactive = ipp.interactive


class NoIpyparallelEngineCluster(Cluster):
    """The controller under test with ``python -m ipp_rs.engine`` engines that cannot import
    ipyparallel."""

    def __init__(self) -> None:
        super().__init__(engine_kind="ipp_rs")
        self.engine_env = blocking_env(self.tmp / "no-ipyparallel", self.env)

    def start_engine(self) -> subprocess.Popen:
        saved, self.env = self.env, self.engine_env
        try:
            return super().start_engine()
        finally:
            self.env = saved


@pytest.fixture(scope="module")
def cluster():
    c = NoIpyparallelEngineCluster().start(engines=2)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def rc(cluster):
    client = cluster.client()
    client.wait_for_engines(2, timeout=TIMEOUT)
    return client


@pytest.fixture
def dview(rc):
    view = rc[:]
    view.block = True
    return view


@interactive
def ipyparallel_state():
    import sys

    import ipp_rs.serialize

    try:
        import ipyparallel  # noqa: F401
    except ImportError:
        importable = False
    else:
        importable = True
    return importable, ipp_rs.serialize.IPYPARALLEL, sys.modules.get("ipyparallel")


def test_the_engines_cannot_import_ipyparallel(dview):
    assert dview.apply_sync(ipyparallel_state) == [(False, False, None)] * 2


def test_apply_of_functions_closures_and_lambdas(rc, dview):
    assert rc[0].apply_sync(interactive(lambda x: x * 2), 21) == 42
    offset = 100

    def closure(x):
        return x + offset

    closure.__module__ = "__main__"
    assert rc[1].apply_sync(closure, 1) == 101
    assert rc[0].apply_sync(functools.partial(interactive(lambda a, b: a - b), 10), 4) == 6
    # a function made on the engine comes back and runs here
    make = interactive(lambda: (lambda y: y + 1))
    assert rc[0].apply_sync(make)(1) == 2


def test_push_pull_scatter_gather_and_references(rc, dview):
    dview.push({"scale": 3, "data": [1, 2, 3]})
    assert dview.pull("scale") == [3, 3]

    @interactive
    def uses_global(x):
        return x * scale  # noqa: F821 - pushed

    assert dview.apply_sync(uses_global, 5) == [15, 15]
    assert rc[0].apply_sync(interactive(lambda v: v), ipp.Reference("data")) == [1, 2, 3]
    dview.scatter("part", list(range(10)))
    assert dview.gather("part") == list(range(10))
    rc[1]["key"] = "value"
    assert rc[1]["key"] == "value"


def test_buffers_numpy_arrays_and_classes(rc):
    blob = b"x" * 100_000
    assert rc[0].apply_sync(interactive(lambda b: b + b"!"), blob) == blob + b"!"
    arr = np.arange(30_000, dtype=np.float32).reshape(100, 300)[:, ::2]
    out = rc[1].apply_sync(interactive(lambda a: a * 2), arr)
    np.testing.assert_array_equal(out, arr * 2)
    view = memoryview(b"m" * 5000)
    assert rc[0].apply_sync(interactive(lambda m: (type(m).__name__, m.tobytes()[:2])), view) == (
        "memoryview",
        b"mm",
    )

    class Point:
        def __init__(self, x):
            self.x = x

    # shipped by value: the class and its methods belong to `__main__`
    Point.__module__ = Point.__init__.__module__ = "__main__"
    assert rc[0].apply_sync(interactive(lambda cls: cls(4).x), Point) == 4


def test_map_direct_load_balanced_and_broadcast(rc, dview):
    assert dview.map_sync(interactive(lambda x: x * x), range(10)) == [x * x for x in range(10)]
    lview = rc.load_balanced_view()
    assert lview.map_sync(interactive(lambda x: x + 1), range(12), chunksize=3) == list(range(1, 13))
    bview = rc.broadcast_view()
    assert bview.map_sync(interactive(lambda x: -x), range(6)) == [-x for x in range(6)]


def test_errors_and_execute(rc, dview):
    with pytest.raises(error.RemoteError) as info:
        rc[0].apply_sync(interactive(lambda: 1 / 0))
    assert info.value.ename == "ZeroDivisionError"
    assert "ZeroDivisionError" in info.value.traceback
    result = rc[0].execute("y = 6\ny * 7", silent=False, block=True)
    assert result.execute_result["data"]["text/plain"] == "42"
    assert rc[0].pull("y", block=True) == 6


@ipp.require("module_that_does_not_exist_anywhere")
@interactive
def needs_missing():
    return "ran"


@ipp.require("json")
@interactive
def needs_json():
    return json.dumps([1])  # noqa: F821 - imported on the engine by @require


@interactive
def marked():
    return globals().get("IS_TARGET", False)


@ipp.depend(marked)
@interactive
def where():
    return IS_TARGET  # noqa: F821


def test_require_and_depend(rc):
    lview = rc.load_balanced_view()
    assert lview.apply_sync(needs_json) == "[1]"
    with lview.temp_flags(timeout=3):
        ar = lview.apply_async(needs_missing)
    with pytest.raises(error.RemoteError) as info:
        ar.get(timeout=TIMEOUT)
    expected = "ImpossibleDependency" if controller_under_test() == "ours" else "TaskTimeout"
    assert info.value.ename == expected

    rc[1].execute("IS_TARGET = True", block=True)
    rc[0].execute("IS_TARGET = False", block=True)
    for ar in [lview.apply_async(where) for _ in range(3)]:
        assert ar.get(timeout=TIMEOUT) is True
        assert ar.engine_id == 1


def test_cloudpickle_on_both_sides(rc, dview):
    pytest.importorskip("cloudpickle")
    try:
        dview.use_cloudpickle()
        ipp.serialize.use_cloudpickle()
        factor = 7
        # cloudpickle ships the closure and the lambda by value, both ways
        assert rc[0].apply_sync(lambda x: (lambda: x * factor), 3)() == 21
    finally:
        dview.use_pickle()
        ipp.serialize.use_pickle()
    assert rc[0].apply_sync(interactive(lambda: "pickle again")) == "pickle again"
