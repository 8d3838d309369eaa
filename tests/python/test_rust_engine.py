"""Our Rust engines (``examples/ipengine``) under the controller under test, driven by the
real ipyparallel 9.2.0 client, over real ZeroMQ on 127.0.0.1.

What the real client can do with Rust engines: everything that does not need the engine to
run Python (``ids``, ``wait_for_engines``, ``queue_status``, ``abort``, ``shutdown``); a
pickled ``apply`` comes back as a RemoteError saying the engine runs Rust functions. Calls
of registered Rust functions use the Rust-call layout (``ipp_core::protocol::apply``), which
this module sends from a plain pyzmq socket signed with jupyter_client's Session, next to
the real client.

The Rust engine binary is ``$IPP_ENGINE_BIN``, by default
``<repo or $CARGO_TARGET_DIR>/target/debug/examples/ipengine`` (build it with
``cargo build --examples``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import ipyparallel as ipp
import pytest
import zmq
from ipyparallel import error
from jupyter_client.session import Session

from ippcluster import REPO_ROOT, Cluster

TIMEOUT = 60


def engine_bin() -> Path:
    return Path(
        os.environ.get("IPP_ENGINE_BIN")
        or Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
        / "debug"
        / "examples"
        / "ipengine"
    )


class RustEngineCluster(Cluster):
    """The controller under test with our Rust engines instead of ipyparallel's."""

    def start_engine(self) -> subprocess.Popen:
        binary = engine_bin()
        if not binary.exists():
            raise FileNotFoundError(
                f"{binary} does not exist: build it with `cargo build --examples` "
                "or set IPP_ENGINE_BIN"
            )
        index = len(self.engines)
        log = self.tmp / f"engine-{index}.log"
        # Each engine asks for its index as id, so engine process i is engine id i.
        engine = self._spawn([str(binary), f"--file={self.engine_file}", f"--id={index}"], log)
        self.engines.append(engine)
        return engine


@pytest.fixture(scope="module")
def cluster():
    c = RustEngineCluster().start(engines=2)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def rc(cluster):
    client = cluster.client()
    client.wait_for_engines(2, timeout=TIMEOUT)
    return client


class RustCaller:
    """Sends Rust calls on the client MUX port and reads their replies and IOPub output."""

    def __init__(self, cluster: Cluster):
        info = cluster.client_info
        self.session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
        self.ctx = zmq.Context()
        self.mux = self.ctx.socket(zmq.DEALER)
        self.mux.linger = 0
        self.mux.connect(f"{info['interface']}:{info['mux']}")
        self.iopub = self.ctx.socket(zmq.SUB)
        self.iopub.linger = 0
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.iopub.connect(f"{info['interface']}:{info['iopub']}")

    def close(self):
        self.mux.close()
        self.iopub.close()
        self.ctx.term()

    def call(self, uuid: str, function: str, arg) -> str:
        content = {
            "rust": {"function": function, "names": [], "formats": ["json"], "frames": [1]}
        }
        msg = self.session.send(
            self.mux,
            "apply_request",
            content=content,
            buffers=[json.dumps(arg).encode()],
            ident=uuid.encode(),
        )
        return msg["header"]["msg_id"]

    def _recv(self, socket) -> dict:
        if not socket.poll(TIMEOUT * 1000):
            raise TimeoutError("no message within the timeout")
        _, msg = self.session.recv(socket, mode=0)
        return msg

    def reply(self) -> dict:
        return self._recv(self.mux)

    def result(self, msg: dict):
        assert msg["content"]["status"] == "ok", msg["content"]
        (fmt,) = msg["content"]["rust"]["formats"]
        assert fmt == "json"
        return json.loads(bytes(msg["buffers"][0]))

    def outputs(self, msg_id: str) -> list[dict]:
        """IOPub messages for msg_id up to and including its `status: idle`."""
        seen = []
        while True:
            msg = self._recv(self.iopub)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            seen.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return seen


@pytest.fixture(scope="module")
def caller(cluster, rc):
    c = RustCaller(cluster)
    # A SUB socket only receives what is published after its subscription reached the
    # relay: wait until a status message of our own call arrives.
    uuid = rc._engines[rc.ids[0]]
    deadline = time.monotonic() + TIMEOUT
    while True:
        msg_id = c.call(uuid, "ipp.noop", None)
        c.reply()
        if c.iopub.poll(200):
            c.outputs(msg_id)
            break
        assert time.monotonic() < deadline, "never saw IOPub traffic from the engine"
    yield c
    c.close()


def test_rust_engines_register_and_the_client_lists_them(rc):
    assert sorted(rc.ids) == [0, 1]


def test_wait_for_engines_in_a_new_client(cluster):
    rc2 = cluster.client()
    rc2.wait_for_engines(2, timeout=TIMEOUT)
    assert sorted(rc2.ids) == [0, 1]


def test_queue_status_reports_every_engine(rc):
    status = rc.queue_status()
    assert status["unassigned"] == 0
    for eid in (0, 1):
        assert set(status[eid]) == {"queue", "completed", "tasks"}
    assert set(rc.queue_status(targets=0, verbose=False)) == {"queue", "completed", "tasks"}


def test_a_pickled_apply_is_refused_with_a_clear_remote_error(rc):
    with pytest.raises(error.RemoteError) as info:
        rc[0].apply_sync(lambda: 1)
    assert info.value.ename == "NotImplementedError"
    assert "runs registered Rust functions, not Python" in str(info.value)
    # And on a load-balanced view too (the reply goes through the task scheduler).
    with pytest.raises(error.RemoteError) as info:
        rc.load_balanced_view().apply_sync(lambda: 1)
    assert "Rust functions" in str(info.value)


def test_execute_is_refused(rc):
    with pytest.raises(error.RemoteError) as info:
        rc[0].execute("a = 1", block=True)
    assert "execute of code is not supported" in str(info.value)


def test_registered_functions_run_and_print_to_iopub(rc, caller):
    uuid = rc._engines[0]
    caller.call(uuid, "fib", 50)
    reply = caller.reply()
    assert caller.result(reply) == 12586269025
    md = reply["metadata"]
    assert md["engine"] == uuid and md["status"] == "ok" and md["dependencies_met"] is True

    msg_id = caller.call(uuid, "digit_counts", "3.14159265358979")
    assert caller.result(caller.reply()) == [0, 2, 1, 2, 1, 3, 1, 1, 1, 3]
    outputs = caller.outputs(msg_id)
    kinds = [(m["msg_type"], m["content"].get("execution_state") or m["content"].get("text"))
             for m in outputs]
    assert kinds == [("status", "busy"), ("stream", "counted 15 digits\n"), ("status", "idle")]

    caller.call(uuid, "fail", "nope")
    reply = caller.reply()
    assert reply["content"]["ename"] == "RustError"
    assert reply["content"]["evalue"] == "nope"
    assert reply["content"]["engine_info"] == {
        "engine_uuid": uuid, "engine_id": 0, "method": "apply"
    }


def test_abort_answers_queued_requests_as_aborted(rc, caller):
    uuid = rc._engines[1]
    running = caller.call(uuid, "sleep", 1.0)
    doomed = caller.call(uuid, "square", 4)
    kept = caller.call(uuid, "square", 5)
    # The real client's abort, while `sleep` runs (control is handled at once).
    rc.abort(jobs=[doomed], targets=[1], block=True)
    replies = {}
    for _ in range(3):
        msg = caller.reply()
        replies[msg["parent_header"]["msg_id"]] = msg
    assert caller.result(replies[running]) == 1.0
    assert replies[doomed]["content"] == {"status": "aborted"}
    assert replies[doomed]["metadata"]["status"] == "aborted"
    assert caller.result(replies[kept]) == 25


def test_clear_and_signals_are_acknowledged(rc):
    rc.clear(targets=[0], block=True)
    rc.send_signal(2, targets=[0], block=True)


def test_shutdown_of_one_engine_then_of_the_hub(cluster, rc):
    rc.shutdown(targets=[1], block=True)
    deadline = time.monotonic() + TIMEOUT
    while 1 in rc.ids:
        assert time.monotonic() < deadline, "engine 1 was not unregistered"
        time.sleep(0.05)
    assert cluster.engines[1].wait(timeout=TIMEOUT) == 0
    assert rc.ids == [0]

    rc.shutdown(hub=True, block=True)
    assert cluster.engines[0].wait(timeout=TIMEOUT) == 0
    assert cluster.controller.wait(timeout=TIMEOUT) == 0
