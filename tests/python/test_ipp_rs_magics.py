"""ipp_rs.magics: %px, %%px, %autopx, %pxresult, %pxconfig in a real IPython shell
(`InteractiveShell.instance()`), on an ipp_rs.Cluster (in-process controller, two
`python -m ipp_rs.engine` engines).

The client is whatever `Cluster.connect_client` returns: `ipp_rs.Client` once the package
has one, ipyparallel's Client before that (same view / AsyncResult API).
"""

from __future__ import annotations

import _thread
import re
import threading

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.io import capture_output

from ipp_rs import magics as px_magics
from ipp_rs.cluster import Cluster


@pytest.fixture(scope="module")
def rc(tmp_path_factory):
    cluster = Cluster(
        n=2,
        profile_dir=str(tmp_path_factory.mktemp("magics")),
        cluster_id="magics",
        controller_args=["--ping=250"],
    )
    client = cluster.start_and_connect_sync()
    yield client
    client.close()
    cluster.stop_cluster_sync()


@pytest.fixture(scope="module")
def ip():
    return InteractiveShell.instance()


@pytest.fixture
def view(rc, ip):
    """A blocking view on both engines with fresh magics (no suffix) registered."""
    v = rc[:]
    v.block = True
    magics = px_magics.activate(v)
    assert magics is not None
    # Outputs shown once at the end (one line per engine) unless a test streams.
    ip.run_line_magic("pxconfig", "--no-stream")
    v.magics = magics
    return v


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def shown(io) -> str:
    """What the user sees: printed text plus the plain text of displayed objects
    (execute results are displayed as `Out[<engine>:<count>]: ...`)."""
    displayed = [o.data.get("text/plain", "") for o in io.outputs]
    return re.sub(r"\x1b\[[0-9;]*m", "", io.stdout + "\n".join(displayed))


def engine_said(text: str, name: str, eid: int, said: str) -> bool:
    """Whether `[name:eid]` is followed by `said` (ipyparallel puts a newline after the
    prefix)."""
    return re.search(rf"\[{name}:{eid}\] \n?{re.escape(said)}", text) is not None


def test_px_runs_on_every_engine_and_prints_their_output(ip, view):
    ip.run_line_magic("px", "a = 5")
    assert view["a"] == [5, 5]
    with capture_output() as io:
        ip.run_line_magic("px", "print(a * 2)")
    out = io.stdout
    assert engine_said(out, "stdout", 0, "10") and engine_said(out, "stdout", 1, "10"), out
    # Nothing ran here.
    assert "a" not in ip.user_ns


def test_streamed_output_appears_under_each_engines_prefix(ip, view):
    with capture_output() as io:
        ip.run_cell_magic("px", "--stream", "print('streamed')")
    # Streaming prints a prefix line, then the text as it comes.
    for eid in (0, 1):
        assert re.search(rf"\[stdout:{eid}\] \n?streamed", io.stdout), io.stdout


def test_px_shows_execute_results_as_out_prompts(ip, view):
    with capture_output() as io:
        ip.run_line_magic("px", "6 * 7")
    found = re.findall(r"Out\[(\d+):\d+\]: 42", shown(io))
    assert sorted(found) == ["0", "1"], shown(io)


def test_px_does_not_expand_local_variables(ip, view):
    ip.user_ns["x"] = "client"
    view["x"] = "engine"
    ip.run_line_magic("px", 'y = f"{x}"')
    assert view["y"] == ["engine", "engine"]


def test_cell_px_targets_select_engines_and_are_restored(ip, view):
    targets_before = view.targets
    with capture_output() as io:
        ip.run_cell_magic("px", "--targets 1", "print('only one')")
    # One engine (an integer target): its output is shown without a prefix.
    assert io.stdout.count("only one") == 1 and "[stdout:" not in io.stdout, io.stdout
    with capture_output() as io:
        ip.run_cell_magic("px", "-t ::2", "print('even')")
    assert engine_said(io.stdout, "stdout", 0, "even"), io.stdout
    assert "[stdout:1]" not in io.stdout, io.stdout
    with capture_output() as io:
        ip.run_cell_magic("px", "--targets [0,1]", "print('both')")
    assert io.stdout.count("both") == 2, io.stdout
    assert view.targets == targets_before


def test_cell_px_block_flags_and_verbose_messages(ip, view):
    ip.run_line_magic("pxconfig", "--verbose")
    try:
        with capture_output() as io:
            ip.run_cell_magic("px", "--block", "1")
        assert io.stdout.startswith("Parallel execution on engine(s)"), io.stdout
        with capture_output() as io:
            result = ip.run_cell_magic("px", "--noblock", "import time; time.sleep(0.1); 5")
        assert io.stdout.startswith("Async parallel execution on engine(s)"), io.stdout
        result.get()
        assert result.done() and len(result) == 2
    finally:
        ip.run_line_magic("pxconfig", "--no-verbose")


def test_noblock_then_pxresult_shows_and_saves_the_last_result(ip, view):
    result = ip.run_cell_magic("px", "--noblock -o saved", "print('later'); 3 + 4")
    assert ip.user_ns["saved"] is result
    result.wait()
    with capture_output() as io:
        ip.run_line_magic("pxresult", "")
    assert io.stdout.count("later") == 2, io.stdout
    assert len(re.findall(r"Out\[\d+:\d+\]: 7", shown(io))) == 2, shown(io)
    ip.run_line_magic("pxresult", "-o again")
    assert ip.user_ns["again"] is result
    # %result is ipyparallel's legacy alias.
    with capture_output() as io:
        ip.run_line_magic("result", "")
    assert "later" in io.stdout


def test_pxresult_before_any_px_is_a_usage_error(ip, rc):
    magics = px_magics.ParallelMagics(ip, rc[:], suffix="_fresh")
    ip.magics_manager.register(magics)
    with pytest.raises(UsageError, match="not yet been used"):
        ip.run_line_magic("pxresult_fresh", "")


def test_group_outputs_by_engine_keeps_each_engines_output_together(ip, view):
    code = "import sys; print('out'); print('err', file=sys.stderr); print('out2')"
    with capture_output() as io:
        ip.run_cell_magic("px", "--group-outputs=engine --no-stream", code)
    out = lines_of(io.stdout)
    # Engine 0's stdout block comes whole before engine 1's.
    starts = [i for i, line in enumerate(out) if line.startswith("[stdout:")]
    assert len(starts) == 2, io.stdout
    assert out[starts[0] + 1 : starts[0] + 3] == ["out", "out2"], io.stdout
    assert engine_said(io.stderr, "stderr", 0, "err"), io.stderr
    assert engine_said(io.stderr, "stderr", 1, "err"), io.stderr


def test_errors_raise_and_show_remote_tracebacks(ip, view):
    with capture_output() as io:
        with pytest.raises(Exception) as info:
            ip.run_cell_magic("px", "--no-stream", "1 / 0")
    assert type(info.value).__name__ == "CompositeError", info.value
    assert "ZeroDivisionError" in io.stdout + io.stderr + str(info.value)
    # Streamed errors are already on screen: the exception only counts them.
    with capture_output():
        with pytest.raises(Exception) as info:
            ip.run_cell_magic("px", "--stream", "1 / 0")
    assert type(info.value).__name__ == "AlreadyDisplayedError", info.value
    assert str(info.value) == "2 errors"


def test_cell_px_local_runs_here_too(ip, view):
    ip.user_ns.pop("here_and_there", None)
    with capture_output():
        ip.run_cell_magic("px", "--local", "here_and_there = 11")
    assert ip.user_ns["here_and_there"] == 11
    assert view["here_and_there"] == [11, 11]


def test_pxconfig_sets_default_targets_and_blocking(ip, view):
    ip.run_line_magic("pxconfig", "--targets 0 --noblock")
    try:
        assert view.targets == 0 and view.block is False
        result = ip.run_line_magic("px", "print('config')")
        result.get()
        result.wait_for_output(10)
        assert len(result) == 1
        # A single integer target gives single values, as in ipyparallel.
        assert "config" in result.stdout
    finally:
        ip.run_line_magic("pxconfig", "--targets all --block")
    assert view.targets == "all" and view.block is True


def test_autopx_sends_every_cell_to_the_engines_until_turned_off(ip, view):
    ip.user_ns.pop("auto_b", None)
    with capture_output() as io:
        ip.run_line_magic("autopx", "")
    assert "%autopx enabled" in io.stdout
    try:
        ip.run_cell("auto_b = 7")
        with capture_output() as io:
            ip.run_cell("print(auto_b + 1)")
        assert engine_said(io.stdout, "stdout", 0, "8"), io.stdout
        assert engine_said(io.stdout, "stdout", 1, "8"), io.stdout
        assert "auto_b" not in ip.user_ns
        # A remote error is shown, and autopx stays on.
        with capture_output() as io:
            ip.run_cell("raise ValueError('remote boom')")
        assert "remote boom" in io.stdout + io.stderr
    finally:
        with capture_output() as io:
            ip.run_cell("%autopx")
    assert "%autopx disabled" in io.stdout
    assert view["auto_b"] == [7, 7]
    ip.run_cell("auto_local = 1")
    assert ip.user_ns["auto_local"] == 1


def test_a_suffix_names_a_second_set_of_magics(ip, rc, view):
    one = rc[1]
    one.block = True
    px_magics.activate(one, suffix="_one")
    with capture_output() as io:
        ip.run_line_magic("px_one", "print('suffix')")
    assert "suffix" in io.stdout and "[stdout:0]" not in io.stdout, io.stdout
    assert "autopx_one" in ip.magics_manager.magics["line"]
    assert "pxconfig_one" in ip.magics_manager.magics["line"]
    assert "px_one" in ip.magics_manager.magics["cell"]


def test_extension_without_a_cluster_registers_magics_that_explain(ip, monkeypatch, tmp_path):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    monkeypatch.setenv("IPP_PROFILE_DIR", str(tmp_path / "profile_none"))
    with capture_output() as io:
        px_magics.load_ipython_extension(ip)
    assert "no cluster" in io.stderr
    with pytest.raises(UsageError, match="activate"):
        ip.run_line_magic("px", "1")


def test_activate_outside_ipython_warns(rc, monkeypatch):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    with pytest.warns(UserWarning, match="only work within IPython"):
        assert px_magics.activate(rc[:]) is None


def test_view_activate_registers_these_magics(ip, rc):
    """`DirectView.activate` (here ipp_rs's, or ipyparallel's before ipp_rs has a client)
    and `start_and_connect(activate=True)` register the magics on the shell."""
    v = rc[:]
    v.block = True
    v.activate(suffix="_act")
    ip.run_line_magic("pxconfig_act", "--no-stream")
    with capture_output() as io:
        ip.run_line_magic("px_act", "print('activated')")
    assert io.stdout.count("activated") == 2, io.stdout


def test_ctrl_c_during_a_blocking_px_interrupts_the_engines(ip, view):
    """Ctrl-C while %%px waits sends SIGINT to the engines (--signal-on-interrupt's
    default), which stops the remote code."""
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    try:
        with capture_output(display=False) as io:
            ip.run_cell_magic(
                "px",
                "--no-stream",
                "print('Entering'); import time; time.sleep(30); print('Exiting')",
            )
    finally:
        timer.cancel()
    assert "Received Keyboard Interrupt. Sending signal SIGINT to engines..." in io.stderr, io.stderr
    assert "Exiting" not in io.stdout
    result = view.magics.last_result
    # The engines stopped the sleep: the request ends well before its 30 s.
    assert result.wait(10), "the engines were not interrupted"
    assert not result.successful()
    enames = [entry[0] for entry in result.exception().elist]
    assert enames == ["KeyboardInterrupt", "KeyboardInterrupt"], enames
