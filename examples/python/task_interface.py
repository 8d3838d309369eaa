#!/usr/bin/env python
"""The seeds' examples of the client API, in order, ported by changing one import line.

Each section replays one part of the ipyparallel documentation (the seeds), with the
documentation's own names, and checks what the documentation says comes out:

1. "Overview and getting started": ``rc.block = True``, ``rc[0].apply(mul, 5, 6)``,
   ``rc[:].apply``, a load-balanced ``map``.
2. "Transitioning from IPython.kernel": ``execute`` on a subset of engines, ``Reference``,
   non-blocking ``pull`` and ``ar.r``.
3. "The IPython task interface": parallel ``map``, the ``@parallel`` decorator, ``@require``
   (modules and objects), ``@depend``, graph dependencies (``after``, ``follow``,
   ``timeout``), ``Dependency`` with ``success``/``failure``, impossible dependencies,
   ``retries``, ``resubmit``.
4. "The AsyncResult object": ``get_dict`` and the pid map, timing (``elapsed``,
   ``progress``, ``serial_time``, ``wall_time``), ``wait_interactive``, map results as
   iterables (ordered, chunked, unordered), the one-line RMS with ``reduce``.

    python examples/python/task_interface.py --file path/to/ipcontroller-client.json

Needs at least two engines. The only line that differs from the ipyparallel version is the
import below (the tests also run this script with it changed back to
``import ipyparallel as ipp``). Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import reduce
from math import sqrt

import ipp_rs as ipp

FAILED: list[str] = []


def check(what: str, ok: bool, detail: object = "") -> None:
    """Prints one check; remembers the failures for the exit status."""
    print(f"  [{'ok' if ok else 'FAILED'}] {what}{'' if ok else f': {detail}'}")
    if not ok:
        FAILED.append(what)


def raises_remote(call, ename: str) -> tuple[bool, str]:
    """Whether `call()` raised an ipyparallel error whose remote name is `ename`."""
    try:
        value = call()
    except ipp.error.KernelError as exc:
        got = getattr(exc, "ename", type(exc).__name__)
        return got == ename, f"raised {got}"
    return False, f"returned {value!r}"


# -- 1. Overview and getting started ------------------------------------------------------------


def mul(a, b):
    return a * b


def getting_started(rc) -> None:
    print("1. getting started")
    rc.block = True
    check("rc.ids lists the engines", len(rc.ids) >= 2, rc.ids)
    check("rc[0].apply(mul, 5, 6)", rc[0].apply(mul, 5, 6) == 30)
    check("rc[:].apply(mul, 5, 6)", rc[:].apply(mul, 5, 6) == [30] * len(rc.ids))
    view = rc.load_balanced_view()
    expected = list(map(mul, range(1, 10), range(2, 11)))
    got = view.map(mul, range(1, 10), range(2, 11))
    check("load-balanced view.map(mul, ...)", got == expected, got)
    rc.block = False


# -- 2. Transitioning from IPython.kernel ----------------------------------------------------


def transition(rc) -> None:
    import numpy

    print("2. transition from IPython.kernel")
    dview = rc[:]
    lbview = rc.load_balanced_view()
    rc[0, 1].execute("a=5", block=True)
    check("rc[0, 1].execute('a=5')", dview.pull("a", targets=[0, 1], block=True) == [5, 5])
    ar = dview.pull("a", targets=[0, 1], block=False)
    check("non-blocking pull, ar.r", ar.r == [5, 5])
    A = numpy.arange(4.0).reshape(2, 2)
    B = numpy.eye(2) * 2
    dview.push({"A": A}, block=True)
    ar = lbview.apply(numpy.dot, ipp.Reference("A"), B)
    C = ar.get()
    check("lbview.apply(numpy.dot, Reference('A'), B)", numpy.array_equal(C, A @ B), C)


# -- 3. The task interface ------------------------------------------------------------------------


def foo(a):
    return a * a


def platform_specific(plat):
    import sys

    return sys.platform == plat


def randomwait():
    import random
    import time

    time.sleep(random.random() * 0.05)
    return "waited"


def fail():
    raise ValueError("this task fails")


def where():
    return ENGINE_ID  # noqa: F821 - set on each engine below


def fails_on_flagged_engine():
    if FAIL_HERE:  # noqa: F821 - set on each engine below
        raise RuntimeError("this engine is flagged to fail")
    return ENGINE_ID  # noqa: F821


def task_interface(rc) -> None:
    print("3. the task interface")
    for engine_id in rc.ids:
        rc[engine_id].execute(f"ENGINE_ID = {engine_id}", block=True)
    lview = rc.load_balanced_view()

    lview.block = True
    serial_result = list(map(lambda x: x**10, range(32)))
    parallel_result = lview.map(lambda x: x**10, range(32))
    check("parallel map == serial map", serial_result == parallel_result)

    @lview.parallel()
    def f(x):
        return 10.0 * x**4

    expected = [10.0 * x**4 for x in range(32)]
    check("@lview.parallel() f.map(range(32))", f.map(range(32)) == expected)

    @ipp.require("numpy", "zmq")
    def myfunc():
        return numpy.__name__, zmq.__name__  # noqa: F821 - imported by @require

    check("@require('numpy', 'zmq')", lview.apply_sync(myfunc) == ("numpy", "zmq"))

    @ipp.require(foo)
    def bar(b):
        return foo(b)

    @ipp.require(bar)
    def baz(c, d):
        return bar(c) - bar(d)

    check("@require(foo), @require(bar): view.apply_sync(baz, 4, 5)",
          lview.apply_sync(baz, 4, 5) == -9)

    @ipp.depend(platform_specific, sys.platform)
    def mytask():
        import sys

        return sys.platform

    check("@depend(platform_specific, sys.platform)", lview.apply_sync(mytask) == sys.platform)

    lview.block = False
    ar = lview.apply(randomwait)
    ar2 = lview.apply(randomwait)
    with lview.temp_flags(after=[ar, ar2]):
        ar3 = lview.apply(randomwait)
    with lview.temp_flags(follow=[ar], timeout=2.5):
        ar4 = lview.apply(where)
    ar3.get(timeout=60)
    started = ar3.metadata.started
    check(
        "after=[ar, ar2] starts after both completed",
        started >= ar.metadata.completed and started >= ar2.metadata.completed,
    )
    check("follow=[ar] runs where ar ran", ar4.get(timeout=60) == ar.engine_id)

    failing = lview.apply(fail)
    with lview.temp_flags(after=ipp.Dependency([failing], success=False, failure=True)):
        cleanup = lview.apply(randomwait)
    with lview.temp_flags(after=ipp.Dependency([failing], success=True, failure=True)):
        either = lview.apply(randomwait)
    with lview.temp_flags(after=[failing]):
        impossible = lview.apply(randomwait)
    check("cleanup task runs after a failure", cleanup.get(timeout=60) == "waited")
    check("success=failure=True runs after a failure", either.get(timeout=60) == "waited")
    ok, detail = raises_remote(lambda: impossible.get(timeout=60), "ImpossibleDependency")
    check("after a failed task: ImpossibleDependency", ok, detail)

    flagged = rc.ids[0]
    for engine_id in rc.ids:
        rc[engine_id].execute(f"FAIL_HERE = {engine_id == flagged}", block=True)
    with lview.temp_flags(retries=len(rc.ids)):
        retried = [lview.apply(fails_on_flagged_engine) for _ in range(4)]
    got = [r.get(timeout=60) for r in retried]
    check("retries move a failed task to another engine", flagged not in got, got)
    rc[:].execute("FAIL_HERE = False", block=True)

    done = lview.apply(mul, 6, 7)
    done.get(timeout=60)
    again = rc.resubmit(done.msg_ids)
    check("rc.resubmit(msg_ids)", again.get(timeout=60) == [42])


# -- 4. The AsyncResult object ----------------------------------------------------------------


def sleep_here(t):
    import time

    time.sleep(t)
    return id, t  # `id` is the scattered engine index below


def async_results(rc) -> None:
    import numpy as np

    print("4. the AsyncResult object")
    ar = rc[:].apply_async(os.getpid)
    pids = ar.get_dict()
    rc[:]["pid_map"] = pids
    check("get_dict keyed by engine id", sorted(pids) == sorted(rc.ids), pids)
    check("rc[:]['pid_map'] = pids", rc[0]["pid_map"] == pids)

    dv = rc[:]
    # scatter 'id', so id=0,1,2 on engines 0,1,2
    dv.scatter("id", rc.ids, flatten=True)
    check("dv['id'] is each engine's index", dv["id"] == rc.ids, dv["id"])
    ref = ipp.Reference("id")
    tic = time.time()
    ar = dv.apply(time.sleep, ref)
    lap = []
    for i, r in enumerate(ar):
        lap.append(time.time() - tic)
    check("dv.apply(time.sleep, Reference('id')) iterates", len(lap) == len(rc.ids))

    v = rc.load_balanced_view()
    amr = v.map(sleep_here, [0.01] * 8)
    check("ar.elapsed while pending", amr.elapsed >= 0)
    amr.wait_interactive(interval=0.05)
    check("ar.progress counts finished tasks", amr.progress == len(amr) == 8)
    speedup = amr.serial_time / amr.wall_time
    print(f"  serial_time {amr.serial_time:.3f} s, wall_time {amr.wall_time:.3f} s, "
          f"speedup {speedup:.2f}")
    check("serial_time and wall_time", amr.serial_time > 0 and amr.wall_time > 0)

    times = [0.001 * t for t in range(40)]
    amr = v.map(sleep_here, times)
    got = [t for _, t in amr]
    check("map result iterable, one call per task", got == times)
    amr = v.map(sleep_here, times, chunksize=4)
    got = [t for _, t in amr]
    check("map result iterable, chunksize=4", got == times and len(amr.msg_ids) == 10)
    backwards = [0.001 * t for t in range(40, 0, -1)]
    amr = v.map(sleep_here, backwards, ordered=False, chunksize=2)
    got = [t for _, t in amr]
    check("ordered=False yields every result", sorted(got) == sorted(backwards))
    check("map results carry the engine index", {e for e, _ in amr} <= set(rc.ids))

    X = np.linspace(0, 100)
    add = lambda a, b: a + b  # noqa: E731 - as in the documentation
    sq = lambda x: x * x  # noqa: E731
    local = sqrt(reduce(add, map(sq, X)) / len(X))
    remote = sqrt(reduce(add, v.map(sq, X)) / len(X))
    check("one-line RMS with reduce over view.map", abs(remote - local) < 1e-9 and
          abs(local - 58.028845747399714) < 1e-9, (local, remote))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", help="the controller's ipcontroller-client.json")
    parser.add_argument("--profile", default=None, help="IPython profile (instead of --file)")
    args = parser.parse_args(argv)
    rc = ipp.Client(args.file) if args.file else ipp.Client(profile=args.profile)
    try:
        rc.wait_for_engines(2, timeout=60)
        t0 = time.perf_counter()
        getting_started(rc)
        transition(rc)
        task_interface(rc)
        async_results(rc)
        elapsed = time.perf_counter() - t0
    finally:
        rc.close()
    if FAILED:
        print(f"{len(FAILED)} checks FAILED: {', '.join(FAILED)}")
        return 1
    print(f"all checks passed ({elapsed:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
