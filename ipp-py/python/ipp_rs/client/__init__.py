"""The ipyparallel-compatible client API of ipp_rs: :class:`Client`, the views,
AsyncResults, remote functions and the executor."""

from .asyncresult import AsyncHubResult, AsyncMapResult, AsyncResult
from .client import Client, ExecuteReply, Metadata
from .futures import ViewExecutor
from .remotefunction import ParallelFunction, RemoteFunction, parallel, remote
from .view import BroadcastView, DirectView, LazyMapIterator, LoadBalancedView, View

__all__ = [
    "AsyncHubResult",
    "AsyncMapResult",
    "AsyncResult",
    "BroadcastView",
    "Client",
    "DirectView",
    "ExecuteReply",
    "LazyMapIterator",
    "LoadBalancedView",
    "Metadata",
    "ParallelFunction",
    "RemoteFunction",
    "View",
    "ViewExecutor",
    "parallel",
    "remote",
]
