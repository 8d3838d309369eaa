"""``python -m ipp_rs.engine`` / ``ipp-rs-engine``: an engine the real ipyparallel client
drives like an ``ipengine``.

The engine is the Rust engine runtime of ``ipp-core`` (registration, heartbeats, queues,
control, IOPub) with requests run as Python code on this process's main thread, in a
persistent namespace (:class:`~ipp_rs.engine.kernel.Kernel`). The main thread also runs the
networking while it waits for a request (GIL released), so a request is received, run and
answered without a thread hand-off; while a request runs Python code for more than 10 ms,
a Rust thread takes the networking over until it ends (heartbeats, ``abort``, ``signal``
and the request's output keep flowing).

Where the connection info comes from, as for ``ipengine``: ``--file``, else
``$IPP_CONNECTION_INFO`` (the file's JSON), else
``<profile dir>/security/ipcontroller[-<cluster id>]-engine.json``, waiting up to
``--wait-for-url-file`` seconds for that file to appear. The profile directory is
``--profile-dir``, else ``$IPP_PROFILE_DIR``, else ``$IPYTHONDIR/profile_<--profile>``
(``$IPYTHONDIR`` defaulting to ``~/.ipython``).

What works: ``apply`` (functions, closures, interactive functions using the namespace,
``push``/``pull``/``scatter``/``gather``, ``Reference``), ``map``, ``execute`` (stdout and
stderr streamed, ``execute_input`` / ``execute_result``, error tracebacks in plain text),
``clear``, ``abort``, ``@depend`` / ``@require`` (unmet dependencies are answered with
``dependencies_met: false`` so the scheduler tries another engine), ``shutdown``, and
``signal_request`` with SIGINT, which raises ``KeyboardInterrupt`` in the running request
(also inside ``time.sleep``; not inside C code that does not check for signals). Other
signals are refused with an error reply. ``ipp_rs.engine.display(obj)`` publishes
``display_data``; IPython's own ``display()`` has no shell here and prints instead.
Stopping: SIGTERM (or a client's shutdown) unregisters and exits; Ctrl-C too.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .kernel import Kernel, display

__all__ = ["Kernel", "display", "main"]

CONNECTION_INFO_ENV = "IPP_CONNECTION_INFO"

_LOG_LEVELS = {
    "DEBUG": "debug",
    "10": "debug",
    "0": "debug",
    "INFO": "info",
    "20": "info",
    "WARN": "warn",
    "WARNING": "warn",
    "30": "warn",
    "ERROR": "error",
    "40": "error",
    "CRITICAL": "error",
    "50": "error",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipp-rs-engine",
        description="Start an IPython Parallel engine (Rust runtime, Python executor).",
    )
    parser.add_argument(
        "--file", "--url-file", dest="file", help="the engine connection file (ipcontroller-engine.json)"
    )
    parser.add_argument("--profile", default="default", help="the IPython profile name")
    parser.add_argument(
        "--profile-dir", help="the profile directory; overrides --profile and $IPP_PROFILE_DIR"
    )
    parser.add_argument(
        "--cluster-id",
        default=os.environ.get("IPP_CLUSTER_ID", ""),
        help="cluster id: the connection file is ipcontroller-<id>-engine.json",
    )
    parser.add_argument("--id", type=int, help="ask the controller for this engine id")
    parser.add_argument(
        "--wait-for-url-file",
        type=float,
        default=10.0,
        help="seconds to wait for the connection file to appear",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARN, ERROR, CRITICAL, or 10..50"
    )
    return parser


def profile_dir(explicit: Optional[str], profile: str) -> Path:
    """``--profile-dir``, else ``$IPP_PROFILE_DIR``, else ``$IPYTHONDIR/profile_<name>``."""
    if explicit:
        return Path(explicit)
    if os.environ.get("IPP_PROFILE_DIR"):
        return Path(os.environ["IPP_PROFILE_DIR"])
    ipython_dir = os.environ.get("IPYTHONDIR") or os.path.join(os.path.expanduser("~"), ".ipython")
    return Path(ipython_dir) / f"profile_{profile}"


def connection_info(args: argparse.Namespace) -> str:
    """The engine connection info's JSON text (see the module docs for where from)."""
    if args.file:
        path = Path(args.file)
    else:
        from_env = os.environ.get(CONNECTION_INFO_ENV)
        if from_env:
            return from_env
        name = f"ipcontroller-{args.cluster_id}-engine.json" if args.cluster_id else "ipcontroller-engine.json"
        path = profile_dir(args.profile_dir, args.profile) / "security" / name
    deadline = time.monotonic() + max(0.0, args.wait_for_url_file)
    while not path.exists():
        if time.monotonic() >= deadline:
            raise FileNotFoundError(
                f"connection file {path} not found after {args.wait_for_url_file:.1f} s; "
                "start a controller or pass --file"
            )
        time.sleep(0.1)
    return path.read_text()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs one engine until it stops; the process exit status (0, or 255 when
    registration failed or the controller was lost, as ``ipengine``)."""
    from .. import _ipp_rs

    args = _parser().parse_args(argv)
    level = _LOG_LEVELS.get(str(args.log_level).upper())
    if level is None:
        print(f"ipp-rs-engine: error: unknown log level {args.log_level!r}", file=sys.stderr)
        return 2
    _ipp_rs.init_logging(level)
    try:
        engine = _ipp_rs.Engine(connection_info(args), requested_id=args.id)
    except (OSError, ValueError) as exc:
        print(f"ipp-rs-engine: error: {exc}", file=sys.stderr)
        return 255
    kernel = Kernel()

    def on_terminate(signum: int, frame: object) -> None:
        engine.stop()
        if engine.busy:
            # Stop the running request too; its reply reports the exit.
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_terminate)
    # signal_request delivers SIGINT: make sure it raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # What is loaded by now (the interpreter, ipp_rs, ipyparallel when installed) lives as
    # long as the engine: keep it out of the garbage collector's scans, which otherwise
    # walk all of it at every older-generation collection while requests run.
    gc.freeze()
    try:
        engine.serve(kernel)
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"ipp-rs-engine: error: {exc}", file=sys.stderr)
        return 255
    return 0
