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
    CannedObject,
    can,
    can_sequence,
    istype,
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
    if isinstance(obj, _PREPICKLED_TYPES):
        return obj.buffers[:]
    buffers: list = []
    if istype(obj, sequence_types) and len(obj) < item_threshold:
        cobj = can_sequence(obj)
        for c in cobj:
            buffers.extend(_extract_buffers(c, buffer_threshold))
    elif istype(obj, dict) and len(obj) < item_threshold:
        cobj = {}
        for k in sorted(obj):
            c = can(obj[k])
            buffers.extend(_extract_buffers(c, buffer_threshold))
            cobj[k] = c
    else:
        cobj = can(obj)
        buffers.extend(_extract_buffers(cobj, buffer_threshold))
    buffers.insert(0, pickle.dumps(cobj, PICKLE_PROTOCOL))
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
    canned = _loads(pobj)
    if istype(canned, sequence_types) and len(canned) < MAX_ITEMS:
        for c in canned:
            _restore_buffers(c, bufs)
        newobj = uncan_sequence(canned, g)
    elif istype(canned, dict) and len(canned) < MAX_ITEMS:
        newobj = {}
        for k in sorted(canned):
            c = canned[k]
            _restore_buffers(c, bufs)
            newobj[k] = uncan(c, g)
    else:
        _restore_buffers(canned, bufs)
        newobj = uncan(canned, g)
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


def unpack_apply_message(
    bufs: Sequence[Any], g: Optional[dict] = None, copy: bool = True
) -> tuple[Any, tuple, dict]:
    """Unpacks ``(f, args, kwargs)`` from the buffers of :func:`pack_apply_message`.
    `copy` is accepted for ipyparallel compatibility: buffers are never copied here."""
    bufs = list(bufs)
    if len(bufs) < 2:
        raise ValueError(f"an apply message has at least 2 buffers, got {len(bufs)}")
    f, bufs = deserialize_object(bufs, g)
    info = _loads(bufs.pop(0))
    arg_bufs, kwarg_bufs = bufs[: info["narg_bufs"]], bufs[info["narg_bufs"] :]
    args_list = []
    for _ in range(info["nargs"]):
        arg, arg_bufs = deserialize_object(arg_bufs, g)
        args_list.append(arg)
    if arg_bufs:
        raise ValueError(f"{len(arg_bufs)} argument buffers left over in an apply message")
    kwargs = {}
    for key in info["kw_keys"]:
        kwarg, kwarg_bufs = deserialize_object(kwarg_bufs, g)
        kwargs[key] = kwarg
    if kwarg_bufs:
        raise ValueError(f"{len(kwarg_bufs)} keyword buffers left over in an apply message")
    return f, tuple(args_list), kwargs
