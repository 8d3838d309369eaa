"""``view.executor``: a PEP 3148 ``concurrent.futures.Executor`` over a view (ipyparallel's
``ViewExecutor``)."""

from __future__ import annotations

import concurrent.futures
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from .view import View


class ViewExecutor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose tasks run on a view's engines
    (``view.executor``); the futures are AsyncResults."""

    def __init__(self, view: "View"):
        self.view = view
        self._max_workers = len(view)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Any:
        """``view.apply_async(fn, *args, **kwargs)``."""
        return self.view.apply_async(fn, *args, **kwargs)

    def map(self, func: Callable, *iterables: Any, **kwargs: Any) -> Iterator[Any]:  # type: ignore[override]
        """A lazy ``view.imap`` over the iterables (``timeout`` is not supported)."""
        if "timeout" in kwargs:
            warnings.warn("timeout unsupported in ViewExecutor.map")
            kwargs.pop("timeout")
        kwargs.pop("chunksize", None)
        return self.view.imap(func, *iterables, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Waits for the submitted work when `wait`; the engines keep running."""
        if wait:
            outstanding_maps = getattr(self.view, "_outstanding_maps", None)
            while outstanding_maps:
                time.sleep(0.1)
            self.view.wait()


__all__ = ["ViewExecutor"]
