"""Views of the engines (ipyparallel's ``DirectView``, ``LoadBalancedView``,
``BroadcastView``): how requests are addressed and what metadata they carry. Requests are
packed here and handed to the native client, which signs, sends and tracks them."""

from __future__ import annotations

import builtins
import inspect
import json
import secrets
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from . import map as Map
from ._deps import Dependency, dependent, serialize
from ._metadata import _get_ipython
from ._imap import LazyMapIterator, lazy_imap
from ._packing import (
    broadcast_map_function,
    check_callable,
    pack_apply,
    pull_function,
    push_function,
    remote_import_function,
    use_serializer_function,
)
from .asyncresult import AsyncMapResult, AsyncResult
from .futures import ViewExecutor
from .remotefunction import ParallelFunction, getname, parallel, remote

if TYPE_CHECKING:
    from .client import Client

_EMPTY = b"{}"


def _check_time_limit(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"Invalid type for time_limit: {type(value)!r}")
    if value <= 0:
        raise ValueError(f"Invalid time_limit: {value} (seconds, > 0)")


class View:
    """What every view has: flags (``block``, ``track``, ``targets``, ``label``) and the
    apply / map / wait / abort family. Use a subclass."""

    _flag_names = ["targets", "block", "track", "label", "time_limit"]
    _load_balanced = False
    _channel = "mux"

    def __init__(self, client: "Client", socket: Any = None, **flags: Any):
        if self.__class__ is View:
            raise TypeError("Don't use base View objects, use subclasses")
        object.__setattr__(self, "_md_cache", None)
        self.client = client
        self.block = client.block
        self.track = False
        self.targets = None
        self.label = None
        self.time_limit = None
        self.history: list = []
        self._executor: Optional[ViewExecutor] = None
        self.set_flags(**flags)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._flag_names:
            object.__setattr__(self, "_md_cache", None)
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        strtargets = str(self.targets)
        if len(strtargets) > 16:
            strtargets = strtargets[:12] + "...]"
        return f"<{self.__class__.__name__} {strtargets}>"

    def __len__(self) -> int:
        if isinstance(self.targets, list):
            return len(self.targets)
        if isinstance(self.targets, int):
            return 1
        return len(self.client)

    @property
    def results(self) -> Any:
        """The client's results (msg_id -> result, read on access)."""
        return self.client.results

    @property
    def outstanding(self) -> set:
        """The msg_ids sent through this view still without reply."""
        return set(self.history).intersection(self.client.outstanding)

    @property
    def executor(self) -> ViewExecutor:
        """A ``concurrent.futures.Executor`` over this view."""
        if self._executor is None:
            self._executor = ViewExecutor(self)
        return self._executor

    def set_flags(self, **kwargs: Any) -> "View":
        """Sets flags by keyword (block, track, targets, label, ...); returns the view."""
        for name, value in kwargs.items():
            if name not in self._flag_names:
                raise KeyError(f"Invalid name: {name!r}")
            if name == "time_limit":
                _check_time_limit(value)
            setattr(self, name, value)
        return self

    @contextmanager
    def temp_flags(self, **kwargs: Any) -> Iterator[None]:
        """Sets flags for the duration of a ``with`` block."""
        saved = {name: getattr(self, name) for name in self._flag_names}
        self.set_flags(**kwargs)
        try:
            yield
        finally:
            self.set_flags(**saved)

    # -- metadata --------------------------------------------------------------------

    def _metadata_dict(self, **overrides: Any) -> dict:
        label = overrides.get("label")
        label = self.label if label is None else label
        md: dict = {"label": label}
        time_limit = overrides.get("time_limit")
        time_limit = self.time_limit if time_limit is None else time_limit
        if time_limit is not None:
            _check_time_limit(time_limit)
            md["time_limit"] = float(time_limit)
        return md

    def _request_metadata(self, **overrides: Any) -> bytes:
        """The JSON metadata of a request with the view's flags (cached while they do
        not change) overridden by `overrides`."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if not overrides:
            cached = self._md_cache
            if cached is None:
                cached = json.dumps(self._metadata_dict()).encode()
                object.__setattr__(self, "_md_cache", cached)
            return cached
        return json.dumps(self._metadata_dict(**overrides)).encode()

    # -- apply -----------------------------------------------------------------------

    def _really_apply(self, f: Any, args: Any = None, kwargs: Any = None, block: Any = None, **options: Any) -> Any:
        raise NotImplementedError("Implement in subclasses")

    def apply(self, f: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Calls ``f(*args, **kwargs)`` on the engines: the result if ``self.block``,
        else an AsyncResult."""
        return self._really_apply(f, args, kwargs)

    def apply_async(self, f: Any, /, *args: Any, **kwargs: Any) -> AsyncResult:
        """Calls ``f(*args, **kwargs)`` on the engines; returns an AsyncResult."""
        return self._really_apply(f, args, kwargs, block=False)

    def apply_sync(self, f: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Calls ``f(*args, **kwargs)`` on the engines and returns the result."""
        return self._really_apply(f, args, kwargs, block=True)

    def _finish(self, ar: AsyncResult, block: bool) -> Any:
        if block:
            try:
                return ar.get()
            except KeyboardInterrupt:
                pass
        return ar

    # -- client and control wrappers -------------------------------------------------

    def spin(self) -> None:
        """DEPRECATED, DOES NOTHING."""
        self.client.spin()

    def wait(self, jobs: Any = None, timeout: float = -1) -> bool:
        """Waits for `jobs` (default: everything sent through this view)."""
        if jobs is None:
            jobs = self.history
        return self.client.wait(jobs, timeout)

    def abort(self, jobs: Any = None, targets: Any = None, block: Any = None) -> Any:
        """Aborts queued jobs (default: this view's outstanding ones) on its engines."""
        block = block if block is not None else self.block
        targets = targets if targets is not None else self.targets
        jobs = jobs if jobs is not None else list(self.outstanding)
        return self.client.abort(jobs=jobs, targets=targets, block=block)

    def queue_status(self, targets: Any = None, verbose: bool = False) -> dict:
        """The queue status of this view's engines."""
        targets = targets if targets is not None else self.targets
        if targets is None:
            targets = "all"
        return self.client.queue_status(targets=targets, verbose=verbose)

    def purge_results(self, jobs: Any = [], targets: Any = []) -> None:  # noqa: B006
        """Forgets results here and in the Hub."""
        if targets is None or targets == "all":
            targets = self.targets
        return self.client.purge_results(jobs=jobs, targets=targets)

    def shutdown(self, targets: Any = None, restart: bool = False, hub: bool = False, block: Any = None) -> None:
        """Stops this view's engines (and the controller with ``hub=True``)."""
        block = self.block if block is None else block
        if targets is None or targets == "all":
            targets = self.targets if self.targets is not None else "all"
        return self.client.shutdown(targets=targets, restart=restart, hub=hub, block=block)

    def get_result(self, indices_or_msg_ids: Any = None, block: Any = None, owner: bool = False) -> AsyncResult:
        """An AsyncResult for earlier requests of this view (indices into its history)."""
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        if isinstance(indices_or_msg_ids, int):
            indices_or_msg_ids = self.history[indices_or_msg_ids]
        elif isinstance(indices_or_msg_ids, (list, tuple, set)):
            indices_or_msg_ids = [
                self.history[i] if isinstance(i, int) else i for i in indices_or_msg_ids
            ]
        return self.client.get_result(indices_or_msg_ids, block=block, owner=owner)

    # -- map -------------------------------------------------------------------------

    def map(self, f: Callable, *sequences: Any, **kwargs: Any) -> Any:
        raise NotImplementedError()

    def map_async(self, f: Callable, *sequences: Any, **kwargs: Any) -> Any:
        """``map(..., block=False)``: an AsyncMapResult."""
        if "block" in kwargs:
            raise TypeError("map_async doesn't take a `block` keyword argument.")
        kwargs["block"] = False
        return self.map(f, *sequences, **kwargs)

    def map_sync(self, f: Callable, *sequences: Any, **kwargs: Any) -> Any:
        """``map(..., block=True)``: the list of results."""
        if "block" in kwargs:
            raise TypeError("map_sync doesn't take a `block` keyword argument.")
        kwargs["block"] = True
        return self.map(f, *sequences, **kwargs)

    def imap(self, f: Callable, *sequences: Any, **kwargs: Any) -> Iterator[Any]:
        """An iterator over ``map_async``'s results."""
        return iter(self.map_async(f, *sequences, **kwargs))

    # -- decorators ------------------------------------------------------------------

    def remote(self, block: Any = None, **flags: Any) -> Callable:
        """Decorator making a RemoteFunction on this view."""
        block = self.block if block is None else block
        return remote(self, block=block, **flags)

    def parallel(self, dist: str = "b", block: Any = None, **flags: Any) -> Callable:
        """Decorator making a ParallelFunction on this view."""
        block = self.block if block is None else block
        return parallel(self, dist=dist, block=block, **flags)


class DirectView(View):
    """Requests addressed to each of its engines (``client[1]``, ``client[:]``,
    ``client[::2]``), with dictionary access to their namespaces
    (``view['a'] = 5``, ``view['a']``)."""

    def __init__(self, client: "Client", socket: Any = None, targets: Any = None, **flags: Any):
        super().__init__(client=client, socket=socket, targets=targets, **flags)

    @property
    def importer(self) -> Any:
        """``sync_imports(local=True)`` as a property."""
        return self.sync_imports(True)

    @contextmanager
    def sync_imports(self, local: bool = True, quiet: bool = False) -> Iterator[None]:
        """Imports in the ``with`` block also run on the engines (``import x as y`` binds
        ``x`` there). Remote-only imports (``local=False``) are not implemented."""
        local_import = builtins.__import__
        modules: set = set()
        results: list = []
        context_frame = inspect.getouterframes(inspect.currentframe())[2].frame

        def view_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
            save_import = builtins.__import__
            builtins.__import__ = local_import
            try:
                import_frame = inspect.getouterframes(inspect.currentframe())[1].frame
                if import_frame is not context_frame:
                    return local_import(name, globals, locals, fromlist, level)
                if local:
                    mod = local_import(name, globals, locals, fromlist, level)
                else:
                    raise NotImplementedError("remote-only imports not yet implemented")
                key = name + ":" + ",".join(fromlist or [])
                if level <= 0 and key not in modules:
                    modules.add(key)
                    if not quiet:
                        if fromlist:
                            print(f"importing {','.join(fromlist)} from {name} on engine(s)")
                        else:
                            print(f"importing {name} on engine(s)")
                    results.append(
                        self.apply_async(remote_import_function, name, list(fromlist or []), level)
                    )
                return mod
            finally:
                builtins.__import__ = save_import

        builtins.__import__ = view_import
        try:
            yield
        except ImportError:
            if local:
                raise
        finally:
            builtins.__import__ = local_import
        for r in results:
            r.get()

    def _use(self, name: str) -> Any:
        getattr(serialize, name)()
        return self.apply(use_serializer_function, name)

    def use_dill(self) -> Any:
        """Serializes with dill, here and on the engines (closures, lambdas, ...)."""
        return self._use("use_dill")

    def use_cloudpickle(self) -> Any:
        """Serializes with cloudpickle, here and on the engines."""
        return self._use("use_cloudpickle")

    def use_pickle(self) -> Any:
        """Back to the standard pickle, here and on the engines."""
        return self._use("use_pickle")

    def _really_apply(
        self,
        f: Any,
        args: Any = None,
        kwargs: Any = None,
        targets: Any = None,
        block: Any = None,
        track: Any = None,
        label: Any = None,
        time_limit: Any = None,
    ) -> Any:
        check_callable(f)
        block = self.block if block is None else block
        targets = self.targets if targets is None else targets
        metadata = self._request_metadata(label=label, time_limit=time_limit)
        _, ids = self.client._build_targets(targets)
        bufs = pack_apply(f, args or (), kwargs or {})
        msg_ids = self.client._submit(self._channel, "apply_request", _EMPTY, metadata, bufs, ids)
        self.history.extend(msg_ids)
        children = msg_ids[0] if isinstance(targets, int) else msg_ids
        ar = AsyncResult(self.client, children, fname=getname(f), targets=ids, owner=True)
        return self._finish(ar, block)

    def map(
        self,
        f: Callable,
        *sequences: Any,
        block: Any = None,
        track: bool = False,
        return_exceptions: bool = False,
        label: Any = None,
    ) -> Any:
        """Parallel ``map`` over this view's engines: one task per engine, each on a
        contiguous chunk. Returns the list (``block``) or an AsyncMapResult."""
        if block is None:
            block = self.block
        if label is None:
            label = self.label
        if not sequences:
            raise ValueError("must have some sequences to map onto!")
        pf = ParallelFunction(
            self, f, block=block, track=track, return_exceptions=return_exceptions, label=label
        )
        return pf.map(*sequences)

    def execute(self, code: str, silent: bool = True, targets: Any = None, block: Any = None, label: Any = None) -> Any:
        """Runs the code string on the engines (in their namespaces)."""
        if not isinstance(code, str):
            raise TypeError(f"code must be text, not {type(code)}")
        block = self.block if block is None else block
        targets = self.targets if targets is None else targets
        metadata = self._request_metadata(label=label)
        _, ids = self.client._build_targets(targets)
        content = json.dumps({"code": code, "silent": bool(silent), "user_expressions": {}}).encode()
        msg_ids = self.client._submit(self._channel, "execute_request", content, metadata, [], ids)
        self.history.extend(msg_ids)
        children = msg_ids[0] if isinstance(targets, int) else msg_ids
        ar = AsyncResult(self.client, children, fname="execute", targets=ids, owner=True)
        if block:
            try:
                ar.get()
                ar.wait_for_output()
            except KeyboardInterrupt:
                pass
        return ar

    def run(self, filename: str, targets: Any = None, block: Any = None, label: Any = None) -> Any:
        """Executes the contents of a file on the engines."""
        with open(filename) as f:
            code = f.read() + "\n"
        return self.execute(code, block=block, targets=targets, label=label)

    def update(self, ns: dict) -> Any:
        """``push(ns)``."""
        return self.push(ns, block=self.block, track=self.track)

    def push(self, ns: dict, targets: Any = None, block: Any = None, track: Any = None) -> Any:
        """Binds the names of dict `ns` in the engines' namespaces."""
        block = block if block is not None else self.block
        targets = targets if targets is not None else self.targets
        if not isinstance(ns, dict):
            raise TypeError(f"Must be a dict, not {type(ns)}")
        return self._really_apply(push_function, kwargs=ns, block=block, targets=targets)

    def get(self, key_s: Any) -> Any:
        """``pull(key_s, block=True)``."""
        return self.pull(key_s, block=True)

    def pull(self, names: Any, targets: Any = None, block: Any = None) -> Any:
        """The value(s) of one name or a list of names on the engines."""
        block = block if block is not None else self.block
        targets = targets if targets is not None else self.targets
        if isinstance(names, str):
            pass
        elif isinstance(names, (list, tuple, set)):
            for key in names:
                if not isinstance(key, str):
                    raise TypeError(f"keys must be str, not type {type(key)!r}")
        else:
            raise TypeError(f"names must be strs, not {names!r}")
        return self._really_apply(pull_function, (names,), block=block, targets=targets)

    def scatter(
        self,
        key: str,
        seq: Any,
        dist: str = "b",
        flatten: bool = False,
        targets: Any = None,
        block: Any = None,
        track: Any = None,
    ) -> Any:
        """Partitions `seq` over the engines and binds each part to `key` there
        (``flatten``: a one-element part is bound as the element)."""
        block = block if block is not None else self.block
        targets = targets if targets is not None else self.targets
        ids = self.client._build_targets(targets)[1]
        map_object = Map.dists[dist]()
        nparts = len(ids)
        msg_ids: list = []
        lengths = []
        for index, engine_id in enumerate(ids):
            partition = map_object.getPartition(seq, index, nparts)
            if flatten and len(partition) == 1:
                ns = {key: partition[0]}
            else:
                ns = {key: partition}
            r = self.push(ns, block=False, targets=engine_id)
            r.owner = False
            msg_ids.extend(r.msg_ids)
            lengths.append(len(partition))
        r = AsyncResult(self.client, msg_ids, fname="scatter", targets=ids, owner=True)
        r._scatter_lengths = lengths
        if block:
            r.wait()
            return None
        return r

    def gather(self, key: str, dist: str = "b", targets: Any = None, block: Any = None) -> Any:
        """Pulls `key` from each engine and joins the parts into one sequence."""
        block = block if block is not None else self.block
        targets = targets if targets is not None else self.targets
        map_object = Map.dists[dist]()
        ids = self.client._build_targets(targets)[1]
        msg_ids: list = []
        for engine_id in ids:
            ar = self.pull(key, block=False, targets=engine_id)
            ar.owner = False
            msg_ids.extend(ar.msg_ids)
        r = AsyncMapResult(self.client, msg_ids, map_object, fname="gather", owner=True)
        r._targets = ids
        if block:
            try:
                return r.get()
            except KeyboardInterrupt:
                pass
        return r

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def clear(self, targets: Any = None, block: Any = None) -> Any:
        """Clears the engines' namespaces."""
        block = block if block is not None else self.block
        targets = targets if targets is not None else self.targets
        return self.client.clear(targets=targets, block=block)

    def activate(self, suffix: str = "") -> None:
        """Registers IPython's parallel magics (``%px``, ``%%px``, ``%autopx``,
        ``%pxresult``, ``%pxconfig`` + `suffix`) on this view."""
        ip = _get_ipython()
        if ip is None:
            try:
                from IPython import get_ipython

                ip = get_ipython()
            except ImportError:
                ip = None
        if ip is None:
            warnings.warn("The IPython parallel magics (%px, etc.) only work within IPython.")
            return
        from ..magics import ParallelMagics

        ip.magics_manager.register(ParallelMagics(ip, self, suffix))


class BroadcastView(DirectView):
    """One request to the broadcast scheduler, which fans it out to the view's engines;
    with ``is_coalescing`` the replies come back as one (a list of results)."""

    _channel = "broadcast"

    def __init__(self, client: "Client", socket: Any = None, targets: Any = None, **flags: Any):
        self.is_coalescing = False
        super().__init__(client=client, socket=socket, targets=targets, **flags)

    def _send_broadcast(self, msg_type: str, content: bytes, bufs: list, targets: Any, coalescing: bool, fname: str) -> AsyncResult:
        _, ids = self.client._build_targets(targets)
        msg_ids = self.client._submit("broadcast", msg_type, content, _EMPTY, bufs, ids, coalescing)
        self.history.extend(msg_ids)
        children = msg_ids[0] if coalescing else msg_ids
        return AsyncResult(self.client, children, fname=fname, targets=ids, owner=True)

    def _really_apply(self, f: Any, args: Any = None, kwargs: Any = None, block: Any = None, track: Any = None, targets: Any = None, **ignored: Any) -> Any:
        check_callable(f)
        block = self.block if block is None else block
        targets = self.targets if targets is None else targets
        bufs = pack_apply(f, args or (), kwargs or {})
        ar = self._send_broadcast("apply_request", _EMPTY, bufs, targets, bool(self.is_coalescing), getname(f))
        return self._finish(ar, block)

    def execute(self, code: str, silent: bool = True, targets: Any = None, block: Any = None, label: Any = None) -> Any:
        """Runs the code string on every engine (never coalescing)."""
        if not isinstance(code, str):
            raise TypeError(f"code must be text, not {type(code)}")
        block = self.block if block is None else block
        targets = self.targets if targets is None else targets
        content = json.dumps({"code": code, "silent": bool(silent), "user_expressions": {}}).encode()
        ar = self._send_broadcast("execute_request", content, [], targets, False, "execute")
        if block:
            try:
                ar.get()
                ar.wait_for_output()
            except KeyboardInterrupt:
                pass
        return ar

    @contextmanager
    def _not_coalescing(self) -> Iterator[None]:
        saved = self.is_coalescing
        self.is_coalescing = False
        try:
            yield
        finally:
            self.is_coalescing = saved

    def scatter(self, *args: Any, **kwargs: Any) -> Any:
        with self._not_coalescing():
            return super().scatter(*args, **kwargs)

    def gather(self, *args: Any, **kwargs: Any) -> Any:
        with self._not_coalescing():
            return super().gather(*args, **kwargs)

    def map(self, f: Callable, *sequences: Any, block: Any = None, track: bool = False, return_exceptions: bool = False) -> Any:
        """Parallel ``map``: scatters the sequences, then one broadcast applies `f` to
        each engine's part."""
        if block is None:
            block = self.block
        with self._not_coalescing():
            map_key = secrets.token_hex(5)
            map_object = Map.dists["b"]()
            seq_names = []
            lengths: list = []
            for i, seq in enumerate(sequences):
                seq_name = f"_seq_{map_key}_{i}"
                seq_names.append(seq_name)
                try:
                    len(seq)
                except Exception:  # noqa: BLE001
                    seq = list(seq)
                ar = self.scatter(seq_name, seq, dist="b", block=False)
                lengths = ar._scatter_lengths
            ar = self._really_apply(broadcast_map_function, (f, *seq_names), {}, block=False)
            ar.owner = False
            amr = AsyncMapResult(
                self.client,
                ar.msg_ids,
                map_object,
                fname=getname(f),
                return_exceptions=return_exceptions,
                chunk_sizes=dict(zip(ar.msg_ids, lengths)),
                owner=True,
            )
        if block:
            return amr.get()
        return amr


class LoadBalancedView(View):
    """Requests the task scheduler sends to whichever engine is free
    (``client.load_balanced_view()``), with dependencies (``after``, ``follow``),
    ``timeout``, ``retries``, a restricted set of ``targets`` and, our extension,
    ``time_limit`` (seconds a task may run before its engine interrupts it)."""

    _flag_names = ["targets", "block", "track", "follow", "after", "timeout", "retries", "label", "time_limit"]
    _load_balanced = True
    _channel = "task"

    def __init__(self, client: "Client", socket: Any = None, **flags: Any):
        self.follow = None
        self.after = None
        self.timeout = None
        self.retries = 0
        self._outstanding_maps: set = set()
        self._task_scheme = client._task_scheme
        super().__init__(client=client, socket=socket, **flags)

    def _validate_dependency(self, dep: Any) -> bool:
        if dep is None or isinstance(dep, (str, AsyncResult, Dependency)):
            return True
        if isinstance(dep, (list, set, tuple)):
            return all(isinstance(d, (str, AsyncResult)) for d in dep)
        if isinstance(dep, dict):
            if set(dep.keys()) != set(Dependency().as_dict().keys()):
                return False
            ids = dep.get("dependencies")
            return isinstance(ids, list) and all(isinstance(d, str) for d in ids)
        return False

    @staticmethod
    def _render_dependency(dep: Any) -> Any:
        if isinstance(dep, Dependency):
            return dep.as_dict()
        if isinstance(dep, AsyncResult):
            return list(dep.msg_ids)
        if dep is None:
            return []
        if isinstance(dep, dict):
            return Dependency(dep).as_dict()
        if isinstance(dep, str):
            return [dep]
        ids: list = []
        for d in dep:
            if isinstance(d, AsyncResult):
                ids.extend(d.msg_ids)
            else:
                ids.append(d)
        return list(Dependency(ids))

    def set_flags(self, **kwargs: Any) -> "LoadBalancedView":
        """Sets flags: block, track, after, follow (dependencies: msg_ids, AsyncResults or
        a Dependency), timeout (seconds to wait for dependencies), retries, targets,
        label, time_limit."""
        for name in ("follow", "after"):
            if name in kwargs and not self._validate_dependency(kwargs[name]):
                raise ValueError(f"Invalid dependency: {kwargs[name]!r}")
        if "timeout" in kwargs:
            t = kwargs["timeout"]
            if not isinstance(t, (int, float, type(None))):
                raise TypeError(f"Invalid type for timeout: {type(t)!r}")
            if t is not None and t < 0:
                raise ValueError(f"Invalid timeout: {t}")
        super().set_flags(**kwargs)
        return self

    def _metadata_dict(self, **overrides: Any) -> dict:
        def pick(name: str) -> Any:
            value = overrides.get(name)
            return getattr(self, name) if value is None else value

        targets = pick("targets")
        if targets is None:
            idents: list = []
        else:
            idents = [ident.decode() for ident in self.client._build_targets(targets)[0]]
        retries = pick("retries")
        if not isinstance(retries, int):
            raise TypeError(f"retries must be int, not {type(retries)!r}")
        md = {
            "after": self._render_dependency(pick("after")),
            "follow": self._render_dependency(pick("follow")),
            "timeout": pick("timeout"),
            "targets": idents,
            "retries": retries,
            "label": pick("label"),
        }
        time_limit = pick("time_limit")
        if time_limit is not None:
            _check_time_limit(time_limit)
            md["time_limit"] = float(time_limit)
        return md

    def _request_metadata(self, **overrides: Any) -> bytes:
        overrides = {k: v for k, v in overrides.items() if v is not None}
        cacheable = not overrides and not self.after and not self.follow and self.targets is None
        if cacheable:
            cached = self._md_cache
            if cached is None:
                cached = json.dumps(self._metadata_dict()).encode()
                object.__setattr__(self, "_md_cache", cached)
            return cached
        return json.dumps(self._metadata_dict(**overrides)).encode()

    def _check_pure(self, f: Any, follow: Any, after: Any, retries: Any, targets: Any, timeout: Any) -> None:
        if self._task_scheme == "pure":
            msg = "Pure ZMQ scheduler doesn't support the following flags: follow, after, retries, targets, timeout"
            if follow or after or retries or targets or timeout:
                raise RuntimeError(msg)
            if isinstance(f, dependent):
                warnings.warn(msg, RuntimeWarning)

    def _really_apply(
        self,
        f: Any,
        args: Any = None,
        kwargs: Any = None,
        block: Any = None,
        track: Any = None,
        after: Any = None,
        follow: Any = None,
        timeout: Any = None,
        targets: Any = None,
        retries: Any = None,
        label: Any = None,
        time_limit: Any = None,
    ) -> Any:
        check_callable(f)
        if self._task_scheme == "pure":
            self._check_pure(
                f,
                follow if follow is not None else self.follow,
                after if after is not None else self.after,
                retries if retries is not None else self.retries,
                targets if targets is not None else self.targets,
                timeout if timeout is not None else self.timeout,
            )
        block = self.block if block is None else block
        if (
            after is None and follow is None and timeout is None and targets is None
            and retries is None and label is None and time_limit is None
        ):
            metadata = self._md_cache or self._request_metadata()
        else:
            metadata = self._request_metadata(
                after=after, follow=follow, timeout=timeout, targets=targets,
                retries=retries, label=label, time_limit=time_limit,
            )
        bufs = pack_apply(f, args or (), kwargs or {})
        msg_ids = self.client._submit("task", "apply_request", _EMPTY, metadata, bufs)
        self.history.extend(msg_ids)
        ar = AsyncResult(self.client, msg_ids[0], fname=getname(f), targets=None, owner=True)
        return self._finish(ar, block)

    def map(
        self,
        f: Callable,
        *sequences: Any,
        block: Any = None,
        chunksize: int = 1,
        ordered: bool = True,
        return_exceptions: bool = False,
        label: Any = None,
    ) -> Any:
        """Parallel ``map``, load-balanced: every `chunksize` elements make one task, all
        sent in one batch. Returns the list (``block``) or an AsyncMapResult (iterating it
        yields results as they arrive; ``ordered=False``: in arrival order)."""
        if block is None:
            block = self.block
        if label is None:
            label = self.label
        if not sequences:
            raise ValueError("must have some sequences to map onto!")
        pf = ParallelFunction(
            self, f, block=block, chunksize=chunksize, ordered=ordered,
            return_exceptions=return_exceptions, label=label,
        )
        return pf.map(*sequences)

    def imap(
        self,
        f: Callable,
        *sequences: Any,
        ordered: bool = True,
        max_outstanding: Any = "auto",
        return_exceptions: bool = False,
    ) -> LazyMapIterator:
        """Lazy map: consumes the input as results come back, keeping at most
        `max_outstanding` tasks in flight (default: one per engine; 0: no limit)."""
        return lazy_imap(
            self, f, *sequences, ordered=ordered, max_outstanding=max_outstanding,
            return_exceptions=return_exceptions,
        )

    def register_joblib_backend(self, name: str = "ipyparallel", make_default: bool = False) -> None:
        """Registers this view as a joblib parallel backend named `name`
        (``Parallel(backend=name)``)."""
        from joblib.parallel import register_parallel_backend

        from ._joblib import IPythonParallelBackend

        register_parallel_backend(
            name,
            lambda **kwargs: IPythonParallelBackend(view=self, **kwargs),
            make_default=make_default,
        )


__all__ = ["View", "DirectView", "LoadBalancedView", "BroadcastView", "LazyMapIterator", "ViewExecutor"]
