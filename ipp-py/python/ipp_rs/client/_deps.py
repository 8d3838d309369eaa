"""The sibling modules the client layer builds on (serialization, errors, dependencies)
and the native client, imported in one place."""

from __future__ import annotations

from .. import error, serialize
from ..dependency import Dependency, dependent
from ..serialize import Reference, deserialize_object, serialize_object
from ..util import interactive

from .._ipp_rs import NativeClient

__all__ = [
    "error",
    "serialize",
    "Dependency",
    "dependent",
    "Reference",
    "deserialize_object",
    "serialize_object",
    "interactive",
    "NativeClient",
]
