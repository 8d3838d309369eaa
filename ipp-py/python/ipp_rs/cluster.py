"""``ipp_rs.Cluster``: start a controller and engines on this machine, as
:class:`ipyparallel.Cluster` does.

::

    import ipp_rs as ipp

    with ipp.Cluster(n=4) as rc:          # rc: a Client that already sees 4 engines
        print(rc[:].apply_sync(lambda: "hi"))

    cluster = ipp.Cluster(n=2)
    rc = cluster.start_and_connect_sync()
    ...
    cluster.stop_cluster_sync()

    async with ipp.Cluster(n=2) as rc:   # or: await cluster.start_cluster() ...
        ...

Differences from ipyparallel:

* The controller runs **in this process** (:class:`ipp_rs._ipp_rs.Controller`, the Rust
  controller on Rust threads), not as an ``ipcontroller`` subprocess. It writes the usual
  ``<profile_dir>/security/ipcontroller-<cluster_id>-{client,engine}.json`` so other
  clients and engines (ipyparallel's too) can connect, and it stops when this process
  ends. Hence ``shutdown_atexit=False`` and reloading a cluster from its file
  (``Cluster.from_file``) are not supported.
* Engines are ``python -m ipp_rs.engine`` subprocesses (``engines='local'``, the only
  launcher). MPI, SSH and batch-system launchers raise ``NotImplementedError``.
* No traitlets configuration: settings are constructor arguments (``controller_args``
  accepts the ``ipcontroller`` flags listed in :data:`CONTROLLER_FLAGS`), and
  ``start_controller(**kwargs)`` passes keyword arguments to the controller
  (``scheme``, ``hwm``, ``db``, ``ping`` …, see :class:`ipp_rs._ipp_rs.Controller`).

Every ``async`` method has a blocking ``<name>_sync`` twin. Called while an asyncio loop
runs in this thread (Jupyter), a ``_sync`` method runs on a helper thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import logging
import os
import random
import signal as _signal
import string
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing import cpu_count
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, TypeVar

from ._ipp_rs import Controller, init_logging

__all__ = ["Cluster", "ClusterManager", "EngineSet", "CONTROLLER_FLAGS"]

T = TypeVar("T")

_SUFFIX_CHARS = string.ascii_lowercase + string.digits

#: The launchers ipyparallel knows by name; only the local ones exist here.
_LOCAL_ENGINES = {"local", "localengineset", "localenginesetlauncher", "ipp_rs"}
_LOCAL_CONTROLLERS = {"local", "localcontroller", "localcontrollerlauncher", "inprocess", "ipp_rs"}

#: ``ipcontroller`` flags accepted in ``controller_args`` and the Controller keyword each
#: one sets.
CONTROLLER_FLAGS = {
    "--ip": "ip",
    "--location": "location",
    "--scheme": "scheme",
    "--hwm": "hwm",
    "--ping": "ping",
    "--ports": "ports",
    "--dictdb": "db",
    "--nodb": "db",
    "--sqlitedb": "db",
}

#: How long a stopped engine has after SIGTERM before it gets SIGKILL (ipyparallel's
#: ``stop_seconds_until_kill``).
STOP_SECONDS_UNTIL_KILL = 5.0


def _default_cluster_id() -> str:
    """ipyparallel's format: ``<unix time>-<4 random characters>``."""
    return f"{int(time.time())}-{''.join(random.choice(_SUFFIX_CHARS) for _ in range(4))}"


def _ipython_dir() -> str:
    """IPython's directory: ``IPython.paths.get_ipython_dir()`` when IPython is installed,
    else ``$IPYTHONDIR`` or ``~/.ipython``."""
    try:
        from IPython.paths import get_ipython_dir
    except ImportError:
        return os.environ.get("IPYTHONDIR") or os.path.join(os.path.expanduser("~"), ".ipython")
    return str(get_ipython_dir())


def _current_ipython_profile_dir() -> Optional[str]:
    """The profile directory of the running IPython session, if any."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    shell = ipython.get_ipython()
    profile_dir = getattr(shell, "profile_dir", None)
    return getattr(profile_dir, "location", None)


def default_profile_dir(profile: str = "") -> str:
    """As ipyparallel: the named profile if given, else the running IPython session's,
    else ``<ipython dir>/profile_default``; created (with ``security/``, ``log/``,
    ``startup/``) if missing."""
    location = None if profile else _current_ipython_profile_dir()
    if location is None:
        location = os.path.join(_ipython_dir(), f"profile_{profile or 'default'}")
    for sub in ("security", "log", "startup"):
        os.makedirs(os.path.join(location, sub), exist_ok=True)
    return os.path.abspath(location)


def _check_launcher(value: Any, local: set, kind: str) -> None:
    """Refuse launchers other than the local one, naming what exists."""
    if value is None:
        return
    name = value if isinstance(value, str) else getattr(value, "__name__", repr(value))
    key = name.lower().rsplit(".", 1)[-1].replace("_", "")
    if key in {k.replace("_", "") for k in local}:
        return
    if kind == "engines":
        raise NotImplementedError(
            f"engines={name!r} is not supported by ipp_rs.Cluster: the only engine launcher is "
            "'local' (python -m ipp_rs.engine subprocesses on this machine). MPI, SSH, Slurm, "
            "PBS, SGE, LSF, HTCondor and WindowsHPC launchers are not implemented; start "
            "engines yourself with `python -m ipp_rs.engine --file <ipcontroller-engine.json>` "
            "(the file is Cluster.controller.engine_file) on the machines you want."
        )
    raise NotImplementedError(
        f"controller={name!r} is not supported by ipp_rs.Cluster: the controller always runs "
        "in this process ('local'). To run it elsewhere, start the ipcontroller binary there "
        "and connect with ipp_rs.Client(<ipcontroller-client.json>)."
    )


def _parse_controller_args(args: Sequence[str]) -> Dict[str, Any]:
    """``ipcontroller`` flags (see :data:`CONTROLLER_FLAGS`) as Controller keywords."""
    kwargs: Dict[str, Any] = {}
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        i += 1
        flag, eq, value = arg.partition("=")
        if flag in ("--dictdb", "--nodb", "--sqlitedb"):
            if eq:
                raise ValueError(f"controller flag {flag} takes no value (got {arg!r})")
            kwargs["db"] = flag[2:]
            continue
        if flag not in CONTROLLER_FLAGS:
            raise ValueError(
                f"controller_args: {arg!r} is not supported by the in-process controller; "
                f"supported flags: {', '.join(CONTROLLER_FLAGS)}"
            )
        if not eq:
            if i >= len(items):
                raise ValueError(f"controller flag {flag} needs a value")
            value = items[i]
            i += 1
        key = CONTROLLER_FLAGS[flag]
        if key in ("hwm", "ping"):
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise ValueError(f"controller flag {flag} needs an integer, not {value!r}") from None
        elif key == "ports":
            kwargs[key] = _parse_ports(value)
        else:
            kwargs[key] = value
    return kwargs


def _parse_ports(text: str) -> List[int]:
    """``10101-10120`` or ``10101,10102`` as a list of ports."""
    ports: List[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            if dash:
                ports.extend(range(int(low), int(high) + 1))
            else:
                ports.append(int(part))
        except ValueError:
            raise ValueError(f"{part!r} is not a port or a range like 10101-10120") from None
    return ports


def _engine_log_level(level: int) -> str:
    for limit, name in ((logging.DEBUG, "DEBUG"), (logging.INFO, "INFO"), (logging.WARNING, "WARN")):
        if level <= limit:
            return name
    return "ERROR"


def _rust_log_level(level: int) -> str:
    """The in-process controller's tracing level (stderr) for a Cluster log level. Its
    info and warning lines (peers that went away, ...) would clutter an interactive
    session, where ipyparallel's controller logs to a file: only errors show unless the
    Cluster logs at DEBUG. ``$IPP_RS_LOG`` overrides."""
    return "debug" if level <= logging.DEBUG else "error"


def _signal_name(signum: int) -> str:
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return str(signum)


class EngineSet:
    """A group of engine processes (``python -m ipp_rs.engine``) started together, like
    ipyparallel's ``LocalEngineSetLauncher``.

    Output of engine ``i`` goes to ``<profile_dir>/log/ipengine-<cluster_id>-<set id>-<i>.log``
    (removed when the set is stopped through the Cluster; read it with
    :meth:`get_output`).
    """

    def __init__(
        self,
        *,
        engine_set_id: str,
        n: int,
        profile_dir: str,
        cluster_id: str,
        engine_file: Optional[str],
        connection_info: Optional[dict],
        engine_args: Sequence[str] = (),
        environment: Optional[Dict[str, str]] = None,
        log_level: int = logging.INFO,
        python: Optional[str] = None,
        log: Optional[logging.Logger] = None,
    ) -> None:
        if n < 0:
            raise ValueError(f"the number of engines must be >= 0, not n={n}")
        self.engine_set_id = engine_set_id
        self.n = n
        self.profile_dir = profile_dir
        self.cluster_id = cluster_id
        self.engine_file = engine_file
        self.connection_info = connection_info
        self.engine_args = list(engine_args)
        self.environment: Dict[str, str] = dict(environment or {})
        self.log_level = log_level
        self.python = python or sys.executable
        self.log = log or logging.getLogger(__name__)
        self.processes: List[subprocess.Popen] = []
        self.output_files: List[str] = []
        self.state = "before"
        self._outputs: Dict[int, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<EngineSet {self.engine_set_id} n={self.n} state={self.state} pids={self.pids}>"

    @property
    def pids(self) -> List[int]:
        """The engine processes' ids, in start order."""
        return [p.pid for p in self.processes]

    @property
    def running(self) -> bool:
        """Whether any engine process of the set is still alive."""
        return any(p.poll() is None for p in self.processes)

    def exit_codes(self) -> List[Optional[int]]:
        """Each process's exit status (``None`` while running)."""
        return [p.poll() for p in self.processes]

    def args(self) -> List[str]:
        """The command line of each engine."""
        cmd = [self.python, "-m", "ipp_rs.engine", "--log-level", _engine_log_level(self.log_level)]
        if self.engine_file:
            cmd += ["--file", self.engine_file]
        return cmd + self.engine_args

    def start(self) -> None:
        """Starts the engine processes (each in its own session, so Ctrl-C in this
        terminal does not reach them)."""
        if self.state != "before":
            raise RuntimeError(f"engine set {self.engine_set_id} was already started ({self.state})")
        env = os.environ.copy()
        if self.connection_info is not None:
            # As ipyparallel's send_engines_connection_env: no file needed.
            env["IPP_CONNECTION_INFO"] = json.dumps(self.connection_info)
        env.update(self.environment)
        log_dir = os.path.join(self.profile_dir, "log")
        os.makedirs(log_dir, exist_ok=True)
        args = self.args()
        self.log.debug("Starting %d engines: %s", self.n, " ".join(args))
        self.state = "running"
        try:
            for i in range(self.n):
                path = os.path.join(log_dir, f"ipengine-{self.cluster_id}-{self.engine_set_id}-{i}.log")
                self.output_files.append(path)
                with open(path, "ab") as out, open(os.devnull, "rb") as stdin:
                    self.processes.append(
                        subprocess.Popen(
                            args,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            stdin=stdin,
                            env=env,
                            start_new_session=True,
                        )
                    )
        except BaseException:
            self.stop()
            raise

    def signal(self, signum: int) -> None:
        """Sends ``signum`` to every engine process still running."""
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    pass

    def stop(self, timeout: float = STOP_SECONDS_UNTIL_KILL) -> None:
        """SIGTERM to every engine (each unregisters and exits), SIGKILL to those still
        running after ``timeout`` seconds; waits until all have exited. Idempotent."""
        with self._lock:
            if self.state == "after":
                return
            self.signal(_signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for process in self.processes:
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.log.warning(
                        "Engine process %d did not exit %.0f s after SIGTERM; killing it",
                        process.pid,
                        timeout,
                    )
                    try:
                        os.kill(process.pid, _signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    process.wait()
            self.state = "after"

    def get_output(self, remove: bool = False) -> str:
        """The engines' output (stdout and stderr), each engine's under a header; with
        ``remove=True`` the log files are deleted (the text is kept for later calls)."""
        parts = []
        for i, path in enumerate(self.output_files):
            if i not in self._outputs:
                try:
                    with open(path, errors="replace") as f:
                        text = f.read()
                except FileNotFoundError:
                    text = ""
                if remove:
                    self._outputs[i] = text
            else:
                text = self._outputs[i]
            if remove:
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    self.log.error("Failed to remove %s: %s", path, exc)
            if text:
                parts.append(f"[engine {i} pid {self.processes[i].pid if i < len(self.processes) else '?'}]\n{text}")
        return "\n".join(parts)


class _Resources:
    """What a Cluster must release, kept apart from it so a finalizer can stop it when
    the Cluster is garbage-collected or the interpreter exits."""

    def __init__(self) -> None:
        self.controller: Optional[Controller] = None
        self.engine_sets: Dict[str, EngineSet] = {}
        self.label = ""

    def busy(self) -> bool:
        return self.controller is not None or any(s.state != "after" for s in self.engine_sets.values())

    def release(self) -> None:
        if not self.busy():
            return
        print(f"Stopping cluster {self.label}", file=sys.stderr)
        for engine_set in list(self.engine_sets.values()):
            try:
                engine_set.stop()
            except Exception as exc:  # keep stopping the rest
                print(f"Error stopping engines {engine_set.engine_set_id}: {exc!r}", file=sys.stderr)
        if self.controller is not None:
            try:
                self.controller.stop()
            except Exception as exc:
                print(f"Error stopping the controller: {exc!r}", file=sys.stderr)
            self.controller = None


def _run_in_new_loop(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


class Cluster:
    """A controller (in this process) and groups of engines (subprocesses) on this
    machine, with ipyparallel's ``Cluster`` API.

    Parameters mirror ipyparallel's: ``n`` (default number of engines; default: the
    number of CPUs), ``profile`` / ``profile_dir`` (where the connection files and logs
    go), ``cluster_id`` (default: random), ``engines`` and ``controller`` (only
    ``'local'``), ``log_level``, ``engine_timeout`` (seconds to wait for engines to
    register), ``controller_ip``, ``controller_location``, ``controller_args``
    (``ipcontroller`` flags, see :data:`CONTROLLER_FLAGS`), ``delay`` (seconds between
    starting the controller and the engines; 0 by default since the in-process controller
    is ready when it returns), ``send_engines_connection_env`` (pass the connection info
    in ``$IPP_CONNECTION_INFO`` rather than by file). ``engine_args`` adds arguments to
    every engine's command line, ``engine_env`` variables to its environment.
    """

    def __init__(
        self,
        *,
        n: Optional[int] = None,
        profile: str = "",
        profile_dir: str = "",
        cluster_id: Optional[str] = None,
        engines: Any = None,
        controller: Any = None,
        engine_launcher_class: Any = None,
        controller_launcher_class: Any = None,
        log_level: int = logging.INFO,
        log: Optional[logging.Logger] = None,
        engine_timeout: float = 60,
        controller_ip: str = "",
        controller_location: str = "",
        controller_args: Sequence[str] = (),
        delay: float = 0.0,
        shutdown_atexit: bool = True,
        send_engines_connection_env: bool = True,
        engine_args: Sequence[str] = (),
        engine_env: Optional[Dict[str, str]] = None,
    ) -> None:
        if engines is not None and engine_launcher_class is not None:
            raise TypeError("Only specify one of 'engines' or 'engine_launcher_class', not both")
        if controller is not None and controller_launcher_class is not None:
            raise TypeError("Only specify one of 'controller' or 'controller_launcher_class', not both")
        _check_launcher(engines if engines is not None else engine_launcher_class, _LOCAL_ENGINES, "engines")
        _check_launcher(
            controller if controller is not None else controller_launcher_class,
            _LOCAL_CONTROLLERS,
            "controller",
        )
        if not shutdown_atexit:
            raise NotImplementedError(
                "shutdown_atexit=False is not supported: ipp_rs.Cluster runs the controller in "
                "this process, so it cannot outlive it. Run the ipcontroller binary and "
                "`python -m ipp_rs.engine` processes yourself for a cluster that outlives "
                "this process."
            )
        if n is not None and n < 0:
            raise ValueError(f"n must be >= 0, not {n}")
        self.n = n
        self.profile = profile
        self.profile_dir = os.path.abspath(profile_dir) if profile_dir else default_profile_dir(profile)
        self.cluster_id = _default_cluster_id() if cluster_id is None else cluster_id
        self.log_level = log_level
        self.engine_timeout = engine_timeout
        self.controller_ip = controller_ip
        self.controller_location = controller_location
        self.controller_args = list(controller_args)
        # Parse now so a bad flag fails at construction.
        _parse_controller_args(self.controller_args)
        self.delay = delay
        self.shutdown_atexit = shutdown_atexit
        self.send_engines_connection_env = send_engines_connection_env
        self.engine_args = list(engine_args)
        self.engine_env = dict(engine_env or {})
        if log is None:
            log = logging.getLogger(f"{__name__}.{self.cluster_id}")
            log.setLevel(log_level)
        self.log = log
        self._resources = _Resources()
        self._resources.label = repr(self)
        # Stops whatever still runs when this object is collected or Python exits.
        self._finalizer = weakref.finalize(self, self._resources.release)
        self._context_client: Any = None
        self._thread_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None

    # -- state ---------------------------------------------------------------------------

    @property
    def controller(self) -> Optional[Controller]:
        """The running :class:`ipp_rs._ipp_rs.Controller`, or None."""
        return self._resources.controller

    @property
    def engines(self) -> Dict[str, EngineSet]:
        """Engine sets by id (what :meth:`start_engines` returned)."""
        return self._resources.engine_sets

    @property
    def engine_set(self) -> Optional[EngineSet]:
        """The first engine set, if any."""
        return next(iter(self.engines.values()), None)

    def __repr__(self) -> str:
        fields = {"cluster_id": repr(self.cluster_id)}
        prefix = os.path.join(_ipython_dir(), "profile_")
        if self.profile_dir.startswith(prefix):
            fields["profile"] = repr(self.profile_dir[len(prefix) :])
        else:
            fields["profile_dir"] = repr(self.profile_dir)
        if self.controller is not None:
            fields["controller"] = "<running>" if self.controller.running else "<stopped>"
        if self.engines:
            fields["engine_sets"] = repr(list(self.engines))
        return f"<{type(self).__name__}({', '.join(f'{k}={v}' for k, v in fields.items())})>"

    def _is_running(self) -> bool:
        return self._resources.busy()

    # -- controller ----------------------------------------------------------------------

    async def start_controller(self, **kwargs: Any) -> None:
        """Starts the controller in this process and writes its connection files into
        ``<profile_dir>/security``. Keyword arguments go to
        :class:`ipp_rs._ipp_rs.Controller` (``scheme``, ``hwm``, ``db``, ``db_path``,
        ``ping``, ``ports``, ``key`` …) and win over ``controller_args``."""
        if self.controller is not None:
            raise RuntimeError("controller is already running. Call stop_controller() first.")
        settings: Dict[str, Any] = {}
        if self.controller_ip:
            settings["ip"] = self.controller_ip
        if self.controller_location:
            settings["location"] = self.controller_location
        settings.update(_parse_controller_args(self.controller_args))
        settings.update(kwargs)
        settings.setdefault("profile_dir", self.profile_dir)
        settings.setdefault("cluster_id", self.cluster_id)
        init_logging(_rust_log_level(self.log_level))
        controller = Controller(**settings)
        self.log.info("Starting controller (in process)")
        await asyncio.get_running_loop().run_in_executor(None, controller.start)
        self._resources.controller = controller
        self._resources.label = repr(self)
        self.log.info("Controller listening: %s", controller.client_file)

    async def stop_controller(self) -> None:
        """Stops the controller (its connection files are removed). Idempotent."""
        controller = self._resources.controller
        if controller is None:
            return
        self.log.info("Stopping controller")
        await asyncio.get_running_loop().run_in_executor(None, controller.stop)
        self._resources.controller = None

    # -- engines -------------------------------------------------------------------------

    def _new_engine_set_id(self) -> str:
        base = engine_set_id = f"{int(time.time())}"
        i = 1
        while engine_set_id in self.engines:
            engine_set_id = f"{base}-{i}"
            i += 1
        return engine_set_id

    async def start_engines(
        self, n: Optional[int] = None, engine_set_id: Optional[str] = None, **kwargs: Any
    ) -> str:
        """Starts ``n`` engines (default: ``self.n``, else the number of CPUs) as
        ``python -m ipp_rs.engine`` processes; returns the engine set's id for
        :meth:`stop_engines`. Keyword arguments: ``engine_args`` (extra command-line
        arguments), ``environment`` (extra environment variables), ``python`` (the
        interpreter to run them with)."""
        controller = self.controller
        if controller is None:
            raise RuntimeError("no controller: call start_controller() (or start_cluster()) first")
        unknown = set(kwargs) - {"engine_args", "environment", "python"}
        if unknown:
            raise TypeError(
                f"start_engines() got unexpected keyword arguments {sorted(unknown)}; "
                "supported: engine_args, environment, python"
            )
        if engine_set_id is None:
            engine_set_id = self._new_engine_set_id()
        elif engine_set_id in self.engines:
            raise ValueError(f"engine set {engine_set_id!r} exists; stop it first")
        if n is None:
            n = self.n
        if n is None:
            n = cpu_count()
        env = dict(self.engine_env)
        env.update(kwargs.get("environment") or {})
        engine_set = EngineSet(
            engine_set_id=engine_set_id,
            n=n,
            profile_dir=self.profile_dir,
            cluster_id=self.cluster_id,
            engine_file=None if self.send_engines_connection_env else str(controller.engine_file),
            connection_info=controller.engine_info if self.send_engines_connection_env else None,
            engine_args=self.engine_args + list(kwargs.get("engine_args") or ()),
            environment=env,
            log_level=self.log_level,
            python=kwargs.get("python"),
            log=self.log,
        )
        self.log.info("Starting %d engines (python -m ipp_rs.engine)", n)
        self.engines[engine_set_id] = engine_set
        engine_set.start()
        return engine_set_id

    async def stop_engines(self, engine_set_id: Optional[str] = None) -> None:
        """Stops one engine set, or all of them (SIGTERM, then SIGKILL after
        :data:`STOP_SECONDS_UNTIL_KILL` seconds). Their log files are removed."""
        if engine_set_id is None:
            ids = list(self.engines)
            if ids:
                await asyncio.gather(*(self.stop_engines(i) for i in ids))
            return
        try:
            engine_set = self.engines[engine_set_id]
        except KeyError:
            raise KeyError(f"no engine set {engine_set_id!r}; running sets: {list(self.engines)}") from None
        self.log.info("Stopping engine(s): %s", engine_set_id)
        await asyncio.get_running_loop().run_in_executor(None, engine_set.stop)
        output = engine_set.get_output(remove=True)
        if output and self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("Output of engine set %s:\n%s", engine_set_id, output)
        self.engines.pop(engine_set_id, None)

    async def restart_engines(self, engine_set_id: Optional[str] = None) -> None:
        """Stops and starts again one engine set (same id and size), or all of them."""
        if engine_set_id is None:
            for set_id in list(self.engines):
                await self.restart_engines(set_id)
            return
        n = self.engines[engine_set_id].n
        await self.stop_engines(engine_set_id)
        await self.start_engines(n, engine_set_id)

    async def signal_engines(self, signum: int, engine_set_id: Optional[str] = None) -> None:
        """Sends a signal to every engine process of one set, or of all sets."""
        sets = list(self.engines.values()) if engine_set_id is None else [self.engines[engine_set_id]]
        for engine_set in sets:
            self.log.info("Sending signal %s to engine(s) %s", _signal_name(signum), engine_set.engine_set_id)
            engine_set.signal(signum)

    async def stop_engine(self, engine_id: int) -> None:
        """Not supported (as in ipyparallel): engines are managed by set."""
        raise NotImplementedError("stop_engine: engines are stopped by set; use stop_engines(engine_set_id)")

    async def restart_engine(self, engine_id: int) -> None:
        """Not supported (as in ipyparallel): engines are managed by set."""
        raise NotImplementedError("restart_engine: engines are restarted by set; use restart_engines(engine_set_id)")

    async def signal_engine(self, signum: int, engine_id: int) -> None:
        """Not supported (as in ipyparallel): use ``Client.send_signal`` or
        :meth:`signal_engines`."""
        raise NotImplementedError(
            "signal_engine: signal one engine with client.send_signal(signum, targets=[id]), "
            "or a whole set with signal_engines()"
        )

    # -- whole cluster -------------------------------------------------------------------

    async def start_cluster(self, n: Optional[int] = None) -> "Cluster":
        """Starts the controller (unless running) and ``n`` engines; returns ``self``."""
        if self.controller is None:
            await self.start_controller()
        if self.delay:
            await asyncio.sleep(self.delay)
        try:
            await self.start_engines(n)
        except BaseException:
            await self.stop_cluster()
            raise
        return self

    async def stop_cluster(self) -> None:
        """Stops all engines, then the controller."""
        await self.stop_engines()
        await self.stop_controller()

    def _client_class(self) -> Any:
        import ipp_rs

        client = getattr(ipp_rs, "Client", None)
        if client is None:
            # ipp_rs.Client is not part of this build yet: ipyparallel's speaks the same
            # protocol to our controller.
            from ipyparallel import Client as client
        return client

    async def connect_client(self, **client_kwargs: Any) -> Any:
        """A client (``ipp_rs.Client``) connected to this cluster's controller."""
        controller = self.controller
        if controller is None:
            raise RuntimeError("no controller: call start_controller() (or start_cluster()) first")
        client_class = self._client_class()
        try:
            params = inspect.signature(client_class).parameters
        except (TypeError, ValueError):
            params = {}
        passed: Dict[str, Any] = {"profile_dir": self.profile_dir, "cluster_id": self.cluster_id}
        # ipyparallel's Client only accepts its own Cluster class.
        if client_class.__module__.startswith("ipp_rs"):
            passed["cluster"] = self
        for name, value in passed.items():
            if name in params:
                client_kwargs.setdefault(name, value)
        info = controller.client_info
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: client_class(info, **client_kwargs))

    def _engine_count(self) -> int:
        return sum(s.n for s in self.engines.values() if s.state != "after")

    async def wait_for_engines(
        self, n: Optional[int] = None, *, timeout: Optional[float] = None, client: Any = None
    ) -> None:
        """Waits until ``n`` engines (default: all started ones) have registered, for at
        most ``timeout`` seconds (default ``engine_timeout``). Raises ``TimeoutError``
        naming how many came, and ``RuntimeError`` at once when engine processes died
        (with their output)."""
        if n is None:
            n = self._engine_count()
        if timeout is None:
            timeout = self.engine_timeout
        own_client = client is None and self._context_client is None
        if client is None:
            client = self._context_client or await self.connect_client()
        deadline = time.monotonic() + timeout
        try:
            while True:
                have = len(client.ids)
                if have >= n:
                    return
                processes = [p for s in self.engines.values() for p in s.processes]
                alive = sum(p.poll() is None for p in processes)
                dead = len(processes) - alive
                # Dead engines never register: give up once the live ones cannot make n.
                if dead and alive < n:
                    raise RuntimeError(
                        f"{dead} engine process(es) exited before registering "
                        f"({have} of {n} engines registered):\n{self._engine_output()}"
                    )
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{have} of {n} engines registered after {timeout:g} s "
                        f"(engine_timeout); engine output:\n{self._engine_output()}"
                    )
                await asyncio.sleep(0.05)
        finally:
            if own_client:
                client.close()

    def _engine_output(self) -> str:
        texts = [s.get_output() for s in self.engines.values()]
        text = "\n".join(t for t in texts if t).strip()
        if len(text) > 4000:
            text = "…" + text[-4000:]
        return text or "(no output)"

    async def start_and_connect(self, n: Optional[int] = None, activate: bool = False) -> Any:
        """Starts the cluster, connects a client and waits for the engines; with
        ``activate=True`` registers the ``%px`` magics on a blocking view of all
        engines. Returns the client."""
        if n is None:
            n = self.n
        await self.start_cluster(n=n)
        try:
            client = await self.connect_client()
            try:
                await self.wait_for_engines(n if n else None, client=client)
            except BaseException:
                client.close()
                raise
        except BaseException:
            await self.stop_cluster()
            raise
        if activate:
            view = client[:]
            view.block = True
            view.activate()
        return client

    # -- context managers ----------------------------------------------------------------

    async def __aenter__(self) -> Any:
        client = self._context_client = await self.start_and_connect()
        return client

    async def __aexit__(self, *args: Any) -> None:
        if self._context_client is not None:
            self._context_client.close()
            self._context_client = None
        await self.stop_cluster()

    def __enter__(self) -> Any:
        client = self._context_client = self.start_and_connect_sync()
        return client

    def __exit__(self, *args: Any) -> None:
        if self._context_client is not None:
            self._context_client.close()
            self._context_client = None
        self.stop_cluster_sync()

    # -- blocking twins ------------------------------------------------------------------

    def _synchronize(self, async_f: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Runs a coroutine method to completion: with ``asyncio.run`` when no loop runs in
        this thread, else on a helper thread (so it works inside Jupyter)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return _run_in_new_loop(async_f(*args, **kwargs))
        if self._thread_pool is None:
            self._thread_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ipp-rs-cluster")
        return self._thread_pool.submit(lambda: _run_in_new_loop(async_f(*args, **kwargs))).result()

    def start_controller_sync(self, **kwargs: Any) -> None:
        """Blocking :meth:`start_controller`."""
        return self._synchronize(self.start_controller, **kwargs)

    def stop_controller_sync(self) -> None:
        """Blocking :meth:`stop_controller`."""
        return self._synchronize(self.stop_controller)

    def start_engines_sync(self, n: Optional[int] = None, engine_set_id: Optional[str] = None, **kwargs: Any) -> str:
        """Blocking :meth:`start_engines`."""
        return self._synchronize(self.start_engines, n, engine_set_id, **kwargs)

    def stop_engines_sync(self, engine_set_id: Optional[str] = None) -> None:
        """Blocking :meth:`stop_engines`."""
        return self._synchronize(self.stop_engines, engine_set_id)

    def restart_engines_sync(self, engine_set_id: Optional[str] = None) -> None:
        """Blocking :meth:`restart_engines`."""
        return self._synchronize(self.restart_engines, engine_set_id)

    def signal_engines_sync(self, signum: int, engine_set_id: Optional[str] = None) -> None:
        """Blocking :meth:`signal_engines`."""
        return self._synchronize(self.signal_engines, signum, engine_set_id)

    def start_cluster_sync(self, n: Optional[int] = None) -> "Cluster":
        """Blocking :meth:`start_cluster`."""
        return self._synchronize(self.start_cluster, n)

    def stop_cluster_sync(self) -> None:
        """Blocking :meth:`stop_cluster`."""
        return self._synchronize(self.stop_cluster)

    def connect_client_sync(self, **client_kwargs: Any) -> Any:
        """Blocking :meth:`connect_client`."""
        return self._synchronize(self.connect_client, **client_kwargs)

    def wait_for_engines_sync(
        self, n: Optional[int] = None, *, timeout: Optional[float] = None, client: Any = None
    ) -> None:
        """Blocking :meth:`wait_for_engines`."""
        return self._synchronize(self.wait_for_engines, n, timeout=timeout, client=client)

    def start_and_connect_sync(self, n: Optional[int] = None, activate: bool = False) -> Any:
        """Blocking :meth:`start_and_connect`."""
        return self._synchronize(self.start_and_connect, n, activate)

    # -- not supported -------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Not supported: the controller lives in this process, so a cluster cannot be
        saved and re-attached from another process."""
        raise NotImplementedError(
            "Cluster.to_dict/from_dict/from_file: ipp_rs runs the controller in this process, "
            "so a cluster cannot be re-attached from elsewhere; connect with "
            "ipp_rs.Client(<profile_dir>/security/ipcontroller-<cluster_id>-client.json) instead"
        )

    @classmethod
    def from_dict(cls, d: dict, **kwargs: Any) -> "Cluster":
        """Not supported (see :meth:`to_dict`)."""
        raise NotImplementedError(
            "Cluster.from_dict: ipp_rs runs the controller in-process; clusters cannot be re-attached"
        )

    @classmethod
    def from_file(cls, cluster_file: Optional[str] = None, **kwargs: Any) -> "Cluster":
        """Not supported (see :meth:`to_dict`)."""
        raise NotImplementedError(
            "Cluster.from_file: ipp_rs runs the controller in-process; clusters cannot be "
            "re-attached. Connect a Client to the connection file instead."
        )


class ClusterManager:
    """Clusters of this process by key (``<profile dir>:<cluster id>``), as ipyparallel's
    ``ClusterManager``. Clusters live only in the process that started them (the
    controller is in-process), so there are no cluster files to load from disk."""

    def __init__(self, log: Optional[logging.Logger] = None) -> None:
        self.clusters: Dict[str, Cluster] = {}
        self.log = log or logging.getLogger(__name__)

    @staticmethod
    def _cluster_key(cluster: Cluster) -> str:
        profile_dir = cluster.profile_dir
        home = os.path.expanduser("~")
        if profile_dir.startswith(home + os.path.sep):
            profile_dir = "~" + profile_dir[len(home) :]
        return f"{profile_dir}:{cluster.cluster_id}"

    def load_clusters(self, **kwargs: Any) -> Dict[str, Cluster]:
        """Not supported: ipyparallel reads ``cluster-*.json`` files that other processes
        wrote; ipp_rs clusters exist only in their own process. ``clusters`` lists this
        process's."""
        raise NotImplementedError(
            "ClusterManager.load_clusters: ipp_rs clusters run their controller in-process and "
            "write no cluster files; use ClusterManager.clusters for this process's clusters"
        )

    def new_cluster(self, **kwargs: Any) -> "tuple[str, Cluster]":
        """Creates a Cluster (not started); returns ``(key, cluster)``."""
        cluster = Cluster(**kwargs)
        key = self._cluster_key(cluster)
        if key in self.clusters:
            raise KeyError(f"Cluster {key} already exists!")
        self.clusters[key] = cluster
        return key, cluster

    def get_cluster(self, cluster_id: str) -> Cluster:
        """The cluster with this key."""
        return self.clusters[cluster_id]

    def remove_cluster(self, cluster_id: str) -> None:
        """Forgets a cluster (stop it first: a forgotten running cluster stops when it is
        garbage-collected)."""
        del self.clusters[cluster_id]
