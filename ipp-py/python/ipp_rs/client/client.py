"""The ipyparallel-compatible ``Client`` over the native client (``ipp_rs._ipp_rs``).

All networking, signing and reply bookkeeping run in Rust; this class keeps the history of
msg_ids it sent and turns stored replies into Python results only when asked (see
:mod:`ipp_rs.client.asyncresult`).
"""

from __future__ import annotations

import json
import os
import threading
import time
import types
import warnings
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any, Iterator, Optional

from ._connection import _default_profile, _load_connection_info
from ._deps import NativeClient, deserialize_object, error
from ._hub import HubQueries
from ._metadata import ExecuteReply, Metadata, _get_ipython, build_metadata
from ._resolver import Resolver
from ._state import _dumps, _EngineMap, _MetadataView, _ResultsView
from .asyncresult import AsyncResult
from .view import BroadcastView, DirectView, LoadBalancedView


class Client(HubQueries):
    """A client of an IPython Parallel cluster (ipyparallel's ``Client``).

    Parameters
    ----------
    connection_info : str or dict
        The path to ``ipcontroller-client.json``, or the dict it holds.
        [Default: the profile's security folder]
    profile : str
        The profile whose connection file to use (default: ``'default'``, or the running
        IPython application's).
    profile_dir, ipython_dir : str
        Where the profile lives (default: ``$IPYTHONDIR`` or ``~/.ipython``).
    cluster_id : str
        Looks for ``ipcontroller-<cluster_id>-client.json``.
    timeout : float
        Seconds to wait for the connection file and for the controller's answer.
    debug : bool
        Turns on debug logging of the Rust client (stderr).

    SSH tunnelling (``sshserver``, ``sshkey``, ``password``, ``paramiko``) is not
    implemented and raises NotImplementedError.
    """

    block = False
    _closed = True
    _native: Any = None

    def __init__(
        self,
        connection_info: Any = None,
        *,
        url_file: Any = None,
        profile: Optional[str] = None,
        profile_dir: Optional[str] = None,
        ipython_dir: Optional[str] = None,
        context: Any = None,
        debug: bool = False,
        sshserver: Optional[str] = None,
        sshkey: Optional[str] = None,
        password: Optional[str] = None,
        paramiko: Optional[bool] = None,
        timeout: float = 10,
        cluster_id: Optional[str] = None,
        cluster: Any = None,
        **extra_args: Any,
    ):
        for argname in ("url_or_file",):
            if argname in extra_args:
                url_file = extra_args.pop(argname)
        if url_file is not None:
            warnings.warn(
                "url_file arg no longer supported, use positional connection_info argument",
                DeprecationWarning,
                stacklevel=2,
            )
            connection_info = url_file
        if sshserver or sshkey or password or paramiko:
            raise NotImplementedError(
                "ipp_rs.Client does not tunnel over SSH (sshserver/sshkey/password/paramiko): "
                "forward the controller's ports yourself (ssh -L) and connect to them, "
                "or use ipyparallel's Client"
            )
        if extra_args:
            raise TypeError(
                f"ipp_rs.Client got unsupported arguments {sorted(extra_args)}: "
                "there is no jupyter_client Session to pass them to"
            )
        if context is not None:
            warnings.warn(
                "ipp_rs.Client does not use pyzmq; the `context` argument is not used",
                RuntimeWarning,
                stacklevel=2,
            )
        self.block = False
        self.debug = bool(debug)
        self.profile = profile or _default_profile()
        self.cluster = cluster
        self.history: list = []
        self._hub_results: dict = {}
        self._hub_metadata: dict = {}
        self._uuid_to_id: dict = {}
        # msg_ids of coalescing broadcasts (their reply holds a list of results)
        self._coalescing: set = set()
        # the lock of every AsyncResult's Future side (see AsyncResult.__init__)
        self._future_condition = threading.Condition()
        if debug:
            from .. import init_logging

            init_logging("debug")

        cfg = _load_connection_info(
            connection_info, self.profile, profile_dir, ipython_dir, cluster_id, timeout
        )
        try:
            self._task_scheme = cfg["task_scheme"]
            for key in ("key", "signature_scheme"):
                cfg[key]
        except KeyError as exc:
            raise ValueError(
                f"Connection file is invalid (missing {exc}), possibly from an old version of "
                "IPython. If you are reusing connection files, remove them and start "
                "ipcontroller again."
            ) from None
        if cfg.get("ssh"):
            location = cfg.get("location")
            warnings.warn(
                f"the connection file asks for an SSH tunnel via {cfg['ssh']!r} (controller on "
                f"{location!r}); ipp_rs connects directly",
                RuntimeWarning,
                stacklevel=2,
            )
        self._config = cfg
        self._native = NativeClient(json.dumps(cfg), connect_timeout=float(timeout))
        self._closed = False
        self._resolver = Resolver(self._native, self._coalescing.difference_update)
        self._results_view = _ResultsView(self)
        self._metadata_view = _MetadataView(self)

        ip = _get_ipython()
        if ip is not None and "px" not in ip.magics_manager.magics["line"]:
            # in IPython and the first Client: a default view for the parallel magics
            try:
                self.activate()
            except ImportError:
                pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._native.ids())} engines"
        return f"<ipp_rs.Client {state}>"

    # -- state -------------------------------------------------------------------------

    @property
    def ids(self) -> list:
        """The ids of the registered engines, sorted (always up to date)."""
        self._check_open()
        return list(self._native.ids())

    @property
    def outstanding(self) -> set:
        """msg_ids submitted whose replies have not arrived yet."""
        if self._native is None or self._closed:
            return set()
        return set(self._native.outstanding())

    @property
    def results(self) -> _ResultsView:
        """msg_id -> result of every completed request still held (read on access)."""
        return self._results_view

    @property
    def metadata(self) -> _MetadataView:
        """msg_id -> :class:`Metadata` of every request still held (built on access)."""
        return self._metadata_view

    @property
    def session(self) -> Any:
        """The session id of this client (the ``session`` of its message headers)."""
        return types.SimpleNamespace(session=self._native.session_id)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: Any) -> DirectView:
        if not isinstance(key, (int, slice, tuple, list, range)):
            raise TypeError(f"key by int/slice/iterable of ints only, not {type(key)}")
        return self.direct_view(key)

    def __iter__(self) -> Iterator[DirectView]:
        for eid in self.ids:
            yield self.direct_view(eid)

    @property
    def _engines(self) -> "_EngineMap":
        """Engine id -> uuid of the registered engines (also answers uuid -> id), as
        ipyparallel's ``Client._engines``."""
        self._check_open()
        return _EngineMap({int(k): v for k, v in self._native.engines().items()})

    # The channels requests go out on, named as ipyparallel's sockets (for
    # send_apply_request / send_execute_request).
    _mux_socket = "mux"
    _task_socket = "task"
    _broadcast_socket = "broadcast"

    def _check_open(self) -> None:
        if self._closed or self._native is None:
            raise RuntimeError("Client cannot be used after its sockets have been closed")

    def _engine_id(self, uuid: str) -> Optional[int]:
        """The id of an engine uuid (also of engines that have since unregistered)."""
        eid = self._uuid_to_id.get(uuid)
        if eid is None and self._native is not None and not self._closed:
            for i, u in self._native.engines().items():
                self._uuid_to_id[u] = int(i)
            eid = self._uuid_to_id.get(uuid)
        return eid

    def _build_targets(self, targets: Any) -> tuple:
        """Valid targets (an id, a list/range/slice of ids, 'all' or None) as
        ``(uuid bytes list, id list)``, as ipyparallel's."""
        self._check_open()
        engines = {int(k): v for k, v in self._native.engines().items()}
        for eid, uuid in engines.items():
            self._uuid_to_id[uuid] = eid
        ids = sorted(engines)
        if not ids:
            raise error.NoEnginesRegistered("Can't build targets without any engines")
        if targets is None:
            targets = ids
        elif isinstance(targets, str):
            if targets.lower() == "all":
                targets = ids
            else:
                raise TypeError(f"{targets!r} not valid str target, must be 'all'")
        elif isinstance(targets, int):
            if targets < 0:
                targets = ids[targets]
            if targets not in engines:
                raise IndexError(f"No such engine: {targets}")
            targets = [targets]
        if isinstance(targets, slice):
            targets = [ids[i] for i in range(len(ids))[targets]]
        if not isinstance(targets, (tuple, list, range)):
            raise TypeError(f"targets by int/slice/collection of ints only, not {type(targets)}")
        targets = list(targets)
        missing = [t for t in targets if t not in engines]
        if missing:
            raise IndexError(f"No such engine: {missing[0] if len(missing) == 1 else missing}")
        return [engines[t].encode("utf8") for t in targets], targets

    # -- sending -----------------------------------------------------------------------

    def _submit(
        self,
        channel: str,
        msg_type: str,
        content: bytes,
        metadata: bytes,
        buffers: list,
        targets: Optional[list] = None,
        coalescing: bool = False,
    ) -> list:
        """Sends one request (one per target on mux); records and returns the msg_ids."""
        self._check_open()
        msg_ids = self._native.send(
            channel, msg_type, content, metadata, buffers, targets, coalescing, True
        )
        if coalescing:
            self._coalescing.update(msg_ids)
        self.history.extend(msg_ids)
        return msg_ids

    def _submit_many(self, msg_type: str, requests: list) -> list:
        """Sends a batch of load-balanced requests in one hop; records their msg_ids."""
        self._check_open()
        msg_ids = self._native.send_many("task", msg_type, requests)
        self.history.extend(msg_ids)
        return msg_ids

    def _channel_targets(self, socket: Any, ident: Any) -> tuple:
        if socket not in ("mux", "task", "broadcast"):
            raise ValueError(
                f"socket must be one of the client's channels ('mux', 'task', 'broadcast': "
                f"client._mux_socket, ._task_socket, ._broadcast_socket), not {socket!r}"
            )
        if ident is None:
            return socket, None
        idents = ident if isinstance(ident, list) else [ident]
        ids = []
        for one in idents:
            uuid = one.decode() if isinstance(one, (bytes, bytearray)) else str(one)
            eid = self._engine_id(uuid)
            if eid is None:
                raise IndexError(f"No such engine: {uuid!r}")
            ids.append(eid)
        return socket, ids

    def send_apply_request(
        self,
        socket: Any,
        f: Any,
        args: Any = None,
        kwargs: Any = None,
        metadata: Optional[dict] = None,
        track: bool = False,
        ident: Any = None,
        message_future_hook: Any = None,
    ) -> AsyncResult:
        """Sends one ``apply_request`` of ``f(*args, **kwargs)`` with the given request
        `metadata` on a channel (``client._mux_socket`` with the engine's uuid as `ident`,
        ``client._task_socket``, ``client._broadcast_socket``): the low-level call views
        are built on. Returns the AsyncResult of the request."""
        from ._packing import check_callable, pack_apply
        from .remotefunction import getname

        self._check_open()
        check_callable(f)
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be dict, not {type(metadata)}")
        channel, targets = self._channel_targets(socket, ident)
        bufs = pack_apply(f, args if args is not None else [], kwargs if kwargs is not None else {})
        msg_ids = self._submit(channel, "apply_request", b"{}", _dumps(metadata or {}), bufs, targets)
        ar = AsyncResult(self, msg_ids[0] if len(msg_ids) == 1 else msg_ids, fname=getname(f), targets=targets, owner=True)
        if message_future_hook is not None:
            message_future_hook(ar)
        return ar

    def send_execute_request(
        self,
        socket: Any,
        code: str,
        silent: bool = True,
        metadata: Optional[dict] = None,
        ident: Any = None,
        message_future_hook: Any = None,
    ) -> AsyncResult:
        """Sends one ``execute_request`` of `code` on a channel (see
        :meth:`send_apply_request`); returns its AsyncResult."""
        self._check_open()
        if not isinstance(code, str):
            raise TypeError(f"code must be text, not {type(code)}")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be dict, not {type(metadata)}")
        channel, targets = self._channel_targets(socket, ident)
        content = _dumps({"code": code, "silent": bool(silent), "user_expressions": {}})
        msg_ids = self._submit(channel, "execute_request", content, _dumps(metadata or {}), [], targets)
        ar = AsyncResult(self, msg_ids[0] if len(msg_ids) == 1 else msg_ids, fname="execute", targets=targets, owner=True)
        if message_future_hook is not None:
            message_future_hook(ar)
        return ar

    # -- results -----------------------------------------------------------------------

    def _has_result(self, msg_id: Any) -> bool:
        if msg_id in self._hub_results:
            return True
        native = self._native
        return native is not None and isinstance(msg_id, str) and native.reply(msg_id) is not None

    def _result(self, msg_id: str) -> Any:
        """The result of a completed request: its value, or the exception it ended with
        (RemoteError, TaskAborted, ...), not raised. KeyError if there is no reply."""
        if msg_id in self._hub_results:
            return self._hub_results[msg_id]
        reply = self._native.reply(msg_id) if self._native is not None else None
        if reply is None:
            raise KeyError(msg_id)
        return self._result_of(reply)

    def _result_of(self, reply: Any) -> Any:
        # The status is read without building the content: an ok apply_reply needs only
        # its buffers.
        status = reply.status
        msg_id = reply.msg_id
        if status == "ok":
            bufs = reply.buffers
            # An ok apply_reply always carries its serialized result; other replies carry
            # no buffers (this spares parsing the header for the usual case).
            if bufs:
                if msg_id in self._coalescing:
                    values = []
                    while bufs:
                        value, bufs = deserialize_object(bufs)
                        values.append(value)
                    return values
                return deserialize_object(bufs)[0]
            content = reply.content
            msg_type = reply.msg_type
            if msg_type == "apply_reply":
                return deserialize_object(bufs)[0]
            if msg_type == "execute_reply":
                return ExecuteReply(msg_id, content, lambda: build_metadata(self, msg_id))
            return {
                "msg_id": msg_id,
                "msg_type": msg_type,
                "header": reply.header,
                "parent_header": reply.parent_header,
                "metadata": reply.metadata,
                "content": content,
            }
        if status == "aborted":
            return error.TaskAborted(msg_id)
        return self._unwrap_exception(reply.content)

    def _unwrap_exception(self, content: dict) -> Exception:
        """The RemoteError of an error content, with engine_id filled in from the uuid."""
        e = error.unwrap_exception(content)
        info = e.engine_info
        if info and "engine_id" not in info and "engine_uuid" in info:
            eid = self._engine_id(info["engine_uuid"])
            if eid is None:
                raise KeyError(info["engine_uuid"])
            info["engine_id"] = eid
        return e

    def _forget(self, msg_ids: list) -> None:
        for msg_id in msg_ids:
            self._hub_results.pop(msg_id, None)
            self._hub_metadata.pop(msg_id, None)
            self._coalescing.discard(msg_id)
        if self._native is not None and not self._closed:
            self._native.forget(list(msg_ids))

    # -- public methods ----------------------------------------------------------------

    def activate(self, targets: Any = "all", suffix: str = "") -> DirectView:
        """A blocking DirectView registered with IPython's parallel magics
        (``%px``, ``%%px``, ``%autopx``, ``%pxresult`` + `suffix`)."""
        view = self.direct_view(targets)
        view.block = True
        view.activate(suffix)
        return view

    def close(self, linger: Any = None) -> None:
        """Closes the connections (idempotent). Pending AsyncResults stay unresolved."""
        if self._closed:
            return
        self._closed = True
        if self._native is not None:
            self._native.close()
        resolver = getattr(self, "_resolver", None)
        if resolver is not None:
            resolver.stop()

    def spin(self) -> None:
        """DEPRECATED, DOES NOTHING (IO always runs in the background)."""
        warnings.warn("Client.spin is deprecated now that IO is in a thread", DeprecationWarning)

    def spin_thread(self, interval: float = 1) -> None:
        """DEPRECATED, DOES NOTHING."""
        warnings.warn(
            "Client.spin_thread is deprecated now that IO is always in a thread",
            DeprecationWarning,
        )

    def stop_spin_thread(self) -> None:
        """DEPRECATED, DOES NOTHING."""
        warnings.warn(
            "Client.spin_thread is deprecated now that IO is always in a thread",
            DeprecationWarning,
        )

    def wait_for_engines(
        self,
        n: Optional[int] = None,
        *,
        timeout: float = -1,
        block: bool = True,
        interactive: Optional[bool] = None,
        widget: Optional[bool] = None,
    ) -> Optional[Future]:
        """Waits until `n` engines are registered; TimeoutError after `timeout` seconds
        (-1: no limit). ``block=False`` returns a Future instead. ``interactive`` shows a
        progress bar (default: inside IPython)."""
        if n is None:
            if self.cluster is None:
                raise TypeError("n engines to wait for must be specified")
            n = self.cluster.n or sum(es.n for es in self.cluster.engines.values())
        self._check_open()
        if len(self.ids) >= n:
            if block:
                return None
            done: Future = Future()
            done.set_result(None)
            return done
        if interactive is None:
            interactive = (
                os.getenv("IPP_NONINTERACTIVE", "") in {"", "0"} and _get_ipython() is not None
            )
        limit = None if timeout is None or timeout < 0 else float(timeout)

        def wait() -> None:
            if not interactive:
                try:
                    self._native.wait_for_engines(n, limit)
                except TimeoutError:
                    raise TimeoutError(
                        f"{n} engines not ready in {timeout} seconds. "
                        f"Currently ready: {len(self.ids)}"
                    ) from None
                return
            from ._display import progress

            bar = progress(widget=widget, initial=len(self.ids), total=n, unit="engine")
            deadline = None if limit is None else time.monotonic() + limit
            try:
                while True:
                    current = len(self.ids)
                    bar.update(current - bar.n)
                    if current >= n:
                        return
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(
                            f"{n} engines not ready in {timeout} seconds. "
                            f"Currently ready: {current}"
                        )
                    try:
                        self._native.wait_for_engines(current + 1, 0.1)
                    except TimeoutError:
                        pass
            finally:
                bar.close()

        if block:
            wait()
            return None
        future: Future = Future()

        def run() -> None:
            try:
                wait()
            except BaseException as exc:  # noqa: BLE001
                future.set_exception(exc)
            else:
                future.set_result(None)

        threading.Thread(target=run, name="ipp_rs-wait-for-engines", daemon=True).start()
        return future

    def _msg_ids_from_jobs(self, jobs: Any = None) -> list:
        """msg_ids from one or a list of msg_ids, history indices and AsyncResults."""
        if not isinstance(jobs, (list, tuple, set, types.GeneratorType)):
            jobs = [jobs]
        msg_ids = []
        for job in jobs:
            if isinstance(job, int):
                msg_ids.append(self.history[job])
            elif isinstance(job, str):
                msg_ids.append(job)
            elif isinstance(job, AsyncResult):
                msg_ids.extend(job.msg_ids)
            else:
                raise TypeError(f"Expected msg_id, int, or AsyncResult, got {job!r}")
        return msg_ids

    def wait(self, jobs: Any = None, timeout: float = -1) -> bool:
        """Waits for `jobs` (msg_ids, history indices, AsyncResults or futures; default:
        everything outstanding) for up to `timeout` seconds (-1: no limit). True if all
        are done."""
        limit = None if timeout is None or timeout < 0 else timeout
        futures = []
        given = []  # the AsyncResults among jobs
        if jobs is None:
            msg_ids = list(self.outstanding)
        else:
            if isinstance(jobs, (str, int, AsyncResult)) or not isinstance(jobs, Iterable):
                jobs = [jobs]
            msg_ids = []
            for job in jobs:
                if isinstance(job, int):
                    msg_ids.append(self.history[job])
                elif isinstance(job, AsyncResult):
                    msg_ids.extend(job.msg_ids)
                    given.append(job)
                elif hasattr(job, "add_done_callback") and not isinstance(job, str):
                    futures.append(job)
                else:
                    msg_ids.append(job)
        start = time.monotonic()
        if given:
            if not self._wait_resolving(msg_ids, given, limit):
                return False
        elif msg_ids and not self._native.wait(msg_ids, limit):
            return False
        if futures:
            import concurrent.futures

            remaining = None if limit is None else max(0.0, limit - (time.monotonic() - start))
            _, pending = concurrent.futures.wait(futures, timeout=remaining)
            return not pending
        return True

    def _wait_resolving(self, msg_ids: list, given: list, limit: Optional[float]) -> bool:
        """Waits for `msg_ids` (`limit` seconds at most; None: no limit) and resolves each
        AsyncResult of `given` as soon as all its replies are in, while the others are
        still running: their results are unpacked while the engines work rather than all
        after the last reply (the caller asks for them next, as a rule)."""
        waiting: dict = {}
        left: dict = {}
        for ar in given:
            left[id(ar)] = len(ar.msg_ids)
            for msg_id in ar.msg_ids:
                waiting.setdefault(msg_id, []).append(ar)
        completions = self._native.completions(msg_ids)
        deadline = None if limit is None else time.monotonic() + limit
        while completions.remaining:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done = completions.next(remaining)
            if not done:
                return False  # timed out
            for msg_id in done:
                for ar in waiting.pop(msg_id, ()):
                    left[id(ar)] -= 1
                    if left[id(ar)] == 0:
                        ar._resolve()
        return True

    def wait_interactive(self, jobs: Any = None, interval: float = 1.0, timeout: float = -1.0) -> None:
        """Waits for `jobs` (default: everything outstanding) with a progress bar."""
        if jobs is None:
            msg_ids = list(self.outstanding)
            if not msg_ids:
                return
            ar = AsyncResult(self, msg_ids, owner=False)
        else:
            ar = self._asyncresult_from_jobs(jobs, owner=False)
        ar.wait_interactive(interval=interval, timeout=timeout)

    # -- control -----------------------------------------------------------------------

    def _send_control_request(self, targets: Any, msg_type: str, content: dict, block: bool) -> Any:
        _, ids = self._build_targets(targets)
        msg_ids = self._native.send("control", msg_type, _dumps(content), b"{}", [], ids, False, True)
        if not block:
            return AsyncResult(self, msg_ids, fname=msg_type, targets=ids, owner=True)
        try:
            self._native.wait(msg_ids, None)
            for msg_id in msg_ids:
                reply = self._native.reply(msg_id)
                if reply is not None and reply.content.get("status") != "ok":
                    raise self._unwrap_exception(dict(reply.content))
        finally:
            self._native.forget(msg_ids)
        return None

    def send_signal(self, sig: Any, targets: Any = None, block: Optional[bool] = None) -> Any:
        """Sends a signal (number or name, e.g. 'SIGINT') to the engines."""
        block = self.block if block is None else block
        return self._send_control_request(targets, "signal_request", {"sig": sig}, block)

    def clear(self, targets: Any = None, block: Optional[bool] = None) -> Any:
        """Clears the namespace of the engines."""
        block = self.block if block is None else block
        return self._send_control_request(targets, "clear_request", {}, block)

    def abort(self, jobs: Any = None, targets: Any = None, block: Optional[bool] = None) -> Any:
        """Aborts queued jobs (msg_ids or AsyncResults; default: all outstanding) on the
        engines; running jobs are not interrupted (use :meth:`send_signal`)."""
        block = self.block if block is None else block
        jobs = jobs if jobs is not None else list(self.outstanding)
        if isinstance(jobs, (str, AsyncResult)):
            jobs = [jobs]
        bad = [obj for obj in jobs if not isinstance(obj, (str, AsyncResult))]
        if bad:
            raise TypeError(f"Invalid msg_id type {bad[0]!r}, expected str or AsyncResult")
        msg_ids: list = []
        for job in jobs:
            if isinstance(job, AsyncResult):
                msg_ids.extend(job.msg_ids)
            else:
                msg_ids.append(job)
        return self._send_control_request(targets, "abort_request", {"msg_ids": msg_ids}, block)

    def shutdown(
        self, targets: Any = "all", restart: bool = False, hub: bool = False, block: Optional[bool] = None
    ) -> None:
        """Stops engines (`targets`), and the controller too with ``hub=True``."""
        if restart:
            raise NotImplementedError("Engine restart is not yet implemented")
        block = self.block if block is None else block
        if hub:
            targets = "all"
        try:
            _, ids = self._build_targets(targets)
        except error.NoEnginesRegistered:
            ids = []
        failure: Optional[Exception] = None
        if ids:
            msg_ids = self._native.send(
                "control", "shutdown_request", _dumps({"restart": restart}), b"{}", [], ids, False, True
            )
            if block or hub:
                self._native.wait(msg_ids, None)
                for msg_id in msg_ids:
                    reply = self._native.reply(msg_id)
                    if reply is not None and reply.content.get("status") != "ok":
                        failure = self._unwrap_exception(dict(reply.content))
                self._native.forget(msg_ids)
        if hub:
            content, _ = self._native.query("shutdown_request", b"{}", None)
            if content.get("status") != "ok":
                failure = self._unwrap_exception(content)
            if failure is None:
                self.close()
        if failure is not None:
            raise failure

    def become_dask(self, *args: Any, **kwargs: Any) -> Any:
        """Not implemented: our controller runs no dask scheduler."""
        raise NotImplementedError(
            "become_dask is not implemented in ipp_rs: the controller runs no dask "
            "scheduler; start dask.distributed yourself"
        )

    def stop_dask(self, *args: Any, **kwargs: Any) -> Any:
        """Not implemented (see :meth:`become_dask`)."""
        raise NotImplementedError("stop_dask is not implemented in ipp_rs (see become_dask)")

    become_distributed = become_dask
    stop_distributed = stop_dask

    # -- views -------------------------------------------------------------------------

    def load_balanced_view(self, targets: Any = None, **kwargs: Any) -> LoadBalancedView:
        """A LoadBalancedView over all engines, or over `targets`."""
        if targets == "all":
            targets = None
        if targets is not None:
            targets = self._build_targets(targets)[1]
        return LoadBalancedView(client=self, targets=targets, **kwargs)

    def executor(self, targets: Any = None) -> Any:
        """A concurrent.futures Executor load-balancing over `targets`."""
        return self.load_balanced_view(targets).executor

    def direct_view(self, targets: Any = "all", **kwargs: Any) -> DirectView:
        """A DirectView: 'all' follows the engines registered at each call, other targets
        are fixed now."""
        single = isinstance(targets, int)
        if targets != "all":
            targets = self._build_targets(targets)[1]
        if single:
            targets = targets[0]
        return DirectView(client=self, targets=targets, **kwargs)

    def broadcast_view(self, targets: Any = "all", is_coalescing: bool = False, **kwargs: Any) -> BroadcastView:
        """A BroadcastView (one message to the broadcast scheduler fans out to `targets`);
        ``is_coalescing`` collects all replies into one."""
        targets = self._build_targets(targets)[1]
        view = BroadcastView(client=self, targets=targets, **kwargs)
        view.is_coalescing = is_coalescing
        return view
__all__ = ["Client", "ExecuteReply", "Metadata"]

