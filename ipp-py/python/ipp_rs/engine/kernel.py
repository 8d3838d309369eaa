"""The Python side of the ipp_rs engine: a persistent namespace, and how ``apply_request``
and ``execute_request`` run in it, as ipyparallel's engine kernel
(``ipyparallel/engine/kernel.py``) does.

The Rust engine calls :meth:`Kernel.apply`, :meth:`Kernel.execute` and :meth:`Kernel.clear`
on the Python thread, one request at a time, with an :class:`~ipp_rs._ipp_rs.OutputSink`
that publishes on IOPub. Results are plain tuples (see ``_ipp_rs.pyi``).

Pickled apply requests are read and results written with :mod:`ipp_rs.serialize`, with or
without ipyparallel installed in the engine's Python. With ipyparallel, the canning classes
are ipyparallel's (results are exactly what an ``ipengine`` sends). Without it, requests
from ipyparallel's client still run: their ``ipyparallel.*`` names are read as ipp_rs's
counterparts, the helpers it ships by reference (``ipyparallel.util._push`` / ``_pull`` /
``_execute``) find this namespace through :func:`ipp_rs.util.get_ipython`, and
``from ipyparallel.error import ...`` / ``from ipyparallel.serialize import ...`` in
shipped code (ipyparallel's ``@require``) import ipp_rs's modules; results are then
pickles of ipp_rs's classes, which a client with ``ipp_rs`` installed reads.
"""

from __future__ import annotations

import ast
import base64
import builtins
import importlib
import io
import json
import linecache
import sys
import traceback
import types
from typing import Any, Optional

from .. import util as ipp_rs_util
from ..serialize import IPYPARALLEL, serialize_object, unpack_apply_message
from ..serialize.serialize import _unpack_plain_call
from ..serialize.canning import IPYPARALLEL_MODULE_ALIASES

# jupyter_client's Session defaults, which ipyparallel's engine passes to serialize_object.
BUFFER_THRESHOLD = 1024
ITEM_THRESHOLD = 64

_current_sink: Optional[Any] = None


class _StreamWriter(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` while a request runs: each write goes to the
    running request's sink at once (the Rust side merges writes still queued into one
    message). One writer per stream serves every request (as ipykernel's ``OutStream``):
    a reference kept by user code (a logging handler, ...) writes to whichever request
    runs when it writes; between requests its writes are dropped."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name
        self._sink: Optional[Any] = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"<{self._name}>"

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        sink = self._sink
        if sink is not None:
            sink.stream(self._name, text)
        return len(text)

    def flush(self) -> None:
        pass


_writers: dict[str, _StreamWriter] = {}


def _writer(name: str) -> _StreamWriter:
    """The writer of stream `name` (a new one if user code closed the last one)."""
    writer = _writers.get(name)
    if writer is None or writer.closed:
        writer = _writers[name] = _StreamWriter(name)
    return writer


def _capture(sink: Any) -> tuple:
    """Sends stdout and stderr to `sink` until :func:`_release` is given what this
    returns (a try/finally, not a context manager: this runs for every request)."""
    global _current_sink
    out, err = _writer("stdout"), _writer("stderr")
    saved = (sys.stdout, sys.stderr, _current_sink, out, out._sink, err, err._sink)
    out._sink = err._sink = sink
    sys.stdout, sys.stderr, _current_sink = out, err, sink
    return saved


def _release(saved: tuple) -> None:
    """Undoes :func:`_capture`."""
    global _current_sink
    sys.stdout, sys.stderr, _current_sink, out, out._sink, err, err._sink = saved


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return repr(value)


def _format(value: Any) -> tuple[dict, dict]:
    """MIME bundle of `value`: IPython's formatters when IPython is installed, else repr."""
    try:
        from IPython.core.formatters import DisplayFormatter
    except ImportError:
        return {"text/plain": repr(value)}, {}
    try:
        data, metadata = DisplayFormatter().format(value)
    except Exception:
        return {"text/plain": repr(value)}, {}
    return data, metadata


def display(*objs: Any) -> None:
    """Publishes each object as ``display_data`` on the running request (it lands in the
    client's ``AsyncResult.display_outputs``); outside a request, prints them."""
    sink = _current_sink
    if sink is None:
        print(*objs)
        return
    for obj in objs:
        data, metadata = _format(obj)
        sink.display_data(
            json.dumps(data, default=_json_default), json.dumps(metadata, default=_json_default)
        )


class _Shell:
    """What ipyparallel's engine-side helpers (``ipyparallel.util._push`` / ``_pull`` /
    ``_execute``) expect from ``get_ipython()``."""

    def __init__(self, namespace: dict):
        self.user_ns = namespace
        self.user_global_ns = namespace


# The statement every apply runs, compiled once. ipyparallel's kernel compiles
# `<result> = <f>(*<args>, **<kwargs>)` with names made from the msg_id for each request;
# compiling (or even copying a code object) per request costs more than the rest of a no-op
# request, so this one code object reads f, args and kwargs from a locals dict of its own,
# with the user namespace as its globals (what the called function sees is unchanged).
_APPLY_CODE = compile("_result = _f(*_args, **_kwargs)", "<ipp_rs apply>", "exec")


class Kernel:
    """A persistent namespace (a ``__main__`` module, as IPython's) and the requests run
    in it."""

    def __init__(self) -> None:
        self.user_module = types.ModuleType("__main__")
        self.user_ns: dict = self.user_module.__dict__
        self.execution_count = 0
        self._cells = 0
        self._reset_namespace()
        # As IPython does: classes and functions defined by user code live in `__main__`,
        # so pickle finds them there when results are sent back.
        sys.modules["__main__"] = self.user_module
        self._shell = _Shell(self.user_ns)
        ipp_rs_util.engine_shell = self._shell
        if IPYPARALLEL:
            self._patch_ipyparallel()
        else:
            _alias_ipyparallel_imports()

    # -- requests -------------------------------------------------------------------------

    def apply(self, msg_id: str, bufs: list, sink: Any) -> tuple:
        """Runs ``f(*args, **kwargs)`` from an ``apply_request``'s buffers; answers
        ``("ok", result_buffers)``, ``("error", ename, evalue, traceback)`` or
        ``("unmet",)``."""
        ns = self.user_ns
        # ipyparallel's kernel binds f, args and kwargs to temporary names in the user
        # namespace and runs `result = f(*args, **kwargs)` there; so do we (the names are
        # there while f runs, as with ipyparallel; the call itself is _APPLY_CODE's).
        prefix = f"_{str(msg_id).replace('-', '_')}_"
        fname, argname, kwargname, resultname = (
            prefix + "f",
            prefix + "args",
            prefix + "kwargs",
            prefix + "result",
        )
        saved = _capture(sink)
        try:
            f = _unpack_plain_call(bufs, ns)
            if f is None:
                f, args, kwargs = unpack_apply_message(bufs, ns, copy=False)
            else:
                args, kwargs = (), {}
            temporary = {fname: f, argname: args, kwargname: kwargs, resultname: None}
            ns.update(temporary)
            try:
                call = {"_f": f, "_args": args, "_kwargs": kwargs}
                exec(_APPLY_CODE, ns, call)
                result = call["_result"]
            finally:
                for key in temporary:
                    ns.pop(key, None)
            buffers = serialize_object(
                result, buffer_threshold=BUFFER_THRESHOLD, item_threshold=ITEM_THRESHOLD
            )
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            return self._failure(exc)
        finally:
            _release(saved)
        # Any buffers (bytes, memoryviews of arrays, ...): the engine copies them once.
        return ("ok", buffers)

    def execute(self, code: str, silent: bool, sink: Any) -> tuple:
        """Runs a code string; when not `silent`, counts it, publishes ``execute_input``
        and shows the value of a final expression as ``execute_result``. Answers
        ``("ok", execution_count)`` or ``("error", ename, evalue, traceback)``."""
        if not silent:
            self.execution_count += 1
            sink.execute_input(code, self.execution_count)
        count = self.execution_count
        self._cells += 1
        filename = f"<ipp_rs cell {self._cells}>"
        # So tracebacks can show the failing line.
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        ns = self.user_ns
        saved = _capture(sink)
        try:
            tree = ast.parse(code, filename, "exec")
            last = None
            tail = tree.body[-1] if tree.body else None
            if not silent and isinstance(tail, ast.Expr):
                tree.body.pop()
                last = ast.Expression(tail.value)
            exec(compile(tree, filename, "exec"), ns, ns)
            if last is not None:
                value = eval(compile(last, filename, "eval"), ns, ns)
                if value is not None:
                    ns["_"] = value
                    data, metadata = _format(value)
                    sink.execute_result(
                        json.dumps(data, default=_json_default),
                        json.dumps(metadata, default=_json_default),
                        count,
                    )
        except BaseException as exc:  # noqa: BLE001
            return self._failure(exc)
        finally:
            _release(saved)
        return ("ok", count)

    def clear(self) -> None:
        """Empties the namespace (a client's ``clear_request``)."""
        self._reset_namespace()

    # -- helpers --------------------------------------------------------------------------

    def _reset_namespace(self) -> None:
        self.user_ns.clear()
        self.user_ns.update(
            __name__="__main__", __doc__=None, __builtins__=builtins, __package__=None
        )

    def _patch_ipyparallel(self) -> None:
        """ipyparallel's engine-side helpers (``ipyparallel.util._push`` / ``_pull`` /
        ``_execute``, ``BroadcastView._broadcast_map``) find the namespace via
        ``IPython.get_ipython()``, imported into their modules: answer for it."""
        shell = self._shell
        for name in ("ipyparallel.util", "ipyparallel.client.view"):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            module.get_ipython = lambda: shell  # type: ignore[attr-defined]

    @staticmethod
    def _failure(exc: BaseException) -> tuple:
        """``("unmet",)`` for an UnmetDependency (ipyparallel's or ipp_rs's: by class
        name, exactly, as ipyparallel's engine does), else the error tuple with a
        plain-text traceback that starts at user code."""
        if type(exc).__name__ == "UnmetDependency":
            return ("unmet",)
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, "<ipp_rs apply>"):
            tb = tb.tb_next
        try:
            evalue = str(exc)
        except Exception as str_error:  # noqa: BLE001
            evalue = f"Failed to cast exception to string: {str_error}"
        report = traceback.TracebackException(type(exc), exc, tb)
        # Also without this module's frames further down (the import hook of
        # _alias_ipyparallel_imports sits between user code and a failing import).
        report.stack = traceback.StackSummary.from_list(
            [frame for frame in report.stack if frame.filename != __file__]
        )
        lines = list(report.format())
        return ("error", type(exc).__name__, evalue, [line.rstrip("\n") for line in lines])


_aliases_installed = False


def _alias_ipyparallel_imports() -> None:
    """Without ipyparallel, makes ``from ipyparallel.<module> import <names>`` in code run
    on this engine import ipp_rs's counterpart (``ipyparallel.error`` → ``ipp_rs.error``,
    ``ipyparallel.serialize`` → ``ipp_rs.serialize``, ...; see
    ``IPYPARALLEL_MODULE_ALIASES``): ipyparallel's ``@require`` runs such imports on the
    engine. Only imports that would fail otherwise are redirected; ``import ipyparallel``
    still fails."""
    global _aliases_installed
    if _aliases_installed:
        return
    _aliases_installed = True
    original_import = builtins.__import__

    def __import__(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        try:
            return original_import(name, globals, locals, fromlist, level)
        except ImportError:
            alias = IPYPARALLEL_MODULE_ALIASES.get(name) if level == 0 and fromlist else None
            if alias is None:
                raise
            return importlib.import_module(alias)

    builtins.__import__ = __import__
