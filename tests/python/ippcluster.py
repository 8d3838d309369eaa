"""Start and stop a controller plus real `ipengine` processes for the interop tests.

Which controller runs is chosen by ``IPP_TEST_CONTROLLER``:

* ``ours`` (default): the Rust binary, ``target/debug/examples/ipcontroller`` under the repo
  root, or the path in ``IPP_CONTROLLER_BIN``;
* ``reference``: the real ``ipcontroller`` of ipyparallel 9.2.0 from the same virtualenv as
  the Python running the tests.

Which engines run is chosen per Cluster (``engine_kind``): ``ipengine`` (ipyparallel's, the
default) or ``ipp_rs`` (``python -m ipp_rs.engine``). ``client_from("ipp_rs")`` makes a client
with our client package instead of ipyparallel's; ``start_cluster`` starts a given
(controller, engine kind) combination, as the interop matrix (test_matrix.py) does.

Everything listens on 127.0.0.1, lives in its own temporary IPYTHONDIR, and is stopped by
process id (SIGTERM, then SIGKILL after a timeout), including any child processes the
controller or the engines started (the reference controller's schedulers, the engines'
nannies).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent
PING_MS = 250
CONTROLLER_KINDS = ("ours", "reference")
# Engine processes a Cluster can start: ipyparallel's `ipengine`, or our Python engine
# (`python -m ipp_rs.engine`, the Rust engine runtime running requests as Python code).
ENGINE_KINDS = ("ipengine", "ipp_rs")
# Client packages the interop matrix drives a cluster with (same API, import name differs).
CLIENT_MODULES = ("ipyparallel", "ipp_rs")


def controller_under_test() -> str:
    kind = os.environ.get("IPP_TEST_CONTROLLER", "ours").strip() or "ours"
    if kind not in CONTROLLER_KINDS:
        raise ValueError(f"IPP_TEST_CONTROLLER must be one of {CONTROLLER_KINDS}, not {kind!r}")
    return kind


def our_controller_bin() -> Path:
    return Path(
        os.environ.get("IPP_CONTROLLER_BIN")
        or Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
        / "debug"
        / "examples"
        / "ipcontroller"
    )


def venv_tool(name: str) -> str:
    """A console script installed beside the running Python (ipengine, ipcontroller)."""
    path = BIN_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run scripts/setup-test-env.sh")
    return str(path)


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid`, read from /proc (children before grandchildren)."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        task_dir = Path(f"/proc/{parent}/task")
        try:
            tids = list(task_dir.iterdir())
        except OSError:
            continue
        for tid in tids:
            try:
                kids = (tid / "children").read_text().split()
            except OSError:
                continue
            for kid in map(int, kids):
                if kid not in found:
                    found.append(kid)
                    frontier.append(kid)
    return found


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


class Cluster:
    """A controller and its engines, started on 127.0.0.1 in a throw-away IPYTHONDIR."""

    def __init__(
        self,
        kind: str | None = None,
        extra_args: tuple[str, ...] = (),
        engine_kind: str = "ipengine",
    ):
        self.kind = kind or controller_under_test()
        if engine_kind not in ENGINE_KINDS:
            raise ValueError(f"engine_kind must be one of {ENGINE_KINDS}, not {engine_kind!r}")
        self.engine_kind = engine_kind
        self.extra_args = tuple(extra_args)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"ipp-test-{self.kind}-"))
        self.ipython_dir = self.tmp / "ipython"
        self.profile_dir = self.ipython_dir / "profile_default"
        self.security = self.profile_dir / "security"
        self.client_file = self.security / "ipcontroller-client.json"
        self.engine_file = self.security / "ipcontroller-engine.json"
        self.env = dict(os.environ)
        self.env["IPYTHONDIR"] = str(self.ipython_dir)
        self.env.pop("IPP_PROFILE_DIR", None)
        self.env.pop("IPP_CLUSTER_ID", None)
        self.env.pop("IPP_CONNECTION_INFO", None)
        self.env.pop("IPP_SESSION_KEY", None)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.controller: subprocess.Popen | None = None
        self.controller_log = self.tmp / "controller.log"
        self.engines: list[subprocess.Popen] = []
        self.clients: list = []
        self._log_files: list = []
        # owner pid -> descendants seen while the owner lived
        self._children: dict[int, set[int]] = {}

    # -- starting -------------------------------------------------------------------------

    def controller_command(self) -> list[str]:
        args = [f"--profile-dir={self.profile_dir}", "--ip=127.0.0.1", f"--ping={PING_MS}"]
        args += list(self.extra_args)
        if self.kind == "ours":
            binary = our_controller_bin()
            if not binary.exists():
                raise FileNotFoundError(
                    f"{binary} does not exist: build it with `cargo build --examples` "
                    "or set IPP_CONTROLLER_BIN"
                )
            return [str(binary), *args]
        return [venv_tool("ipcontroller"), *args]

    def _spawn(self, cmd: list[str], log: Path) -> subprocess.Popen:
        handle = open(log, "wb")
        self._log_files.append(handle)
        return subprocess.Popen(
            cmd,
            env=self.env,
            cwd=self.tmp,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_controller(self, timeout: float = 60) -> None:
        for sub in ("security", "log", "startup", "pid"):
            (self.profile_dir / sub).mkdir(parents=True, exist_ok=True)
        self.controller = self._spawn(self.controller_command(), self.controller_log)
        deadline = time.monotonic() + timeout
        while True:
            if self._connection_files_ready():
                return
            if self.controller.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} controller exited with {self.controller.returncode} before "
                    f"writing its connection files; log:\n{log_tail(self.controller_log)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.kind} controller wrote no connection files in {timeout} s; "
                    f"log:\n{log_tail(self.controller_log)}"
                )
            time.sleep(0.05)

    def _connection_files_ready(self) -> bool:
        for path in (self.client_file, self.engine_file):
            try:
                json.loads(path.read_text())
            except (OSError, ValueError):
                return False
        return True

    def engine_command(self, index: int) -> list[str]:
        """The command line of engine number `index` of this cluster's `engine_kind`."""
        if self.engine_kind == "ipp_rs":
            # Each engine asks for its index as id, so engine process i is engine id i.
            return [
                sys.executable, "-m", "ipp_rs.engine", f"--file={self.engine_file}",
                f"--id={index}",
            ]
        return [venv_tool("ipengine"), f"--file={self.engine_file}"]

    def start_engine(self) -> subprocess.Popen:
        index = len(self.engines)
        log = self.tmp / f"engine-{index}.log"
        engine = self._spawn(self.engine_command(index), log)
        self.engines.append(engine)
        return engine

    def client(self, **kwargs):
        import ipyparallel as ipp

        rc = ipp.Client(str(self.client_file), **kwargs)
        self.clients.append(rc)
        return rc

    def client_from(self, module: str, **kwargs):
        """A client of this cluster made by `<module>.Client` (``ipyparallel`` or ``ipp_rs``:
        the same API), closed with the cluster."""
        import importlib

        rc = importlib.import_module(module).Client(str(self.client_file), **kwargs)
        self.clients.append(rc)
        return rc

    def start(self, engines: int = 2) -> "Cluster":
        """Controller, then `engines` engines; returns once a client sees them all."""
        try:
            self.start_controller()
            for _ in range(engines):
                self.start_engine()
            self.wait_for_engines(engines)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for_engines(self, engines: int) -> None:
        """Waits until a client sees `engines` engines, with a throw-away ipyparallel
        client: one left connected would read every IOPub message of the cluster's
        lifetime, costing the tests and benchmarks CPU they do not measure."""
        import ipyparallel as ipp

        rc = ipp.Client(str(self.client_file))
        try:
            rc.wait_for_engines(engines, timeout=60)
        except Exception as exc:
            raise RuntimeError(
                f"engines did not register with the {self.kind} controller: {exc}\n"
                f"controller log:\n{log_tail(self.controller_log)}\n"
                f"engine-0 log:\n{log_tail(self.tmp / 'engine-0.log')}"
            ) from exc
        finally:
            rc.close(linger=0)

    @property
    def client_info(self) -> dict:
        return json.loads(self.client_file.read_text())

    @property
    def engine_info(self) -> dict:
        return json.loads(self.engine_file.read_text())

    # -- stopping -------------------------------------------------------------------------

    def remember_children(self) -> None:
        """Records the current children of our processes, so they are stopped later even if
        their parent dies first (pids are read while the parent still exists)."""
        for proc in [self.controller, *self.engines]:
            if proc is not None and proc.poll() is None:
                self._children.setdefault(proc.pid, set()).update(descendants(proc.pid))

    def _children_of(self, procs: list[subprocess.Popen]) -> list[int]:
        found: set[int] = set()
        for proc in procs:
            found |= self._children.get(proc.pid, set())
        return sorted(found)

    @staticmethod
    def _terminate(procs: list[subprocess.Popen], extra: list[int], timeout: float) -> None:
        for proc in procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for pid in extra:
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        for rc in self.clients:
            try:
                rc.close(linger=0)
            except TypeError:
                try:  # a client whose close() takes no linger
                    rc.close()
                except Exception:
                    pass
            except Exception:
                pass
        self.clients.clear()
        self.remember_children()
        # Engines first (their nannies follow them), then the controller and its children.
        self._terminate(self.engines, self._children_of(self.engines), 10)
        if self.controller is not None:
            self._terminate([self.controller], self._children_of([self.controller]), 15)
        for handle in self._log_files:
            handle.close()
        self._log_files.clear()
        if os.environ.get("IPP_TEST_KEEP_LOGS"):
            sys.stderr.write(f"\nkeeping logs in {self.tmp}\n")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def client_unavailable(module: str) -> str | None:
    """Why `<module>.Client` cannot be used in this Python, or None when it can (for skips:
    the ipp_rs client is written after the engine)."""
    import importlib

    if module not in CLIENT_MODULES:
        raise ValueError(f"client module must be one of {CLIENT_MODULES}, not {module!r}")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return f"{module} is not importable ({exc}): run scripts/setup-test-env.sh"
    if not hasattr(mod, "Client"):
        return f"{module}.Client does not exist yet (the ipp_rs client is not written yet)"
    return None


def start_cluster(
    controller: str | None = None, engine_kind: str = "ipengine", engines: int = 2
) -> Cluster:
    """A started Cluster: `controller` ("ours", "reference", or None for the controller
    under test) with `engines` engines of `engine_kind` ("ipengine" or "ipp_rs"), all
    registered when this returns."""
    return Cluster(controller, engine_kind=engine_kind).start(engines=engines)
