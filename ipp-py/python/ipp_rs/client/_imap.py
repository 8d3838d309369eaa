"""``LoadBalancedView.imap``: a lazy map that consumes its input as results come back
(ipyparallel's), and its iterator."""

from __future__ import annotations

import concurrent.futures
import secrets
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ._packing import Packed

if TYPE_CHECKING:
    from .view import LoadBalancedView


class LazyMapIterator:
    """The iterator of a lazy ``imap``; ``cancel()`` stops consuming the input."""

    def __init__(self, gen: Iterator[Any], signal_done: Callable[[], None]):
        self._gen = gen
        self._signal_done = signal_done

    def __iter__(self) -> Iterator[Any]:
        return self._gen

    def __next__(self) -> Any:
        return next(self._gen)

    def cancel(self) -> None:
        """Stops consuming the input of the map."""
        self._signal_done()


def lazy_imap(
    view: "LoadBalancedView",
    f: Callable,
    *sequences: Any,
    ordered: bool = True,
    max_outstanding: Any = "auto",
    return_exceptions: bool = False,
) -> LazyMapIterator:
    """See :meth:`LoadBalancedView.imap`: at most `max_outstanding` tasks in flight, the
    input consumed on a helper thread as results arrive."""
    if not sequences:
        raise ValueError("must have some sequences to map onto!")
    if max_outstanding == "auto":
        max_outstanding = len(view)
    pf = Packed(f)
    map_id = secrets.token_bytes(16)
    view._outstanding_maps.add(map_id)
    iterator_done = False

    def signal_done() -> None:
        nonlocal iterator_done
        iterator_done = True
        view._outstanding_maps.discard(map_id)

    lock = threading.Lock()
    outstanding: Any = deque() if ordered else set()
    add_outstanding = outstanding.append if ordered else outstanding.add

    def wait_for_ready() -> list:
        while not outstanding and not iterator_done:
            time.sleep(0.1)
        if not outstanding:
            return []
        if ordered:
            with lock:
                return [outstanding.popleft()]
        with lock:
            to_wait = set(outstanding)
        done, _ = concurrent.futures.wait(
            to_wait, return_when=concurrent.futures.FIRST_COMPLETED, timeout=0.5
        )
        if done:
            with lock:
                for fut in done:
                    outstanding.remove(fut)
        return list(done)

    arg_iterator = iter(zip(*sequences))
    consumer_pool = concurrent.futures.ThreadPoolExecutor(1)

    def consume_callback(fut: Any) -> None:
        if not iterator_done:
            consumer_pool.submit(consume_next)

    def consume_next() -> None:
        if iterator_done:
            return
        try:
            args = next(arg_iterator)
            ar = view.apply_async(pf, *args)
        except StopIteration:
            signal_done()
            return
        except Exception as exc:  # noqa: BLE001 - the input iterator failed: re-raise on get
            failed: Any = concurrent.futures.Future()
            failed.get = lambda *a, **k: failed.result()
            failed.set_exception(exc)
            with lock:
                add_outstanding(failed)
            signal_done()
            return
        with lock:
            add_outstanding(ar)
        if max_outstanding:
            ar.add_done_callback(consume_callback)
        else:
            consumer_pool.submit(consume_next)

    kickoff = 1 if max_outstanding == 0 else max_outstanding
    submits = [consumer_pool.submit(consume_next) for _ in range(kickoff)]
    try:
        submits[0].result()
    except Exception:
        signal_done()
        raise
    del submits

    def iter_results() -> Iterator[Any]:
        nonlocal outstanding
        with consumer_pool:
            while not iterator_done:
                for ready_ar in wait_for_ready():
                    yield ready_ar.get(return_exceptions=return_exceptions)
        if ordered:
            for ar in outstanding:
                yield ar.get(return_exceptions=return_exceptions)
        else:
            while outstanding:
                done, outstanding = concurrent.futures.wait(
                    outstanding, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for ar in done:
                    yield ar.get(return_exceptions=return_exceptions)

    return LazyMapIterator(iter_results(), signal_done)
