#!/usr/bin/env python
"""Load-balanced throughput of our controller per scheme and per number of dependencies.

For each scheme (`--scheme`) and each dependency count (0, 1, 10 per task), it starts our
controller (release build) with four of our Rust engines (`examples/ipengine`, one process,
`-n 4`) on 127.0.0.1, then submits N `ipp.noop` Rust calls on the task port from one pyzmq
DEALER signed with jupyter_client's Session (the real ipyparallel client cannot call Rust
functions), and times first send to last reply. Task i's `after` names k tasks drawn at
random (seeded) from the 200 submitted just before it, so most are still queued or running
when it arrives: the scheduler's graph is exercised, not just the set lookups.

    cargo build --release --example ipcontroller --example ipengine
    .venv-test/bin/python benchmarks/bench_schemes.py [--tasks 5000] [--repeat 3] [--hwm 1]

Prints a markdown table: the best of `--repeat` runs, tasks/s, and each scheme's share of
leastload's throughput at the same dependency count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import zmq
from jupyter_client.session import Session

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

from ippcluster import Cluster  # noqa: E402

SCHEMES = ["leastload", "lru", "plainrandom", "twobin", "weighted"]
DEPS = [0, 1, 10]
WINDOW = 200


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target") / "release" / "examples"


class RustEngines(Cluster):
    """Our controller with one Rust engine process running `count` engines."""

    def start_engines(self, count: int) -> None:
        log = self.tmp / "engines.log"
        cmd = [str(target_dir() / "ipengine"), f"--file={self.engine_file}", f"-n{count}"]
        self.engines.append(self._spawn(cmd, log))


def run_once(scheme: str, deps: int, tasks: int, hwm: int, engines: int) -> float:
    os.environ["IPP_CONTROLLER_BIN"] = str(target_dir() / "ipcontroller")
    cluster = RustEngines(kind="ours", extra_args=(f"--scheme={scheme}", f"--hwm={hwm}"))
    try:
        cluster.start_controller()
        cluster.start_engines(engines)
        rc = cluster.client()
        rc.wait_for_engines(engines, timeout=60)
        info = cluster.client_info
        session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
        ctx = zmq.Context.instance()
        task = ctx.socket(zmq.DEALER)
        task.linger = 0
        task.sndhwm = 0
        task.rcvhwm = 0
        task.connect(f"{info['interface']}:{info['task']}")
        time.sleep(0.2)  # let the connection settle before the clock starts
        rng = random.Random(7)
        content = {
            "rust": {"function": "ipp.noop", "names": [], "formats": ["json"], "frames": [1]}
        }
        ids: list[str] = []
        received = 0
        began = time.perf_counter()
        for i in range(tasks):
            back = ids[max(0, i - WINDOW) : i]
            after = rng.sample(back, min(deps, len(back)))
            metadata = {"after": after, "follow": [], "timeout": None, "targets": [],
                        "retries": 0}
            msg = session.send(task, "apply_request", content=content, buffers=[b"null"],
                               metadata=metadata)
            ids.append(msg["header"]["msg_id"])
            while task.poll(0):
                reply = session.recv(task, mode=0)[1]
                assert reply["content"]["status"] == "ok", reply["content"]
                received += 1
        while received < tasks:
            if not task.poll(60_000):
                raise TimeoutError(f"{scheme}/{deps}: {received} of {tasks} replies")
            reply = session.recv(task, mode=0)[1]
            assert reply["content"]["status"] == "ok", reply["content"]
            received += 1
        elapsed = time.perf_counter() - began
        task.close()
        return tasks / elapsed
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hwm", type=int, default=1)
    parser.add_argument("--engines", type=int, default=4)
    args = parser.parse_args()
    results: dict[tuple[str, int], float] = {}
    for deps in DEPS:
        for scheme in SCHEMES:
            best = max(
                run_once(scheme, deps, args.tasks, args.hwm, args.engines)
                for _ in range(args.repeat)
            )
            results[(scheme, deps)] = best
            print(f"{scheme:12} deps={deps:2}: {best:8.0f} tasks/s", file=sys.stderr)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"\n{args.tasks} no-op tasks, {args.engines} Rust engines, hwm {args.hwm}, best of "
          f"{args.repeat}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, commit {commit}\n")
    header = "| scheme | " + " | ".join(f"{d} deps: tasks/s (vs leastload)" for d in DEPS) + " |"
    print(header)
    print("|---" * (len(DEPS) + 1) + "|")
    for scheme in SCHEMES:
        cells = []
        for deps in DEPS:
            rate = results[(scheme, deps)]
            share = rate / results[("leastload", deps)]
            cells.append(f"{rate:,.0f} ({share:.0%})")
        print(f"| {scheme} | " + " | ".join(cells) + " |")
    print(json.dumps({f"{s}/{d}": round(r) for (s, d), r in results.items()}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
