"""Benchmark (not a test): CPU per request of the Python engine (``python -m ipp_rs.engine``).

Starts our controller and E engines (``python -m ipp_rs.engine``) on 127.0.0.1 in a
throw-away profile, then, in this process, drives them with a client (``ipp_rs`` or
``ipyparallel``) through a load-balanced view: W warm-up no-op ``apply_async`` calls, then
R rounds of N no-op ``apply_async`` calls, each round waited for. For each round it reads,
before and after, the CPU time of every engine process (``utime + stime`` of
``/proc/<pid>/stat``, and the nanosecond per-thread ``/proc/<pid>/task/*/schedstat``), of the
controller, and of this client process, and prints:

* engine CPU µs per task (all engines summed, divided by N), from schedstat (the stat value,
  in clock ticks, is printed beside it), split into the Python main thread and the Rust
  (tokio) threads;
* controller and client CPU µs per task;
* sleeps (voluntary context switches, i.e. wake-ups) per task of the engines, the
  controller and this client: unlike CPU time, they barely move with the machine's load;
* end-to-end tasks/s (wall time of the round).

    python benchmarks/bench_python_engine.py --controller target/release/examples/ipcontroller
    python benchmarks/bench_python_engine.py --engine-python /path/to/venv/bin/python \\
        --client ipyparallel --tasks 5000 --rounds 3
    python benchmarks/bench_python_engine.py --controller-arg=--hwm=0 --controller-arg=--nodb

The median round is printed last as ``RESULT {...}`` (JSON). Use a release controller and
a release build of ipp_rs for numbers worth keeping. With ``--profile-engine FILE`` the
first engine runs under cProfile (slower; only to see where its Python time goes) and
dumps its stats to FILE when it exits.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
VOLUNTARY = ("voluntary_ctxt_switches",)


def noop() -> None:
    """The task: does nothing."""


def stat_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """On-CPU nanoseconds of each thread of `pid`, by thread name (summed per name; the
    main thread is ``main``)."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
            name = (task / "comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue
        key = "main" if int(task.name) == pid else name
        out[key] = out.get(key, 0) + ns
    return out


def context_switches(pid: int, kinds: tuple[str, ...] = (
        "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")) -> int:
    """Context switches over every thread of `pid`: voluntary + involuntary by default;
    ``kinds=("voluntary_ctxt_switches",)`` counts only the sleeps (each one a wake-up
    later), which, unlike preemptions, do not grow with the machine's load."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(kinds):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class Cluster:
    """Our controller plus `engines` ipp_rs engines, by hand (pids known, stopped by pid)."""

    def __init__(
        self,
        controller: str,
        engine_python: str,
        engines: int,
        profile: str | None,
        engine_script: str | None = None,
        controller_args: list[str] | None = None,
    ):
        self.tmp = Path(tempfile.mkdtemp(prefix="ipp-bench-pyengine-"))
        self.profile_dir = self.tmp / "profile_default"
        self.security = self.profile_dir / "security"
        for sub in ("security", "log", "pid", "startup"):
            (self.profile_dir / sub).mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, IPYTHONDIR=str(self.tmp))
        for key in ("IPP_PROFILE_DIR", "IPP_CLUSTER_ID", "IPP_CONNECTION_INFO"):
            self.env.pop(key, None)
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []
        self.controller = self._spawn(
            [controller, f"--profile-dir={self.profile_dir}", "--ip=127.0.0.1",
             *(controller_args or [])],
            "controller",
        )
        self.client_file = self.security / "ipcontroller-client.json"
        engine_file = self.security / "ipcontroller-engine.json"
        deadline = time.monotonic() + 30
        while not (self._ready(self.client_file) and self._ready(engine_file)):
            if self.controller.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"controller did not start; see {self.tmp}/controller.log")
            time.sleep(0.05)
        self.engines = []
        for i in range(engines):
            cmd = [engine_python]
            if profile and i == 0:
                cmd += ["-c", _PROFILED_ENGINE, profile]
            elif engine_script:
                cmd += [engine_script]
            else:
                cmd += ["-m", "ipp_rs.engine"]
            cmd += [f"--file={engine_file}", f"--id={i}", "--log-level=WARN"]
            self.engines.append(self._spawn(cmd, f"engine-{i}"))

    @staticmethod
    def _ready(path: Path) -> bool:
        try:
            json.loads(path.read_text())
            return True
        except (OSError, ValueError):
            return False

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        self.logs.append(log)
        proc = subprocess.Popen(
            cmd, env=self.env, cwd=self.tmp, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):  # engines first, the controller last
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for log in self.logs:
            log.close()
        if os.environ.get("IPP_BENCH_KEEP_LOGS"):
            print(f"logs kept in {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# The first engine under cProfile, stats dumped when it stops (SIGTERM ends serve()).
_PROFILED_ENGINE = """
import cProfile, sys
out = sys.argv[1]
sys.argv = ["ipp_rs.engine"] + sys.argv[2:]
from ipp_rs.engine import main
prof = cProfile.Profile()
prof.enable()
try:
    main()
finally:
    prof.disable()
    prof.dump_stats(out)
"""


def snapshot(cluster: Cluster) -> dict:
    return {
        "t": time.perf_counter(),
        "client": time.process_time(),
        "controller": stat_cpu_s(cluster.controller.pid),
        "engines_stat": [stat_cpu_s(e.pid) for e in cluster.engines],
        "engines_threads": [thread_cpu_ns(e.pid) for e in cluster.engines],
        "engines_cs": [context_switches(e.pid) for e in cluster.engines],
        "engines_sleeps": [context_switches(e.pid, VOLUNTARY) for e in cluster.engines],
        "controller_sleeps": context_switches(cluster.controller.pid, VOLUNTARY),
        "client_sleeps": context_switches(os.getpid(), VOLUNTARY),
    }


def one_round(view, n: int, cluster: Cluster) -> dict:
    before = snapshot(cluster)
    ars = [view.apply_async(noop) for _ in range(n)]
    for ar in ars:
        ar.get()
    after = snapshot(cluster)
    wall = after["t"] - before["t"]
    main_ns = rust_ns = 0
    for b, a in zip(before["engines_threads"], after["engines_threads"]):
        for key, ns in a.items():
            delta = ns - b.get(key, 0)
            if key == "main":
                main_ns += delta
            else:
                rust_ns += delta
    stat_s = sum(a - b for a, b in zip(after["engines_stat"], before["engines_stat"]))
    cs = sum(a - b for a, b in zip(after["engines_cs"], before["engines_cs"]))
    return {
        "tasks_per_s": round(n / wall),
        "engine_us": round((main_ns + rust_ns) / 1e3 / n, 1),
        "engine_python_thread_us": round(main_ns / 1e3 / n, 1),
        "engine_rust_threads_us": round(rust_ns / 1e3 / n, 1),
        "engine_stat_us": round(stat_s * 1e6 / n, 1),
        "engine_ctx_switches_per_task": round(cs / n, 2),
        "controller_us": round((after["controller"] - before["controller"]) * 1e6 / n, 1),
        "engine_sleeps_per_task": round(
            sum(a - b for a, b in zip(after["engines_sleeps"], before["engines_sleeps"])) / n, 2),
        "controller_sleeps_per_task": round(
            (after["controller_sleeps"] - before["controller_sleeps"]) / n, 2),
        "client_us": round((after["client"] - before["client"]) * 1e6 / n, 1),
        "client_sleeps_per_task": round(
            (after["client_sleeps"] - before["client_sleeps"]) / n, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--controller",
        default=os.environ.get("IPP_CONTROLLER_BIN")
        or str(ROOT / "target" / "release" / "examples" / "ipcontroller"),
        help="our ipcontroller binary (default: $IPP_CONTROLLER_BIN, else target/release)",
    )
    parser.add_argument("--engine-python", default=sys.executable,
                        help="the Python that runs `-m ipp_rs.engine`")
    parser.add_argument("--client", choices=("ipp_rs", "ipyparallel"), default="ipp_rs")
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--profile-engine", metavar="FILE",
                        help="run engine 0 under cProfile; its stats go to FILE")
    parser.add_argument("--engine-script", metavar="FILE",
                        help="run engines as `python FILE <engine args>` (a wrapper that "
                        "instruments ipp_rs.engine, then calls ipp_rs.engine.main)")
    parser.add_argument("--controller-arg", action="append", default=[], metavar="ARG",
                        help="an extra controller argument (repeatable), e.g. --nodb, --hwm=0")
    args = parser.parse_args()

    client_mod = importlib.import_module(args.client)
    cluster = Cluster(
        args.controller, args.engine_python, args.engines, args.profile_engine,
        args.engine_script, args.controller_arg,
    )
    rc = None
    try:
        rc = client_mod.Client(str(cluster.client_file))
        rc.wait_for_engines(args.engines, timeout=60)
        view = rc.load_balanced_view()
        for ar in [view.apply_async(noop) for _ in range(args.warmup)]:
            ar.get()
        rounds = []
        for i in range(args.rounds):
            result = one_round(view, args.tasks, cluster)
            print(f"round {i + 1}: {json.dumps(result)}", flush=True)
            rounds.append(result)
        median = {
            key: statistics.median(r[key] for r in rounds) for key in rounds[0]
        }
        median.update(
            client=args.client, engines=args.engines, tasks=args.tasks, rounds=args.rounds,
            controller_args=args.controller_arg,
        )
        print("RESULT " + json.dumps(median), flush=True)
    finally:
        if rc is not None:
            try:
                rc.close()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
