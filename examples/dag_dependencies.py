#!/usr/bin/env python
"""A random DAG of tasks submitted with `after` dependencies, then checked against the graph.

This is the "DAG Dependencies" demo of the ipyparallel documentation, without NetworkX:
the graph is generated and sorted in plain Python. Each node is a task that sleeps for a
random moment; each edge (a, b) makes b depend on a. Every task is submitted before any
result is read (the scheduler holds the ones whose parents have not finished), and at the
end each task must have *started* after every one of its parents *completed*.

Run it against any controller (ours or ipyparallel's) that has engines:

    python examples/dag_dependencies.py --file ~/.ipython/profile_default/security/ipcontroller-client.json
    python examples/dag_dependencies.py --nodes 200 --edges 600 --seed 3

Exit status 0 when every dependency was respected, 1 otherwise.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import deque

import ipyparallel as ipp


def random_dag(nodes: int, edges: int, rng: random.Random) -> dict[int, set[int]]:
    """A random DAG on `nodes` nodes with `edges` edges, as {node: set of its parents}.

    Edges only go forward in a random ordering of the nodes, so no cycle can form; every
    DAG has such an ordering, so any DAG may come out.
    """
    order = list(range(nodes))
    rng.shuffle(order)
    edges = min(edges, nodes * (nodes - 1) // 2)
    parents: dict[int, set[int]] = {node: set() for node in range(nodes)}
    added = 0
    while added < edges:
        i, j = sorted(rng.sample(range(nodes), 2))
        a, b = order[i], order[j]
        if a not in parents[b]:
            parents[b].add(a)
            added += 1
    return parents


def topological_sort(parents: dict[int, set[int]]) -> list[int]:
    """The nodes, each after all of its parents (Kahn's algorithm)."""
    children: dict[int, list[int]] = {node: [] for node in parents}
    waiting = {node: len(ps) for node, ps in parents.items()}
    for node, ps in parents.items():
        for parent in ps:
            children[parent].append(node)
    ready = deque(sorted(node for node, n in waiting.items() if n == 0))
    order = []
    while ready:
        node = ready.popleft()
        order.append(node)
        for child in children[node]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(order) != len(parents):
        raise ValueError("the graph has a cycle")
    return order


@ipp.interactive  # sent by value, so engines need not import this script
def randomwait(limit: float) -> float:
    """The task: sleep for a random moment below `limit` seconds."""
    import random
    import time

    t = random.random() * limit
    time.sleep(t)
    return t


def submit_dag(view, parents: dict[int, set[int]], limit: float) -> dict:
    """Submits every node with `after` = its parents' results; returns {node: AsyncResult}."""
    results = {}
    for node in topological_sort(parents):
        deps = [results[parent] for parent in parents[node]]
        with view.temp_flags(after=deps, block=False):
            results[node] = view.apply(randomwait, limit)
    return results


def validate_tree(parents: dict[int, set[int]], results: dict) -> list[str]:
    """Every violation of "a task starts after all its parents completed"."""
    problems = []
    for node, ps in parents.items():
        started = results[node].metadata.started
        for parent in ps:
            completed = results[parent].metadata.completed
            if not started > completed:
                problems.append(
                    f"{node} started at {started}, before its parent {parent} "
                    f"completed at {completed}"
                )
    return problems


def run(client, nodes: int, edges: int, seed: int, limit: float) -> tuple[dict, list[str]]:
    """Generates, submits and validates one DAG; returns the graph and the violations."""
    rng = random.Random(seed)
    parents = random_dag(nodes, edges, rng)
    view = client.load_balanced_view()
    results = submit_dag(view, parents, limit)
    view.wait(list(results.values()))
    for result in results.values():
        result.get()  # raises if a task failed
    return parents, validate_tree(parents, results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", help="the controller's ipcontroller-client.json")
    parser.add_argument("--profile", default=None, help="IPython profile (instead of --file)")
    parser.add_argument("--nodes", type=int, default=128)
    parser.add_argument("--edges", type=int, default=384)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--max-wait", type=float, default=0.02, help="longest sleep of one task, seconds"
    )
    args = parser.parse_args(argv)

    client = ipp.Client(args.file) if args.file else ipp.Client(profile=args.profile)
    try:
        client.wait_for_engines(1, timeout=60)
        engines = len(client.ids)
        began = time.monotonic()
        parents, problems = run(client, args.nodes, args.edges, args.seed, args.max_wait)
        elapsed = time.monotonic() - began
    finally:
        client.close()
    edge_count = sum(len(ps) for ps in parents.values())
    print(
        f"{len(parents)} tasks, {edge_count} dependencies, {engines} engines: "
        f"{elapsed:.2f} s"
    )
    for problem in problems:
        print("violation:", problem)
    print("dependencies respected" if not problems else f"{len(problems)} violations")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
