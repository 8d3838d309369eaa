"""Serialization of objects and apply requests into lists of buffers, as
``ipyparallel.serialize.serialize`` (same message layout, thresholds and pickles).

``serialize_object(obj)`` → ``[pickle of the canned object, *data buffers]``: the canned
object's data buffers (bytes, memoryviews, numpy array data) larger than
`buffer_threshold` bytes are left out of the pickle and returned as separate buffers, the
very objects given (no copy); smaller memoryviews are copied into the pickle. A list, tuple,
set or dict with fewer than `item_threshold` items has each element canned (dict values in
sorted key order); larger containers are pickled whole.

``pack_apply_message(f, args, kwargs)`` → ``[*serialize_object(f), pickle of {"nargs",
"narg_bufs", "kw_keys"}, *buffers of each arg, *buffers of each kwarg in sorted key order]``.
"""

from __future__ import annotations

import importlib
import io
import pickle
import pickle as _stdlib_pickle
from itertools import chain
from typing import Any, Optional, Sequence

from .canning import (
    IPYPARALLEL,
    IPYPARALLEL_MODULE_ALIASES,
    CannedFunction,
    CannedObject,
    _original_uncan_map,
    can,
    sequence_types,
    uncan,
    uncan_sequence,
)

__all__ = [
    "PICKLE_PROTOCOL",
    "MAX_BYTES",
    "MAX_ITEMS",
    "PrePickled",
    "serialize_object",
    "deserialize_object",
    "pack_apply_message",
    "unpack_apply_message",
]

PICKLE_PROTOCOL = pickle.DEFAULT_PROTOCOL

# jupyter_client.session's defaults (buffer_threshold, item_threshold), which ipyparallel
# uses.
MAX_BYTES = 1024
MAX_ITEMS = 64


class PrePickled:
    """An object serialized once, ahead of time, to send it several times without
    pickling it again (``serialize_object`` returns its buffers as they are)."""

    def __init__(self, obj: Any):
        self.buffers = serialize_object(obj)


def _prepickled_types() -> tuple:
    if IPYPARALLEL:
        from ipyparallel.serialize.serialize import PrePickled as IppPrePickled

        return (PrePickled, IppPrePickled)
    return (PrePickled,)


# ipyparallel's PrePickled objects are accepted too.
_PREPICKLED_TYPES = _prepickled_types()


def _nbytes(buf: Any) -> int:
    """Size in bytes of a memoryview or bytes-like buffer."""
    if isinstance(buf, memoryview):
        return buf.nbytes
    return len(buf)


def _extract_buffers(obj: Any, threshold: int = MAX_BYTES) -> list:
    """Takes the buffers larger than `threshold` out of a canned object (they leave a
    ``None`` behind); smaller memoryviews become bytes so they pickle."""
    buffers = []
    if isinstance(obj, CannedObject) and obj.buffers:
        for i, buf in enumerate(obj.buffers):
            if _nbytes(buf) > threshold:
                obj.buffers[i] = None
                buffers.append(buf)
            elif isinstance(buf, memoryview):
                obj.buffers[i] = buf.tobytes()
    return buffers


def _restore_buffers(obj: Any, buffers: list) -> None:
    """Puts the buffers taken out by :func:`_extract_buffers` back, in order."""
    if isinstance(obj, CannedObject) and obj.buffers:
        for i, buf in enumerate(obj.buffers):
            if buf is None:
                obj.buffers[i] = buffers.pop(0)


# `can` walks every key of can_map for each object; most objects (None, numbers,
# strings, ...) match none and come back as they are. _can answers those from one lookup,
# as long as every key of can_map is a type (a string key is imported by `can` first; a
# tuple key matches several types): checked again whenever the keys change.
_can_globals = can.__globals__
_can_keys: list = [None, False]  # [the keys of can_map last seen, are they all types]


def _can(obj: Any) -> Any:
    """``can(obj)``, without walking can_map when no key of it is ``type(obj)``."""
    can_map = _can_globals["can_map"]
    keys = tuple(can_map)
    if keys != _can_keys[0]:
        _can_keys[0] = keys
        _can_keys[1] = all(isinstance(key, type) for key in keys)
    if _can_keys[1] and type(obj) not in can_map:
        return obj
    return can(obj)


# A function that returns nothing returns None: its pickle, made once.
_NONE_PICKLE = _stdlib_pickle.dumps(None, PICKLE_PROTOCOL)


def serialize_object(
    obj: Any, buffer_threshold: int = MAX_BYTES, item_threshold: int = MAX_ITEMS
) -> list:
    """Serializes an object into a list of buffers: ``[pickle, *data buffers]``.

    Parameters
    ----------
    obj : object
        The object to serialize.
    buffer_threshold : int
        Data buffers larger than this many bytes are sent as separate buffers, not copied
        into the pickle.
    item_threshold : int
        Containers with at least this many items are pickled without canning their items.
    """
    if obj is None and pickle is _stdlib_pickle and _can(None) is None:
        return [_NONE_PICKLE]  # what the general case below makes of None, made once
    if isinstance(obj, _PREPICKLED_TYPES):
        return obj.buffers[:]
    buffers: list = [None]
    kind = type(obj)
    if kind in sequence_types and len(obj) < item_threshold:
        cobj = kind([_can(item) for item in obj])
        for c in cobj:
            if isinstance(c, CannedObject):
                buffers.extend(_extract_buffers(c, buffer_threshold))
    elif kind is dict and len(obj) < item_threshold:
        cobj = {}
        for k in sorted(obj):
            c = _can(obj[k])
            if isinstance(c, CannedObject):
                buffers.extend(_extract_buffers(c, buffer_threshold))
            cobj[k] = c
    else:
        cobj = _can(obj)
        if isinstance(cobj, CannedObject):
            buffers.extend(_extract_buffers(cobj, buffer_threshold))
    buffers[0] = pickle.dumps(cobj, PICKLE_PROTOCOL)
    return buffers


def _find_ipyparallel_alias(module: str, name: str) -> Any:
    alias = IPYPARALLEL_MODULE_ALIASES.get(module)
    if alias is None:
        raise pickle.UnpicklingError(
            f"this pickle references {module}.{name}, but ipyparallel is not installed and "
            f"ipp_rs has no counterpart for {module}: install ipyparallel to read it"
        )
    try:
        return getattr(importlib.import_module(alias), name)
    except AttributeError:
        raise pickle.UnpicklingError(
            f"this pickle references {module}.{name}, but ipyparallel is not installed and "
            f"{alias} has no {name}: install ipyparallel to read it"
        ) from None


_compat_unpicklers: dict = {}


def _compat_unpickler() -> type:
    """An Unpickler (of the current pickler module: pickle, dill, ...) whose
    ``find_class`` reads names of ipyparallel modules that cannot be imported as their
    ipp_rs counterparts."""
    base = getattr(pickle, "Unpickler", None) or _stdlib_pickle.Unpickler
    cls = _compat_unpicklers.get(base)
    if cls is None:

        class CompatUnpickler(base):  # type: ignore[misc, valid-type]
            def find_class(self, module: str, name: str) -> Any:
                if module == "ipyparallel" or module.startswith("ipyparallel."):
                    try:
                        return super().find_class(module, name)
                    except ImportError:
                        return _find_ipyparallel_alias(module, name)
                return super().find_class(module, name)

        cls = _compat_unpicklers[base] = CompatUnpickler
    return cls


def _compat_loads(data: Any) -> Any:
    """``pickle.loads`` through :func:`_compat_unpickler`."""
    return _compat_unpickler()(io.BytesIO(data)).load()


def _loads(data: Any) -> Any:
    if IPYPARALLEL:
        return pickle.loads(data)
    return _compat_loads(data)


# Pickles of plain functions, by their bytes, and what they unpickle to: a client sends
# the same function again and again, and unpickling its code object is most of the cost of
# reading a small request. Only a CannedFunction with nothing a call could change (no
# defaults, keyword defaults, closure or buffers; type hints only of unchanging values) is
# kept: each request still gets a new function from it (uncan), as if the pickle had been
# read again.
_FUNCTION_MEMO: dict = {}
_FUNCTION_MEMO_ENTRIES = 64
_FUNCTION_MEMO_MAX_BYTES = 64 * 1024
_PLAIN_FUNCTION_ATTRS = frozenset(
    ("code", "defaults", "kwdefaults", "annotations", "closure", "module", "__name__", "buffers")
)


def _loads_canned(data: Any) -> Any:
    """``_loads(data)``, from :data:`_FUNCTION_MEMO` when `data` pickles a plain function."""
    try:
        canned = _FUNCTION_MEMO.get(data)
    except TypeError:  # an unhashable buffer (writable memoryview, bytearray)
        return _loads(data)
    if canned is not None:
        return canned
    canned = _loads(data)
    if (
        type(canned) is CannedFunction
        and not (canned.defaults or canned.kwdefaults or canned.closure or canned.buffers)
        and _unchanging_hints(canned.annotations)
        and _PLAIN_FUNCTION_ATTRS.issuperset(vars(canned))
        and _nbytes(data) <= _FUNCTION_MEMO_MAX_BYTES
    ):
        if len(_FUNCTION_MEMO) >= _FUNCTION_MEMO_ENTRIES:
            _FUNCTION_MEMO.clear()
        _FUNCTION_MEMO[bytes(data)] = canned
    return canned


_UNCHANGING_HINT_TYPES = frozenset({str, type(None), int, float, complex, bool, bytes})


def _unchanging_hints(annotations: Any) -> bool:
    """No type hints, or only hints that stay what they are when uncanned (strings, None,
    numbers, builtin classes): each call still gets a fresh ``__annotations__`` dict, so a
    memoized canned function shares nothing mutable between calls."""
    if not annotations:
        return True
    return type(annotations) is dict and all(
        type(hint) in _UNCHANGING_HINT_TYPES
        or (type(hint) is type and hint.__module__ == "builtins")
        for hint in annotations.values()
    )


_uncan_globals = uncan.__globals__
_DEFAULT_UNCANNER = _original_uncan_map.get(CannedObject)


def _uncan(obj: Any, g: Optional[dict]) -> Any:
    """``uncan(obj, g)``; for a CannedFunction, ``obj.get_object(g)`` called directly when
    that is what `uncan` would call (the first key of uncan_map is CannedObject, mapped to
    its default uncanner), without `uncan`'s walk over uncan_map."""
    if type(obj) is CannedFunction:
        uncan_map = _uncan_globals["uncan_map"]
        first = next(iter(uncan_map), None)
        if first is CannedObject and uncan_map[first] is _DEFAULT_UNCANNER:
            return obj.get_object(g)
    return uncan(obj, g)


def deserialize_object(buffers: Sequence[Any], g: Optional[dict] = None) -> tuple[Any, list]:
    """Rebuilds an object serialized by :func:`serialize_object`.

    Parameters
    ----------
    buffers : list of buffers (bytes, memoryviews, ...)
    g : the globals for functions from ``__main__`` (the engine's namespace)

    Returns
    -------
    (obj, bufs) : the object, and the buffers left over (those of the next object).
    """
    bufs = list(buffers)
    pobj = bufs.pop(0)
    canned = _loads_canned(pobj)
    kind = type(canned)
    if kind in sequence_types and len(canned) < MAX_ITEMS:
        for c in canned:
            _restore_buffers(c, bufs)
        newobj = uncan_sequence(canned, g)
    elif kind is dict and len(canned) < MAX_ITEMS:
        newobj = {}
        for k in sorted(canned):
            c = canned[k]
            _restore_buffers(c, bufs)
            newobj[k] = uncan(c, g)
    else:
        if isinstance(canned, CannedObject):
            _restore_buffers(canned, bufs)
        newobj = _uncan(canned, g)
    return newobj, bufs


def pack_apply_message(
    f: Any,
    args: Sequence[Any],
    kwargs: dict,
    buffer_threshold: int = MAX_BYTES,
    item_threshold: int = MAX_ITEMS,
) -> list:
    """Packs a function, its args and kwargs for an ``apply_request``:
    ``[*f buffers, info pickle, *arg buffers, *kwarg buffers]`` (see the module docstring).
    Each arg and kwarg value is canned; data above `buffer_threshold` travels without copy.
    """
    arg_bufs = list(
        chain.from_iterable(
            serialize_object(arg, buffer_threshold, item_threshold) for arg in args
        )
    )
    kw_keys = sorted(kwargs.keys())
    kwarg_bufs = list(
        chain.from_iterable(
            serialize_object(kwargs[key], buffer_threshold, item_threshold) for key in kw_keys
        )
    )
    info = dict(nargs=len(args), narg_bufs=len(arg_bufs), kw_keys=kw_keys)
    msg = serialize_object(f)
    msg.append(pickle.dumps(info, PICKLE_PROTOCOL))
    msg.extend(arg_bufs)
    msg.extend(kwarg_bufs)
    return msg


# The info pickles of apply requests ({"nargs", "narg_bufs", "kw_keys"}), by their bytes, as
# (nargs, narg_bufs, kw_keys): a handful of distinct ones cover most requests.
_INFO_MEMO: dict = {}
_INFO_MEMO_ENTRIES = 64
_INFO_KEYS = frozenset(("nargs", "narg_bufs", "kw_keys"))


def _apply_info(data: Any) -> tuple[Any, Any, Any]:
    """``(nargs, narg_bufs, kw_keys)`` of an apply request's info pickle."""
    try:
        found = _INFO_MEMO.get(data)
    except TypeError:  # an unhashable buffer
        found = None
    if found is not None:
        return found
    info = _loads(data)
    found = (info["nargs"], info["narg_bufs"], info["kw_keys"])
    nargs, narg_bufs, kw_keys = found
    if (
        type(info) is dict
        and info.keys() == _INFO_KEYS
        and type(nargs) is int
        and type(narg_bufs) is int
        and type(kw_keys) is list
        and all(type(key) is str for key in kw_keys)
        and len(kw_keys) <= MAX_ITEMS
    ):
        if len(_INFO_MEMO) >= _INFO_MEMO_ENTRIES:
            _INFO_MEMO.clear()
        try:
            _INFO_MEMO[bytes(data)] = (nargs, narg_bufs, tuple(kw_keys))
        except TypeError:
            pass
    return found


_NO_ARGUMENTS = (0, 0, ())


def _unpack_plain_call(bufs: Sequence[Any], g: Optional[dict]) -> Any:
    """The function of an apply request ``f()`` whose f pickle and info pickle are both
    memoized (a plain function: see :data:`_FUNCTION_MEMO`), as
    :func:`unpack_apply_message` makes it; None for any other request. The common case of
    the engine, read with a few dict lookups."""
    if len(bufs) != 2:
        return None
    try:
        canned = _FUNCTION_MEMO.get(bufs[0])
        if canned is None or _INFO_MEMO.get(bufs[1]) != _NO_ARGUMENTS:
            return None
    except TypeError:  # an unhashable buffer
        return None
    return _uncan(canned, g)


def unpack_apply_message(
    bufs: Sequence[Any], g: Optional[dict] = None, copy: bool = True
) -> tuple[Any, tuple, dict]:
    """Unpacks ``(f, args, kwargs)`` from the buffers of :func:`pack_apply_message`.
    `copy` is accepted for ipyparallel compatibility: buffers are never copied here."""
    bufs = list(bufs)
    if len(bufs) < 2:
        raise ValueError(f"an apply message has at least 2 buffers, got {len(bufs)}")
    f, bufs = deserialize_object(bufs, g)
    nargs, narg_bufs, kw_keys = _apply_info(bufs.pop(0))
    if not bufs and not nargs and not kw_keys:
        return f, (), {}  # f() (the info pickle said so; nothing is left over)
    arg_bufs, kwarg_bufs = bufs[:narg_bufs], bufs[narg_bufs:]
    args_list = []
    for _ in range(nargs):
        arg, arg_bufs = deserialize_object(arg_bufs, g)
        args_list.append(arg)
    if arg_bufs:
        raise ValueError(f"{len(arg_bufs)} argument buffers left over in an apply message")
    kwargs = {}
    for key in kw_keys:
        kwarg, kwarg_bufs = deserialize_object(kwarg_bufs, g)
        kwargs[key] = kwarg
    if kwarg_bufs:
        raise ValueError(f"{len(kwarg_bufs)} keyword buffers left over in an apply message")
    return f, tuple(args_list), kwargs
