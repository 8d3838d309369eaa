"""Canning: wrapping objects that plain pickle cannot ship (functions by value, closures,
classes defined in ``__main__``, numpy arrays and bytes as zero-copy buffers, references to
names on the engine), as ``ipyparallel.serialize.canning``.

``can(obj)`` returns an object safe to pickle (a :class:`CannedObject` for the types in
:data:`can_map`, else `obj` itself); ``uncan(canned, g)`` rebuilds the original, with `g`
(the engine's namespace) as the globals of functions from ``__main__``.

Which classes: when ipyparallel is importable, every public name here **is ipyparallel's**
object (``CannedFunction is ipyparallel.serialize.canning.CannedFunction``, ``can_map`` is
ipyparallel's dict, ...), so our pickles are exactly ipyparallel's and a real ipyparallel
engine reads them. Without ipyparallel, the names are our own classes, defined below with
the same attributes (the attributes are the wire format), and pickles name
``ipp_rs.serialize.canning``. Reading works both ways: see :mod:`ipp_rs.serialize`.
"""

from __future__ import annotations

import copy
import functools
import importlib
import logging
import pickle
import sys
from types import FunctionType
from typing import Any, Callable, Optional

from . import codeutil  # noqa: F401 - registers the code object reducer

__all__ = [
    "CannedObject",
    "Reference",
    "CannedCell",
    "CannedFunction",
    "CannedPartial",
    "CannedClass",
    "CannedArray",
    "CannedBytes",
    "CannedMemoryView",
    "CannedBuffer",
    "can",
    "uncan",
    "can_map",
    "uncan_map",
    "can_dict",
    "uncan_dict",
    "can_sequence",
    "uncan_sequence",
    "can_class",
    "can_dependent",
    "istype",
    "sequence_types",
    "interactive",
    "use_pickle",
    "use_dill",
    "use_cloudpickle",
    "IPYPARALLEL",
]

log = logging.getLogger("ipp_rs.serialize")

# ipyparallel modules whose pickled names (and shipped functions' globals) have a
# counterpart in ipp_rs: used to read ipyparallel's pickles when ipyparallel is absent.
IPYPARALLEL_MODULE_ALIASES = {
    "ipyparallel.serialize.canning": "ipp_rs.serialize.canning",
    "ipyparallel.serialize.serialize": "ipp_rs.serialize.serialize",
    "ipyparallel.serialize.codeutil": "ipp_rs.serialize.codeutil",
    "ipyparallel.serialize": "ipp_rs.serialize",
    "ipyparallel.error": "ipp_rs.error",
    "ipyparallel.controller.dependency": "ipp_rs.dependency",
    "ipyparallel.util": "ipp_rs.util",
}

# Functions ipyparallel's client ships by reference from these modules only need
# `get_ipython()` from their globals (e.g. ``BroadcastView._broadcast_map``): they run with
# ipp_rs.util's globals, whose get_ipython answers for our engine's namespace.
_IPYPARALLEL_FUNCTION_GLOBALS_FALLBACK = "ipp_rs.util"


def _get_cell_type(a: Any = None) -> type:
    """The type of closure cells (not importable by name on every Python version)."""

    def inner() -> Any:
        return a

    return type(inner.__closure__[0])  # type: ignore[index]


cell_type = _get_cell_type()


# -------------------------------------------------------------------------------------------
# Functions
# -------------------------------------------------------------------------------------------


def interactive(f: Any) -> Any:
    """Decorator making a function look interactively defined (module ``__main__``), as
    ``ipyparallel.interactive``: it is shipped by value and, on the engine, runs with the
    engine's namespace as its globals. The function is rebuilt without its closure (an
    interactive function reads names from the namespace instead); unlike ipyparallel's,
    keyword-only defaults, annotations and the docstring are kept."""
    if isinstance(f, FunctionType):
        mainmod = __import__("__main__")
        rebuilt = FunctionType(f.__code__, mainmod.__dict__, f.__name__, f.__defaults__)
        rebuilt.__kwdefaults__ = f.__kwdefaults__
        rebuilt.__annotations__ = f.__annotations__
        rebuilt.__doc__ = f.__doc__
        rebuilt.__qualname__ = f.__qualname__
        f = rebuilt
    f.__module__ = "__main__"
    return f


def _serialize_modules() -> list:
    """The serialize modules whose ``pickle`` global chooses the pickler."""
    from . import serialize

    modules: list = [serialize]
    if _ipp is not None:
        from ipyparallel.serialize import serialize as ipp_serialize

        modules.append(ipp_serialize)
    return modules


def use_dill() -> None:
    """Pickle with dill (methods, closures, lambdas by value), as
    ``ipyparallel.serialize.use_dill``: function canning is turned off, dill takes over."""
    import dill

    for module in _serialize_modules():
        module.pickle = dill
    can_map.pop(FunctionType, None)


def use_cloudpickle() -> None:
    """Pickle with cloudpickle, as ``ipyparallel.serialize.use_cloudpickle``: function
    canning is turned off, cloudpickle takes over."""
    import cloudpickle

    for module in _serialize_modules():
        module.pickle = cloudpickle
    can_map.pop(FunctionType, None)


def use_pickle() -> None:
    """Back to the standard library pickle and function canning (undoes
    :func:`use_dill` / :func:`use_cloudpickle`)."""
    for module in _serialize_modules():
        module.pickle = pickle
    can_map[FunctionType] = _original_can_map[FunctionType]


def _module_globals(name: str) -> dict:
    """Globals for a function shipped by reference to module `name`: the module's dict;
    an ipyparallel module that cannot be imported maps to its ipp_rs counterpart."""
    try:
        __import__(name)
    except ImportError:
        if name != "ipyparallel" and not name.startswith("ipyparallel."):
            raise
        alias = IPYPARALLEL_MODULE_ALIASES.get(name, _IPYPARALLEL_FUNCTION_GLOBALS_FALLBACK)
        return importlib.import_module(alias).__dict__
    return sys.modules[name].__dict__


# -------------------------------------------------------------------------------------------
# Classes (ours; the attribute names are the wire format shared with ipyparallel)
# -------------------------------------------------------------------------------------------


class CannedObject:
    """An object canned for pickling: `keys` name attributes canned separately, `hook`
    (canned too) runs on the uncanned object as ``hook(obj, g)``. ``buffers`` holds data
    sent as separate zero-copy frames."""

    def __init__(self, obj: Any, keys: Any = (), hook: Optional[Callable] = None):
        self.keys = keys
        self.obj = copy.copy(obj)
        self.hook = can(hook)
        for key in keys:
            setattr(self.obj, key, can(getattr(obj, key)))
        self.buffers: list = []

    def get_object(self, g: Optional[dict] = None) -> Any:
        """The uncanned object, with `g` as the globals of functions from ``__main__``."""
        if g is None:
            g = {}
        obj = self.obj
        for key in self.keys:
            setattr(obj, key, uncan(getattr(obj, key), g))
        if self.hook:
            self.hook = uncan(self.hook, g)
            self.hook(obj, g)
        return self.obj


class Reference(CannedObject):
    """A reference to a name (an expression) in the engine's namespace: evaluated there
    when the request runs, as ``ipyparallel.Reference``."""

    def __init__(self, name: str):
        if not isinstance(name, str):
            raise TypeError(f"illegal name: {name!r}")
        self.name = name
        self.buffers = []

    def __repr__(self) -> str:
        return f"<Reference: {self.name!r}>"

    def get_object(self, g: Optional[dict] = None) -> Any:
        if g is None:
            g = {}
        return eval(self.name, g)


class CannedCell(CannedObject):
    """A closure cell."""

    def __init__(self, cell: Any):
        self.cell_contents = can(cell.cell_contents)

    def get_object(self, g: Optional[dict] = None) -> Any:
        cell_contents = uncan(self.cell_contents, g)

        def inner() -> Any:
            return cell_contents

        return inner.__closure__[0]  # type: ignore[index]


class CannedFunction(CannedObject):
    """A function shipped by value: code, defaults, keyword defaults, annotations and
    closure. Rebuilt with the globals of its module when it is importable there, else (for
    ``__main__``) with `g`."""

    def __init__(self, f: FunctionType):
        self._check_type(f)
        self.code = f.__code__
        self.defaults = [can(fd) for fd in f.__defaults__] if f.__defaults__ else None
        self.kwdefaults = can_dict(f.__kwdefaults__) if f.__kwdefaults__ else None
        self.annotations = can_dict(f.__annotations__) if f.__annotations__ else None
        closure = f.__closure__
        self.closure = tuple(can(cell) for cell in closure) if closure else None
        self.module = f.__module__ or "__main__"
        self.__name__ = f.__name__
        self.buffers = []

    def _check_type(self, obj: Any) -> None:
        if not isinstance(obj, FunctionType):
            raise TypeError(f"Not a function type: {obj!r}")

    def get_object(self, g: Optional[dict] = None) -> Any:
        if not self.module.startswith("__"):
            g = _module_globals(self.module)
        if g is None:
            g = {}
        defaults = tuple(uncan(cfd, g) for cfd in self.defaults) if self.defaults else None
        kwdefaults = uncan_dict(self.kwdefaults) if self.kwdefaults else None
        annotations = uncan_dict(self.annotations) if self.annotations else {}
        closure = tuple(uncan(cell, g) for cell in self.closure) if self.closure else None
        new_func = FunctionType(self.code, g, self.__name__, defaults, closure)
        if kwdefaults:
            new_func.__kwdefaults__ = kwdefaults
        if annotations:
            new_func.__annotations__ = annotations
        return new_func


class CannedPartial(CannedObject):
    """A ``functools.partial``: its function and arguments canned, their buffers gathered
    in ``buffers`` (so large arguments still travel as separate frames)."""

    def __init__(self, f: functools.partial):
        self._check_type(f)
        self.func = can(f.func)
        self.args = [can(a) for a in f.args]
        self.keywords = {k: can(v) for k, v in f.keywords.items()}
        self.buffers = []
        self.arg_buffer_counts: list = []
        self.keyword_buffer_counts: dict = {}
        for canned_arg in self.args:
            if not isinstance(canned_arg, CannedObject):
                self.arg_buffer_counts.append(0)
                continue
            self.arg_buffer_counts.append(len(canned_arg.buffers))
            self.buffers.extend(canned_arg.buffers)
            canned_arg.buffers = []
        for key in sorted(self.keywords):
            canned_kwarg = self.keywords[key]
            if not isinstance(canned_kwarg, CannedObject):
                continue
            self.keyword_buffer_counts[key] = len(canned_kwarg.buffers)
            self.buffers.extend(canned_kwarg.buffers)
            canned_kwarg.buffers = []

    def _check_type(self, obj: Any) -> None:
        if not isinstance(obj, functools.partial):
            raise ValueError(f"Not a functools.partial: {obj!r}")

    def get_object(self, g: Optional[dict] = None) -> Any:
        if g is None:
            g = {}
        if self.buffers:
            for canned_arg, buf_count in zip(self.args, self.arg_buffer_counts):
                if not buf_count:
                    continue
                canned_arg.buffers = self.buffers[:buf_count]
                self.buffers = self.buffers[buf_count:]
            for key in sorted(self.keyword_buffer_counts):
                buf_count = self.keyword_buffer_counts[key]
                canned_kwarg = self.keywords[key]
                canned_kwarg.buffers = self.buffers[:buf_count]
                self.buffers = self.buffers[buf_count:]
            if self.buffers:
                raise ValueError(
                    f"{len(self.buffers)} buffers of a canned functools.partial are unused"
                )
        args = [uncan(a, g) for a in self.args]
        keywords = {k: uncan(v, g) for k, v in self.keywords.items()}
        func = uncan(self.func, g)
        return functools.partial(func, *args, **keywords)


class CannedClass(CannedObject):
    """A class defined in ``__main__``, shipped by value (its dict and bases canned)."""

    def __init__(self, cls: type):
        self._check_type(cls)
        self.name = cls.__name__
        self.old_style = not isinstance(cls, type)
        self._canned_dict = {}
        for k, v in cls.__dict__.items():
            if k not in ("__weakref__", "__dict__"):
                self._canned_dict[k] = can(v)
        mro = [] if self.old_style else cls.mro()
        self.parents = [can(c) for c in mro[1:]]
        self.buffers = []

    def _check_type(self, obj: Any) -> None:
        if not isinstance(obj, type):
            raise TypeError(f"Not a class type: {obj!r}")

    def get_object(self, g: Optional[dict] = None) -> Any:
        parents = tuple(uncan(p, g) for p in self.parents)
        return type(self.name, parents, uncan_dict(self._canned_dict, g=g))


class CannedArray(CannedObject):
    """A numpy array: its data is one buffer (a memoryview of the array, made contiguous
    if it is not; no copy otherwise), rebuilt with ``numpy.frombuffer`` (no copy). Empty
    arrays and object dtypes are pickled whole instead. Unlike ipyparallel's, datetime64 /
    timedelta64 arrays work too (as their bytes)."""

    def __init__(self, obj: Any):
        from numpy import ascontiguousarray

        self.shape = obj.shape
        self.dtype = obj.dtype.descr if obj.dtype.fields else obj.dtype.str
        self.pickled = False
        if sum(obj.shape) == 0:
            self.pickled = True
        elif obj.dtype == "O":
            self.pickled = True
        elif obj.dtype.fields and any(dt == "O" for dt, *_ in obj.dtype.fields.values()):
            self.pickled = True
        if self.pickled:
            from . import serialize

            self.buffers = [serialize.pickle.dumps(obj, serialize.PICKLE_PROTOCOL)]
        else:
            obj = ascontiguousarray(obj, dtype=None)
            try:
                self.buffers = [memoryview(obj)]
            except ValueError:
                # dtypes the buffer protocol does not describe (datetime64, timedelta64):
                # their bytes (ipyparallel's CannedArray raises here)
                self.buffers = [memoryview(obj.view("u1"))]

    def get_object(self, g: Optional[dict] = None) -> Any:
        from numpy import frombuffer

        data = self.buffers[0]
        if self.pickled:
            from . import serialize

            return serialize.pickle.loads(data)
        return frombuffer(data, dtype=self.dtype).reshape(self.shape)


class CannedBytes(CannedObject):
    """``bytes``: one buffer, sent as its own frame when above the threshold."""

    def __init__(self, obj: Any):
        self.buffers = [obj]

    def get_object(self, g: Optional[dict] = None) -> Any:
        return self.wrap(self.buffers[0])

    @staticmethod
    def wrap(data: Any) -> Any:
        """The received buffer as the original type (``bytes``)."""
        if isinstance(data, bytes):
            return data
        return memoryview(data).tobytes()


class CannedMemoryView(CannedBytes):
    """A ``memoryview``: arrives as a memoryview of the received frame (no copy)."""

    wrap = memoryview  # type: ignore[assignment]


CannedBuffer = CannedMemoryView


# -------------------------------------------------------------------------------------------
# can / uncan
# -------------------------------------------------------------------------------------------


def _import_item(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    if not module:
        return importlib.import_module(attr)
    return getattr(importlib.import_module(module), attr)


def _import_mapping(mapping: dict, original: Optional[dict] = None) -> None:
    """Replaces the string keys (``"numpy.ndarray"``) of a type mapping by the types; keys
    that cannot be imported are dropped (logged when the user added them)."""
    for key, value in list(mapping.items()):
        if isinstance(key, str):
            try:
                cls = _import_item(key)
            except Exception:
                if original and key not in original:
                    log.error("canning class not importable: %r", key, exc_info=True)
                mapping.pop(key)
            else:
                mapping[cls] = mapping.pop(key)


def istype(obj: Any, check: Any) -> bool:
    """``isinstance(obj, check)``, but strict: subclasses do not count."""
    if isinstance(check, tuple):
        return any(type(obj) is cls for cls in check)
    return type(obj) is check


def can(obj: Any) -> Any:
    """Prepares an object for pickling (see :data:`can_map`)."""
    import_needed = False
    for cls, canner in can_map.items():
        if isinstance(cls, str):
            import_needed = True
            break
        if istype(obj, cls):
            return canner(obj)
    if import_needed:
        # import the string keys of can_map, then try again (usually happens once)
        _import_mapping(can_map, _original_can_map)
        return can(obj)
    return obj


def can_class(obj: Any) -> Any:
    """Classes from ``__main__`` are shipped by value; others by reference."""
    if isinstance(obj, type) and obj.__module__ == "__main__":
        return CannedClass(obj)
    return obj


def can_dict(obj: Any) -> Any:
    """Cans the *values* of a dict."""
    if istype(obj, dict):
        return {k: can(v) for k, v in obj.items()}
    return obj


sequence_types = (list, tuple, set)


def can_sequence(obj: Any) -> Any:
    """Cans the elements of a list, tuple or set."""
    if istype(obj, sequence_types):
        return type(obj)([can(i) for i in obj])
    return obj


def uncan(obj: Any, g: Optional[dict] = None) -> Any:
    """Inverts :func:`can` (see :data:`uncan_map`)."""
    import_needed = False
    for cls, uncanner in uncan_map.items():
        if isinstance(cls, str):
            import_needed = True
            break
        if isinstance(obj, cls):
            return uncanner(obj, g)
    if import_needed:
        _import_mapping(uncan_map, _original_uncan_map)
        return uncan(obj, g)
    return obj


def uncan_dict(obj: Any, g: Optional[dict] = None) -> Any:
    """Uncans the values of a dict."""
    if istype(obj, dict):
        return {k: uncan(v, g) for k, v in obj.items()}
    return obj


def uncan_sequence(obj: Any, g: Optional[dict] = None) -> Any:
    """Uncans the elements of a list, tuple or set."""
    if istype(obj, sequence_types):
        return type(obj)([uncan(i, g) for i in obj])
    return obj


def _uncan_dependent_hook(dep: Any, g: Optional[dict] = None) -> None:
    dep.check_dependency()


def can_dependent(obj: Any) -> CannedObject:
    """A ``dependent`` function (``@depend`` / ``@require``): its function and dependency
    function canned, the dependency checked when it is uncanned on the engine."""
    return CannedObject(obj, keys=("f", "df"), hook=_uncan_dependent_hook)


# Extend these to can new types: type (or "module.Name", imported on first use) -> canner.
can_map: dict = {
    "numpy.ndarray": CannedArray,
    FunctionType: CannedFunction,
    functools.partial: CannedPartial,
    bytes: CannedBytes,
    memoryview: CannedMemoryView,
    cell_type: CannedCell,
    type: can_class,
    "ipp_rs.dependency.dependent": can_dependent,
}

uncan_map: dict = {
    CannedObject: lambda obj, g: obj.get_object(g),
    dict: uncan_dict,
}

_original_can_map = can_map.copy()
_original_uncan_map = uncan_map.copy()


# -------------------------------------------------------------------------------------------
# ipyparallel, when importable, provides every public name (see the module docstring)
# -------------------------------------------------------------------------------------------

try:
    from ipyparallel.serialize import canning as _ipp
except ImportError:
    _ipp = None

#: True when ipyparallel is importable and its canning classes are the ones used.
IPYPARALLEL = _ipp is not None

if _ipp is not None:
    _delegated = [name for name in __all__ if name not in ("IPYPARALLEL",)]
    _delegated += ["cell_type", "_original_can_map", "_original_uncan_map", "_import_mapping"]
    for _name in _delegated:
        if _name in ("use_pickle", "use_dill", "use_cloudpickle", "interactive"):
            continue  # ours switch both serialize modules; ours keeps kwdefaults
        globals()[_name] = getattr(_ipp, _name)
    del _name, _delegated
