"""Exceptions, as ``ipyparallel.error`` (same names, hierarchy and messages), plus our
extensions :class:`TaskTimeLimit` and :class:`ResultCulled`.

Hierarchy::

    Exception
    └── IPythonError
        └── KernelError
            ├── EngineError
            ├── NoEnginesRegistered
            ├── TaskAborted
            ├── TaskTimeout
            ├── UnmetDependency
            │   └── ImpossibleDependency
            │       ├── DependencyTimeout
            │       └── InvalidDependency
            ├── TaskRejectError
            └── RemoteError                 an exception raised on an engine
                ├── CompositeError          several RemoteErrors (one per engine)
                ├── AlreadyDisplayedError
                ├── TaskTimeLimit           ours: the engine interrupted a task past its
                │                           time_limit
                └── ResultCulled            ours: the controller culled the result
    TimeoutError is the builtin TimeoutError (as in ipyparallel).

Unlike ipyparallel's, :class:`RemoteError` and :class:`CompositeError` pickle (round trip)
and ``str()`` of a RemoteError whose ``engine_info`` lacks ``method`` does not fail.
"""

from __future__ import annotations

import builtins
import re
import sys
import traceback as _traceback
from typing import Any, Iterable, Optional, Union

__docformat__ = "restructuredtext en"

__all__ = [
    "IPythonError",
    "KernelError",
    "EngineError",
    "NoEnginesRegistered",
    "TaskAborted",
    "TaskTimeout",
    "TimeoutError",
    "UnmetDependency",
    "ImpossibleDependency",
    "DependencyTimeout",
    "InvalidDependency",
    "RemoteError",
    "TaskRejectError",
    "CompositeError",
    "AlreadyDisplayedError",
    "TaskTimeLimit",
    "ResultCulled",
    "collect_exceptions",
    "wrap_exception",
    "unwrap_exception",
]


class IPythonError(Exception):
    """Base of all our exceptions; raised by code with no more specific information."""


class KernelError(IPythonError):
    """An error of the cluster (engines, scheduler, tasks)."""


class EngineError(KernelError):
    """An engine failed (e.g. died while running a task)."""


class NoEnginesRegistered(KernelError):
    """An operation needs engines, but none are registered."""

    def __str__(self) -> str:
        return (
            "This operation requires engines."
            " Try client.wait_for_engines(n) to wait for engines to register."
        )


class TaskAborted(KernelError):
    """The task was aborted before it ran."""


class TaskTimeout(KernelError):
    """The task's dependencies were not met within its ``timeout`` (scheduler side)."""


# As ipyparallel: the builtin TimeoutError, importable as error.TimeoutError.
TimeoutError = builtins.TimeoutError


class UnmetDependency(KernelError):
    """Raised on an engine when a task's dependencies are not met there; the scheduler
    then tries another engine."""


class ImpossibleDependency(UnmetDependency):
    """The task's dependencies can never be met."""


class DependencyTimeout(ImpossibleDependency):
    """The task's dependencies were not met in time."""


class InvalidDependency(ImpossibleDependency):
    """The task depends on unknown tasks (or on itself)."""


def _engine_str(engine_info: Optional[dict]) -> str:
    if not engine_info:
        return "[Engine Exception]"
    method = engine_info.get("method")
    if method is None:
        return f"[{engine_info.get('engine_id', ' ')}]"
    return f"[{engine_info.get('engine_id', ' ')}:{method}]"


class RemoteError(KernelError):
    """An exception raised elsewhere (on an engine, or by the controller): its class name
    (`ename`), message (`evalue`), formatted `traceback` (text) and `engine_info`
    (``engine_id``, ``engine_uuid``, ``method``)."""

    ename: Optional[str] = None
    evalue: Any = None
    traceback: Optional[str] = None
    engine_info: Optional[dict] = None

    def __init__(
        self,
        ename: str,
        evalue: Any,
        traceback: Optional[str] = None,
        engine_info: Optional[dict] = None,
    ):
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_info = engine_info or {}
        self.args = (ename, evalue)

    def __reduce__(self) -> tuple:
        return (type(self), (self.ename, self.evalue, self.traceback, self.engine_info))

    def __repr__(self) -> str:
        engineid = (self.engine_info or {}).get("engine_id", " ")
        return f"<{self.__class__.__name__}[{engineid}]:{self.ename}({self.evalue})>"

    def __str__(self) -> str:
        return f"{self._get_engine_str(self.engine_info)} {self.ename}: {self.evalue}"

    @staticmethod
    def _get_engine_str(engine_info: Optional[dict]) -> str:
        return _engine_str(engine_info)

    def render_traceback(self) -> list:
        """The traceback as a list of lines, after a ``[engine_id:method]`` line."""
        return [self._get_engine_str(self.engine_info)] + (
            self.traceback or "No traceback available"
        ).splitlines()

    def _render_traceback_(self) -> list:
        """IPython shows this instead of the local traceback."""
        return self.render_traceback()

    def print_traceback(self, excid: Optional[int] = None) -> None:
        """Prints :meth:`render_traceback`."""
        print("\n".join(self.render_traceback()))


class TaskRejectError(KernelError):
    """Raise this in a task to have it rejected by this engine (and retried elsewhere
    when the task has ``retries``)."""


class CompositeError(RemoteError):
    """Errors from several engines: `elist` holds ``(ename, evalue, traceback,
    engine_info)`` tuples. ``str()`` shows the first :attr:`tb_limit` of them."""

    tb_limit = 4

    def __init__(self, message: str, elist: list):
        Exception.__init__(self, message, elist)
        self.msg = message
        self.elist = elist
        self.args = tuple(e[0] for e in elist)

    def __reduce__(self) -> tuple:
        return (type(self), (self.msg, self.elist))

    def _get_traceback(self, ev: Any) -> str:
        return getattr(ev, "_ipython_traceback_text", "No traceback available")

    def __str__(self) -> str:
        s = str(self.msg)
        for en, ev, etb, ei in self.elist[: self.tb_limit]:
            s = s + "\n" + self._get_engine_str(ei) + en + ": " + str(ev)
        if len(self.elist) > self.tb_limit:
            s = s + f"\n.... {len(self.elist) - self.tb_limit} more exceptions ..."
        return s

    def __repr__(self) -> str:
        return f"CompositeError({len(self.elist)})"

    def render_traceback(self, excid: Optional[int] = None) -> list:
        """All tracebacks (the first :attr:`tb_limit`) or the one at `excid`, as lines."""
        lines = []
        if excid is None:
            for en, ev, etb, ei in self.elist[: self.tb_limit]:
                lines.append(self._get_engine_str(ei) + ":")
                lines.extend((etb or "No traceback available").splitlines())
                lines.append("")
            if len(self.elist) > self.tb_limit:
                lines.append(f"... {len(self.elist) - self.tb_limit} more exceptions ...")
        else:
            try:
                en, ev, etb, ei = self.elist[excid]
            except Exception:
                raise IndexError(f"an exception with index {excid} does not exist") from None
            lines.append(self._get_engine_str(ei) + ":")
            lines.extend((etb or "No traceback available").splitlines())
        return lines

    def print_traceback(self, excid: Optional[int] = None) -> None:
        """Prints :meth:`render_traceback`."""
        print("\n".join(self.render_traceback(excid)))

    def raise_exception(self, excid: int = 0) -> None:
        """Raises the error at `excid` as a :class:`RemoteError`."""
        try:
            en, ev, etb, ei = self.elist[excid]
        except Exception:
            raise IndexError(f"an exception with index {excid} does not exist") from None
        raise RemoteError(en, ev, etb, ei)


class AlreadyDisplayedError(RemoteError):
    """A CompositeError whose tracebacks were already shown (streamed output)."""

    def __init__(self, original_error: CompositeError):
        self.original_error = original_error
        self.n = len(self.original_error.elist)

    def __reduce__(self) -> tuple:
        return (type(self), (self.original_error,))

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__}({self.n} errors)>"

    def __str__(self) -> str:
        return f"{self.n} errors"

    def render_traceback(self) -> list:  # type: ignore[override]
        return [str(self)]


class TaskTimeLimit(RemoteError):
    """Ours: the engine interrupted a task that ran longer than its ``time_limit``
    (ename ``"TaskTimeLimit"``; a :class:`RemoteError`, so ``except RemoteError`` and
    ``ename`` checks work as for any engine error)."""


class ResultCulled(RemoteError):
    """Ours: the controller's task database culled this result (a ``record_limit`` /
    ``size_limit`` policy), so it cannot be fetched any more. The controller answers with a
    ``KeyError`` (``ename`` stays ``"KeyError"``, as ipyparallel's hub would for an unknown
    id); :attr:`msg_id` is the culled task's id when the message names it."""

    @property
    def msg_id(self) -> Optional[str]:
        """The culled task's msg_id, parsed from the controller's message."""
        match = _CULLED_PATTERN.search(str(self.evalue))
        return match.group(1) if match else None


_CULLED_PATTERN = re.compile(r"task (\S+) was culled")


def collect_exceptions(rdict_or_list: Union[dict, Iterable], method: str = "unspecified") -> Any:
    """Raises a :class:`CompositeError` of every :class:`RemoteError` in a result dict or
    list (CompositeErrors flattened); returns the input when there is none."""
    elist = []
    rlist = rdict_or_list.values() if isinstance(rdict_or_list, dict) else rdict_or_list
    for r in rlist:
        if isinstance(r, RemoteError):
            en, ev, etb, ei = r.ename, r.evalue, r.traceback, r.engine_info
            if isinstance(r, CompositeError):
                elist.extend(r.elist)
            elif en == "CompositeError" and hasattr(ev, "elist"):
                elist.extend(ev.elist)
            else:
                elist.append((en, ev, etb, ei))
    if not elist:
        return rdict_or_list
    raise CompositeError(f"one or more exceptions raised in: {method}", elist)


def wrap_exception(engine_info: Optional[dict] = None) -> dict:
    """The error content (``status``, ``traceback`` lines, ``ename``, ``evalue``,
    ``engine_info``) of the exception being handled."""
    etype, evalue, tb = sys.exc_info()
    stb = _traceback.format_exception(etype, evalue, tb)
    return {
        "status": "error",
        "traceback": stb,
        "ename": etype.__name__ if etype is not None else "None",
        "evalue": str(evalue),
        "engine_info": engine_info if engine_info is not None else {},
    }


def unwrap_exception(content: dict) -> RemoteError:
    """The :class:`RemoteError` of an error reply's content. Our extensions come back as
    their subclasses: ``TaskTimeLimit``, and :class:`ResultCulled` for a culled result."""
    ename = content["ename"]
    evalue = content["evalue"]
    cls: type = RemoteError
    if ename == "TaskTimeLimit":
        cls = TaskTimeLimit
    elif ename == "KeyError" and _CULLED_PATTERN.search(str(evalue)):
        cls = ResultCulled
    tb = content.get("traceback") or []
    return cls(ename, evalue, "\n".join(tb), content.get("engine_info", {}))
