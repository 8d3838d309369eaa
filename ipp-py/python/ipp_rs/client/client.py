"""The ipyparallel-compatible ``Client`` over the native client (``ipp_rs._ipp_rs``).

All networking, signing and reply bookkeeping run in Rust; this class keeps the history of
msg_ids it sent and turns stored replies into Python results only when asked (see
:mod:`ipp_rs.client.asyncresult`).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import types
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any, Iterator, Optional

from ._deps import NativeClient, deserialize_object, error
from ._metadata import ExecuteReply, Metadata, _get_ipython, build_metadata, parse_date
from ._resolver import Resolver
from .asyncresult import AsyncHubResult, AsyncResult
from .view import BroadcastView, DirectView, LoadBalancedView

_NO_CONTROLLER = (
    "You have attempted to connect to an IPython Cluster but no Controller could be found.\n"
    "Please double-check your configuration and ensure that a cluster is running."
)


def _ipython_dir() -> str:
    """$IPYTHONDIR, else ~/.ipython (as IPython's get_ipython_dir)."""
    env = os.environ.get("IPYTHONDIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.path.expanduser("~"), ".ipython")


def _compress_user(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if path.startswith(home) else path


def _profile_security_dir(profile: str, profile_dir: Optional[str], ipython_dir: Optional[str]) -> Optional[str]:
    """The security folder of the profile, or None when the profile folder does not exist."""
    if profile_dir is not None:
        path = os.path.abspath(os.path.expanduser(profile_dir))
    else:
        path = os.path.join(ipython_dir or _ipython_dir(), f"profile_{profile}")
    if not os.path.isdir(path):
        return None
    return os.path.join(path, "security")


def _default_profile() -> str:
    """The running IPython application's profile, else 'default'."""
    if "IPython" in sys.modules:
        try:
            from IPython.core.application import BaseIPythonApplication

            if BaseIPythonApplication.initialized():
                return BaseIPythonApplication.instance().profile
        except Exception:  # noqa: BLE001 - another Application subclass is running
            pass
    return "default"


def _load_connection_info(
    connection_info: Any,
    profile: str,
    profile_dir: Optional[str],
    ipython_dir: Optional[str],
    cluster_id: Optional[str],
    timeout: float,
) -> dict:
    """The connection dict, from a dict, a file path, or the profile's security folder
    (waiting up to `timeout` seconds for the file to appear, as ipyparallel)."""
    if isinstance(connection_info, dict):
        return dict(connection_info)
    if connection_info is None:
        security = _profile_security_dir(profile, profile_dir, ipython_dir)
        if security is None:
            raise OSError(_NO_CONTROLLER)
        name = f"ipcontroller-{cluster_id}-client.json" if cluster_id else "ipcontroller-client.json"
        path = os.path.join(security, name)
        if not os.path.exists(path):
            print(f"Waiting for connection file: {_compress_user(path)}")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not os.path.exists(path):
                time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        if not os.path.exists(path):
            raise OSError(f"Connection file {_compress_user(path)!r} not found.\n{_NO_CONTROLLER}")
    else:
        path = os.fspath(connection_info)
        if "://" in path:
            raise ValueError(
                f"single urls ({path!r}) cannot be specified, url-files must be used."
            )
        if not os.path.exists(path):
            raise OSError(
                f"Connection file {_compress_user(path)} not found. Is a controller running?"
            )
    with open(path) as f:
        return json.load(f)


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=_json_default).encode()


class _ResultsView(Mapping):
    """``client.results``: msg_id -> result, deserialized on access from the native
    client's stored replies (nothing is kept in Python)."""

    def __init__(self, client: "Client"):
        self._client = client

    def __getitem__(self, msg_id: str) -> Any:
        return self._client._result(msg_id)

    def __contains__(self, msg_id: object) -> bool:
        return self._client._has_result(msg_id)

    def _keys(self) -> list:
        client = self._client
        if client._native is None:
            return list(client._hub_results)
        done = client._native.done(client.history)
        return done + [k for k in client._hub_results if k not in set(done)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def pop(self, msg_id: str, *default: Any) -> Any:
        """Removes and returns a result (the native client forgets it)."""
        try:
            value = self[msg_id]
        except KeyError:
            if default:
                return default[0]
            raise
        self._client._forget([msg_id])
        return value

    def clear(self) -> None:
        """Forgets every completed result."""
        self._client._forget(self._keys())

    def __repr__(self) -> str:
        return f"<results of {len(self)} messages>"


class _MetadataView(Mapping):
    """``client.metadata``: msg_id -> :class:`Metadata`, built on access."""

    def __init__(self, client: "Client"):
        self._client = client

    def __getitem__(self, msg_id: str) -> Metadata:
        return build_metadata(self._client, msg_id)

    def __contains__(self, msg_id: object) -> bool:
        client = self._client
        if msg_id in client._hub_metadata:
            return True
        native = client._native
        return native is not None and isinstance(msg_id, str) and (
            native.reply(msg_id) is not None or bool(native.outputs(msg_id))
        )

    def __iter__(self) -> Iterator[str]:
        return iter(_ResultsView(self._client)._keys())

    def __len__(self) -> int:
        return len(_ResultsView(self._client)._keys())

    def pop(self, msg_id: str, *default: Any) -> Any:
        """Removes and returns one message's metadata (the native client forgets it)."""
        if msg_id not in self:
            if default:
                return default[0]
            raise KeyError(msg_id)
        md = self[msg_id]
        self._client._forget([msg_id])
        return md

    def clear(self) -> None:
        """Forgets every completed message."""
        _ResultsView(self._client).clear()


class Client:
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
        content = reply.content
        status = content.get("status")
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
        return self._unwrap_exception(content)

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
            from .asyncresult import progress

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
                elif hasattr(job, "add_done_callback") and not isinstance(job, str):
                    futures.append(job)
                else:
                    msg_ids.append(job)
        start = time.monotonic()
        if msg_ids and not self._native.wait(msg_ids, limit):
            return False
        if futures:
            import concurrent.futures

            remaining = None if limit is None else max(0.0, limit - (time.monotonic() - start))
            _, pending = concurrent.futures.wait(futures, timeout=remaining)
            return not pending
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

    # -- queries -----------------------------------------------------------------------

    def _query(self, msg_type: str, content: Any) -> tuple:
        """A Hub query; raises the Hub's error, returns (content, buffers)."""
        self._check_open()
        reply, buffers = self._native.query(msg_type, _dumps(content), None)
        if reply.get("status") != "ok":
            raise self._unwrap_exception(reply)
        return reply, buffers

    def get_result(self, indices_or_msg_ids: Any = None, block: Optional[bool] = None, owner: bool = True) -> AsyncResult:
        """An AsyncResult for earlier requests (history indices, msg_ids or AsyncResults);
        results this client no longer holds are fetched from the Hub (AsyncHubResult)."""
        block = self.block if block is None else block
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        ar = self._asyncresult_from_jobs(indices_or_msg_ids, owner=owner)
        if block:
            ar.wait()
        return ar

    def _asyncresult_from_jobs(self, jobs: Any = None, owner: bool = False) -> AsyncResult:
        single = not isinstance(jobs, (list, tuple, set, types.GeneratorType))
        if single:
            jobs = [jobs]
        msg_ids = self._msg_ids_from_jobs(jobs)
        outstanding = self.outstanding
        unknown = [
            m for m in msg_ids if m not in outstanding and not self._has_result(m)
        ]
        children: Any = msg_ids[0] if single and len(msg_ids) == 1 else msg_ids
        if unknown:
            return AsyncHubResult(self, children, owner=owner)
        return AsyncResult(self, children, owner=owner)

    def resubmit(self, indices_or_msg_ids: Any = None, metadata: Any = None, block: Optional[bool] = None) -> AsyncHubResult:
        """Resubmits finished tasks (through the Hub); returns an AsyncHubResult."""
        block = self.block if block is None else block
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        theids = self._msg_ids_from_jobs(indices_or_msg_ids)
        content, _ = self._query("resubmit_request", {"msg_ids": theids})
        mapping = content["resubmitted"]
        ar = AsyncHubResult(self, [mapping[m] for m in theids])
        if block:
            ar.wait()
        return ar

    def result_status(self, msg_ids: Any, status_only: bool = True) -> dict:
        """``{'pending': [...], 'completed': [...]}`` for `msg_ids`; with
        ``status_only=False`` also each completed result, keyed by msg_id (fetched from the
        Hub when not held here)."""
        theids = self._msg_ids_from_jobs(msg_ids)
        local = {m: self._result(m) for m in theids if self._has_result(m)}
        remote = [m for m in theids if m not in local]
        if remote:
            content, buffers = self._query(
                "result_request", {"msg_ids": remote, "status_only": status_only}
            )
        else:
            content, buffers = {"status": "ok", "completed": [], "pending": []}, []
        content["completed"].extend(local)
        if status_only:
            return content
        content.update(local)
        failures = self._store_hub_records(content, buffers, remote)
        for msg_id in remote:
            if msg_id in self._hub_results:
                content[msg_id] = self._hub_results[msg_id]
        if len(theids) == 1 and failures:
            raise failures[0]
        error.collect_exceptions(failures, "result_status")
        return content

    def _fetch_hub_results(self, msg_ids: list) -> list:
        """Fetches the completed ones of `msg_ids` from the Hub into this client's cache
        (errors are kept as results, not raised); returns the ids still pending."""
        content, buffers = self._query("result_request", {"msg_ids": msg_ids, "status_only": False})
        self._store_hub_records(content, buffers, msg_ids)
        return list(content.get("pending", []))

    def _store_hub_records(self, content: dict, buffers: Any, msg_ids: list) -> list:
        """Turns a result_reply's records into cached results and metadata; returns the
        failures among them."""
        from ._metadata import apply_reply_metadata

        buffers = list(buffers)
        failures = []
        completed = set(content.get("completed", []))
        for msg_id in sorted(set(msg_ids)):
            if msg_id not in completed or msg_id not in content:
                continue
            rec = content[msg_id]
            parent = rec.get("header") or {}
            header = rec.get("result_header") or {}
            rcontent = rec.get("result_content") or {}
            if isinstance(rcontent, str):
                rcontent = json.loads(rcontent)
            md = Metadata(msg_id=msg_id)
            fake = _HubReply(
                msg_id, header, parent, rec.get("result_metadata") or {}, rcontent, rec.get("received")
            )
            apply_reply_metadata(self, md, fake)
            if rec.get("received"):
                md["received"] = parse_date(rec["received"])
            md.update(rec.get("io") or {})
            if rcontent.get("status") == "ok":
                msg_type = header.get("msg_type")
                if msg_type == "apply_reply":
                    res, buffers = deserialize_object(buffers)
                elif msg_type == "execute_reply":
                    res = ExecuteReply(msg_id, rcontent, md)
                else:
                    raise KeyError(f"unhandled msg type: {msg_type!r}")
            elif rcontent.get("status") == "aborted":
                res = error.TaskAborted(msg_id)
                failures.append(res)
            else:
                res = self._unwrap_exception(rcontent)
                failures.append(res)
            self._hub_results[msg_id] = res
            self._hub_metadata[msg_id] = md
        return failures

    def queue_status(self, targets: Any = "all", verbose: bool = False) -> dict:
        """Queue lengths (or msg_id lists with ``verbose``) per engine, plus
        ``'unassigned'``."""
        engine_ids = None if targets == "all" else self._build_targets(targets)[1]
        content, _ = self._query("queue_request", {"targets": engine_ids, "verbose": verbose})
        content = dict(content)
        content.pop("status", None)
        status = {}
        for key, value in content.items():
            try:
                status[int(key)] = value
            except (TypeError, ValueError):
                status[key] = value
        if isinstance(targets, int):
            return status[targets]
        return status

    def _msg_ids_from_target(self, targets: Any = None) -> list:
        if not targets:
            return []
        uuids = {u.decode() for u in self._build_targets(targets)[0]}
        found = []
        for msg_id in self.results:
            md = self.metadata[msg_id]
            if md["engine_uuid"] in uuids:
                found.append(msg_id)
        return found

    def purge_local_results(self, jobs: Any = [], targets: Any = []) -> None:  # noqa: B006
        """Forgets held results and metadata of `jobs` (or 'all') and/or of all requests
        that ran on `targets`; RuntimeError if some are still outstanding."""
        if not targets and not jobs:
            raise ValueError("Must specify at least one of `targets` and `jobs`")
        outstanding = self.outstanding
        if jobs == "all":
            if outstanding:
                raise RuntimeError(f"Can't purge outstanding tasks: {outstanding}")
            self._forget(list(self.results) + list(self._hub_results))
            return
        msg_ids = set(self._msg_ids_from_target(targets))
        msg_ids.update(self._msg_ids_from_jobs(jobs))
        still = outstanding.intersection(msg_ids)
        if still:
            raise RuntimeError(f"Can't purge outstanding tasks: {still}")
        self._forget(list(msg_ids))

    def purge_hub_results(self, jobs: Any = [], targets: Any = []) -> None:  # noqa: B006
        """Tells the Hub to forget the records of `jobs` (or 'all') and/or of `targets`."""
        if not targets and not jobs:
            raise ValueError("Must specify at least one of `targets` and `jobs`")
        if targets:
            targets = self._build_targets(targets)[1]
        msg_ids = jobs if jobs == "all" else self._msg_ids_from_jobs(jobs)
        self._query("purge_request", {"engine_ids": targets, "msg_ids": msg_ids})

    def purge_results(self, jobs: Any = [], targets: Any = []) -> None:  # noqa: B006
        """purge_local_results and purge_hub_results with the same arguments."""
        self.purge_local_results(jobs=jobs, targets=targets)
        self.purge_hub_results(jobs=jobs, targets=targets)

    def purge_everything(self) -> None:
        """purge_results('all') and clears the history."""
        self.purge_results("all")
        self.history = []

    def hub_history(self) -> list:
        """Every msg_id the Hub has recorded, by submission time."""
        content, _ = self._query("history_request", {})
        return content["history"]

    def db_query(self, query: dict, keys: Any = None) -> list:
        """Task records of the Hub's database matching a mongodb-style `query`
        (fields `keys`, default all but buffers)."""
        if isinstance(keys, str):
            keys = [keys]
        content, buffers = self._query("db_request", {"query": query, "keys": keys})
        records = content["records"]
        buffer_lens = content.get("buffer_lens")
        result_buffer_lens = content.get("result_buffer_lens")
        buffers = list(buffers)
        for i, rec in enumerate(records):
            for hkey in ("header", "result_header"):
                if isinstance(rec.get(hkey), dict):
                    rec[hkey] = {k: parse_date(v) if k == "date" else v for k, v in rec[hkey].items()}
            for dtkey in ("submitted", "started", "completed", "received"):
                if dtkey in rec:
                    rec[dtkey] = parse_date(rec[dtkey])
            if buffer_lens is not None:
                n = buffer_lens[i]
                rec["buffers"], buffers = buffers[:n], buffers[n:]
            if result_buffer_lens is not None:
                n = result_buffer_lens[i]
                rec["result_buffers"], buffers = buffers[:n], buffers[n:]
        return records


class _EngineMap(dict):
    """id -> uuid, also answering uuid -> id (as ipyparallel's ReverseDict)."""

    def __init__(self, forward: dict):
        super().__init__(forward)
        self._reverse = {uuid: eid for eid, uuid in forward.items()}

    def __getitem__(self, key: Any) -> Any:
        try:
            return dict.__getitem__(self, key)
        except KeyError:
            return self._reverse[key]

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


class _HubReply:
    """A Hub task record shaped like a native Reply, for the metadata builder."""

    def __init__(self, msg_id: str, header: dict, parent: dict, metadata: dict, content: dict, received: Any):
        self.msg_id = msg_id
        self.header = header
        self.parent_header = parent
        self.metadata = metadata
        self.content = content
        parsed = parse_date(received)
        self.received = parsed.timestamp() if hasattr(parsed, "timestamp") else time.time()


__all__ = ["Client", "ExecuteReply", "Metadata"]
