"""ipp_rs: IPython Parallel on a Rust core.

What exists so far:

* ``python -m ipp_rs.engine`` (or the ``ipp-rs-engine`` script): an engine that the real
  ipyparallel client drives like an ``ipengine``, running the Rust engine runtime with
  requests executed as Python code (see :mod:`ipp_rs.engine`).
* :func:`init_logging`: Rust-side logging on stderr (``$IPP_RS_LOG`` overrides the level).

The ipyparallel-compatible client API (``Client``, views, ``AsyncResult``, …), the magics
and ``Cluster`` are not written yet.
"""

from ._ipp_rs import __version__, init_logging

__all__ = ["__version__", "init_logging"]
