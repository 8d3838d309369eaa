"""Pickling of code objects (``types.CodeType``), as ``ipyparallel.serialize.codeutil``.

Importing this module registers a ``copyreg`` reducer for code objects, so functions can be
shipped by value (:class:`~ipp_rs.serialize.canning.CannedFunction` pickles its
``__code__``). A code object is pickled as ``code_ctor(*args)`` where ``args`` are the
positional arguments of the ``types.CodeType`` constructor of this Python version, so both
ends must run the same Python minor version (as with ipyparallel).

When ipyparallel is importable, its reducer is the one registered (and these names are
ipyparallel's functions), so the pickles name ``ipyparallel.serialize.codeutil.code_ctor``
and a real ipyparallel engine reads them. Otherwise ours is registered and the pickles name
``ipp_rs.serialize.codeutil.code_ctor``.
"""

from __future__ import annotations

import copyreg
import inspect
import sys
import types
from typing import Any, Callable

__all__ = ["code_ctor", "reduce_code"]


def code_ctor(*args: Any) -> types.CodeType:
    """Rebuilds a code object from the ``types.CodeType`` constructor arguments."""
    return types.CodeType(*args)


# CodeType constructor parameter names that are not ``co_<name>`` attributes.
_code_attr_map = {"codestring": "code", "constants": "consts"}


def _constructor_attribute_names() -> tuple[str, ...]:
    """The ``co_*`` attribute behind each positional parameter of ``types.CodeType``."""
    pypy = getattr(sys, "pypy_version_info", None)
    if sys.version_info >= (3, 10) and (pypy is None or pypy >= (7, 3, 19)):
        return tuple(
            _code_attr_map.get(name, name)
            for name, param in inspect.signature(types.CodeType).parameters.items()
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
            and not (pypy is not None and name == "magic")
        )
    # types.CodeType cannot be introspected before Python 3.10.
    names = [
        "argcount",
        "kwonlyargcount",
        "nlocals",
        "stacksize",
        "flags",
        "code",
        "consts",
        "names",
        "varnames",
        "filename",
        "name",
        "firstlineno",
        "lnotab",
        "freevars",
        "cellvars",
    ]
    if hasattr(types.CodeType, "co_posonlyargcount"):
        names.insert(1, "posonlyargcount")
    return tuple(names)


_code_attr_names = _constructor_attribute_names()


def reduce_code(obj: types.CodeType) -> tuple[Callable[..., types.CodeType], tuple]:
    """``copyreg`` reducer of code objects: ``(code_ctor, constructor arguments)``."""
    return code_ctor, tuple(getattr(obj, f"co_{name}") for name in _code_attr_names)


try:
    from ipyparallel.serialize import codeutil as _ipyparallel_codeutil
except ImportError:
    _ipyparallel_codeutil = None

if _ipyparallel_codeutil is not None:
    # ipyparallel registered its reducer on import; keep it, so pickles name its module.
    code_ctor = _ipyparallel_codeutil.code_ctor  # noqa: F811
    reduce_code = _ipyparallel_codeutil.reduce_code  # noqa: F811
else:
    copyreg.pickle(types.CodeType, reduce_code)
