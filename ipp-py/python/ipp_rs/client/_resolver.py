"""One background thread per Client that resolves the ``concurrent.futures.Future`` side
of AsyncResults someone waits on asynchronously (``add_done_callback``, ``await``,
``concurrent.futures.wait`` / ``as_completed``), and lets the native client forget the
replies of AsyncResults that were dropped.

Blocking calls (``get``, ``wait``, ``result``) never go through this thread: they wait in
Rust directly. An AsyncResult is watched only once something needs it resolved in the
background, so a plain ``map(...).get()`` costs no Python work per task here.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .asyncresult import AsyncResult

# How long one native wait lasts before newly watched results are picked up.
_SLICE = 0.02
# How long a dropped result's outputs may take to complete before its reply is forgotten
# anyway (a reply without a final `status: idle`, e.g. a synthetic engine-death error).
_OUTPUT_GRACE = 10.0


class Resolver:
    """Watches AsyncResults for one native client on a daemon thread (started on first
    use, stopped by :meth:`stop`)."""

    def __init__(self, native: Any, on_forget: Any = None):
        self._native = native
        self._on_forget = on_forget
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # msg_id -> AsyncResults waiting for it; AsyncResult -> msg_ids it still waits for
        self._waiting: dict[str, list] = {}
        self._pending: dict[Any, set] = {}
        # msg_ids of dropped results, to forget once answered
        self._released: list = []
        # dropped results whose outputs matter: (msg_ids, deadline, objects to materialize)
        self._released_keep: list[tuple[list, float, list]] = []
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- called from any thread ----------------------------------------------------------

    def watch(self, ar: "AsyncResult") -> None:
        """Resolve `ar` as soon as all its messages have replies."""
        with self._lock:
            if self._stopped or ar in self._pending:
                return
            ids = set(ar.msg_ids)
            self._pending[ar] = ids
            for msg_id in ids:
                self._waiting.setdefault(msg_id, []).append(ar)
            self._ensure_thread()
        self._wake.set()

    def release(self, msg_ids: list, keep_alive: list) -> None:
        """Lets the native client forget `msg_ids`: those already answered now, the others
        once answered (until then they stay outstanding, so ``client.wait()`` still waits
        for them). With `keep_alive` objects (ExecuteReplies, whose metadata is read from
        the outputs) the ids are forgotten only once their outputs are complete, after
        calling ``_materialize()`` on those objects."""
        if not msg_ids:
            return
        if keep_alive:
            with self._lock:
                if self._stopped:
                    return
                self._released_keep.append(
                    (list(msg_ids), time.monotonic() + _OUTPUT_GRACE, keep_alive)
                )
                self._ensure_thread()
            self._wake.set()
            return
        done = self._native.done(msg_ids)
        if done:
            self._forget(done)
        if len(done) < len(msg_ids):
            finished = set(done)
            with self._lock:
                if self._stopped:
                    return
                self._released.extend(m for m in msg_ids if m not in finished)
                self._ensure_thread()
            self._wake.set()

    def _forget(self, msg_ids: list) -> None:
        self._native.forget(msg_ids)
        if self._on_forget is not None:
            self._on_forget(msg_ids)

    def stop(self) -> None:
        """Stops the thread (the client closed): results still watched are resolved now,
        from the synthetic replies the native client gave their outstanding requests."""
        with self._lock:
            self._stopped = True
            watched = list(self._pending)
            self._waiting.clear()
            self._pending.clear()
            self._released.clear()
            self._released_keep.clear()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)
        for ar in watched:
            ar._resolve_in_background()

    # -- the thread ----------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="ipp_rs-resolver", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
                ids = list(self._waiting)
                busy = bool(ids or self._released or self._released_keep)
            if not busy:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                if ids:
                    done = self._native.wait_any(ids, _SLICE)
                    self._resolve(done)
                else:
                    self._wake.wait(0.2)
                    self._wake.clear()
                self._forget_released()
            except Exception:  # noqa: BLE001 - the client was closed under us
                with self._lock:
                    if self._stopped:
                        return
                time.sleep(_SLICE)

    def _resolve(self, done: list) -> None:
        ready = []
        with self._lock:
            for msg_id in done:
                for ar in self._waiting.pop(msg_id, ()):
                    pending = self._pending.get(ar)
                    if pending is None:
                        continue
                    pending.discard(msg_id)
                    if not pending:
                        del self._pending[ar]
                        ready.append(ar)
        for ar in ready:
            ar._resolve_in_background()

    def _forget_released(self) -> None:
        with self._lock:
            released, self._released = self._released, []
            keeps, self._released_keep = self._released_keep, []
        if released:
            done = self._native.done(released)
            if done:
                self._forget(done)
            if len(done) < len(released):
                finished = set(done)
                with self._lock:
                    self._released.extend(m for m in released if m not in finished)
        if not keeps:
            return
        now = time.monotonic()
        later = []
        for msg_ids, deadline, keep_alive in keeps:
            answered = len(self._native.done(msg_ids)) == len(msg_ids)
            if answered and (now > deadline or self._native.wait_outputs(msg_ids, 0)):
                for obj in keep_alive:
                    obj._materialize()
                self._forget(msg_ids)
            else:
                # the grace period for outputs starts once every reply is in
                later.append((msg_ids, deadline if answered else now + _OUTPUT_GRACE, keep_alive))
        if later:
            with self._lock:
                self._released_keep.extend(later)
