"""Our Python engine (``python -m ipp_rs.engine``: the Rust engine runtime running requests
as Python code) under the controller under test (``IPP_TEST_CONTROLLER``), driven by the
real ipyparallel 9.2.0 client, over real ZeroMQ on 127.0.0.1.

Needs the ``ipp_rs`` package installed in the test virtualenv (scripts/setup-test-env.sh
builds and installs it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import ipyparallel as ipp
import pytest
from ipyparallel import error

from ippcluster import Cluster, controller_under_test

TIMEOUT = 60
# Functions sent to engines are interactive (module `__main__`): shipped by value and run
# with the engine's namespace as globals. Others would be imported by module name there.
interactive = ipp.interactive


def ipp_rs_installed() -> bool:
    try:
        import ipp_rs  # noqa: F401
    except ImportError:
        return False
    return True


if not ipp_rs_installed():
    # Not a silent skip: the test environment is incomplete, say how to fix it.
    pytest.fail(
        "ipp_rs is not installed in this Python: run scripts/setup-test-env.sh",
        pytrace=False,
    )


class PythonEngineCluster(Cluster):
    """The controller under test with ``python -m ipp_rs.engine`` engines."""

    def start_engine(self) -> subprocess.Popen:
        index = len(self.engines)
        log = self.tmp / f"engine-{index}.log"
        # Each engine asks for its index as id, so engine process i is engine id i.
        cmd = [sys.executable, "-m", "ipp_rs.engine", f"--file={self.engine_file}", f"--id={index}"]
        engine = self._spawn(cmd, log)
        self.engines.append(engine)
        return engine


@pytest.fixture(scope="module")
def cluster():
    c = PythonEngineCluster().start(engines=2)
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


def test_engines_register_with_the_ids_they_ask_for(rc):
    assert sorted(rc.ids) == [0, 1]


def test_apply_runs_lambdas_closures_and_functions_using_pushed_globals(rc, dview):
    assert rc[0].apply_sync(interactive(lambda x: x * 2), 21) == 42

    offset = 100

    def closure(x):
        return x + offset

    # `interactive` cannot rebuild a closure; shipping it by value only needs the module.
    closure.__module__ = "__main__"
    assert rc[1].apply_sync(closure, 1) == 101

    dview.push({"scale": 3})

    @interactive
    def uses_global(x):
        return x * scale  # noqa: F821 - pushed to the engines

    assert dview.apply_sync(uses_global, 5) == [15, 15]
    # Large bytes travel as raw frames both ways.
    blob = b"x" * 100_000
    assert rc[0].apply_sync(interactive(lambda b: b + b"!"), blob) == blob + b"!"


def test_results_carry_ipyparallel_metadata(rc):
    ar = rc[0].apply_async(interactive(lambda: 7))
    assert ar.get(timeout=TIMEOUT) == 7
    assert ar.engine_id == 0
    assert ar.metadata["status"] == "ok"
    assert ar.metadata["started"] is not None


def test_map_direct_and_load_balanced(rc, dview):
    assert dview.map_sync(interactive(lambda x: x * x), range(10)) == [x * x for x in range(10)]
    lview = rc.load_balanced_view()
    assert lview.map_sync(interactive(lambda x: x + 1), range(20), chunksize=3) == list(range(1, 21))
    assert lview.apply_sync(interactive(lambda: "balanced")) == "balanced"


def test_broadcast_view_apply_and_execute(rc):
    bview = rc.broadcast_view()
    bview.block = True
    assert bview.apply_sync(interactive(lambda: 5)) == [5, 5]
    bview.execute("broadcast_mark = 1")
    assert rc[:].pull("broadcast_mark", block=True) == [1, 1]


def test_push_pull_scatter_gather_and_dict_access(rc, dview):
    dview.push({"a": 1, "b": [1, 2, 3]})
    assert dview.pull("a") == [1, 1]
    assert dview.pull(["a", "b"]) == [[1, [1, 2, 3]], [1, [1, 2, 3]]]
    dview.scatter("part", list(range(10)))
    assert rc[0].pull("part", block=True) == [0, 1, 2, 3, 4]
    assert dview.gather("part") == list(range(10))
    rc[1]["key"] = "value"
    assert rc[1]["key"] == "value"
    assert dview["a"] == [1, 1]


def finished(ar):
    """Waits for the reply and for the IOPub output (they travel separately)."""
    ar.get(timeout=TIMEOUT)
    ar.wait_for_output(TIMEOUT)
    return ar


def test_execute_streams_stdout_and_shows_the_last_expression(rc):
    ar = finished(rc[0].execute("x = 6\nprint('hello from', x)\nx * 7", silent=False, block=False))
    assert "hello from 6" in ar.stdout
    result = ar.get()
    assert result.execute_result["data"]["text/plain"] == "42"
    assert result.execution_count >= 1
    assert rc[0].pull("x", block=True) == 6

    err = finished(rc[1].execute("import sys; sys.stderr.write('oops\\n')", block=False))
    assert "oops" in err.stderr


def test_silent_execute_shows_no_result(rc):
    result = finished(rc[0].execute("40 + 2", block=False)).get()
    assert result.execute_result is None


def test_errors_are_remote_errors_with_tracebacks(rc, dview):
    @interactive
    def divide(x):
        return x / 0

    with pytest.raises(error.RemoteError) as info:
        rc[0].apply_sync(divide, 1)
    assert info.value.ename == "ZeroDivisionError"
    assert "divide" in info.value.traceback
    assert "\x1b[" not in info.value.traceback  # plain text, no ANSI colours
    assert info.value.engine_info["engine_id"] == 0

    with pytest.raises(error.CompositeError) as composite:
        dview.apply_sync(divide, 1)
    assert {ename for ename, *_ in composite.value.elist} == {"ZeroDivisionError"}
    assert len(composite.value.elist) == 2

    with pytest.raises(error.CompositeError) as from_execute:
        dview.execute("1/0")
    assert "ZeroDivisionError" in str(from_execute.value)

    with pytest.raises(error.RemoteError) as syntax:
        rc[0].execute("def (", block=True)
    assert syntax.value.ename == "SyntaxError"


def test_load_balanced_after_dependency(rc):
    lview = rc.load_balanced_view()
    first = lview.apply_async(interactive(lambda: __import__("time").sleep(0.2) or "first"))
    with lview.temp_flags(after=[first]):
        second = lview.apply_async(interactive(lambda: "second"))
    assert second.get(timeout=TIMEOUT) == "second"
    assert first.ready()
    assert second.metadata["started"] >= first.metadata["completed"]


@ipp.require("module_that_does_not_exist_anywhere")
@interactive
def needs_missing():
    return "ran"


@ipp.require("json")
@interactive
def needs_json():
    return json.dumps([1])  # noqa: F821 - imported on the engine by @require


def test_require_of_a_missing_module_is_an_impossible_dependency(rc):
    """Every engine answers UnmetDependency; ours then fails the task, the reference
    controller keeps it queued until its timeout."""
    lview = rc.load_balanced_view()
    with lview.temp_flags(timeout=3):
        ar = lview.apply_async(needs_missing)
    with pytest.raises(error.RemoteError) as info:
        ar.get(timeout=TIMEOUT)
    expected = "ImpossibleDependency" if controller_under_test() == "ours" else "TaskTimeout"
    assert info.value.ename == expected
    assert lview.apply_sync(needs_json) == "[1]"


@interactive
def marked():
    return globals().get("IS_TARGET", False)


@ipp.depend(marked)
@interactive
def where():
    return IS_TARGET  # noqa: F821 - set by execute on the engines


def test_depend_routes_to_the_engine_that_satisfies_it(rc):
    lview = rc.load_balanced_view()
    rc[1].execute("IS_TARGET = True", block=True)
    rc[0].execute("IS_TARGET = False", block=True)
    results = [lview.apply_async(where) for _ in range(4)]
    for ar in results:
        assert ar.get(timeout=TIMEOUT) is True
        assert ar.engine_id == 1


def test_abort_of_queued_requests(rc):
    view = rc[0]
    busy = view.apply_async(time.sleep, 1)
    queued = view.apply_async(interactive(lambda: "never"))
    view.abort(queued)
    busy.get(timeout=TIMEOUT)
    with pytest.raises(error.TaskAborted):
        queued.get(timeout=TIMEOUT)


@interactive
def announce_then_sleep(seconds):
    import time

    print("started", flush=True)
    time.sleep(seconds)


def test_signal_interrupts_running_python_code(rc):
    view = rc[1]
    ar = view.apply_async(announce_then_sleep, 30)
    # The print is streamed while the request runs: once it is here, the sleep has begun.
    deadline = time.monotonic() + TIMEOUT
    while "started" not in ar.stdout:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.02)
    rc.send_signal(2, targets=[1], block=True)
    with pytest.raises(error.RemoteError) as info:
        ar.get(timeout=TIMEOUT)
    assert info.value.ename == "KeyboardInterrupt"
    # The engine lives on.
    assert view.apply_sync(interactive(lambda: "alive")) == "alive"


def wait_until_started(ar):
    """Waits for the request's "started" print: its sleep has begun."""
    deadline = time.monotonic() + TIMEOUT
    while "started" not in ar.stdout:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.02)


def test_abort_interrupts_a_running_python_request(rc):
    view = rc[1]
    ar = view.apply_async(announce_then_sleep, 30)
    wait_until_started(ar)
    began = time.monotonic()
    view.abort(ar, block=True)
    with pytest.raises(error.TaskAborted):
        ar.get(timeout=TIMEOUT)
    assert time.monotonic() - began < 10, "the running request was not interrupted"
    assert view.apply_sync(interactive(lambda: "alive")) == "alive"


def test_time_limit_interrupts_python_code_with_task_time_limit(rc):
    # `time_limit` is our extension of the request metadata; the ipyparallel client has
    # no flag for it, but its low-level send takes any metadata.
    future = rc.send_apply_request(
        rc._task_socket, announce_then_sleep, [30], metadata={"time_limit": 1.0}
    )
    ar = ipp.AsyncResult(rc, future, fname="announce_then_sleep")
    began = time.monotonic()
    with pytest.raises(error.RemoteError) as info:
        ar.get(timeout=TIMEOUT)
    assert info.value.ename == "TaskTimeLimit"
    assert "time limit" in info.value.evalue
    assert time.monotonic() - began < 10
    engine = ar.engine_id
    assert rc[engine].apply_sync(interactive(lambda: "alive")) == "alive"


def test_signals_other_than_sigint_are_refused(rc):
    with pytest.raises(error.RemoteError) as info:
        rc.send_signal(15, targets=[1], block=True)
    assert "SIGINT" in str(info.value)
    assert rc[1].apply_sync(interactive(lambda: "alive")) == "alive"


def test_queue_status_and_db_query(rc):
    ar = rc[0].apply_async(interactive(lambda: "recorded"))
    ar.get(timeout=TIMEOUT)
    status = rc.queue_status()
    assert set(status) >= {0, 1, "unassigned"}
    assert status[0]["completed"] >= 1
    records = rc.db_query({"msg_id": {"$in": ar.msg_ids}}, keys=["msg_id", "engine_uuid", "completed"])
    assert [r["msg_id"] for r in records] == ar.msg_ids
    assert records[0]["engine_uuid"] == rc._engines[0]


def test_clear_empties_the_namespace(rc):
    view = rc[1]
    view.push({"to_clear": 1}, block=True)
    view.clear(block=True)
    with pytest.raises(error.RemoteError) as info:
        view.pull("to_clear", block=True)
    assert info.value.ename == "NameError"


@interactive
def make_point():
    return Point(3).x  # noqa: F821 - defined by execute on the engine


def test_classes_defined_by_execute_live_in_the_engine_namespace(rc):
    rc[0].execute("class Point:\n    def __init__(self, x):\n        self.x = x\n", block=True)
    assert rc[0].apply_sync(make_point) == 3
    assert rc[0].apply_sync(interactive(lambda: Point.__module__)) == "__main__"  # noqa: F821


def test_ipp_rs_display_publishes_display_data(rc):
    ar = finished(rc[0].execute("from ipp_rs.engine import display\ndisplay({'k': 1})", block=False))
    (output,) = ar.outputs
    assert output["data"]["text/plain"] == "{'k': 1}"


KERNEL_SCRIPT = r"""
import json, sys
if sys.argv[1] == "no-ipyparallel":
    sys.modules["ipyparallel"] = None  # as if it were not installed
from ipp_rs.engine.kernel import Kernel

class Sink:
    def __init__(self):
        self.events = []
    def stream(self, name, text):
        self.events.append(["stream", name, text])
    def execute_input(self, code, count):
        self.events.append(["execute_input", code, count])
    def execute_result(self, data, metadata, count):
        self.events.append(["execute_result", json.loads(data), count])
    def display_data(self, data, metadata):
        self.events.append(["display_data", json.loads(data)])

k = Kernel()
out = {}
sink = Sink()
out["apply"] = list(k.apply("m-1", [b"", b""], sink))
out["execute"] = list(k.execute("y = 2\nprint(y)\ny + 1", False, sink))
out["silent"] = list(k.execute("y + 1", True, sink))
out["error"] = list(k.execute("def f():\n    return 1/0\nf()", False, sink))
k.clear()
out["cleared"] = list(k.execute("y", True, sink))
out["events"] = sink.events
print(json.dumps(out))
"""


def run_kernel(mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", KERNEL_SCRIPT, mode], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_kernel_without_ipyparallel_reads_apply_requests_itself():
    # Without ipyparallel the kernel unpacks with ipp_rs.serialize: a malformed request
    # (two empty buffers) is answered with the unpickling error, not an ImportError.
    out = run_kernel("no-ipyparallel")
    status, ename, _evalue, _ = out["apply"]
    assert (status, ename) == ("error", "EOFError")
    # Code strings run as well.
    assert out["execute"] == ["ok", 1]


def test_kernel_execute_semantics():
    out = run_kernel("normal")
    assert out["execute"] == ["ok", 1]
    assert out["silent"] == ["ok", 1]  # silent: not counted, no result shown
    assert out["events"][:3] == [
        ["execute_input", "y = 2\nprint(y)\ny + 1", 1],
        ["stream", "stdout", "2"],
        ["stream", "stdout", "\n"],
    ]
    assert ["execute_result", {"text/plain": "3"}, 1] in out["events"]
    assert len([e for e in out["events"] if e[0] == "execute_result"]) == 1
    status, ename, evalue, traceback = out["error"]
    assert (status, ename, evalue) == ("error", "ZeroDivisionError", "division by zero")
    assert any("return 1/0" in line for line in traceback), traceback
    assert not any("kernel.py" in line for line in traceback), traceback
    assert out["cleared"][:2] == ["error", "NameError"]
