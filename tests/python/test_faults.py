"""Bad peers: a client with the wrong key, and malformed frames sent straight to every
controller port. The controller must ignore them and keep serving everyone else.

Own cluster: this module throws garbage at the controller.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
import time

import ipyparallel as ipp
import pytest
import zmq
from ipyparallel import error
from jupyter_client.session import Session

DELIM = b"<IDS|MSG>"
TIMEOUT = 60


@ipp.interactive
def double(x):
    return 2 * x


def assert_still_serving(cluster):
    """Real work on every channel still succeeds, for a new client, and the controller
    process lives.

    A new client is used because the iopub relay forwards engine-side frames unchanged (as
    the reference does), so garbage published there reaches every client connected at the
    time, and the real client's IO thread does not survive it ("DELIM not in msg_list").
    """
    assert cluster.controller.poll() is None, "controller process exited"
    fresh = cluster.client()
    fresh.wait_for_engines(2, timeout=TIMEOUT)
    assert sorted(fresh.ids) == [0, 1]
    assert fresh[:].apply_sync(double, 21) == [42, 42]
    assert fresh.load_balanced_view().apply_sync(double, 4) == 8
    assert fresh.broadcast_view().apply_sync(double, 1) == [2, 2]
    assert fresh.broadcast_view(is_coalescing=True).apply_sync(double, 1) == [2, 2]
    assert {0, 1, "unassigned"} <= set(fresh.queue_status())
    assert fresh[:].apply_sync(double, 5) == [10, 10]
    assert fresh.load_balanced_view().map_sync(double, range(6)) == [2 * x for x in range(6)]
    ar = fresh[:].execute("print('still here')", silent=False, block=False)
    ar.get(timeout=TIMEOUT)
    ar.wait_for_output(timeout=TIMEOUT)
    assert ar.stdout == ["still here\n"] * 2
    # The Hub may still be working through the garbage it observed, so its records of this
    # work may trail the results a little: wait for them, within a bound.
    deadline = time.monotonic() + 30
    while len(fresh.db_query({"msg_id": {"$in": ar.msg_ids}}, keys=["msg_id"])) != 2:
        assert time.monotonic() < deadline, "the Hub never recorded the execute requests"
        time.sleep(0.1)


def test_client_with_a_wrong_key_gets_no_service(cluster, rc, tmp_path):
    info = cluster.client_info
    info["key"] = "not-" + info["key"]
    bad_file = tmp_path / "bad-client.json"
    bad_file.write_text(json.dumps(info))
    with pytest.raises((error.TimeoutError, TimeoutError)):
        ipp.Client(str(bad_file), timeout=3)
    assert rc[:].apply_sync(double, 3) == [6, 6]


# -- raw frames -------------------------------------------------------------------------------


def sign(key: bytes, parts: list[bytes]) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.hexdigest().encode()


def signed(key: bytes, parts: list[bytes], buffers: tuple[bytes, ...] = ()) -> list[bytes]:
    return [DELIM, sign(key, parts), *parts, *buffers]


def session_frames(session: Session, msg_type: str, content, buffers=()) -> list[bytes]:
    msg = session.msg(msg_type, content=content)
    return session.serialize(msg) + list(buffers)


def malformed_messages(key: bytes) -> list[tuple[bool, list[bytes]]]:
    """(well_formed_header, frames) pairs.

    `well_formed_header` marks messages with a valid signature and a valid header: a
    scheduler may legitimately forward those to an engine, which ignores what it does not
    understand and never answers, occupying that engine's task slot (the reference does
    exactly this), so they are not sent to the client-facing task port.
    """
    session = Session(key=key, signature_scheme="hmac-sha256")
    good = session_frames(session, "bogus_request", {"x": 1})
    header = session.pack(session.msg_header("queue_request"))
    huge = b"x" * (20 * 1024 * 1024)
    wrong_sig = list(good)
    wrong_sig[1] = b"0" * 64
    replay = session_frames(session, "history_request", {})
    bad = [
        [b""],
        [b"", b"", b"", b""],
        [b"no", b"delimiter", b"here"],
        [DELIM],
        [DELIM, b"sig"],
        [DELIM, b"", b"{}", b"{}", b"{}", b"{}"],  # unsigned
        wrong_sig,
        signed(key, [b"{not json", b"{}", b"{}", b"{}"]),
        signed(key, [b"[1, 2]", b"null", b'"x"', b"7"]),
        signed(key, [b"\xff\xfe\x00", b"{}", b"{}", b"{}"]),
        signed(key, [b"{}", b"{}", b"{}", b"{}"]),  # header without msg_id / msg_type
        signed(key, [json.dumps({"msg_type": 5, "msg_id": None}).encode(), b"{}", b"{}", b"{}"]),
        [huge],
        [DELIM, b"0" * 64, huge, b"{}", b"{}", b"{}"],
        # a task whose payload cannot be unpacked: the engine answers it with an error
        session_frames(session, "apply_request", {}, buffers=(b"\x80garbage", b"", b"\x00")),
    ]
    well_formed = [
        good,  # unknown msg_type, correctly signed
        replay,
        replay,  # the same signed frames twice
        signed(key, [header, b"{}", b"{}", b"not json either"]),
        session_frames(session, "queue_request", {"targets": "x"}),
        session_frames(session, "queue_request", {"targets": [99]}),
        session_frames(session, "result_request", {}),
        session_frames(session, "result_request", {"msg_ids": ["nope"], "status_only": False}),
        session_frames(session, "db_request", {"query": 5}),
        session_frames(session, "db_request", {"query": {"msg_id": {"$bogus": 1}}}),
        session_frames(session, "resubmit_request", {"msg_ids": "nope"}),
        session_frames(session, "resubmit_request", {"msg_ids": ["nope"]}),
        session_frames(session, "purge_request", {"msg_ids": 7}),
        session_frames(session, "purge_request", {"msg_ids": [], "engine_ids": [99]}),
        session_frames(session, "connection_request", {}, buffers=(b"extra",)),
        session_frames(session, "execute_request", {"code": 5}),
        session_frames(session, "bogus_request", {"blob": "y" * 1024}, buffers=(huge,)),
    ]
    return [(False, f) for f in bad] + [(True, f) for f in well_formed]


def wait_connected(sock: zmq.Socket, timeout: float = 10) -> None:
    """Waits for the ZMTP handshake on `sock` so that a PUB does not drop what we send."""
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        if monitor.poll(int(timeout * 1000)):
            monitor.recv_multipart()
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


def controller_ports(cluster) -> list[tuple[str, int, int]]:
    """(name, port, zmq socket type to connect with) for every port the controller binds."""
    client, engine = cluster.client_info, cluster.engine_info
    ports = []
    for side, info in (("client", client), ("engine", engine)):
        for name in ("registration", "control", "mux", "task"):
            ports.append((f"{side}.{name}", info[name], zmq.DEALER))
    ports.append(("client.broadcast", client["broadcast"], zmq.DEALER))
    ports.append(("client.iopub", client["iopub"], zmq.XSUB))  # PUB bound
    ports.append(("client.notification", client["notification"], zmq.XSUB))  # PUB bound
    ports.append(("engine.iopub", engine["iopub"], zmq.PUB))  # SUB bound
    ports.append(("engine.hb_ping", engine["hb_ping"], zmq.XSUB))  # PUB bound
    ports.append(("engine.hb_pong", engine["hb_pong"], zmq.DEALER))  # ROUTER bound
    for i, port in enumerate(engine["broadcast"]):
        ports.append((f"engine.broadcast[{i}]", port, zmq.DEALER))
    seen, unique = set(), []
    for name, port, kind in ports:
        if port not in seen:
            seen.add(port)
            unique.append((name, port, kind))
    return unique


def test_raw_tcp_garbage_to_every_port_does_not_stop_the_controller(cluster):
    """Bytes that are not ZMTP (or a bare ZMTP greeting) sent over plain TCP.

    Not to the engine-facing iopub port: libzmq accepts ZMTP/1.0 peers, so arbitrary bytes
    can decode as messages there, and the iopub relay forwards those unchanged to every
    client (the test with signed garbage below covers that port).
    """
    garbage = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        bytes(range(256)) * 16,
        b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\x00" * 48,  # greeting only
        b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"BOGUS" + b"\x00" * 47,  # bad mechanism
        b"\xff" * 64,
    ]
    for name, port, _ in controller_ports(cluster):
        if name == "engine.iopub":
            continue
        for payload in garbage:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                try:
                    s.sendall(payload)
                    s.settimeout(0.2)
                    s.recv(64)
                except OSError:
                    pass
        assert cluster.controller.poll() is None, f"controller exited after garbage to {name}"
    assert_still_serving(cluster)


def test_malformed_frames_to_every_port_do_not_stop_the_controller(cluster):
    key = cluster.client_info["key"].encode()
    assert cluster.engine_info["key"].encode() == key
    ports = controller_ports(cluster)
    assert len(ports) >= 13
    ctx = zmq.Context()
    try:
        for name, port, kind in ports:
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 5000)
            sock.setsockopt(zmq.SNDHWM, 0)
            if kind == zmq.DEALER:
                sock.setsockopt(zmq.IDENTITY, f"fuzz-{name}".encode())
            sock.connect(f"tcp://127.0.0.1:{port}")
            if kind in (zmq.PUB, zmq.XSUB):
                wait_connected(sock)
            for well_formed, frames in malformed_messages(key):
                if well_formed and name == "client.task":
                    continue
                sock.send_multipart(frames)
            # Drain whatever the controller answered (hub_error and the like); never required.
            if kind == zmq.DEALER:
                while sock.poll(200):
                    sock.recv_multipart()
            sock.close()
            assert cluster.controller.poll() is None, f"controller exited after fuzzing {name}"
    finally:
        ctx.destroy(linger=5000)
    assert_still_serving(cluster)
