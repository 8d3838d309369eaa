"""``ipp_rs._ipp_rs.NativeClient`` (the Rust networking half of ``ipp_rs.Client``) against
the controller under test (``IPP_TEST_CONTROLLER``) with ``python -m ipp_rs.engine``
engines, over real ZeroMQ on 127.0.0.1.

Requests are built as ipyparallel builds them (``pack_apply_message``, JSON content and
metadata); replies are read through ``Reply``. Engine death and the controller going away
end requests with synthetic replies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ipyparallel import interactive
from ipyparallel.serialize import deserialize_object, pack_apply_message

from ippcluster import Cluster

try:
    from ipp_rs._ipp_rs import NativeClient, Reply
except ImportError:  # not a silent skip: say how to fix the environment
    pytest.fail(
        "ipp_rs (with NativeClient) is not installed in this Python: run "
        "scripts/setup-test-env.sh or `maturin develop` in ipp-py",
        pytrace=False,
    )

# Limits on hanging, not timing assertions.
DEADLINE = 30
LB_METADATA = {"after": [], "follow": [], "timeout": None, "targets": [], "retries": 0}


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()


class PythonEngineCluster(Cluster):
    """The controller under test with ``python -m ipp_rs.engine`` engines (engine i asks
    for id i)."""

    def start_engine(self) -> subprocess.Popen:
        index = len(self.engines)
        log = self.tmp / f"engine-{index}.log"
        cmd = [sys.executable, "-m", "ipp_rs.engine", f"--file={self.engine_file}", f"--id={index}"]
        engine = self._spawn(cmd, log)
        self.engines.append(engine)
        return engine


def start_cluster(engines: int) -> PythonEngineCluster:
    cluster = PythonEngineCluster()
    try:
        cluster.start_controller()
        for _ in range(engines):
            cluster.start_engine()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster(2)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def nc(cluster):
    client = NativeClient(cluster.client_file.read_text(), connect_timeout=DEADLINE)
    client.wait_for_engines(2, DEADLINE)
    yield client
    client.close()


# -- functions shipped to the engines ------------------------------------------------------
# Interactive (module `__main__`): shipped by value, not imported by module name there.


@interactive
def double(x):
    return 2 * x


@interactive
def shout(text):
    import sys

    print(text)
    print("to stderr", file=sys.stderr)
    return text.upper()


@interactive
def divide(a, b):
    return a / b


@interactive
def fail_with(text):
    raise ValueError(text)


@interactive
def sleep_then(seconds, value):
    import time

    time.sleep(seconds)
    return value


@interactive
def mark_then_sleep(path, seconds):
    import os
    import time

    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(seconds)
    return "slept"


@interactive
def total(array):
    return float(array.sum()), array.shape


@interactive
def noop():
    pass


def apply(nc, channel, f, *args, targets=None, metadata=None, coalescing=False, track=True):
    return nc.send(
        channel,
        "apply_request",
        b"{}",
        dumps(metadata if metadata is not None else ({} if channel != "task" else LB_METADATA)),
        pack_apply_message(f, args, {}),
        targets,
        coalescing,
        track,
    )


def value_of(reply: Reply):
    assert reply.content["status"] == "ok", reply.content
    value, remainder = deserialize_object(reply.buffers)
    assert remainder == []
    return value


def wait_for(predicate, what, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"gave up after {deadline} s waiting for {what}")
        time.sleep(0.05)


# -- connecting ---------------------------------------------------------------------------


def test_connects_and_knows_the_engines(nc):
    assert nc.ids() == [0, 1]
    engines = nc.engines()
    assert sorted(engines) == [0, 1] and all(isinstance(u, str) and u for u in engines.values())
    assert nc.wait_for_engines(1, 0) == [0, 1]
    assert nc.session_id and isinstance(nc.session_id, str)
    assert "engines=2" in repr(nc)
    assert not nc.closed


def test_too_many_engines_times_out_saying_how_many_came(nc):
    with pytest.raises(TimeoutError, match="2 of 5 engines"):
        nc.wait_for_engines(5, 0.2)


def test_an_absent_controller_times_out(cluster):
    info = json.loads(cluster.client_file.read_text())
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        info["registration"] = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer"):
        NativeClient(json.dumps(info), connect_timeout=0.3)
    assert time.monotonic() - start < DEADLINE


def test_bad_connection_info_is_a_value_error():
    with pytest.raises(ValueError, match="connection file"):
        NativeClient("{not json")
    with pytest.raises(ValueError, match="connection file"):
        NativeClient(json.dumps({"key": "k"}))


# -- requests on every channel -------------------------------------------------------------


def test_direct_apply_gives_one_reply_per_target_in_order(nc):
    before = time.time()
    ids = apply(nc, "mux", double, 21, targets=[1, 0])
    assert len(ids) == 2 and len(set(ids)) == 2
    assert nc.wait(ids, DEADLINE)
    engines = nc.engines()
    for msg_id, engine in zip(ids, [1, 0]):
        reply = nc.reply(msg_id)
        assert isinstance(reply, Reply)
        assert reply.msg_id == msg_id
        assert reply.msg_type == "apply_reply"
        assert reply.header["msg_type"] == "apply_reply"
        assert isinstance(reply.header["date"], str)
        assert reply.parent_header["msg_id"] == msg_id
        assert reply.parent_header["session"] == nc.session_id
        assert reply.metadata["engine"] == engines[engine]
        assert reply.metadata["status"] == "ok" and reply.metadata["started"]
        assert not reply.synthetic
        assert before <= reply.received <= time.time()
        assert all(isinstance(b, memoryview) for b in reply.buffers)
        assert value_of(reply) == 42
        # The status, read without building the content.
        assert reply.status == "ok"
        # Fields are parsed once and kept.
        assert reply.content is reply.content
    assert nc.done(ids) == ids
    nc.forget(ids)
    assert nc.reply(ids[0]) is None and nc.done(ids) == []


def test_load_balanced_batches_send_in_one_hop(nc):
    requests = [(b"{}", dumps(LB_METADATA), pack_apply_message(double, (i,), {})) for i in range(200)]
    ids = nc.send_many("task", "apply_request", requests)
    assert len(ids) == 200 and len(set(ids)) == 200
    assert nc.wait(ids, DEADLINE)
    assert [value_of(nc.reply(i)) for i in ids] == [2 * i for i in range(200)]
    assert {nc.reply(i).metadata["engine"] for i in ids} <= set(nc.engines().values())
    assert not (nc.outstanding() & set(ids))
    nc.forget(ids)
    with pytest.raises(ValueError, match="task"):
        nc.send_many("mux", "apply_request", requests[:1])
    with pytest.raises(TypeError, match="tuple"):
        nc.send_many("task", "apply_request", [b"{}"])


def test_load_balanced_targets_travel_in_the_metadata(nc):
    uuid = nc.engines()[1]
    metadata = dict(LB_METADATA, targets=[uuid])
    ids = [apply(nc, "task", double, i, metadata=metadata)[0] for i in range(4)]
    assert nc.wait(ids, DEADLINE)
    assert {nc.reply(i).metadata["engine"] for i in ids} == {uuid}
    nc.forget(ids)


def test_broadcast_replies_per_engine_or_coalesced(nc):
    engines = nc.engines()
    ids = apply(nc, "broadcast", double, 5, targets=[0, 1])
    assert len(ids) == 2
    base = ids[0][: -len(engines[0]) - 1]
    assert ids == [f"{base}_{engines[0]}", f"{base}_{engines[1]}"]
    assert nc.wait(ids, DEADLINE)
    for msg_id, engine in zip(ids, [0, 1]):
        reply = nc.reply(msg_id)
        assert reply.metadata["engine"] == engines[engine]
        assert reply.metadata["is_broadcast"] is True
        assert value_of(reply) == 10
    nc.forget(ids)

    (msg_id,) = apply(nc, "broadcast", double, 6, coalescing=True)  # targets=None: all
    assert nc.wait([msg_id], DEADLINE)
    reply = nc.reply(msg_id)
    assert reply.content["status"] == "ok"
    assert [pair[1] for pair in reply.metadata["broadcast_targets"]] == [0, 1]
    values = []
    remaining = reply.buffers
    while remaining:
        value, remaining = deserialize_object(remaining)
        values.append(value)
    assert values == [12, 12]
    assert nc.wait_outputs([msg_id], DEADLINE)
    nc.forget([msg_id])


def test_control_requests_answer_per_target(nc):
    ids = nc.send("control", "clear_request", b"{}", b"{}", [], [0, 1])
    assert len(ids) == 2 and nc.wait(ids, DEADLINE)
    assert [nc.reply(i).msg_type for i in ids] == ["clear_reply", "clear_reply"]
    assert all(nc.reply(i).content["status"] == "ok" for i in ids)
    ids2 = nc.send("control", "abort_request", dumps({"msg_ids": ["not-a-request"]}), b"{}", [], [1])
    assert nc.wait(ids2, DEADLINE)
    assert nc.reply(ids2[0]).msg_type == "abort_reply"
    nc.forget(ids + ids2)


def test_remote_exceptions_are_error_replies(nc):
    ids = apply(nc, "mux", divide, 1, 0, targets=[0])
    assert nc.wait(ids, DEADLINE)
    reply = nc.reply(ids[0])
    assert reply.status == "error"
    assert reply.content["status"] == "error"
    assert reply.content["ename"] == "ZeroDivisionError"
    assert reply.metadata["status"] == "error"
    assert not reply.synthetic
    outputs = nc.outputs(ids[0])
    assert nc.wait_outputs(ids, DEADLINE)
    nc.forget(ids)
    del outputs


def test_replies_with_non_ascii_text_parse_whole(nc):
    text = 'caf\u00e9 \u2713 \U0001f600 "quoted" \\ end'
    ids = apply(nc, "mux", fail_with, text, targets=[0])
    assert nc.wait(ids, DEADLINE)
    reply = nc.reply(ids[0])
    assert reply.status == "error"
    assert reply.content["evalue"] == text
    assert reply.content["ename"] == "ValueError"
    assert nc.wait_outputs(ids, DEADLINE)
    nc.forget(ids)


def test_buffers_of_every_kind_go_out(nc):
    np = pytest.importorskip("numpy")
    big = np.arange(100_000, dtype=np.float64)  # 800 kB: a zero-copy frame
    bufs = pack_apply_message(total, (big,), {})
    assert any(not isinstance(b, bytes) for b in bufs)  # numpy's buffer, not bytes
    variants = [
        bufs,
        [bytes(b) for b in bufs],
        [bytearray(b) for b in bufs],
        [memoryview(bytes(b)) for b in bufs],
    ]
    ids = [nc.send("mux", "apply_request", b"{}", bytearray(b"{}"), v, [0])[0] for v in variants]
    assert nc.wait(ids, DEADLINE)
    for msg_id in ids:
        assert value_of(nc.reply(msg_id)) == (float(big.sum()), (100_000,))
    nc.forget(ids)
    with pytest.raises(TypeError, match="buffer"):
        nc.send("task", "apply_request", b"{}", b"{}", [object()])


def test_a_large_result_comes_back_as_memoryviews(nc):
    np = pytest.importorskip("numpy")

    @interactive
    def make(n):
        import numpy

        return numpy.ones(n)

    ids = apply(nc, "mux", make, 200_000, targets=[1])
    assert nc.wait(ids, DEADLINE)
    reply = nc.reply(ids[0])
    assert all(isinstance(b, memoryview) for b in reply.buffers)
    assert sum(b.nbytes for b in reply.buffers) >= 200_000 * 8
    assert np.array_equal(value_of(reply), np.ones(200_000))
    nc.forget(ids)


# -- outputs --------------------------------------------------------------------------------


def test_iopub_outputs_are_kept_per_request_until_idle(nc):
    ids = apply(nc, "mux", shout, "hello", targets=[0, 1])
    assert nc.wait(ids, DEADLINE)
    assert nc.wait_outputs(ids, DEADLINE)
    for msg_id in ids:
        assert value_of(nc.reply(msg_id)) == "HELLO"
        outputs = nc.outputs(msg_id)
        assert all(msg_type != "status" for msg_type, _ in outputs)
        streams = {}
        for msg_type, content in outputs:
            if msg_type == "stream":
                streams[content["name"]] = streams.get(content["name"], "") + content["text"]
        assert streams == {"stdout": "hello\n", "stderr": "to stderr\n"}
    nc.forget(ids)
    assert nc.outputs(ids[0]) == []


def test_execute_requests_publish_input_and_result(nc):
    ids = nc.send(
        "mux",
        "execute_request",
        dumps({"code": "print('side effect')\n6 * 7", "silent": False, "store_history": True,
               "user_expressions": {}, "allow_stdin": False}),
        b"{}",
        [],
        [0],
    )
    assert nc.wait(ids, DEADLINE) and nc.wait_outputs(ids, DEADLINE)
    reply = nc.reply(ids[0])
    assert reply.msg_type == "execute_reply" and reply.content["status"] == "ok"
    kinds = [msg_type for msg_type, _ in nc.outputs(ids[0])]
    assert "execute_input" in kinds and "execute_result" in kinds and "stream" in kinds
    result = dict(nc.outputs(ids[0]))["execute_result"]
    assert result["data"]["text/plain"] == "42"
    nc.forget(ids)


# -- waiting --------------------------------------------------------------------------------


def test_wait_any_timeouts_done_and_outstanding(nc):
    slow = apply(nc, "mux", sleep_then, 1.0, "slow", targets=[0])
    fast = apply(nc, "mux", sleep_then, 0.0, "fast", targets=[1])
    assert nc.wait(slow, 0.05) is False
    assert set(slow) <= nc.outstanding()
    assert nc.wait_any(slow + fast, DEADLINE) == fast
    assert nc.done(slow + fast) == fast
    assert nc.wait(slow + fast, DEADLINE)
    assert nc.wait_any(slow + fast, 0) == slow + fast
    assert nc.wait_any([], DEADLINE) == []
    assert nc.wait([], DEADLINE) is True
    with pytest.raises(TypeError, match="single str"):
        nc.wait(slow[0])
    nc.forget(slow + fast)


def test_waits_release_the_gil(nc):
    ids = apply(nc, "mux", sleep_then, 0.5, None, targets=[0])
    counted = []
    stop = threading.Event()

    def count():
        n = 0
        while not stop.is_set():
            n += 1
        counted.append(n)

    thread = threading.Thread(target=count)
    thread.start()
    try:
        assert nc.wait(ids, DEADLINE)
    finally:
        stop.set()
        thread.join()
    assert counted[0] > 1000
    nc.forget(ids)


def test_ctrl_c_interrupts_a_wait(nc):
    ids = apply(nc, "mux", sleep_then, 3.0, None, targets=[1])
    timer = threading.Timer(0.3, lambda: signal.raise_signal(signal.SIGINT))  # to the main thread
    timer.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        nc.wait(ids, DEADLINE)
    assert time.monotonic() - start < 2.5
    timer.join()
    assert nc.wait(ids, DEADLINE)  # the request itself is unaffected
    nc.forget(ids)


def test_untracked_requests_are_fire_and_forget(nc):
    ids = apply(nc, "task", noop, track=False)
    assert len(ids) == 1
    assert nc.wait(ids, 0) is True  # nothing to wait for
    assert nc.reply(ids[0]) is None and ids[0] not in nc.outstanding()


# -- hub queries ----------------------------------------------------------------------------


def test_queries_return_reply_content_whatever_the_status(nc):
    content, buffers = nc.query("queue_request", dumps({"targets": None, "verbose": False}))
    assert content["status"] == "ok" and buffers == []
    assert {"0", "1", "unassigned"} <= set(content)

    ids = apply(nc, "task", double, 8)
    assert nc.wait(ids, DEADLINE)
    records, _ = nc.query(
        "db_request", dumps({"query": {"msg_id": {"$in": ids}}, "keys": ["msg_id", "engine_uuid"]}), DEADLINE
    )
    assert records["status"] == "ok"
    assert [r["msg_id"] for r in records["records"]] == ids
    assert records["records"][0]["engine_uuid"] == nc.reply(ids[0]).metadata["engine"]
    result, buffers = nc.query("result_request", dumps({"msg_ids": ids, "status_only": False}))
    assert result["status"] == "ok" and result["completed"] == ids
    assert deserialize_object(buffers)[0] == 16
    nc.forget(ids)

    unknown, _ = nc.query("result_request", dumps({"msg_ids": ["nope"], "status_only": True}))
    assert unknown["status"] == "error" and unknown["ename"] == "KeyError"
    with pytest.raises(ValueError, match="JSON object"):
        nc.query("queue_request", b"[]")


# -- bad requests ---------------------------------------------------------------------------


def test_bad_requests_raise_clear_errors(nc):
    bufs = pack_apply_message(noop, (), {})
    with pytest.raises(IndexError, match="Engine 99 not registered"):
        nc.send("mux", "apply_request", b"{}", b"{}", bufs, [0, 99])
    with pytest.raises(IndexError, match=r"Engines \[7, 99\] not registered"):
        nc.send("control", "clear_request", b"{}", b"{}", [], [7, 99])
    with pytest.raises(IndexError, match="-1"):
        nc.send("broadcast", "apply_request", b"{}", b"{}", bufs, [-1])
    with pytest.raises(ValueError, match="no targets"):
        nc.send("mux", "apply_request", b"{}", b"{}", bufs, [])
    with pytest.raises(ValueError, match="unknown channel"):
        nc.send("shell", "apply_request", b"{}", b"{}", bufs)
    with pytest.raises(ValueError, match="content must be the text of a JSON object"):
        nc.send("task", "apply_request", b"[1]", b"{}", bufs)
    with pytest.raises(ValueError, match="metadata"):
        nc.send("task", "apply_request", b"{}", b"{oops", bufs)
    assert not nc.outstanding()


# -- failures: engine death, controller gone ------------------------------------------------


def test_a_killed_engine_ends_its_requests_with_engine_errors():
    cluster = start_cluster(2)
    try:
        nc = NativeClient(cluster.client_file.read_text())
        nc.wait_for_engines(2, DEADLINE)
        engines = nc.engines()
        victim = 1
        marker = cluster.tmp / "direct.started"
        direct = apply(nc, "mux", mark_then_sleep, str(marker), 60, targets=[victim])
        control = nc.send("control", "abort_request", dumps({"msg_ids": []}), b"{}", [], [victim])
        assert nc.wait(control, DEADLINE)  # control is answered while the task runs
        queued = apply(nc, "mux", double, 1, targets=[victim])
        task_marker = cluster.tmp / "task.started"
        # A load-balanced task on the other engine is unaffected.
        survivor = apply(nc, "task", double, 2, metadata=dict(LB_METADATA, targets=[engines[0]]))
        wait_for(marker.exists, "the task to start")
        pid = int(marker.read_text())
        victim_proc = {p.pid: p for p in cluster.engines}[pid]
        cluster.remember_children()
        victim_proc.kill()
        victim_proc.wait(timeout=DEADLINE)
        assert nc.wait(direct + queued + survivor, DEADLINE)
        for msg_id in direct + queued:
            reply = nc.reply(msg_id)
            assert reply.synthetic
            assert reply.msg_type == "apply_reply"
            assert reply.parent_header["msg_id"] == msg_id
            assert reply.content["status"] == "error"
            assert reply.content["ename"] == "EngineError"
            assert reply.content["evalue"] == f"Engine {victim} died while running task '{msg_id}'"
            assert reply.content["engine_info"]["engine_id"] == victim
            assert reply.metadata == {
                "engine_id": victim,
                "engine_uuid": engines[victim],
                "status": "error",
            }
            assert reply.buffers == []
        assert value_of(nc.reply(survivor[0])) == 4
        assert nc.wait_outputs(direct + queued, 0)
        wait_for(lambda: nc.ids() == [0], "the client to drop the dead engine")
        with pytest.raises(IndexError, match=f"Engine {victim} not registered"):
            apply(nc, "mux", double, 1, targets=[victim])

        # A load-balanced task on an engine that dies: the controller's EngineError.
        victim = 0
        ids = apply(nc, "task", mark_then_sleep, str(task_marker), 60,
                    metadata=dict(LB_METADATA, targets=[engines[victim]]))
        wait_for(task_marker.exists, "the load-balanced task to start")
        cluster.remember_children()
        cluster.engines[0].kill()
        cluster.engines[0].wait(timeout=DEADLINE)
        assert nc.wait(ids, DEADLINE)
        reply = nc.reply(ids[0])
        assert reply.content["status"] == "error" and reply.content["ename"] == "EngineError"
        assert nc.wait_outputs(ids, DEADLINE)
        nc.close()
    finally:
        cluster.stop()


def test_a_stopped_controller_ends_outstanding_requests_with_connection_errors():
    cluster = start_cluster(0)
    try:
        nc = NativeClient(cluster.client_file.read_text())
        assert nc.ids() == []
        ids = apply(nc, "task", double, 1)  # no engine: it waits in the scheduler
        assert nc.outstanding() == set(ids)
        content, _ = nc.query("shutdown_request", b"{}")
        assert content["status"] == "ok"
        assert nc.wait(ids, DEADLINE)
        reply = nc.reply(ids[0])
        assert reply.synthetic and reply.msg_type == "apply_reply"
        assert reply.content["ename"] == "ConnectionError"
        assert "shut down" in reply.content["evalue"]
        assert reply.metadata == {"status": "error"}
        with pytest.raises(ConnectionError):
            apply(nc, "task", double, 1)
        cluster.controller.wait(timeout=DEADLINE)
        nc.close()
        nc.close()  # idempotent
        assert nc.closed
        assert nc.reply(ids[0]) is not None  # still readable
    finally:
        cluster.stop()


def test_closing_ends_outstanding_requests(cluster):
    nc = NativeClient(cluster.client_file.read_text())
    nc.wait_for_engines(2, DEADLINE)
    ids = apply(nc, "mux", sleep_then, 2.0, None, targets=[0])
    nc.close()
    assert nc.wait(ids, DEADLINE)
    reply = nc.reply(ids[0])
    assert reply.synthetic and reply.content["ename"] == "ConnectionError"
    assert reply.status == "error"
    assert reply.metadata["engine_id"] == 0
    with pytest.raises(ConnectionError, match="closed"):
        apply(nc, "task", double, 1)


def test_many_noop_tasks_round_trip(nc):
    """A smoke check of the fast path (no timing assertion: CI machines vary)."""
    bufs = pack_apply_message(noop, (), {})
    metadata = dumps(LB_METADATA)
    n = 2000
    start = time.perf_counter()
    ids = nc.send_many("task", "apply_request", [(b"{}", metadata, bufs)] * n)
    assert nc.wait(ids, DEADLINE * 4)
    replies = [nc.reply(i) for i in ids]
    assert all(r.content["status"] == "ok" for r in replies)
    nc.forget(ids)
    elapsed = time.perf_counter() - start
    sys.stderr.write(f"\n{n} no-op tasks in {elapsed:.2f} s ({n / elapsed:.0f}/s)\n")
