"""TEMPORARY development stand-in for ipp_rs._ipp_rs.NativeClient (pyzmq + jupyter_client),
following /work/briefs/native_client_contract.md. Delete once helper A's Rust client lands."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Optional

import zmq
from jupyter_client.session import Session


class Reply:
    def __init__(self, msg: dict, synthetic: bool = False, msg_id: Optional[str] = None):
        self.header = dict(msg["header"])
        self.parent_header = dict(msg["parent_header"])
        self.metadata = dict(msg["metadata"])
        self.content = dict(msg["content"])
        self.buffers = [memoryview(b) for b in msg.get("buffers", [])]
        self.msg_type = self.header.get("msg_type")
        self.msg_id = msg_id or self.parent_header.get("msg_id")
        self.synthetic = synthetic
        self.received = time.time()
        for d in (self.header, self.parent_header):
            if "date" in d and not isinstance(d["date"], str):
                d["date"] = d["date"].isoformat()


class NativeClient:
    def __init__(self, connection_info: str, *, connect_timeout: float = 10.0):
        cfg = json.loads(connection_info)
        self._cfg = cfg
        self._ctx = zmq.Context()
        self.session = Session(
            key=cfg["key"].encode(), signature_scheme=cfg["signature_scheme"], packer="json", unpacker="json"
        )
        import jupyter_client.session as js

        js.extract_dates = lambda obj: obj
        iface = cfg["interface"]
        self._url = lambda k: f"{iface}:{cfg[k]}"
        self._lock = threading.Condition()
        self._replies: dict = {}
        self._outstanding: set = set()
        self._outputs: dict = {}
        self._idle: set = set()
        self._engines: dict = {}
        self._by_engine: dict = {}
        self._queries: dict = {}
        self._sendq: list = []
        self._closed = False
        q = self._ctx.socket(zmq.DEALER)
        q.connect(self._url("registration"))
        self.session.send(q, "connection_request")
        if not q.poll(connect_timeout * 1000):
            q.close(0)
            raise TimeoutError("Hub connection request timed out")
        _, msg = self.session.recv(q, mode=0)
        if msg["content"]["status"] != "ok":
            raise OSError("connection refused")
        self._engines = {int(k): v for k, v in msg["content"]["engines"].items()}
        self._socks = {"query": q}
        for name in ("mux", "task", "control", "broadcast"):
            s = self._ctx.socket(zmq.DEALER)
            s.connect(self._url(name))
            self._socks[name] = s
        for name in ("iopub", "notification"):
            s = self._ctx.socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(self._url(name))
            self._socks[name] = s
        self._wake_r = self._ctx.socket(zmq.PAIR)
        self._wake_r.bind(f"inproc://wake-{id(self)}")
        self._wake_w = self._ctx.socket(zmq.PAIR)
        self._wake_w.connect(f"inproc://wake-{id(self)}")
        self._wlock = threading.Lock()
        self._thread = threading.Thread(target=self._io, daemon=True)
        self._thread.start()

    @property
    def session_id(self) -> str:
        return self.session.session

    def ids(self):
        with self._lock:
            return sorted(self._engines)

    def engines(self):
        with self._lock:
            return dict(self._engines)

    def wait_for_engines(self, n, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while len(self._engines) < n:
                rem = None if deadline is None else deadline - time.monotonic()
                if rem is not None and rem <= 0:
                    raise TimeoutError(f"{n} engines not ready; {len(self._engines)} registered")
                self._lock.wait(0.1 if rem is None else min(rem, 0.1))
            return sorted(self._engines)

    def _enqueue(self, item):
        with self._wlock:
            self._sendq.append(item)
            self._wake_w.send(b"")

    def send(self, channel, msg_type, content, metadata, buffers, targets=None, coalescing=False, track=True):
        content = json.loads(content)
        metadata = json.loads(metadata)
        bufs = [bytes(b) for b in buffers]
        ids = []
        with self._lock:
            engines = dict(self._engines)
        if channel in ("mux", "control"):
            if not targets:
                raise ValueError("targets required")
            for t in targets:
                if t not in engines:
                    raise IndexError(f"Engine {t} not registered")
            for t in targets:
                msg = self.session.msg(msg_type, content=content, metadata=metadata)
                mid = msg["header"]["msg_id"]
                ids.append(mid)
                with self._lock:
                    if track:
                        self._outstanding.add(mid)
                    self._by_engine.setdefault(engines[t], {})[mid] = msg_type
                self._enqueue((channel, msg, bufs, [engines[t].encode()]))
        elif channel == "task":
            msg = self.session.msg(msg_type, content=content, metadata=metadata)
            mid = msg["header"]["msg_id"]
            ids.append(mid)
            with self._lock:
                self._outstanding.add(mid)
            self._enqueue((channel, msg, bufs, None))
        elif channel == "broadcast":
            for t in targets:
                if t not in engines:
                    raise IndexError(f"Engine {t} not registered")
            md = dict(metadata)
            md["targets"] = [[engines[t], t] for t in targets]
            md["is_broadcast"] = True
            md["is_coalescing"] = coalescing
            msg = self.session.msg(msg_type, content=content, metadata=md)
            mid = msg["header"]["msg_id"]
            if coalescing:
                ids = [mid]
            else:
                ids = [f"{mid}_{engines[t]}" for t in targets]
            with self._lock:
                self._outstanding.update(ids)
                for t, rid in zip(targets, ids if not coalescing else ids * len(targets)):
                    self._by_engine.setdefault(engines[t], {})[rid] = msg_type
            self._enqueue((channel, msg, bufs, None))
        else:
            raise ValueError(channel)
        return ids

    def send_many(self, channel, msg_type, requests):
        out = []
        for c, m, b in requests:
            out.extend(self.send(channel, msg_type, c, m, b))
        return out

    def wait(self, msg_ids, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if all(m in self._replies for m in msg_ids):
                    return True
                rem = None if deadline is None else deadline - time.monotonic()
                if rem is not None and rem <= 0:
                    return False
                self._lock.wait(0.1 if rem is None else min(rem, 0.1))

    def wait_any(self, msg_ids, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                done = [m for m in msg_ids if m in self._replies]
                if done:
                    return done
                rem = None if deadline is None else deadline - time.monotonic()
                if rem is not None and rem <= 0:
                    return []
                self._lock.wait(0.1 if rem is None else min(rem, 0.1))

    def done(self, msg_ids):
        with self._lock:
            return [m for m in msg_ids if m in self._replies]

    def outstanding(self):
        with self._lock:
            return set(self._outstanding)

    def reply(self, msg_id):
        with self._lock:
            return self._replies.get(msg_id)

    def forget(self, msg_ids):
        with self._lock:
            for m in msg_ids:
                self._replies.pop(m, None)
                self._outputs.pop(m, None)
                self._idle.discard(m)

    def outputs(self, msg_id):
        with self._lock:
            return list(self._outputs.get(msg_id, ()))

    def wait_outputs(self, msg_ids, timeout):
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if all(m in self._idle for m in msg_ids):
                    return True
                rem = deadline - time.monotonic()
                if rem <= 0:
                    return False
                self._lock.wait(min(rem, 0.1))

    def query(self, msg_type, content, timeout=None):
        msg = self.session.msg(msg_type, content=json.loads(content))
        mid = msg["header"]["msg_id"]
        ev = threading.Event()
        self._queries[mid] = [ev, None]
        self._enqueue(("query", msg, [], None))
        if not ev.wait(timeout):
            raise TimeoutError("query timed out")
        r = self._queries.pop(mid)[1]
        return dict(r["content"]), [bytes(b) for b in r.get("buffers", [])]

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._enqueue(("stop", None, None, None))
        self._thread.join(2)

    # -- io thread
    def _store(self, msg, synthetic=False):
        md = msg["metadata"]
        if md.get("is_broadcast") and md.get("is_coalescing"):
            mid = md.get("original_msg_id")
        else:
            mid = msg["parent_header"].get("msg_id")
        with self._lock:
            self._replies[mid] = Reply(msg, synthetic, mid)
            self._outstanding.discard(mid)
            for d in self._by_engine.values():
                d.pop(mid, None)
            self._lock.notify_all()

    def _io(self):
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        for s in self._socks.values():
            poller.register(s, zmq.POLLIN)
        by_sock = {v: k for k, v in self._socks.items()}
        while True:
            for sock, _ in poller.poll(1000):
                if sock is self._wake_r:
                    self._wake_r.recv()
                    with self._wlock:
                        q, self._sendq = self._sendq, []
                    for ch, msg, bufs, ident in q:
                        if ch == "stop":
                            for s in self._socks.values():
                                s.close(0)
                            return
                        self.session.send(self._socks[ch], msg, buffers=bufs, ident=ident)
                    continue
                name = by_sock[sock]
                parts = sock.recv_multipart(copy=True)
                idents, rest = self.session.feed_identities(parts, copy=True)
                msg = self.session.deserialize(rest, content=True, copy=True)
                mt = msg["header"]["msg_type"]
                if name == "query":
                    pid = msg["parent_header"].get("msg_id")
                    if pid in self._queries:
                        self._queries[pid][1] = msg
                        self._queries[pid][0].set()
                elif name in ("mux", "task", "control", "broadcast"):
                    self._store(msg)
                elif name == "iopub":
                    parent = msg["parent_header"]
                    if not parent or parent.get("session") != self.session.session:
                        continue
                    pid = parent["msg_id"]
                    with self._lock:
                        if mt == "status":
                            if msg["content"].get("execution_state") == "idle":
                                self._idle.add(pid)
                                self._lock.notify_all()
                        else:
                            item = (mt, dict(msg["content"]))
                            if msg.get("buffers"):
                                item = (mt, dict(msg["content"]), [bytes(b) for b in msg["buffers"]])
                            self._outputs.setdefault(pid, []).append(item)
                elif name == "notification":
                    c = msg["content"]
                    with self._lock:
                        if mt == "registration_notification":
                            self._engines[int(c["id"])] = c["uuid"]
                        elif mt == "unregistration_notification":
                            uuid = self._engines.pop(int(c["id"]), c.get("uuid"))
                            stranded = self._by_engine.pop(uuid, {})
                            for mid, rtype in stranded.items():
                                if mid in self._replies:
                                    continue
                                fake = {
                                    "header": {"msg_type": rtype.replace("_request", "_reply"), "msg_id": "x"},
                                    "parent_header": {"msg_id": mid},
                                    "metadata": {"engine_id": int(c["id"]), "engine_uuid": uuid, "status": "error"},
                                    "content": {
                                        "status": "error", "ename": "EngineError",
                                        "evalue": f"Engine {c['id']} died while running task {mid!r}",
                                        "traceback": [], "engine_info": {"engine_id": int(c["id"]), "engine_uuid": uuid},
                                    },
                                }
                                self._replies[mid] = Reply(fake, True, mid)
                                self._outstanding.discard(mid)
                        self._lock.notify_all()
