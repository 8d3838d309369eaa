"""AsyncResult objects (ipyparallel's ``AsyncResult``, ``AsyncMapResult``,
``AsyncHubResult``) over the native client.

An AsyncResult holds msg_ids only. Waiting happens in Rust (``NativeClient.wait``, GIL
released); results are deserialized from the stored replies the first time the result is
asked for, and metadata (stdout, timestamps, engine ids, ...) is built from the stored
reply and outputs when read. AsyncResult is a ``concurrent.futures.Future``: callbacks,
``concurrent.futures.wait`` / ``as_completed`` and ``await`` are served by the client's
background resolver thread, which only watches results somebody waits on that way.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Future
from datetime import datetime
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from ._deps import error
from ._display import OutputDisplay
from ._metadata import ExecuteReply, Metadata, build_metadata, utc_from_timestamp, utcnow

if TYPE_CHECKING:
    from .client import Client

_PENDING = "PENDING"
# wait_outputs takes a finite timeout: "forever" is this many seconds at a time
_LONG_WAIT = 3600.0


def _check_ready(ar: "AsyncResult") -> None:
    ar.wait(0)
    if not ar._ready:
        raise TimeoutError("result not ready")


def _metadata_keys() -> list:
    return list(Metadata().keys())


class AsyncResult(OutputDisplay, Future):
    """The result of a non-blocking call: a ``concurrent.futures.Future`` that also offers
    ``multiprocessing.pool.AsyncResult``'s ``get`` / ``wait`` / ``ready`` / ``successful``
    and the execution metadata of each message."""

    # Slots, not a __dict__: an AsyncResult is kept per request (tens of thousands), so its
    # state is ~30 pointers, Future's own attributes included.
    __slots__ = (
        "_condition",
        "_state",
        "_result",
        "_exception",
        "_done_callbacks",
        "_waiter_list",
        "msg_ids",
        "_client",
        "_submitted",
        "_single_result",
        "_fname",
        "_targets",
        "owner",
        "_return_exceptions",
        "_chunk_sizes",
        "_success",
        "_raw_results",
        "_unpacked",
        "_resolved",
        "_output_ready",
        "_md_cache",
        "_watching",
        "_splits",
        "_parent",
        "_last_display_prefix",
        "_stream_trailing_newline",
    )

    def __init__(
        self,
        client: "Client",
        children: Any,
        fname: str = "unknown",
        targets: Any = None,
        owner: bool = False,
        return_exceptions: bool = False,
        chunk_sizes: Any = None,
        submitted: Optional[float] = None,
    ):
        # Future's state, set here rather than by Future.__init__: the lock is the client's
        # (one Condition per client, not one of ~1.4 kB per result). Nothing waits on it
        # with a timeout: waiting happens in the native client, and set_result's
        # notify_all only wakes threads that re-check their own result.
        self._condition = client._future_condition
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._done_callbacks = []
        self._waiter_list = None
        single = not isinstance(children, list)
        if single:
            children = list(children.msg_ids) if isinstance(children, AsyncResult) else [children]
        elif children and isinstance(children[0], AsyncResult):
            children = list(chain.from_iterable(c.msg_ids for c in children))
        if not children:
            raise ValueError("an AsyncResult needs at least one msg_id")
        self.msg_ids = children
        self._client = client
        self._submitted = time.time() if submitted is None else submitted
        self._single_result = single
        self._fname = fname
        self._targets = targets
        self.owner = owner
        self._return_exceptions = return_exceptions
        # msg_id -> number of map elements it carries (None: one each)
        self._chunk_sizes = chunk_sizes or None
        self._success = None
        self._raw_results = None
        # msg_id -> result unpacked while waiting for the others (see _wait_unpacking)
        self._unpacked = None
        self._resolved = False
        self._output_ready = False
        self._md_cache = None
        self._watching = False
        self._splits = None
        self._parent = None
        self._last_display_prefix = ""
        self._stream_trailing_newline = True

    @property
    def _ready(self) -> bool:
        """Whether the Future side is resolved (finished or cancelled)."""
        return self._state != _PENDING

    # -- concurrent.futures.Future plumbing ------------------------------------------

    @property  # type: ignore[override]
    def _waiters(self) -> list:
        """Future's waiter list (made on first use); reading it while pending
        (concurrent.futures.wait and as_completed do) asks the background resolver to
        resolve this result."""
        waiters = self._waiter_list
        if waiters is None:
            waiters = self._waiter_list = []
        if self._state == _PENDING and not self._watching:
            self._watch()
        return waiters

    @_waiters.setter
    def _waiters(self, value: list) -> None:
        self._waiter_list = value

    def _watch(self) -> None:
        """Resolve in the background as soon as the replies are in."""
        if self._watching or self._resolved:
            return
        self._watching = True
        client = self._client
        if client._closed:
            # No resolver any more; every request has its (synthetic) reply by now. Not
            # resolved inline: the caller may be installing a waiter under our lock.
            threading.Thread(target=self._resolve_in_background, daemon=True).start()
            return
        client._resolver.watch(self)

    def _resolve_in_background(self) -> None:
        try:
            self._resolve()
        except Exception as exc:  # noqa: BLE001 - never kill the resolver thread
            if not Future.done(self):
                try:
                    self.set_exception(exc)
                except concurrent.futures.InvalidStateError:
                    pass

    def add_done_callback(self, fn: Callable) -> None:
        """Calls ``fn(self)`` once the result is in (in the client's resolver thread, or
        right away if it already is)."""
        if not Future.done(self):
            if self._native_done():
                self._resolve()
            else:
                self._watch()
        Future.add_done_callback(self, fn)

    def done(self) -> bool:
        """Whether the result is in (checks the native client without waiting)."""
        if not Future.done(self) and self._native_done():
            self._resolve()
        return Future.done(self)

    def result(self, timeout: Optional[float] = None) -> Any:
        """As ``Future.result``: the value, or raises the (remote) exception;
        TimeoutError after `timeout` seconds."""
        if not Future.done(self):
            if not self._native_wait(timeout):
                raise TimeoutError()
            self._resolve()
        return Future.result(self, 0)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """As ``Future.exception``."""
        if not Future.done(self):
            if not self._native_wait(timeout):
                raise TimeoutError()
            self._resolve()
        return Future.exception(self, 0)

    def __await__(self) -> Any:
        import asyncio

        return asyncio.wrap_future(self).__await__()

    def __del__(self) -> None:
        # An owner lets the native client forget its replies once they are complete.
        try:
            if not self.owner or self._parent is not None:
                return
            client = self._client
            if client._closed:
                return
            keep = [r for r in (self._raw_results or ()) if isinstance(r, ExecuteReply)]
            client._resolver.release(self.msg_ids, keep)
        except Exception:  # noqa: BLE001 - interpreter shutdown, half-built object
            pass

    # -- waiting and resolving -------------------------------------------------------

    # The native client keeps answering these after close(): requests still outstanding
    # then end with synthetic ConnectionError replies.
    def _native_done(self) -> bool:
        return len(self._client._native.done(self.msg_ids)) == len(self.msg_ids)

    def _native_wait(self, timeout: Optional[float]) -> bool:
        if len(self.msg_ids) > 1:
            return self._wait_unpacking(timeout)
        return bool(self._client._native.wait(self.msg_ids, timeout))

    def _wait_unpacking(self, timeout: Optional[float]) -> bool:
        """Waits for every reply (`timeout` seconds at most; None: no limit), unpacking
        each result as its reply arrives, while the engines still work on the others,
        rather than all of them after the last reply (a map of 5,000 no-ops spent a fifth
        of its time unpacking after the engines were done)."""
        unpacked = self._unpacked
        if unpacked is None:
            unpacked = self._unpacked = {}
        completions = self._client._native.completions(self.msg_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        while completions.remaining:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done = completions.next(remaining)
            if not done:
                return False  # timed out; what was unpacked is kept for the next wait
            for msg_id in done:
                if msg_id not in unpacked:
                    unpacked[msg_id] = self._child_result(msg_id)
        return True

    def _child_result(self, msg_id: str) -> Any:
        """The result of one of this AsyncResult's requests, or the exception it ended
        with (not raised)."""
        try:
            return self._client._result(msg_id)
        except KeyError:
            # The native client no longer holds it (purged, or released by the
            # AsyncResult that owned it): say so instead of hanging or guessing.
            return error.RemoteError(
                "KeyError",
                f"the reply of {msg_id} is no longer held by this client (purged, or "
                "released with the AsyncResult that owned it): use "
                "client.get_result(msg_id) to fetch it from the Hub",
                "",
                {},
            )
        except Exception as exc:  # noqa: BLE001 - e.g. a class not importable here
            import traceback

            return error.RemoteError(
                type(exc).__name__,
                f"the result of {msg_id} could not be deserialized here: {exc}",
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                {},
            )

    def _results_now(self) -> list:
        unpacked = self._unpacked
        self._unpacked = None
        if not unpacked:
            return [self._child_result(msg_id) for msg_id in self.msg_ids]
        missing = object()
        results = []
        for msg_id in self.msg_ids:
            result = unpacked.get(msg_id, missing)
            results.append(self._child_result(msg_id) if result is missing else result)
        return results

    def _resolve(self) -> None:
        """Turns the stored replies into this Future's result, once (another thread
        calling meanwhile waits for that result)."""
        cond = self._condition
        with cond:
            if self._resolved:
                while self._state == _PENDING and self._resolved:
                    cond.wait(0.05)
                return
            self._resolved = True
        try:
            results = self._results_now()
        except BaseException:
            with cond:
                self._resolved = False
                cond.notify_all()
            raise
        self._raw_results = results
        try:
            if self._single_result:
                r = results[0]
                if isinstance(r, Exception):
                    raise r
            else:
                results = self._collect_exceptions(results)
            value = self._reconstruct_result(results)
        except Exception as exc:  # noqa: BLE001
            self._success = False
            outcome: tuple = (False, exc)
        else:
            self._success = True
            outcome = (True, value)
        try:
            if outcome[0]:
                self.set_result(outcome[1])
            else:
                self.set_exception(outcome[1])
        except concurrent.futures.InvalidStateError:
            self._success = None  # cancelled meanwhile

    def _collect_exceptions(self, results: list) -> list:
        """Wraps remote exceptions in a CompositeError (unless return_exceptions)."""
        if self._return_exceptions:
            return results
        return error.collect_exceptions(results, self._fname)

    def _reconstruct_result(self, res: list) -> Any:
        """The result from the list of per-message results (overridden by maps)."""
        if self._single_result:
            return res[0]
        return res

    def __repr__(self) -> str:
        if self._ready:
            state = "finished" if self._success else "failed"
        else:
            state = "pending"
        return f"<{self.__class__.__name__}({self._fname}): {state}>"

    def __dir__(self) -> list:
        keys = dir(self.__class__)
        keys.extend(_metadata_keys())
        return keys

    def get(self, timeout: Optional[float] = None, return_exceptions: Optional[bool] = None, return_when: Any = None) -> Any:
        """The result, once it arrives (TimeoutError after `timeout` seconds). A remote
        exception is raised as RemoteError (one message) or CompositeError (several),
        unless `return_exceptions`. ``return_when=FIRST_EXCEPTION`` raises at the first
        failure without waiting for the rest."""
        if return_when == FIRST_COMPLETED:
            import warnings

            warnings.warn(
                "Ignoring unsupported AsyncResult.get(return_when=FIRST_COMPLETED)",
                UserWarning,
                stacklevel=2,
            )
            return_when = None
        elif return_when == ALL_COMPLETED:
            return_when = None
        wait_result = None
        if not self._ready:
            if return_when is None:
                # One native wait, which resolves the result once its replies are in.
                self.wait(timeout)
            elif not self.ready():
                wait_result = self.wait(timeout, return_when=return_when)
        if return_exceptions is None:
            return_exceptions = self._return_exceptions
        if self._ready:
            if self._success:
                return self._result
            if return_exceptions and self._raw_results is not None:
                return self._reconstruct_result(self._raw_results)
            e = Future.exception(self, 0)
            raise e  # type: ignore[misc]
        if return_when == FIRST_EXCEPTION and wait_result is not None:
            done, _ = wait_result
            for ar in done:
                if not ar._success:
                    return ar.get(return_exceptions=return_exceptions)
        raise TimeoutError("Result not ready.")

    def _check_ready(self) -> None:
        if not self.ready():
            raise TimeoutError("Result not ready.")

    def ready(self) -> bool:
        """Whether the call has completed."""
        if not self._ready:
            self.wait(0)
        return self._ready

    def wait(self, timeout: Optional[float] = -1, return_when: Any = None) -> Any:
        """Waits until the result is in or `timeout` seconds pass (-1/None: no limit);
        returns whether it is ready. With `return_when` (ALL_COMPLETED, FIRST_COMPLETED,
        FIRST_EXCEPTION) returns ``(done, pending)`` sets of single-message AsyncResults,
        as ``concurrent.futures.wait``."""
        if timeout is not None and timeout < 0:
            timeout = None
        if return_when is None:
            # (not `_ready` means PENDING, which Future.done would not count as done)
            if self._ready:
                return True
            if self._native_wait(timeout):
                self._resolve()
            return self._ready
        return self._wait_split(timeout, return_when)

    def _wait_split(self, timeout: Optional[float], return_when: Any) -> tuple:
        splits = self.split()
        by_id = {}
        for s in splits:
            for msg_id in s.msg_ids:
                by_id[msg_id] = s
        native = self._client._native
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            done_ids = set(native.done(self.msg_ids))
            done = set()
            for s in splits:
                if all(m in done_ids for m in s.msg_ids):
                    s.wait(0)
                    done.add(s)
            pending = set(splits) - done
            if not pending:
                self.wait(0)
                break
            if return_when == FIRST_COMPLETED and done:
                break
            if return_when == FIRST_EXCEPTION and any(not s._success for s in done):
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            waiting = [m for m in self.msg_ids if m not in done_ids]
            native.wait_any(waiting, 1.0 if remaining is None else min(remaining, 1.0))
        return done, pending

    def wait_for_output(self, timeout: Optional[float] = -1) -> bool:
        """Waits until the outputs (stdout, displays, ...) are complete too: the result may
        arrive before the last output."""
        if self._output_ready:
            return True
        if timeout is not None and timeout < 0:
            timeout = None
        start = time.monotonic()
        if not self.wait(timeout):
            return False
        ids = self._ids_with_output()
        if ids:
            native = self._client._native
            while True:
                remaining = _LONG_WAIT if timeout is None else max(0.0, timeout - (time.monotonic() - start))
                if native.wait_outputs(ids, remaining):
                    break
                if timeout is not None:
                    return False
        self._output_ready = True
        return True

    def _ids_with_output(self) -> list:
        """msg_ids whose engine will publish a final ``status: idle`` (not aborted,
        scheduler failures, engine deaths or coalesced broadcasts)."""
        native = self._client._native
        ids = []
        for msg_id in self.msg_ids:
            reply = native.reply(msg_id)
            if reply is None or getattr(reply, "synthetic", False):
                continue
            if reply.metadata.get("is_coalescing", False):
                continue
            content = reply.content
            if content.get("status") == "ok" or content.get("engine_info"):
                ids.append(msg_id)
        return ids

    @classmethod
    def join(cls, *async_results: "AsyncResult") -> "AsyncResult":
        """Joins several AsyncResults into one (the inverse of :meth:`split`)."""
        if not async_results:
            raise ValueError("Must specify at least one AsyncResult to join")
        first = async_results[0]
        if len(async_results) == 1:
            return first
        targets = []
        for ar in async_results:
            t = ar._targets
            targets.extend(t if isinstance(t, list) else [t] * len(ar.msg_ids))
        return cls(
            client=first._client,
            fname=first._fname,
            return_exceptions=first._return_exceptions,
            children=list(chain.from_iterable(ar.msg_ids for ar in async_results)),
            targets=targets,
            owner=False,
        )

    def split(self) -> tuple:
        """One AsyncResult per message (for ``concurrent.futures.wait`` and friends)."""
        if self._splits is not None:
            return self._splits
        if len(self.msg_ids) == 1:
            self._splits = (self,)
            return self._splits
        targets = self._targets if isinstance(self._targets, list) else repeat(None)
        flatten = not isinstance(self, AsyncMapResult)
        splits = []
        for engine_id, msg_id in zip(targets, self.msg_ids):
            ar = AsyncResult(
                client=self._client,
                children=msg_id if flatten else [msg_id],
                targets=[engine_id],
                fname=self._fname,
                owner=False,
                return_exceptions=self._return_exceptions,
                submitted=self._submitted,
            )
            ar._parent = self
            splits.append(ar)
        self._splits = tuple(splits)
        return self._splits

    def successful(self) -> bool:
        """Whether the call completed without raising; RuntimeError if not done."""
        if not self.ready():
            raise RuntimeError("Cannot check successful() if not done.")
        return bool(self._success)

    # -- extras beyond multiprocessing's AsyncResult ---------------------------------

    def get_dict(self, timeout: Optional[float] = -1) -> dict:
        """The results keyed by engine id (ValueError if an engine ran several)."""
        results = self.get(timeout)
        if self._single_result:
            results = [results]
        engine_ids = [md["engine_id"] for md in self._get_metadata()]
        rdict: dict = {}
        for engine_id, result in zip(engine_ids, results):
            if engine_id in rdict:
                raise ValueError(
                    f"Cannot build dict, {engine_ids.count(engine_id)} jobs ran on engine #{engine_id}"
                )
            rdict[engine_id] = result
        return rdict

    @property
    def r(self) -> Any:
        """``get()`` as a property."""
        return self.get()

    @property
    def result_dict(self) -> dict:
        """``get_dict()`` as a property."""
        return self.get_dict()

    def _get_metadata(self) -> list:
        if self._md_cache is not None:
            return self._md_cache
        client = self._client
        mds = [build_metadata(client, msg_id, self._submitted) for msg_id in self.msg_ids]
        targets = self._targets
        if isinstance(targets, list) and len(targets) == len(mds):
            for md, eid in zip(mds, targets):
                if md["engine_id"] is None and eid is not None:
                    md["engine_id"] = eid
        if self._ready and self._outputs_complete():
            self._md_cache = mds
        return mds

    def _outputs_complete(self) -> bool:
        if self._output_ready:
            return True
        ids = self._ids_with_output()
        if not ids or self._client._native.wait_outputs(ids, 0):
            self._output_ready = True
        return self._output_ready

    @property
    def metadata(self) -> Any:
        """The execution metadata (a :class:`Metadata`, or a list of them)."""
        mds = self._get_metadata()
        return mds[0] if self._single_result else mds

    def abort(self) -> None:
        """Aborts the tasks that have not started yet; RuntimeError if already done."""
        if self.ready():
            raise RuntimeError("Can't abort, I am already done!")
        return self._client.abort(self.msg_ids, targets=self._targets, block=True)

    @property
    def sent(self) -> bool:
        """Whether the messages have been handed to the network (always, once the call
        that made this AsyncResult returned: the native client owns the buffers)."""
        return True

    def wait_for_send(self, timeout: Optional[float] = -1) -> None:
        """Returns at once: the native client owns the request buffers once sent."""
        return None

    # -- dict / attribute access -----------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        """An int or slice indexes the results; a str reads that metadata key."""
        if isinstance(key, int):
            self._check_ready()
            return self._collect_exceptions([self.result()[key]])[0]
        if isinstance(key, slice):
            self._check_ready()
            return self._collect_exceptions(self.result()[key])
        if isinstance(key, str):
            self.wait(0)
            values = [md[key] for md in self._get_metadata()]
            return values[0] if self._single_result else values
        raise TypeError(f"Invalid key type {type(key)!r}, must be 'int','slice', or 'str'")

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(
                f"{self.__class__.__name__!r} object has no attribute {key!r}"
            )
        try:
            return self.__getitem__(key)
        except (TimeoutError, KeyError):
            raise AttributeError(
                f"{self.__class__.__name__!r} object has no attribute {key!r}"
            ) from None

    def __iter__(self) -> Iterator[Any]:
        if self._single_result:
            raise TypeError("AsyncResults with a single result are not iterable.")
        try:
            rlist = self.get(0)
        except TimeoutError:
            for msg_id in self.msg_ids:
                self._wait_one(msg_id)
                result = self._client._result(msg_id)
                self._collect_exceptions([result])
                yield result
        else:
            yield from rlist

    def _wait_one(self, msg_id: str) -> None:
        native = self._client._native
        while not native.wait([msg_id], 1.0):
            pass

    def __len__(self) -> int:
        return self._count_chunks(self.msg_ids)

    def _count_chunks(self, msg_ids: Any) -> int:
        sizes = self._chunk_sizes
        if not sizes:
            return len(msg_ids) if not isinstance(msg_ids, set) else len(msg_ids)
        return sum(sizes.get(m, 1) for m in msg_ids)

    # -- sugar -----------------------------------------------------------------------

    def timedelta(self, start: Any, end: Any, start_key: Callable = min, end_key: Callable = max) -> float:
        """Seconds between two (sets of) timestamps: by default the earliest of `start` and
        the latest of `end`."""
        if not isinstance(start, datetime):
            start = start_key(start)
        if not isinstance(end, datetime):
            end = end_key(end)
        return (end - start).total_seconds()

    @property
    def progress(self) -> int:
        """How many tasks (map elements) have completed."""
        self.wait(0)
        if self._ready:
            return len(self)
        done = self._client._native.done(self.msg_ids)
        return self._count_chunks(done)

    @property
    def elapsed(self) -> float:
        """Seconds since submission (the wall time once done)."""
        if self.ready():
            return self.wall_time
        return time.time() - self._submitted

    @property
    def serial_time(self) -> float:
        """Sum of (completed - started) over the tasks."""
        _check_ready(self)
        total = 0.0
        for md in self._get_metadata():
            if md["completed"] is not None and md["started"] is not None:
                total += (md["completed"] - md["started"]).total_seconds()
        return total

    @property
    def wall_time(self) -> float:
        """Seconds from the earliest submission to the latest reception."""
        _check_ready(self)
        mds = self._get_metadata()
        submitted = [md["submitted"] or utc_from_timestamp(self._submitted) for md in mds]
        received = [md["received"] or utcnow() for md in mds]
        return self.timedelta(submitted, received)


class AsyncMapResult(AsyncResult):
    """The result of a map: ``get()`` reassembles the chunks into one sequence, and
    iterating yields elements as their chunks arrive (in submission order, or in arrival
    order when ``ordered=False``)."""

    def __init__(
        self,
        client: "Client",
        children: Any,
        mapObject: Any,
        fname: str = "",
        ordered: bool = True,
        return_exceptions: bool = False,
        chunk_sizes: Any = None,
        submitted: Optional[float] = None,
        owner: bool = False,
    ):
        self._mapObject = mapObject
        self.ordered = ordered
        AsyncResult.__init__(
            self,
            client,
            children,
            fname=fname,
            return_exceptions=return_exceptions,
            chunk_sizes=chunk_sizes,
            submitted=submitted,
            owner=owner,
        )
        self._single_result = False

    def _reconstruct_result(self, res: list) -> Any:
        if self._return_exceptions and any(isinstance(r, Exception) for r in res):
            flattened: list = []
            for r in res:
                if isinstance(r, Exception):
                    flattened.append(r)
                else:
                    flattened.extend(r)
            return flattened
        return self._mapObject.joinPartitions(res)

    def __iter__(self) -> Iterator[Any]:
        it = self._ordered_iter if self.ordered else self._unordered_iter
        yield from it()

    def _yield_child_results(self, msg_id: str) -> Iterator[Any]:
        rlist = self._client._result(msg_id)
        if not isinstance(rlist, list):
            rlist = [rlist]
        self._collect_exceptions(rlist)
        yield from rlist

    def _ordered_iter(self) -> Iterator[Any]:
        try:
            rlist = self.get(0)
        except TimeoutError:
            for msg_id in self.msg_ids:
                self._wait_one(msg_id)
                yield from self._yield_child_results(msg_id)
        else:
            yield from rlist

    def _unordered_iter(self) -> Iterator[Any]:
        try:
            rlist = self.get(0)
        except TimeoutError:
            native = self._client._native
            pending = list(self.msg_ids)
            while pending:
                done = native.wait_any(pending, 1.0)
                if not done:
                    continue
                finished = set(done)
                pending = [m for m in pending if m not in finished]
                for msg_id in done:
                    yield from self._yield_child_results(msg_id)
        else:
            yield from rlist


class AsyncHubResult(AsyncResult):
    """Results this client no longer holds (or never sent), fetched from the Hub: waiting
    polls the Hub (``result_request``) every 0.1 s, so use ``wait`` sparingly."""

    def _native_done(self) -> bool:
        return self._resolved

    def _watch(self) -> None:
        if self._watching or self._resolved:
            return
        self._watching = True
        threading.Thread(target=self.wait, name="ipp_rs-hub-result", daemon=True).start()

    def _native_wait(self, timeout: Optional[float]) -> bool:
        return self.wait(timeout)

    def wait(self, timeout: Optional[float] = -1, return_when: Any = None) -> Any:
        """Waits for the results, polling the Hub."""
        start = time.monotonic()
        if timeout is not None and timeout < 0:
            timeout = None
        if self._resolved:
            return True
        client = self._client
        outstanding = client.outstanding
        local_ids = [m for m in self.msg_ids if m in outstanding]
        if local_ids and not client.wait(local_ids, -1 if timeout is None else timeout):
            return False
        while True:
            remote_ids = [m for m in self.msg_ids if not client._has_result(m)]
            if not remote_ids:
                break
            pending = client._fetch_hub_results(remote_ids)
            if not pending:
                break
            if timeout is not None and time.monotonic() - start > timeout:
                return False
            time.sleep(0.1)
        self._output_ready = True
        self._resolve()
        return True

    def _ids_with_output(self) -> list:
        return []

    def __del__(self) -> None:
        try:
            if self.owner and not self._client._closed:
                held = [m for m in self.msg_ids if m in self._client._hub_results]
                for m in held:
                    self._client._hub_results.pop(m, None)
                    self._client._hub_metadata.pop(m, None)
        except Exception:  # noqa: BLE001
            pass


__all__ = ["AsyncResult", "AsyncMapResult", "AsyncHubResult"]
