"""Building ``apply_request`` buffers (ipyparallel's ``pack_apply_message`` layout) with
the function and shared arguments serialized once per call, and the small helper functions
that views run on engines (push, pull, map, ...).

The helpers are *interactive* functions (module ``__main__``): they travel by value and run
with the engine's namespace as globals, so they work on any engine (ipyparallel's
``ipengine`` or ours) without importing ``ipp_rs`` there.
"""

from __future__ import annotations

import pickle
import types
import weakref
from typing import Any, Callable, Optional, Sequence

from ..serialize import can_map
from ..serialize import serialize as _serialize_module
from ._deps import Reference, interactive, serialize_object

# jupyter_client Session defaults, which ipyparallel's client passes to serialize_object.
BUFFER_THRESHOLD = 1024
ITEM_THRESHOLD = 64
PICKLE_PROTOCOL = pickle.DEFAULT_PROTOCOL

Buffers = list  # list of bytes-like frames


class Packed:
    """An object serialized once (frames reused in every message that carries it), as
    ipyparallel's ``PrePickled``."""

    __slots__ = ("frames",)

    def __init__(self, obj: Any):
        self.frames: Buffers = serialize_object(obj, BUFFER_THRESHOLD, ITEM_THRESHOLD)


def frames_of(obj: Any) -> Buffers:
    """The serialized frames of `obj` (reused as-is for a :class:`Packed`)."""
    if isinstance(obj, Packed):
        return obj.frames
    if type(obj) in _SCALARS:
        # what serialize_object makes of them (they are not canned), without its checks
        return [_serialize_module.pickle.dumps(obj, _serialize_module.PICKLE_PROTOCOL)]
    return serialize_object(obj, BUFFER_THRESHOLD, ITEM_THRESHOLD)


_SCALARS = frozenset({int, float, complex, bool, str, type(None)})


# -- serialized functions, cached ---------------------------------------------------------
# Serializing a function (its code object and defaults) costs tens of microseconds, about a
# third of a no-op apply. A plain function's frames depend only on its code, defaults,
# names and on which pickler is active, so they are cached per function object and used
# again while all of those are the very same objects. Functions with a closure, or with
# defaults that could be mutated in place, are serialized at every call (as ipyparallel
# does), so a changed value is never sent stale.

_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes)
_function_cache: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()


def _immutable(value: Any) -> bool:
    if isinstance(value, _IMMUTABLE):
        return True
    if type(value) is tuple:
        return all(_immutable(v) for v in value)
    return False


def _serializer_state() -> tuple:
    """What decides how functions are pickled (use_dill / use_cloudpickle switch it)."""
    return (_serialize_module.pickle, can_map.get(types.FunctionType))


def _cache_key(f: Any) -> Optional[tuple]:
    """The identity of what a function's frames are made of, or None if they must not be
    cached."""
    if type(f) is not types.FunctionType or f.__closure__ is not None:
        return None
    defaults, kwdefaults = f.__defaults__, f.__kwdefaults__
    if defaults is not None and not _immutable(defaults):
        return None
    if kwdefaults and not _immutable(tuple(kwdefaults.values())):
        return None
    annotations = f.__annotations__
    if annotations:
        # Type hints are canned with the function; cached only while each is a value that
        # cannot change in place (a string, None, a builtin type such as int).
        annotations = tuple(annotations.items())
        if not all(_immutable(hint) or _builtin_type(hint) for _, hint in annotations):
            return None
    else:
        annotations = None
    return (
        f.__code__,
        defaults,
        tuple(kwdefaults.items()) if kwdefaults else None,
        annotations,
        f.__name__,
        f.__module__,
        _serializer_state(),
    )


def _builtin_type(value: Any) -> bool:
    """A class of the builtins module (canned by reference, never changed)."""
    return type(value) is type and value.__module__ == "builtins"


def function_frames(f: Any) -> Buffers:
    """The serialized frames of the function `f`, from the cache when still valid."""
    key = _cache_key(f)
    if key is None:
        return frames_of(f)
    try:
        cached = _function_cache.get(f)
    except TypeError:  # not weak-referenceable
        return frames_of(f)
    if cached is not None:
        old_key, frames = cached
        if len(old_key) == len(key) and all(a is b or a == b for a, b in zip(old_key, key)):
            return frames
    frames = frames_of(f)
    _function_cache[f] = (key, frames)
    return frames


_info_cache: dict[tuple, bytes] = {}


def _info(nargs: int, narg_bufs: int, kw_keys: tuple) -> bytes:
    """The pickled ``{"nargs", "narg_bufs", "kw_keys"}`` frame (cached: maps repeat it)."""
    key = (nargs, narg_bufs, kw_keys)
    info = _info_cache.get(key)
    if info is None:
        info = pickle.dumps(
            {"nargs": nargs, "narg_bufs": narg_bufs, "kw_keys": list(kw_keys)}, PICKLE_PROTOCOL
        )
        if len(_info_cache) < 4096:
            _info_cache[key] = info
    return info


def check_callable(f: Any) -> None:
    """ipyparallel's check: something the engine can call."""
    if not callable(f) and not isinstance(f, (Reference, Packed)):
        raise TypeError(f"f must be callable, not {type(f)}")


def pack_apply(f: Any, args: Sequence = (), kwargs: dict | None = None) -> Buffers:
    """The buffers of an ``apply_request`` calling ``f(*args, **kwargs)``: S(f), the info
    pickle, S(arg) for each arg, S(kwargs[k]) for each key in sorted order. `f` and the
    arguments may be :class:`Packed` (serialized once for many messages)."""
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be tuple or list, not {type(args)}")
    if kwargs is None:
        kwargs = {}
    elif not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be dict, not {type(kwargs)}")
    bufs = list(function_frames(f))
    arg_bufs: Buffers = []
    for arg in args:
        arg_bufs.extend(frames_of(arg))
    kw_keys = tuple(sorted(kwargs))
    bufs.append(_info(len(args), len(arg_bufs), kw_keys))
    bufs.extend(arg_bufs)
    for key in kw_keys:
        bufs.extend(frames_of(kwargs[key]))
    return bufs


# -- helpers run on engines --------------------------------------------------------------
# Their globals there are the engine's namespace (see `interactive`).


def _push(**ns: Any) -> None:
    """Engine side of ``push``: binds each name (``exec`` so ``a.b`` works as in ipyparallel)."""
    user_ns = globals()
    tmp = "_IP_PUSH_TMP_"
    while tmp in user_ns:
        tmp = tmp + "_"
    try:
        for name, value in ns.items():
            user_ns[tmp] = value
            exec(f"{name} = {tmp}", user_ns)
    finally:
        user_ns.pop(tmp, None)


def _pull(keys: Any) -> Any:
    """Engine side of ``pull``: evaluates one name or a list of names."""
    user_ns = globals()
    if isinstance(keys, (list, tuple, set)):
        return [eval(key, user_ns) for key in keys]
    return eval(keys, user_ns)


def _map(f: Callable, *sequences: Any) -> list:
    """Engine side of a map chunk."""
    return list(map(f, *sequences))


def _broadcast_map(f: Callable, *sequence_names: str) -> list:
    """Engine side of BroadcastView.map: the sequences were scattered under these names."""
    user_ns = globals()
    sequences = [user_ns.pop(name) for name in sequence_names]
    return list(map(f, *sequences))


def _use_serializer(name: str) -> None:
    """Engine side of ``use_pickle`` / ``use_dill`` / ``use_cloudpickle``: switches every
    ipyparallel-compatible serializer already loaded in the engine (ipyparallel's on
    ``ipengine``, whichever ours uses)."""
    import sys

    switched = False
    for module_name in ("ipyparallel.serialize", "ipp_rs.serialize"):
        module = sys.modules.get(module_name)
        if module is not None:
            getattr(module, name)()
            switched = True
    if not switched:
        raise ImportError(
            f"{name}: neither ipyparallel.serialize nor ipp_rs.serialize is loaded on this engine"
        )


def _remote_import(name: str, fromlist: Any, level: int) -> None:
    """Engine side of ``sync_imports``: imports a module into the namespace."""
    import sys

    user_ns = globals()
    mod = __import__(name, fromlist=fromlist, level=level)
    if fromlist:
        for key in fromlist:
            user_ns[key] = getattr(mod, key)
    else:
        user_ns[name] = sys.modules[name]


push_function = interactive(_push)
pull_function = interactive(_pull)
map_function = interactive(_map)
broadcast_map_function = interactive(_broadcast_map)
use_serializer_function = interactive(_use_serializer)
remote_import_function = interactive(_remote_import)
