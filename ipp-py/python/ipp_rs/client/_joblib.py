"""A joblib parallel backend running on a view (ipyparallel's ``IPythonParallelBackend``).

``view.register_joblib_backend()`` registers a backend on that view;
``ipp_rs.register_joblib_backend()`` registers one that connects to the default cluster
(starting one if none runs) when joblib first uses it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from joblib.parallel import AutoBatchingMixin, ParallelBackendBase


class IPythonParallelBackend(AutoBatchingMixin, ParallelBackendBase):
    """Runs joblib's batches as load-balanced (or direct) tasks of a view."""

    def __init__(self, view: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._cluster_owner = False
        self._client_owner = False
        if view is None:
            # As ipyparallel: the default profile's cluster, or a new one started here.
            from .client import Client

            self._client_owner = True
            try:
                rc = Client(timeout=1)
                n = 1
            except OSError:  # no connection file, or no controller behind it
                from ..cluster import Cluster

                cluster = self._cluster = Cluster()
                self._cluster_owner = True
                cluster.start_cluster_sync()
                rc = cluster.connect_client_sync()
                n = cluster.n or 1
            rc.wait_for_engines(n)
            view = rc.load_balanced_view()
            # joblib tends to send closures: cloudpickle (or dill) when available
            try:
                import cloudpickle  # noqa: F401
            except ImportError:
                try:
                    import dill  # noqa: F401
                except ImportError:
                    pass
                else:
                    rc[:].use_dill()
            else:
                rc[:].use_cloudpickle()
        self._view = view

    def effective_n_jobs(self, n_jobs: Optional[int]) -> int:
        """A view runs ``len(view)`` jobs at a time."""
        return len(self._view)

    def terminate(self) -> None:
        """Closes the client if this backend made it."""
        if self._client_owner:
            self._view.client.close()
        if self._cluster_owner:
            self._cluster.stop_cluster_sync()

    def submit(self, func: Callable, callback: Optional[Callable] = None) -> Any:
        """Schedules ``func()`` on the view; returns its AsyncResult (joblib reads it with
        ``get``)."""
        future = self._view.apply_async(func)
        if callback:
            future.add_done_callback(callback)
        return future

    def apply_async(self, func: Callable, callback: Optional[Callable] = None) -> Any:
        """joblib < 1.5 name of :meth:`submit`."""
        return self.submit(func, callback)


def register(name: str = "ipyparallel", make_default: bool = False) -> None:
    """Registers the default backend `name` with joblib."""
    from joblib.parallel import register_parallel_backend

    register_parallel_backend(name, IPythonParallelBackend, make_default=make_default)


__all__ = ["IPythonParallelBackend", "register"]
