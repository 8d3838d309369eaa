"""Benchmark (not a test): the whole ipp_rs stack against ipyparallel's, one run, three
configurations, same workload:

* ``ipp_rs``: the ipp_rs client and ipp_rs engines (``python -m ipp_rs.engine``) with our
  Rust controller;
* ``ours``: the ipyparallel client and ``ipengine``s with our Rust controller;
* ``ref``: the ipyparallel client and ``ipengine``s with the Python ``ipcontroller`` (all of
  ipyparallel 9.2.0: the reference).

For each configuration in turn: start the controller and two engines on 127.0.0.1, run the
workload in a fresh client process (so the client's memory is its own), stop everything.
Then print a markdown table with the three results and the ratios to the reference, and
whether the targets are met (>= 10,000 no-op load-balanced tasks/s with Python functions;
client memory for 20k results <= 1/4 of ipyparallel's).

    python benchmarks/bench_ipp_rs.py            # full sizes
    python benchmarks/bench_ipp_rs.py --quick    # small sizes, a smoke run
    python benchmarks/bench_ipp_rs.py --configs ipp_rs,ref

Use release builds for numbers worth keeping: ``IPP_CONTROLLER_BIN`` pointing at
``target/release/examples/ipcontroller`` (as ``scripts/bench.sh`` does) and ipp_rs built with
``maturin develop --release``. A configuration that cannot run (the ipp_rs client not
written yet, or its client process failing) is reported as ``not available: <reason>``.

Workload (each in a client process of its own):
- speed: no-op latency (DirectView and LoadBalancedView ``apply_sync``, median of N calls);
  throughput (``apply_async`` x M on the load-balanced view and on direct views, then wait;
  load-balanced ``map`` of M no-ops with chunksize 1; each the median of R runs, ``--rounds``);
  push and pull of B MB of bytes to
  one engine, three times each: the first (fresh memory everywhere) and the median of the
  two repeats (a process that keeps moving large data) are reported apart;
- memory: K load-balanced no-op ``apply_async`` whose AsyncResults and results are all kept;
  the client process's RSS growth over that (and the rate of those K tasks);
- controller RSS (VmRSS, summed over its process tree) before and after the speed run.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

from ippcluster import client_unavailable, descendants, start_cluster  # noqa: E402

RESULT_MARK = "BENCH-RESULT "


@dataclass(frozen=True)
class Config:
    key: str
    client: str
    engine: str
    controller: str
    label: str


CONFIGS = [
    Config("ipp_rs", "ipp_rs", "ipp_rs", "ours", "ipp_rs client + ipp_rs engines, our controller"),
    Config("ours", "ipyparallel", "ipengine", "ours",
           "ipyparallel client + ipengine, our controller"),
    Config("ref", "ipyparallel", "ipengine", "reference",
           "ipyparallel client + ipengine, Python ipcontroller"),
]

# key, label, unit, higher is better, which run measures it
ROWS = [
    ("lat_direct", "no-op latency, DirectView apply_sync (median)", "ms", False),
    ("lat_lb", "no-op latency, LoadBalancedView apply_sync (median)", "ms", False),
    ("tp_lb", "throughput, LB apply_async x{tasks} + wait", "tasks/s", True),
    ("tp_direct", "throughput, direct apply_async x{tasks} + wait", "tasks/s", True),
    ("tp_map", "throughput, LB map of {tasks} no-ops", "tasks/s", True),
    ("push", "push {megabytes} MB bytes to one engine, first", "s", False),
    ("pull", "pull {megabytes} MB bytes from one engine, first", "s", False),
    ("push_again", "push {megabytes} MB again (median of 2)", "s", False),
    ("pull_again", "pull {megabytes} MB again (median of 2)", "s", False),
    ("tp_mem", "throughput, LB apply_async x{mem_tasks}, results kept", "tasks/s", True),
    ("client_mem", "client RSS growth holding {mem_tasks} results", "MiB", False),
    ("client_peak", "client peak RSS (memory run)", "MiB", False),
    ("ctrl_rss_before", "controller RSS before", "MiB", False),
    ("ctrl_rss_after", "controller RSS after the speed run", "MiB", False),
]

LB_TARGET = 10_000  # no-op load-balanced tasks/s with Python functions
MEMORY_TARGET = 0.25  # client memory for 20k results, relative to ipyparallel's


# -- measuring ---------------------------------------------------------------------------------


def rss_kib(pid: int, tree: bool = True, field: str = "VmRSS") -> int:
    """`field` (VmRSS, VmHWM) of `pid`, summed over its descendants when `tree`, in KiB."""
    total = 0
    for p in [pid, *(descendants(pid) if tree else [])]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


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


def median_rate(tasks: int, fn, rounds: int) -> float:
    """Tasks per second of `fn` (which runs `tasks` tasks), the median of `rounds` runs: one
    burst of a few thousand no-ops lasts under a second and moves ±20% with the machine's
    load, so a single run is not a number to keep."""
    return statistics.median(tasks / timed(fn) for _ in range(max(1, rounds)))


# -- the client process --------------------------------------------------------------------------


def noop():
    return None


def noop1(x):
    return x


def connect(module: str, client_file: str):
    ipp = importlib.import_module(module)
    rc = ipp.Client(client_file)
    rc.wait_for_engines(2, timeout=60)
    return ipp, rc, ipp.interactive(noop), ipp.interactive(noop1)


def speed_run(module: str, client_file: str, sizes: dict) -> dict[str, float]:
    ipp, rc, f0, f1 = connect(module, client_file)
    out: dict[str, float] = {}
    try:
        direct = [rc[0], rc[1]]
        lb = rc.load_balanced_view()
        rc[:].apply_sync(f0)  # warm up every path once
        lb.map_sync(f1, range(10))
        out["lat_direct"] = median_ms(lambda: direct[0].apply_sync(f0), sizes["latency_n"])
        out["lat_lb"] = median_ms(lambda: lb.apply_sync(f0), sizes["latency_n"])
        m = sizes["tasks"]

        def lb_async():
            ars = [lb.apply_async(f0) for _ in range(m)]
            rc.wait(ars, timeout=1200)
            for ar in ars:
                ar.get(0)

        def direct_async():
            ars = [direct[i % 2].apply_async(f0) for i in range(m)]
            rc.wait(ars, timeout=1200)
            for ar in ars:
                ar.get(0)

        def lb_map():
            got = lb.map(f1, range(m), chunksize=1).get(timeout=1200)
            assert got == list(range(m)), "map returned wrong results"

        rounds = sizes["rounds"]
        out["tp_lb"] = median_rate(m, lb_async, rounds)
        out["tp_direct"] = median_rate(m, direct_async, rounds)
        out["tp_map"] = median_rate(m, lb_map, rounds)

        blob = b"x" * (sizes["megabytes"] * 1024 * 1024)
        target = rc[0]
        pushes, pulls = [], []
        for _ in range(3):
            pushes.append(timed(lambda: target.push({"bench_blob": blob}, block=True)))
            pulled = []
            pulls.append(timed(lambda: pulled.append(target.pull("bench_blob", block=True))))
            assert len(pulled[0]) == len(blob), "pull returned a different size"
            del pulled
        out["push"], out["pull"] = pushes[0], pulls[0]
        out["push_again"] = statistics.median(pushes[1:])
        out["pull_again"] = statistics.median(pulls[1:])
        target.execute("del bench_blob", block=True)
    finally:
        rc.close()
    return out


def memory_run(module: str, client_file: str, sizes: dict) -> dict[str, float]:
    ipp, rc, f0, f1 = connect(module, client_file)
    out: dict[str, float] = {}
    try:
        lb = rc.load_balanced_view()
        warm = [lb.apply_async(f0) for _ in range(100)]
        rc.wait(warm, timeout=600)
        del warm
        gc.collect()
        before = rss_kib(os.getpid(), tree=False)
        k = sizes["mem_tasks"]
        t0 = time.perf_counter()
        ars = [lb.apply_async(f0) for _ in range(k)]
        rc.wait(ars, timeout=1200)
        results = [ar.get(0) for ar in ars]
        out["tp_mem"] = k / (time.perf_counter() - t0)
        gc.collect()
        after = rss_kib(os.getpid(), tree=False)
        assert len(results) == k and len(ars) == k
        out["client_mem"] = (after - before) / 1024
        out["client_peak"] = rss_kib(os.getpid(), tree=False, field="VmHWM") / 1024
    finally:
        rc.close()
    return out


def worker_main(args: argparse.Namespace) -> None:
    sizes = json.loads(args.sizes)
    run = speed_run if args.worker == "speed" else memory_run
    out = run(args.client_module, args.client_file, sizes)
    print(RESULT_MARK + json.dumps(out), flush=True)


# -- the driver ---------------------------------------------------------------------------------


class Unavailable(Exception):
    """A configuration that cannot run; the message says why."""


def run_worker(kind: str, config: Config, client_file: Path, env: dict, sizes: dict) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", kind, "--client-module", config.client,
        "--client-file", str(client_file), "--sizes", json.dumps(sizes),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"the {kind} run did not finish in an hour") from None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise Unavailable(f"the {kind} run failed (exit {done.returncode}): {last}")


def run_config(config: Config, sizes: dict) -> dict[str, float]:
    reason = client_unavailable(config.client)
    if reason:
        raise Unavailable(reason)
    try:
        cluster = start_cluster(config.controller, config.engine, engines=2)
    except Exception as exc:  # a missing binary, engines not registering
        raise Unavailable(f"cluster did not start: {str(exc).splitlines()[0]}") from exc
    try:
        pid = cluster.controller.pid
        env = {**os.environ, **cluster.env}
        out = {"ctrl_rss_before": rss_kib(pid) / 1024}
        out.update(run_worker("speed", config, cluster.client_file, env, sizes))
        out["ctrl_rss_after"] = rss_kib(pid) / 1024
        out.update(run_worker("memory", config, cluster.client_file, env, sizes))
        return out
    finally:
        cluster.stop()


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"


def table(
    configs: list[Config], results: dict[str, dict], sizes: dict
) -> str:
    keys = [c.key for c in configs]
    ratio_keys = [k for k in keys if k != "ref"] if "ref" in keys else []
    head = "| metric | unit | " + " | ".join(keys) + " |"
    head += "".join(f" {k}/ref |" for k in ratio_keys)
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key, label, unit, higher_better in ROWS:
        vals = {k: results[k].get(key) if isinstance(results[k], dict) else None for k in keys}
        row = f"| {label.format(**sizes)} | {unit} | " + " | ".join(fmt(vals[k]) for k in keys)
        row += " |"
        for k in ratio_keys:
            ref, val = vals["ref"], vals[k]
            if ref and val is not None:
                row += f" {val / ref:.2f}{' (higher is better)' if higher_better else ''} |"
            else:
                row += " n/a |"
        lines.append(row)
    return "\n".join(lines)


def targets(results: dict[str, dict], sizes: dict) -> list[str]:
    lines = []
    ipp_rs = results.get("ipp_rs")
    if not isinstance(ipp_rs, dict):
        return ["targets: not measured (ipp_rs configuration not available)"]
    best = max(ipp_rs["tp_lb"], ipp_rs["tp_map"])
    lines.append(
        f"target >= {LB_TARGET:,} no-op LB tasks/s (Python functions): ipp_rs "
        f"apply_async {ipp_rs['tp_lb']:,.0f}/s, map {ipp_rs['tp_map']:,.0f}/s: "
        f"{'met' if best >= LB_TARGET else 'NOT met'}"
    )
    ref = results.get("ref")
    if isinstance(ref, dict) and ref.get("client_mem"):
        ratio = ipp_rs["client_mem"] / ref["client_mem"]
        lines.append(
            f"target client memory for {sizes['mem_tasks']:,} results <= 1/4 of ipyparallel's: "
            f"{ipp_rs['client_mem']:.1f} MiB vs {ref['client_mem']:.1f} MiB = {ratio:.2f}: "
            f"{'met' if ratio <= MEMORY_TARGET else 'NOT met'}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="runs of each throughput workload; the median is reported (default 3)",
    )
    parser.add_argument(
        "--configs", default=",".join(c.key for c in CONFIGS),
        help="comma-separated configurations to run (ipp_rs, ours, ref)",
    )
    parser.add_argument("--worker", choices=["speed", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--client-module", help=argparse.SUPPRESS)
    parser.add_argument("--client-file", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return

    sizes = {
        "latency_n": 30 if args.quick else 300,
        "tasks": 300 if args.quick else 5000,
        "rounds": 1 if args.quick else args.rounds,
        "megabytes": 10 if args.quick else 100,
        "mem_tasks": 2000 if args.quick else 20_000,
    }
    wanted = [k.strip() for k in args.configs.split(",") if k.strip()]
    unknown = set(wanted) - {c.key for c in CONFIGS}
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}; choose from ipp_rs, ours, ref")
    configs = [c for c in CONFIGS if c.key in wanted]
    results: dict[str, dict | str] = {}
    for config in configs:
        print(f"bench: {config.key}: {config.label} ...", file=sys.stderr, flush=True)
        try:
            results[config.key] = run_config(config, sizes)
        except Unavailable as exc:
            results[config.key] = f"not available: {exc}"
            print(f"bench: {config.key}: not available: {exc}", file=sys.stderr, flush=True)

    import ipyparallel

    print(
        f"\n{'quick run' if args.quick else 'full run'}, 2 engines on 127.0.0.1, "
        f"python {sys.version.split()[0]}, ipyparallel {ipyparallel.__version__}, "
        f"{os.cpu_count()} CPUs\n"
    )
    for config in configs:
        print(f"- {config.key}: {config.label}")
    print()
    print(table(configs, results, sizes))
    print()
    for config in configs:
        if isinstance(results[config.key], str):
            print(f"{config.key}: {results[config.key]}")
    for line in targets(results, sizes):
        print(line)


if __name__ == "__main__":
    main()
