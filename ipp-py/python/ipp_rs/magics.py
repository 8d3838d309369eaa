"""IPython magics for parallel work, as ipyparallel's: ``%px``, ``%%px``, ``%autopx``,
``%pxresult`` and ``%pxconfig``.

They are registered on a view, usually with ``view.activate(suffix='')`` (a DirectView);
the suffix allows several sets at once (``rc[::2].activate('_even')`` gives
``%px_even``, ``%autopx_even``, …). In a script: ``ipp_rs.magics.activate(view)``. As an
extension (``%load_ext ipp_rs.magics``) they bind to all engines of the default cluster.

``%px CODE``
    Runs CODE on the view's engines (blocking unless the view is non-blocking) and shows
    their output, ``[stdout:0] ...``, ``Out[0:3]: ...``.
``%%px [options]``
    Runs the cell. Options: ``-t/--targets``, ``-b/--block``, ``-a/--noblock``,
    ``--stream`` / ``--no-stream`` (stream output as it comes), ``--local`` (also run
    the cell here), ``--group-outputs=type|engine|order`` (``-r`` = order, ``-e`` =
    engine), ``-o/--out NAME`` (save the AsyncResult in the user namespace),
    ``--verbose`` / ``--no-verbose``, ``--progress-after SECONDS``,
    ``--signal-on-interrupt SIG`` (what Ctrl-C sends the engines; default SIGINT).
``%autopx``
    Toggles a mode where every cell typed runs on the engines (``%autopx`` again leaves).
``%pxresult [-o NAME] [--group-outputs ...]``
    Shows (or saves) the result of the last ``%px`` (useful after non-blocking runs).
``%pxconfig [options]``
    Sets the defaults of ``%px``: targets, blocking, streaming, verbosity, progress
    delay, interrupt signal.

The magics use only the public view / AsyncResult API (``view.execute``,
``AsyncResult.get``, ``.display_outputs``, ``.wait_interactive``, ``.stream_output``,
``.wait_for_output``), so they work with any view that has ipyparallel's API.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import time
import warnings
from contextlib import nullcontext
from typing import Any, Callable, Optional

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, no_var_expand

__all__ = ["AlreadyDisplayedError", "ParallelMagics", "activate", "load_ipython_extension"]

NO_LAST_RESULT = "%pxresult recalls last %px result, which has not yet been used."

NO_VIEW = (
    "The parallel magics have no view: connect to a cluster and activate one, e.g.\n"
    "    rc = ipp_rs.Client()        # or: rc = ipp_rs.Cluster(n=4).start_and_connect_sync()\n"
    "    rc[:].activate()"
)

# Set IPP_NONINTERACTIVE=1 to turn off streaming by default (as ipyparallel).
_NONINTERACTIVE = os.getenv("IPP_NONINTERACTIVE", "") not in {"", "0"}


def _is_coroutine_function(f: Callable) -> bool:
    return inspect.iscoroutinefunction(f) or inspect.isgeneratorfunction(f)


def _as_coroutine(f: Callable) -> Callable:
    """Wraps a blocking replacement so it can stand in for a coroutine method."""

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return f(*args, **kwargs)

    return wrapper


def _is_composite_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a CompositeError (ipp_rs's, or ipyparallel's for its views)."""
    return any(cls.__name__ == "CompositeError" for cls in type(exc).__mro__)


class AlreadyDisplayedError(Exception):
    """Raised by a blocking ``%px`` whose errors were already shown while streaming:
    IPython prints only ``N errors`` instead of the tracebacks again."""

    def __init__(self, original_error: BaseException) -> None:
        super().__init__(original_error)
        self.original_error = original_error
        self.n = len(getattr(original_error, "elist", ()) or ()) or 1

    def __repr__(self) -> str:
        return f"<{type(self).__name__}({self.n} errors)>"

    def __str__(self) -> str:
        return f"{self.n} errors"

    def _render_traceback_(self) -> list:
        """IPython's hook: a one-line report."""
        return [str(self)]

    render_traceback = _render_traceback_


def _already_displayed(exc: BaseException) -> BaseException:
    """The AlreadyDisplayedError of the error's own package when it has one (so
    ``except ipyparallel.error.RemoteError`` still catches it), else ours."""
    module = sys.modules.get(type(exc).__module__)
    cls = getattr(module, "AlreadyDisplayedError", None)
    if isinstance(cls, type) and issubclass(cls, BaseException):
        try:
            return cls(exc)
        except Exception:
            pass
    return AlreadyDisplayedError(exc)


def exec_args(f: Callable) -> Callable:
    """Adds the execution options (targets, blocking, streaming, ...) of ``%%px`` and
    ``%pxconfig``."""
    args = [
        magic_arguments.argument(
            "-b", "--block", action="store_const", const=True, dest="block",
            help="use blocking (sync) execution",
        ),
        magic_arguments.argument(
            "-a", "--noblock", action="store_const", const=False, dest="block",
            help="use non-blocking (async) execution",
        ),
        magic_arguments.argument(
            "--stream", action="store_const", const=True, dest="stream",
            help="stream stdout/stderr in real-time (only valid when using blocking execution)",
        ),
        magic_arguments.argument(
            "--no-stream", action="store_const", const=False, dest="stream",
            help="do not stream stdout/stderr in real-time",
        ),
        magic_arguments.argument(
            "-t", "--targets", type=str,
            help="specify the targets on which to execute (an id, a list, a slice like ::2, or all)",
        ),
        magic_arguments.argument(
            "--verbose", action="store_const", const=True, dest="set_verbose",
            help="print a message at each execution",
        ),
        magic_arguments.argument(
            "--no-verbose", action="store_const", const=False, dest="set_verbose",
            help="don't print any messages",
        ),
        magic_arguments.argument(
            "--progress-after", dest="progress_after_seconds", type=float, default=None,
            help="""Wait this many seconds before showing a progress bar for task completion.

            Use -1 for no progress, 0 for always showing progress immediately.
            """,
        ),
        magic_arguments.argument(
            "--signal-on-interrupt", dest="signal_on_interrupt", type=str, default=None,
            help="""Send signal to engines on Keyboard Interrupt. By default a SIGINT is sent.
            Note that this is only applicable when running in blocking mode.
            Choices: SIGINT, 2, SIGKILL, 9, 0 (nop), etc.
            """,
        ),
    ]
    for argument in args:
        f = argument(f)
    return f


def output_args(f: Callable) -> Callable:
    """Adds the output options (grouping, saving the result) of ``%%px`` and
    ``%pxresult``."""
    args = [
        magic_arguments.argument(
            "-r", action="store_const", dest="groupby", const="order",
            help="collate outputs in order (same as group-outputs=order)",
        ),
        magic_arguments.argument(
            "-e", action="store_const", dest="groupby", const="engine",
            help="group outputs by engine (same as group-outputs=engine)",
        ),
        magic_arguments.argument(
            "--group-outputs", dest="groupby", type=str, choices=["engine", "order", "type"],
            default="type",
            help="""Group the outputs in a particular way.

            Choices are:

            **type**: group outputs of all engines by type (stdout, stderr, displaypub, etc.).
            **engine**: display all output for each engine together.
            **order**: like type, but individual displaypub output from each engine is collated.
              For example, if multiple plots are generated by each engine, the first
              figure of each engine will be displayed, then the second of each, etc.
            """,
        ),
        magic_arguments.argument(
            "-o", "--out", dest="save_name", type=str,
            help="""store the AsyncResult object for this computation
                 in the global namespace under this name.
            """,
        ),
    ]
    for argument in args:
        f = argument(f)
    return f


class ParallelMagics(Magics):
    """``%px``, ``%%px``, ``%autopx``, ``%pxresult``, ``%pxconfig`` (plus ``suffix``)
    running on one view."""

    #: Magic tables; filled per instance (the names carry the suffix).
    magics: dict = {}
    registered = True

    suffix = ""
    _autopx = False
    view: Any = None
    #: The AsyncResult of the last %px, for %pxresult.
    last_result: Any = None
    verbose = False
    stream_output = not _NONINTERACTIVE
    #: Seconds before a blocking %px shows a progress bar.
    progress_after_seconds: float = 2
    #: What Ctrl-C during a blocking %px sends the engines.
    signal_on_interrupt: Any = "SIGINT"

    def __init__(self, shell: Any, view: Any, suffix: str = "") -> None:
        self.view = view
        self.suffix = suffix
        px = "px" + suffix
        line = {
            "pxresult" + suffix: self.result,
            px: self.px,
            "pxconfig" + suffix: self.pxconfig,
            "auto" + px: self.autopx,
        }
        if not suffix:
            # ipyparallel keeps %result as a legacy alias.
            line["result"] = self.result
        self.magics = {"line": line, "cell": {px: self.cell_px}}
        super().__init__(shell=shell)

    # -- helpers -------------------------------------------------------------------------

    def _view(self) -> Any:
        if self.view is None:
            raise UsageError(NO_VIEW)
        return self.view

    def _eval_target_str(self, text: str) -> Any:
        """``-t`` values: ``all``, an id, a list (``[0, 2]``), or a slice of the client's
        ids (``::2``, ``1:``)."""
        text = text.strip()
        if ":" in text:
            ids = self._view().client.ids
            return eval(f"ids[{text}]", {"__builtins__": {}}, {"ids": ids})
        if "all" in text:
            return "all"
        try:
            return eval(text, {"__builtins__": {}}, {})
        except Exception as exc:
            raise UsageError(f"bad --targets {text!r}: {exc}") from None

    @staticmethod
    def _eval_signal_str(text: str) -> Any:
        return int(text) if text.isdigit() else text

    # -- magics --------------------------------------------------------------------------

    @magic_arguments.magic_arguments()
    @exec_args
    def pxconfig(self, line: str) -> None:
        """configure default targets/blocking for %px magics"""
        args = magic_arguments.parse_argstring(self.pxconfig, line)
        view = self._view()
        if args.targets:
            view.targets = self._eval_target_str(args.targets)
        if args.block is not None:
            view.block = args.block
        if args.set_verbose is not None:
            self.verbose = args.set_verbose
        if args.stream is not None:
            self.stream_output = args.stream
        if args.signal_on_interrupt is not None:
            self.signal_on_interrupt = self._eval_signal_str(args.signal_on_interrupt)
        if args.progress_after_seconds is not None:
            self.progress_after_seconds = args.progress_after_seconds

    @magic_arguments.magic_arguments()
    @output_args
    def result(self, line: str = "") -> None:
        """Print the result of the last asynchronous %px command.

        This lets you recall the results of %px computations after
        asynchronous submission (block=False).

        Examples
        --------
        ::

            In [23]: %px os.getpid()
            Async parallel execution on engine(s): all

            In [24]: %pxresult
            Out[8:10]: 60920
            Out[9:10]: 60921
            Out[10:10]: 60922
            Out[11:10]: 60923
        """
        args = magic_arguments.parse_argstring(self.result, line)
        if self.last_result is None:
            raise UsageError(NO_LAST_RESULT)
        if args.save_name:
            self.shell.user_ns[args.save_name] = self.last_result
            return
        self.last_result.get()
        self.last_result.display_outputs(groupby=args.groupby)

    @no_var_expand
    def px(self, line: str = "") -> Any:
        """Executes the given python command in parallel.

        Examples
        --------
        ::

            In [24]: %px a = os.getpid()
            Parallel execution on engine(s): all

            In [25]: %px print(a)
            [stdout:0] 1234
            [stdout:1] 1235
            [stdout:2] 1236
            [stdout:3] 1237
        """
        return self.parallel_execute(line)

    def parallel_execute(
        self,
        cell: str,
        block: Optional[bool] = None,
        groupby: str = "type",
        save_name: Optional[str] = None,
        stream_output: Optional[bool] = None,
        progress_after: Optional[float] = None,
        signal_on_interrupt: Any = None,
    ) -> Any:
        """Runs ``cell`` on the view's engines (what ``%px`` and ``%%px`` do). Returns the
        AsyncResult when not blocking."""
        view = self._view()
        block = view.block if block is None else block
        stream_output = self.stream_output if stream_output is None else stream_output
        if signal_on_interrupt is None:
            signal_on_interrupt = self.signal_on_interrupt

        targets = view.targets
        if isinstance(targets, list) and len(targets) > 10:
            shown = str(targets[:4])[:-1] + ", ..., " + str(targets[-4:])[1:]
        else:
            shown = str(targets)
        if self.verbose:
            print(f"{'Parallel' if block else 'Async parallel'} execution on engine(s): {shown}")

        result = view.execute(cell, silent=False, block=False)
        result._fname = "%px"
        self.last_result = result
        if save_name:
            self.shell.user_ns[save_name] = result

        if not block:
            return result
        try:
            if progress_after is None:
                progress_after = self.progress_after_seconds
            with result.stream_output() if stream_output else nullcontext():
                finished = False
                if progress_after > 0:
                    # Quick results show without a progress bar.
                    deadline = time.perf_counter() + progress_after
                    result.wait(timeout=progress_after)
                    result.wait_for_output(timeout=max(deadline - time.perf_counter(), 0))
                    finished = result.done()
                if not finished and progress_after >= 0:
                    result.wait_interactive()
                    result.wait_for_output(1)
                try:
                    result.get()
                except Exception as exc:
                    if (
                        _is_composite_error(exc)
                        and stream_output
                        and getattr(result, "_output_ready", True)
                    ):
                        # The tracebacks were streamed already: report the count only.
                        raise _already_displayed(exc) from None
                    raise
        except KeyboardInterrupt:
            if signal_on_interrupt is None:
                raise
            print(
                f"Received Keyboard Interrupt. Sending signal {signal_on_interrupt} to engines...",
                file=sys.stderr,
            )
            view.client.send_signal(signal_on_interrupt, targets=targets, block=True)
        finally:
            # Without streaming, show the outputs now (also after an error).
            if not stream_output:
                result.wait_for_output(1)
                result.display_outputs(groupby)
        return None

    @magic_arguments.magic_arguments()
    @exec_args
    @output_args
    @magic_arguments.argument(
        "--local", action="store_const", const=True, dest="local",
        help="also execute the cell in the local namespace",
    )
    def cell_px(self, line: str = "", cell: Optional[str] = None) -> Any:
        """Executes the cell in parallel.

        Examples
        --------
        ::

            In [24]: %%px --noblock
               ....: a = os.getpid()
            Async parallel execution on engine(s): all

            In [25]: %%px
               ....: print(a)
            [stdout:0] 1234
            [stdout:1] 1235
            [stdout:2] 1236
            [stdout:3] 1237
        """
        args = magic_arguments.parse_argstring(self.cell_px, line)
        view = self._view()
        cell = cell or ""
        if args.targets:
            saved_targets = view.targets
            view.targets = self._eval_target_str(args.targets)
        signal_on_interrupt = None
        if args.signal_on_interrupt:
            signal_on_interrupt = self._eval_signal_str(args.signal_on_interrupt)
        # With --local, block only after the local run.
        block = False if args.local else args.block
        try:
            result = self.parallel_execute(
                cell,
                block=block,
                groupby=args.groupby,
                save_name=args.save_name,
                stream_output=args.stream,
                progress_after=args.progress_after_seconds,
                signal_on_interrupt=signal_on_interrupt,
            )
        finally:
            if args.targets:
                view.targets = saved_targets
        block = view.block if args.block is None else args.block
        if args.local:
            self.shell.run_cell(cell)
            if block:
                result.get()
                result.display_outputs(args.groupby)
        if not block:
            return result
        return None

    def autopx(self, line: str = "") -> None:
        """Toggles auto parallel mode.

        Once this is called, all commands typed at the command line are sent to the
        engines to be executed in parallel (on the view's targets). ``%autopx`` again
        turns it off::

            In [25]: %autopx
            %autopx enabled

            In [26]: a = 10
            In [27]: print(a)
            [stdout:0] 10
            [stdout:1] 10

            In [28]: %autopx
            %autopx disabled
        """
        if self._autopx:
            self._disable_autopx()
        else:
            self._enable_autopx()

    def _enable_autopx(self) -> None:
        """Installs our run_cell / run_ast_nodes on the shell, keeping the originals.

        Cells still go through IPython's own run_cell (history, input transformers); only
        the final step, running the parsed nodes, sends the raw cell to the engines.
        """
        self._view()
        shell = self.shell
        self._original_run_cell = shell.run_cell
        self._original_run_nodes = shell.run_ast_nodes
        run_cell: Callable = self.pxrun_cell
        if _is_coroutine_function(shell.run_cell):
            run_cell = _as_coroutine(run_cell)
        shell.run_cell = run_cell
        run_nodes: Callable = self.pxrun_nodes
        if _is_coroutine_function(shell.run_ast_nodes):
            run_nodes = _as_coroutine(run_nodes)
        shell.run_ast_nodes = run_nodes
        self._autopx = True
        print("%autopx enabled")

    def _disable_autopx(self) -> None:
        """Restores the shell's run_cell / run_ast_nodes."""
        if self._autopx:
            self.shell.run_cell = self._original_run_cell
            self.shell.run_ast_nodes = self._original_run_nodes
            self._autopx = False
            print("%autopx disabled")

    def pxrun_nodes(self, *args: Any, **kwargs: Any) -> bool:
        """Stands in for ``InteractiveShell.run_ast_nodes`` under %autopx: runs the raw
        cell remotely; returns whether an error occurred (as the original)."""
        cell = self._px_cell
        if re.search(r"^\s*%autopx\b", cell):
            self._disable_autopx()
            return False
        try:
            self.parallel_execute(cell)
        except Exception:
            self.shell.showtraceback()
            return True
        return False

    def pxrun_cell(self, raw_cell: str, *args: Any, **kwargs: Any) -> Any:
        """Stands in for ``InteractiveShell.run_cell`` under %autopx: remembers the raw
        cell, then lets IPython's run_cell (history, transforms) proceed."""
        self._px_cell = raw_cell
        return self._original_run_cell(raw_cell, *args, **kwargs)


def activate(view: Any, suffix: str = "") -> Optional[ParallelMagics]:
    """Registers the parallel magics for ``view`` (with ``suffix`` on their names) in the
    running IPython session and returns them; warns and returns None outside IPython
    (as ipyparallel's ``DirectView.activate``)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        warnings.warn("The IPython parallel magics (%px, etc.) only work within IPython.")
        return None
    magics = ParallelMagics(shell, view, suffix)
    shell.magics_manager.register(magics)
    return magics


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext ipp_rs.magics``: the magics on a blocking view of all engines of the
    default cluster (``ipp_rs.Client()``). Without a running cluster they are still
    registered and say how to activate a view."""
    view = None
    try:
        import ipp_rs

        client_class = getattr(ipp_rs, "Client", None)
        if client_class is None:
            raise ImportError("ipp_rs.Client is not available in this build")
        client = client_class()
        view = client[:]
        view.block = True
    except Exception as exc:
        print(f"ipp_rs.magics: no cluster to connect to ({exc}).\n{NO_VIEW}", file=sys.stderr)
    ip.magics_manager.register(ParallelMagics(ip, view))
