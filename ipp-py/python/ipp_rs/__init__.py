"""ipp_rs: IPython Parallel on a Rust core.

The same API as ``ipyparallel`` (port by changing ``import ipyparallel as ipp`` to
``import ipp_rs as ipp``): :class:`Client`, the views (:class:`DirectView`,
:class:`LoadBalancedView`, :class:`BroadcastView`), :class:`AsyncResult`, ``remote`` /
``parallel``, dependencies, ``Reference``, the error classes, ``Cluster``. Networking,
signing and reply bookkeeping run in Rust threads with the GIL released; Python pickles
and builds the ipyparallel-shaped objects.

Also here: ``python -m ipp_rs.engine`` (an engine the real ipyparallel client drives like
an ``ipengine``) and :func:`init_logging` (Rust-side logs on stderr, ``$IPP_RS_LOG``).
"""

import os as _os
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from typing import Any as _Any

from ._ipp_rs import __version__, init_logging
from .client import (
    AsyncHubResult,
    AsyncMapResult,
    AsyncResult,
    BroadcastView,
    Client,
    DirectView,
    LoadBalancedView,
    ParallelFunction,
    RemoteFunction,
    ViewExecutor,
    parallel,
    remote,
)
from . import error, serialize
from .dependency import Dependency, depend, dependent, require
from .error import *  # noqa: F401,F403
from .serialize import (  # noqa: F401
    PrePickled,
    Reference,
    can,
    can_map,
    deserialize_object,
    pack_apply_message,
    serialize_object,
    uncan,
    uncan_map,
    unpack_apply_message,
    use_cloudpickle,
    use_dill,
    use_pickle,
)
from .util import interactive


def _version_info(version: str) -> tuple:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) + (None, None)


version_info = _version_info(__version__)

_NONINTERACTIVE = _os.getenv("IPP_NONINTERACTIVE", "") not in {"", "0"}


def bind_kernel(**kwargs: _Any) -> None:
    """Not available: ipp_rs engines are not IPython kernels, so there is no kernel to
    bind a frontend to."""
    raise NotImplementedError(
        "bind_kernel is not implemented in ipp_rs: its engines are not IPython kernels; "
        "run ipyparallel's ipengine if you need to attach a frontend"
    )


def register_joblib_backend(name: str = "ipyparallel", make_default: bool = False) -> None:
    """Registers with joblib a backend named `name` that runs on the default profile's
    cluster (``Parallel(backend=name)``)."""
    from .client._joblib import register

    register(name=name, make_default=make_default)


def __getattr__(name: str) -> _Any:
    # Cluster lives in ipp_rs.cluster, imported on first use (it pulls in process
    # management that plain clients do not need).
    if name in ("Cluster", "ClusterManager"):
        from . import cluster

        return getattr(cluster, name)
    raise AttributeError(f"module 'ipp_rs' has no attribute {name!r}")


__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "AsyncHubResult",
    "AsyncMapResult",
    "AsyncResult",
    "BroadcastView",
    "Client",
    "Cluster",
    "ClusterManager",
    "Dependency",
    "DirectView",
    "LoadBalancedView",
    "ParallelFunction",
    "PrePickled",
    "Reference",
    "RemoteFunction",
    "ViewExecutor",
    "bind_kernel",
    "can",
    "can_map",
    "depend",
    "dependent",
    "deserialize_object",
    "error",
    "init_logging",
    "interactive",
    "pack_apply_message",
    "parallel",
    "register_joblib_backend",
    "remote",
    "require",
    "serialize",
    "serialize_object",
    "uncan",
    "uncan_map",
    "unpack_apply_message",
    "use_cloudpickle",
    "use_dill",
    "use_pickle",
    "version_info",
    "__version__",
]
__all__ += list(error.__all__)
