"""Benchmark (not a test): the Python ipcontroller vs ours, same client code, same engines.

For each controller in turn (reference first, then ours), starts it on 127.0.0.1 with two
real ipengines, runs the workload below with the real ipyparallel client, stops everything,
and finally prints a markdown table with both results and the ratio ours/ref.

    scripts/bench.sh            # full run (builds the release binary, uses .venv-test)
    scripts/bench.sh --quick    # small sizes, for a smoke check

Workload: no-op latency (DirectView and LoadBalancedView apply_sync, median of N calls);
throughput (apply_async x M on the LB view and on direct views, then wait; LB map over M
no-ops); push and pull of a bytes object of B MB to one engine; controller resident memory
(VmRSS from /proc) before and after the workload, summed over the controller's process tree
(the reference runs its schedulers in child processes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import ipyparallel as ipp  # noqa: E402

from ippcluster import Cluster, descendants  # noqa: E402


@ipp.interactive
def noop():
    return None


@ipp.interactive
def noop1(x):
    return x


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` and all its descendants, in KiB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and all its descendants, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / ticks


def median_ms(call, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_workload(cluster: Cluster, sizes: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    pid = cluster.controller.pid
    rc = cluster.client()
    rc.wait_for_engines(2, timeout=60)
    direct = [rc[0], rc[1]]
    lb = rc.load_balanced_view()
    # warm up every path once
    rc[:].apply_sync(noop)
    lb.map_sync(noop1, range(10))
    out["rss_before"] = rss_kib(pid) / 1024

    out["lat_direct"] = median_ms(lambda: direct[0].apply_sync(noop), sizes.latency_n)
    out["lat_lb"] = median_ms(lambda: lb.apply_sync(noop), sizes.latency_n)

    m = sizes.tasks

    def lb_async():
        ars = [lb.apply_async(noop) for _ in range(m)]
        rc.wait(ars, timeout=600)
        for ar in ars:
            ar.get(0)

    def direct_async():
        ars = [direct[i % 2].apply_async(noop) for i in range(m)]
        rc.wait(ars, timeout=600)
        for ar in ars:
            ar.get(0)

    def lb_map():
        assert lb.map(noop1, range(m), chunksize=1).get(timeout=600) == list(range(m))

    cpu_start = cpu_seconds(pid)
    out["tp_lb"] = m / timed(lb_async)
    out["tp_direct"] = m / timed(direct_async)
    out["tp_map"] = m / timed(lb_map)
    # Controller CPU per task over the three throughput runs: what it costs the machine,
    # independent of how busy the machine was.
    out["cpu_per_task"] = (cpu_seconds(pid) - cpu_start) / (3 * m) * 1e6

    blob = b"x" * (sizes.megabytes * 1024 * 1024)
    target = rc[0]
    out["push"] = timed(lambda: target.push({"blob": blob}, block=True))
    pulled = []
    out["pull"] = timed(lambda: pulled.append(target.pull("blob", block=True)))
    assert len(pulled[0]) == len(blob)
    target.execute("del blob", block=True)
    out["rss_after"] = rss_kib(pid) / 1024
    return out


ROWS = [
    ("lat_direct", "no-op latency, DirectView apply_sync (median)", "ms", False),
    ("lat_lb", "no-op latency, LoadBalancedView apply_sync (median)", "ms", False),
    ("tp_lb", "throughput, LB apply_async x{tasks} + wait", "tasks/s", True),
    ("tp_direct", "throughput, direct apply_async x{tasks} + wait", "tasks/s", True),
    ("tp_map", "throughput, LB map of {tasks} no-ops", "tasks/s", True),
    ("cpu_per_task", "controller CPU per task (throughput runs)", "µs", False),
    ("push", "push {megabytes} MB bytes to one engine", "s", False),
    ("pull", "pull {megabytes} MB bytes from one engine", "s", False),
    ("rss_before", "controller RSS before", "MiB", False),
    ("rss_after", "controller RSS after", "MiB", False),
]


def table(results: dict[str, dict[str, float]], sizes: argparse.Namespace) -> str:
    kinds = list(results)
    head = "| metric | unit | " + " | ".join(kinds)
    head += " | ours/ref |" if len(kinds) == 2 else " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key, label, unit, higher_better in ROWS:
        vals = [results[k][key] for k in kinds]
        cells = [f"{v:,.3f}" if v < 100 else f"{v:,.0f}" for v in vals]
        row = f"| {label.format(**vars(sizes))} | {unit} | " + " | ".join(cells) + " |"
        if len(kinds) == 2 and vals[0]:
            ratio = vals[1] / vals[0]
            row += f" {ratio:.2f}{' (higher is better)' if higher_better else ''} |"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only", choices=["reference", "ours"], help="run one controller instead of both"
    )
    args = parser.parse_args()
    sizes = argparse.Namespace(
        latency_n=30 if args.quick else 300,
        tasks=300 if args.quick else 5000,
        megabytes=10 if args.quick else 100,
    )
    kinds = [args.only] if args.only else ["reference", "ours"]
    results = {}
    for kind in kinds:
        print(f"bench: {kind} controller ...", file=sys.stderr, flush=True)
        cluster = Cluster(kind).start(engines=2)
        try:
            results[kind] = run_workload(cluster, sizes)
        finally:
            cluster.stop()
    print(
        f"\n{'quick run' if args.quick else 'full run'}, 2 engines on 127.0.0.1, "
        f"python {sys.version.split()[0]}, ipyparallel {ipp.__version__}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print(table(results, sizes))


if __name__ == "__main__":
    main()
