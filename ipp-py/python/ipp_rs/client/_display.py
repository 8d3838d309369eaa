"""How an AsyncResult shows its outputs: ``display_outputs`` (``[stdout:0] ...``, IPython
displays, ``Out[0:1]: ...``), ``stream_output`` (as they arrive) and ``wait_interactive``
(a tqdm progress bar). A mixin of :class:`ipp_rs.client.asyncresult.AsyncResult`."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from ._deps import error
from ._metadata import ExecuteReply, Metadata, _get_ipython, build_metadata


def progress(*args: Any, widget: Optional[bool] = None, **kwargs: Any) -> Any:
    """A tqdm progress bar (the notebook widget inside a kernel with ipywidgets, unless
    `widget` says otherwise), as ipyparallel's ``util.progress``."""
    if widget is None:
        ip = _get_ipython()
        widget = False
        if ip is not None and getattr(ip, "kernel", None) is not None:
            try:
                import ipywidgets  # noqa: F401
            except ImportError:
                widget = False
            else:
                widget = True
    try:
        if widget:
            import tqdm.notebook

            return tqdm.notebook.tqdm_notebook(*args, **kwargs)
        import tqdm
    except ImportError as exc:
        raise ImportError(
            f"progress bars need tqdm, which cannot be imported ({exc}): pip install tqdm"
        ) from exc
    kwargs.setdefault("file", sys.stdout)
    return tqdm.tqdm(*args, **kwargs)


class OutputDisplay:
    """Output display of an AsyncResult (uses its metadata, msg_ids and targets)."""

    __slots__ = ()

    def wait_interactive(self, interval: float = 0.1, timeout: float = -1, widget: Optional[bool] = None, return_when: Any = ALL_COMPLETED) -> None:
        """Waits with a tqdm progress bar refreshed every `interval` seconds."""
        if timeout is not None and timeout < 0:
            timeout = None
        if return_when == ALL_COMPLETED:
            return_when = None
        tic = time.monotonic()
        bar = progress(widget=widget, total=len(self), unit="tasks", desc=self._fname)
        try:
            finished = self.ready()
            while not finished and (timeout is None or time.monotonic() - tic <= timeout):
                wait_result = self.wait(interval, return_when=return_when)
                bar.update(self.progress - bar.n)
                if return_when is None:
                    finished = wait_result
                else:
                    done, pending = wait_result
                    if return_when == FIRST_COMPLETED:
                        finished = bool(done)
                    elif return_when == FIRST_EXCEPTION:
                        finished = (not pending) or any(not ar._success for ar in done)
                    else:
                        raise ValueError(f"Unrecognized return_when={return_when!r}")
            bar.update(self.progress - bar.n)
        finally:
            bar.close()

    # -- output display --------------------------------------------------------------

    def _republish_displaypub(self, content: dict, eid: Any) -> None:
        ip = _get_ipython()
        if ip is None:
            return
        md = dict(content.get("metadata") or {})
        md["engine"] = eid
        ip.display_pub.publish(data=content["data"], metadata=md)

    def _display_stream(self, text: str, prefix: str = "", file: Any = None) -> None:
        if not text:
            return
        if file is None:
            file = sys.stdout
        if prefix:
            if prefix == self._last_display_prefix:
                prefix = ""
            else:
                self._last_display_prefix = prefix
        pre = "\n" if prefix and not self._stream_trailing_newline else ""
        sep = "\n" if prefix else ""
        self._stream_trailing_newline = text.endswith("\n")
        print(f"{pre}{prefix}{sep}{text}", file=file, end="")

    def _display_single_result(self, result_only: bool = False) -> None:
        md = self._get_metadata()[0]
        if not result_only:
            self._display_stream(md["stdout"])
            self._display_stream(md["stderr"], file=sys.stderr)
        if _get_ipython() is None:
            return
        if not result_only:
            for output in md["outputs"]:
                self._republish_displaypub(output, md["engine_id"])
        if md["execute_result"] is not None:
            from IPython.display import display

            display(self.get())

    def display_outputs(self, groupby: str = "type", result_only: bool = False) -> None:
        """Prints the outputs of the computation: streams prefixed by engine
        (``[stdout:0]``), then (in IPython) displays and results. `groupby`: 'type' (all
        stdout, then stderr, ...), 'engine' (everything of one engine, then the next) or
        'order' (like type, with displays interleaved across engines)."""
        self._check_ready()
        self.wait_for_output()
        if self._single_result:
            self._display_single_result(result_only=result_only)
            return
        mds = self._get_metadata()
        stdouts = [md["stdout"] for md in mds]
        stderrs = [md["stderr"] for md in mds]
        execute_results = [md["execute_result"] for md in mds]
        output_lists = [md["outputs"] for md in mds]
        results = self.get(return_exceptions=True)
        targets = [md["engine_id"] for md in mds]
        ip = _get_ipython()
        if ip is not None:
            from IPython.display import display, display_pretty

            def raw(s: str) -> None:
                display_pretty(s, raw=True)

        if groupby == "engine":
            for eid, stdout, stderr, outputs, r, execute_result in zip(
                targets, stdouts, stderrs, output_lists, results, execute_results
            ):
                if not result_only:
                    self._display_stream(stdout, f"[stdout:{eid}] ")
                    self._display_stream(stderr, f"[stderr:{eid}] ", file=sys.stderr)
                if ip is None:
                    continue
                if (outputs and not result_only) or execute_result is not None:
                    raw(f"[output:{eid}]")
                if not result_only:
                    for output in outputs:
                        self._republish_displaypub(output, eid)
                if execute_result is not None:
                    display(r)
        elif groupby in ("type", "order"):
            if not result_only:
                for eid, stdout in zip(targets, stdouts):
                    self._display_stream(stdout, f"[stdout:{eid}] ")
                for eid, stderr in zip(targets, stderrs):
                    self._display_stream(stderr, f"[stderr:{eid}] ", file=sys.stderr)
            if ip is None:
                return
            if not result_only:
                if groupby == "order":
                    output_dict = dict(zip(targets, output_lists))
                    n = max(len(outputs) for outputs in output_lists)
                    for i in range(n):
                        for eid in targets:
                            outputs = output_dict[eid]
                            if len(outputs) > i:
                                raw(f"[output:{eid}]")
                                self._republish_displaypub(outputs[i], eid)
                else:
                    for eid, outputs in zip(targets, output_lists):
                        if outputs:
                            raw(f"[output:{eid}]")
                        for output in outputs:
                            self._republish_displaypub(output, eid)
            for eid, r, execute_result in zip(targets, results, execute_results):
                if execute_result is not None:
                    display(r)
        else:
            raise ValueError(
                f"groupby must be one of 'type', 'engine', 'collate', not {groupby!r}"
            )

    def _display_execute_result(self, msg_id: str, content: dict, eid: Any) -> None:
        """Shows an ``execute_result`` as it arrives (``Out[<engine>:<n>]: ...``)."""
        if _get_ipython() is None:
            return
        from IPython.display import display

        client = self._client

        def metadata() -> Metadata:
            md = build_metadata(client, msg_id, self._submitted)
            if md["engine_id"] is None:
                md["engine_id"] = eid
            md["execute_result"] = content
            return md

        display(ExecuteReply(msg_id, content, metadata))

    @contextmanager
    def stream_output(self) -> Iterator[None]:
        """Prints outputs (``[stdout:<engine>]`` ...) as they arrive, for the duration of
        the ``with`` block."""
        stop = threading.Event()
        self._last_display_prefix = ""
        self._stream_trailing_newline = True
        seen = {msg_id: 0 for msg_id in self.msg_ids}
        targets = self._targets if isinstance(self._targets, list) else [self._targets] * len(self.msg_ids)
        native = self._client._native
        streamed_errors = [0]

        def flush() -> None:
            for eid, msg_id in zip(targets, self.msg_ids):
                outputs = native.outputs(msg_id)
                for item in outputs[seen[msg_id] :]:
                    msg_type, content = item[0], item[1]
                    if msg_type == "stream":
                        name = content.get("name", "stdout")
                        stream = getattr(sys, name, sys.stdout)
                        self._display_stream(content.get("text", ""), f"[{name}:{eid}] ", file=stream)
                    elif msg_type == "error":
                        err = self._client._unwrap_exception(dict(content))
                        streamed_errors[0] += 1
                        if streamed_errors[0] <= error.CompositeError.tb_limit:
                            print("\n".join(err.render_traceback()), file=sys.stderr)
                        else:
                            print(err, file=sys.stderr)
                    elif msg_type == "execute_result":
                        self._display_execute_result(msg_id, content, eid)
                    elif msg_type == "display_data":
                        self._republish_displaypub(content, eid)
                seen[msg_id] = len(outputs)

        def run() -> None:
            while not stop.wait(0.05):
                try:
                    flush()
                except Exception:  # noqa: BLE001 - the client was closed
                    return

        thread = threading.Thread(target=run, name="ipp_rs-stream-output", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            try:
                flush()
            except Exception:  # noqa: BLE001
                pass
