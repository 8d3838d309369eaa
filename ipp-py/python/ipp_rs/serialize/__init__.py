"""Serialization of objects and apply requests, wire-compatible with
``ipyparallel.serialize`` (same public names and signatures).

**The pickles are the wire format.** An ``apply_request`` carries pickles of *canned*
objects (``CannedFunction``, ``CannedArray``, ``Reference``, ...), and a pickle names the
module of each class. So which classes we use decides who can read our messages:

* **ipyparallel importable** (in this process): canning is delegated to ipyparallel's
  module. ``ipp_rs.serialize.can``, ``CannedFunction``, ``Reference``, ``can_map``, ... *are*
  ipyparallel's objects, the code-object reducer is ipyparallel's, and our pickles are
  byte-for-byte what ipyparallel would send: a real ipyparallel engine (``ipengine``) and
  client read them. The message layout (:func:`serialize_object`, :func:`pack_apply_message`
  and their inverses) is our own code, identical to ipyparallel's.
* **ipyparallel not importable**: our own classes (:mod:`ipp_rs.serialize.canning`, same
  attributes as ipyparallel's) are used; the pickles name ``ipp_rs.serialize.canning``, so
  the reader needs ``ipp_rs`` installed (with or without ipyparallel: there
  ``ipp_rs.serialize.canning.CannedFunction`` *is* ipyparallel's class, and the attributes
  match).
* **Reading** works both ways in both cases: without ipyparallel, names from
  ``ipyparallel.serialize.canning``, ``ipyparallel.serialize.codeutil``,
  ``ipyparallel.error``, ``ipyparallel.controller.dependency`` and ``ipyparallel.util`` are
  read as their ipp_rs counterparts (a custom ``Unpickler.find_class``), and functions
  shipped by reference from those modules (``ipyparallel.util._push``, ...) run with the
  globals of our modules.

Data buffers: ``bytes``, ``memoryview`` and numpy arrays (C-contiguous or not) larger than
`buffer_threshold` bytes (default 1024) travel as separate buffers: the serialized list
holds the object itself or a memoryview of the array's data, never a copy (a
non-contiguous array is made contiguous once, as ipyparallel does). On the reading side,
arrays are ``numpy.frombuffer`` views of the received buffers and memoryviews stay
memoryviews; ``bytes`` are rebuilt as ``bytes`` (a copy when the buffer is not ``bytes``).

``use_dill()`` / ``use_cloudpickle()`` / ``use_pickle()`` switch the pickler for ipp_rs and,
when importable, ipyparallel alike.
"""

from .canning import (
    IPYPARALLEL,
    CannedArray,
    CannedBuffer,
    CannedBytes,
    CannedCell,
    CannedClass,
    CannedFunction,
    CannedMemoryView,
    CannedObject,
    CannedPartial,
    Reference,
    can,
    can_map,
    uncan,
    uncan_map,
    use_cloudpickle,
    use_dill,
    use_pickle,
)
from .serialize import (
    PrePickled,
    deserialize_object,
    pack_apply_message,
    serialize_object,
    unpack_apply_message,
)

__all__ = [
    "IPYPARALLEL",
    "Reference",
    "PrePickled",
    "CannedObject",
    "CannedCell",
    "CannedFunction",
    "CannedPartial",
    "CannedClass",
    "CannedArray",
    "CannedBytes",
    "CannedBuffer",
    "CannedMemoryView",
    "can_map",
    "uncan_map",
    "can",
    "uncan",
    "use_dill",
    "use_cloudpickle",
    "use_pickle",
    "serialize_object",
    "deserialize_object",
    "pack_apply_message",
    "unpack_apply_message",
]
