"""Remote functions and the ``remote`` / ``parallel`` decorators (ipyparallel's
``ipyparallel.client.remotefunction``)."""

from __future__ import annotations

import time
import warnings
from inspect import signature
from typing import TYPE_CHECKING, Any, Callable

from . import map as Map
from ._packing import Packed, map_function, pack_apply
from .asyncresult import AsyncMapResult

if TYPE_CHECKING:
    from .view import View


def remote(view: "View", block: Any = None, **flags: Any) -> Callable:
    """Decorator: calling the function runs it on `view`'s engines (``view.apply``)."""

    def remote_function(f: Callable) -> "RemoteFunction":
        return RemoteFunction(view, f, block=block, **flags)

    return remote_function


def parallel(view: "View", dist: str = "b", block: Any = None, ordered: bool = True, **flags: Any) -> Callable:
    """Decorator: calling the function with sequences partitions them over `view`'s
    engines; ``.map(...)`` calls it on each element."""

    def parallel_function(f: Callable) -> "ParallelFunction":
        return ParallelFunction(view, f, dist=dist, block=block, ordered=ordered, **flags)

    return parallel_function


def getname(f: Any) -> str:
    """The name of a callable: ``__name__``, else ``name``, else ``str(f)``."""
    try:
        return f.__name__
    except Exception:  # noqa: BLE001
        pass
    try:
        return f.name
    except Exception:  # noqa: BLE001
        pass
    return str(f)


class RemoteFunction:
    """A function whose calls run on a view's engines.

    Parameters
    ----------
    view : View
    f : callable
    block : bool [default: the view's ``block`` at call time]
    **flags : passed to ``view.temp_flags`` for each call
    """

    view = None
    func = None
    block = None
    flags = None

    def __init__(self, view: "View", f: Callable, block: Any = None, **flags: Any):
        self.view = view
        self.func = f
        self.block = block
        self.flags = flags
        self.__name__ = getname(f)
        if getattr(f, "__doc__", None):
            self.__doc__ = f"{self.__class__.__name__} wrapping:\n{f.__doc__}"
        if getattr(f, "__signature__", None):
            self.__signature__ = f.__signature__
        else:
            try:
                self.__signature__ = signature(f)
            except Exception:  # noqa: BLE001 - no signature, fine
                pass

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        block = self.view.block if self.block is None else self.block
        with self.view.temp_flags(block=block, **self.flags):
            return self.view.apply(self.func, *args, **kwargs)


class ParallelFunction(RemoteFunction):
    """A function called on partitions of sequences across a view's engines.

    ``pf(*sequences)`` calls the function once per partition (``dist`` 'b': contiguous
    blocks, 'r': round-robin); ``pf.map(*sequences)`` calls it on each element. On a
    load-balanced view each `chunksize` elements make one task, all sent in one batch.
    """

    chunksize = None
    ordered = None
    mapObject = None

    def __init__(
        self,
        view: "View",
        f: Callable,
        dist: str = "b",
        block: Any = None,
        chunksize: Any = None,
        ordered: bool = True,
        return_exceptions: bool = False,
        **flags: Any,
    ):
        super().__init__(view, f, block=block, **flags)
        self.chunksize = chunksize
        self.ordered = ordered
        self.return_exceptions = return_exceptions
        self.mapObject = Map.dists[dist]()

    def __call__(self, *sequences: Any, **kwargs: Any) -> Any:
        view = self.view
        client = view.client
        mapping = kwargs.pop("__ipp_mapping", False)
        if kwargs:
            raise TypeError(f"Unexpected keyword arguments: {kwargs}")
        sequences = list(sequences)
        lens = []
        for i, seq in enumerate(sequences):
            try:
                n = len(seq)
            except Exception:  # noqa: BLE001 - generators and other length-less iterables
                seq = sequences[i] = list(seq)
                n = len(seq)
            lens.append(n)
        maxlen = max(lens) if lens else 0
        minlen = min(lens) if lens else 0
        if maxlen == 0:
            return []
        if not mapping and minlen != maxlen:
            raise ValueError(f"all sequences must have equal length, but have {lens}")

        balanced = view._load_balanced
        if balanced:
            if self.chunksize:
                nparts = maxlen // self.chunksize + int(maxlen % self.chunksize > 0)
            else:
                nparts = maxlen
            targets: list = [None] * nparts
        else:
            if self.chunksize:
                warnings.warn("`chunksize` is ignored unless load balancing", UserWarning)
            targets = client._build_targets(view.targets)[1]
            nparts = len(targets)

        flags = dict(self.flags)
        flags.pop("block", None)
        metadata = view._request_metadata(**flags)
        pf = Packed(self.func)
        submitted = time.time()
        chunk_sizes: dict = {}
        chunk_list = []
        requests = []
        for index, target in enumerate(targets):
            args = [self.mapObject.getPartition(seq, index, nparts, maxlen) for seq in sequences]
            if sum(len(arg) for arg in args) == 0:
                continue
            if mapping:
                chunk_size = min(len(arg) for arg in args)
                bufs = pack_apply(_packed_map(), [pf, *args])
            else:
                chunk_size = 1
                bufs = pack_apply(pf, args)
            chunk_list.append(chunk_size)
            if balanced:
                requests.append((b"{}", metadata, bufs))
            else:
                msg_ids = client._submit("mux", "apply_request", b"{}", metadata, bufs, [target])
                view.history.extend(msg_ids)
                chunk_sizes[msg_ids[0]] = chunk_size
        if balanced:
            msg_ids = client._submit_many("apply_request", requests)
            view.history.extend(msg_ids)
            if any(size != 1 for size in chunk_list):
                chunk_sizes = dict(zip(msg_ids, chunk_list))
        else:
            msg_ids = list(chunk_sizes)
            if all(size == 1 for size in chunk_list):
                chunk_sizes = {}
        r = AsyncMapResult(
            client,
            msg_ids,
            self.mapObject,
            fname=getname(self.func),
            ordered=self.ordered,
            return_exceptions=self.return_exceptions,
            chunk_sizes=chunk_sizes,
            submitted=submitted,
            owner=True,
        )
        if self.block:
            try:
                return r.get()
            except KeyboardInterrupt:
                return r
        return r

    def map(self, *sequences: Any) -> Any:
        """Calls the function on each element of the sequences remotely (like the builtin
        map: generators are consumed locally, shorter sequences end the map)."""
        return self(*sequences, __ipp_mapping=True)


_map_packed: list = []


def _packed_map() -> Packed:
    """The engine-side map helper, serialized once per process."""
    if not _map_packed:
        _map_packed.append(Packed(map_function))
    return _map_packed[0]


__all__ = ["remote", "parallel", "RemoteFunction", "ParallelFunction", "getname"]
