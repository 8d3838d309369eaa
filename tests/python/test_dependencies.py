"""Load-balanced tasks with dependencies, through the real ipyparallel client and real
`ipengine`s: graph dependencies (`after`, `follow` with all/any and success/failure),
invalid and impossible dependencies, `timeout`, `retries`, functional dependencies
(`@ipp.require`, `@ipp.depend`) and the documentation's random DAG.

Runs against our controller and the reference one (``IPP_TEST_CONTROLLER``). Where the two
differ by design, the test says so and checks each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ipyparallel as ipp
import pytest
from ipyparallel import error

from ippcluster import REPO_ROOT, controller_under_test

# Limits on hanging, not timing assertions.
DEADLINE = 60


@ipp.interactive
def wait_and_return(seconds, value):
    import time

    time.sleep(seconds)
    return value


@ipp.interactive
def fail_with(message):
    raise ValueError(message)


@ipp.interactive
def engine_id_here():
    return globals().get("ENGINE_ID_FOR_TEST")


@ipp.interactive
def fails_where_flagged():
    if globals().get("FAIL_HERE_FOR_RETRIES"):
        raise RuntimeError("this engine is flagged to fail")
    return globals().get("ENGINE_ID_FOR_TEST")


@pytest.fixture(scope="module")
def lview(rc):
    """A load-balanced view, after each engine learned its own id in its namespace."""
    for engine_id in rc.ids:
        rc[engine_id].execute(f"ENGINE_ID_FOR_TEST = {engine_id}", block=True)
    return rc.load_balanced_view()


def remote_ename(excinfo) -> str:
    value = excinfo.value
    return getattr(value, "ename", type(value).__name__)


def get_error(ar) -> str:
    """The ename a failed task's `get` raises."""
    with pytest.raises(error.KernelError) as excinfo:
        ar.get(timeout=DEADLINE)
    return remote_ename(excinfo)


# ---- graph dependencies ------------------------------------------------------------------


def test_after_all_waits_for_every_parent(lview):
    p1 = lview.apply_async(wait_and_return, 0.3, "p1")
    p2 = lview.apply_async(wait_and_return, 0.1, "p2")
    with lview.temp_flags(after=[p1, p2]):
        child = lview.apply_async(wait_and_return, 0, "child")
    assert child.get(timeout=DEADLINE) == "child"
    started = child.metadata.started
    assert started > p1.metadata.completed
    assert started > p2.metadata.completed


def test_after_any_runs_after_the_first_parent(lview):
    slow = lview.apply_async(wait_and_return, 2, "slow")
    fast = lview.apply_async(wait_and_return, 0, "fast")
    with lview.temp_flags(after=ipp.Dependency([slow, fast], all=False)):
        child = lview.apply_async(wait_and_return, 0, "child")
    assert child.get(timeout=DEADLINE) == "child"
    assert child.metadata.started > fast.metadata.completed
    slow.get(timeout=DEADLINE)


def test_failure_dependencies(lview):
    parent = lview.apply_async(fail_with, "parent fails")
    on_failure = ipp.Dependency([parent], success=False, failure=True)
    either = ipp.Dependency([parent], success=True, failure=True)
    with lview.temp_flags(after=on_failure):
        runs_on_failure = lview.apply_async(wait_and_return, 0, "ran after a failure")
    with lview.temp_flags(after=either):
        runs_either_way = lview.apply_async(wait_and_return, 0, "ran either way")
    with lview.temp_flags(after=[parent]):
        needs_success = lview.apply_async(wait_and_return, 0, "never")
    assert get_error(parent) == "ValueError"
    assert runs_on_failure.get(timeout=DEADLINE) == "ran after a failure"
    assert runs_either_way.get(timeout=DEADLINE) == "ran either way"
    assert get_error(needs_success) == "ImpossibleDependency"

    # A failure-only dependency on a success can never be met either.
    ok = lview.apply_async(wait_and_return, 0, "ok")
    ok.get(timeout=DEADLINE)
    with lview.temp_flags(after=ipp.Dependency([ok], success=False, failure=True)):
        needs_failure = lview.apply_async(wait_and_return, 0, "never")
    assert get_error(needs_failure) == "ImpossibleDependency"


def test_follow_runs_where_the_parent_ran(lview):
    parent = lview.apply_async(engine_id_here)
    where = parent.get(timeout=DEADLINE)
    with lview.temp_flags(follow=[parent]):
        children = [lview.apply_async(engine_id_here) for _ in range(6)]
    assert [c.get(timeout=DEADLINE) for c in children] == [where] * 6


def test_follow_any_and_follow_all_across_engines(rc, lview):
    a, b = rc.ids[:2]
    with lview.temp_flags(targets=[a]):
        on_a = lview.apply_async(engine_id_here)
    with lview.temp_flags(targets=[b]):
        on_b = lview.apply_async(engine_id_here)
    assert (on_a.get(timeout=DEADLINE), on_b.get(timeout=DEADLINE)) == (a, b)
    with lview.temp_flags(follow=ipp.Dependency([on_a, on_b], all=False)):
        anywhere = [lview.apply_async(engine_id_here) for _ in range(4)]
    assert {r.get(timeout=DEADLINE) for r in anywhere} <= {a, b}
    # Following both, on two different engines, can never happen.
    with lview.temp_flags(follow=[on_a, on_b]):
        impossible = lview.apply_async(engine_id_here)
    assert get_error(impossible) == "ImpossibleDependency"


def test_invalid_dependency_on_an_unknown_msg_id(lview):
    with lview.temp_flags(after=["no-such-msg-id"]):
        ar = lview.apply_async(wait_and_return, 0, "never")
    assert get_error(ar) == "InvalidDependency"
    with lview.temp_flags(follow=["no-such-msg-id"]):
        ar = lview.apply_async(wait_and_return, 0, "never")
    assert get_error(ar) == "InvalidDependency"


def test_impossible_dependency_on_a_failed_task(lview):
    failed = lview.apply_async(fail_with, "dead end")
    assert get_error(failed) == "ValueError"
    with lview.temp_flags(after=[failed]):
        ar = lview.apply_async(wait_and_return, 0, "never")
    assert get_error(ar) == "ImpossibleDependency"
    with lview.temp_flags(follow=[failed]):
        ar = lview.apply_async(wait_and_return, 0, "never")
    assert get_error(ar) == "ImpossibleDependency"


def test_dependencies_on_tasks_of_another_client(cluster, lview):
    other = cluster.client()
    other.wait_for_engines(2, timeout=DEADLINE)
    # Another client's task must reach the scheduler before ours names it (the two clients'
    # sockets are not ordered): let it finish, then depend on it by msg_id, both ways.
    theirs = other.load_balanced_view().apply_async(wait_and_return, 0, "theirs")
    assert theirs.get(timeout=DEADLINE) == "theirs"
    theirs_failed = other.load_balanced_view().apply_async(fail_with, "theirs failed")
    assert get_error(theirs_failed) == "ValueError"
    with lview.temp_flags(after=[theirs.msg_ids[0]]):
        mine = lview.apply_async(wait_and_return, 0, "mine")
    assert mine.get(timeout=DEADLINE) == "mine"
    assert mine.metadata.started > theirs.metadata.completed
    with lview.temp_flags(after=[theirs_failed.msg_ids[0]]):
        impossible = lview.apply_async(wait_and_return, 0, "never")
    assert get_error(impossible) == "ImpossibleDependency"


def test_timeout_fails_a_task_whose_dependency_does_not_finish_in_time(lview):
    slow = lview.apply_async(wait_and_return, 3, "slow")
    with lview.temp_flags(after=[slow], timeout=0.5):
        child = lview.apply_async(wait_and_return, 0, "never")
    assert get_error(child) == "TaskTimeout"
    assert not slow.ready(), "the timeout covers waiting only, not the running parent"
    assert slow.get(timeout=DEADLINE) == "slow"


# ---- retries and functional dependencies -----------------------------------------------


def test_retries_move_a_failed_task_to_another_engine(rc, lview):
    bad, good = rc.ids[:2]
    rc[bad].execute("FAIL_HERE_FOR_RETRIES = True", block=True)
    try:
        with lview.temp_flags(retries=1):
            results = [lview.apply_async(fails_where_flagged) for _ in range(6)]
        assert [r.get(timeout=DEADLINE) for r in results] == [good] * 6
        # Without retries, the flagged engine's failures reach the client.
        with lview.temp_flags(targets=[bad]):
            no_retry = lview.apply_async(fails_where_flagged)
        assert get_error(no_retry) == "RuntimeError"
    finally:
        rc[bad].execute("FAIL_HERE_FOR_RETRIES = False", block=True)


@pytest.fixture(scope="module")
def module_on_one_engine(rc, tmp_path_factory):
    """A module importable on the second engine only."""
    path = tmp_path_factory.mktemp("only_on_one")
    (path / "ipp_dep_only_here.py").write_text("WHERE = 'the one engine that has me'\n")
    engine = rc.ids[1]
    rc[engine].execute(f"import sys; sys.path.insert(0, {str(path)!r})", block=True)
    return engine


@ipp.require("ipp_dep_only_here")
@ipp.interactive
def where_is_it():
    import ipp_dep_only_here

    return ipp_dep_only_here.WHERE, globals().get("ENGINE_ID_FOR_TEST")


@ipp.require("ipp_no_engine_has_this_module")
@ipp.interactive
def never_runs():
    return "ran"


def test_require_routes_to_the_engine_that_has_the_module(lview, module_on_one_engine):
    results = [lview.apply_async(where_is_it) for _ in range(6)]
    for r in results:
        assert r.get(timeout=DEADLINE) == ("the one engine that has me", module_on_one_engine)


def test_require_of_a_module_no_engine_has(lview):
    """Ours fails the task as soon as every engine refused it; the reference keeps it
    queued until its timeout."""
    with lview.temp_flags(timeout=3):
        ar = lview.apply_async(never_runs)
    expected = "ImpossibleDependency" if controller_under_test() == "ours" else "TaskTimeout"
    assert get_error(ar) == expected


@ipp.interactive
def has_special_state():
    return bool(globals().get("SPECIAL_STATE_FOR_DEPEND"))


@ipp.depend(has_special_state)
@ipp.interactive
def where_special():
    return globals().get("ENGINE_ID_FOR_TEST")


def test_depend_on_engine_local_state(rc, lview):
    special = rc.ids[0]
    rc[special].execute("SPECIAL_STATE_FOR_DEPEND = True", block=True)
    try:
        results = [lview.apply_async(where_special) for _ in range(6)]
        assert [r.get(timeout=DEADLINE) for r in results] == [special] * 6
    finally:
        rc[special].execute("SPECIAL_STATE_FOR_DEPEND = False", block=True)


# ---- the documentation's DAG -----------------------------------------------------------


def load_example():
    import importlib.util

    path = REPO_ROOT / "examples" / "dag_dependencies.py"
    spec = importlib.util.spec_from_file_location("dag_dependencies", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_dag_helpers_make_a_dag_and_sort_it():
    import random

    dag = load_example()
    parents = dag.random_dag(50, 400, random.Random(5))
    assert sum(len(ps) for ps in parents.values()) == 400
    order = dag.topological_sort(parents)
    position = {node: i for i, node in enumerate(order)}
    assert all(position[p] < position[n] for n, ps in parents.items() for p in ps)


def test_a_random_dag_of_120_tasks_runs_in_dependency_order(rc):
    dag = load_example()
    parents, problems = dag.run(rc, nodes=120, edges=360, seed=11, limit=0.01)
    assert len(parents) == 120
    assert problems == []


def test_the_dag_example_runs_as_a_script(cluster):
    script = Path(REPO_ROOT) / "examples" / "dag_dependencies.py"
    done = subprocess.run(
        [sys.executable, str(script), "--file", str(cluster.client_file), "--nodes", "100",
         "--edges", "250", "--seed", "2"],
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        env={**os.environ, **cluster.env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dependencies respected" in done.stdout


# ---- dependencies across a controller restart ------------------------------------------


def test_dependencies_on_tasks_finished_before_a_controller_restart():
    """Ours finds the finished tasks in the task database; the reference scheduler knows
    only the ids it saw itself, so to it they are InvalidDependency."""
    from ippcluster import Cluster

    cluster = Cluster(extra_args=("--sqlitedb",))
    try:
        cluster.start(engines=1)
        rc = cluster.client()
        rc.wait_for_engines(1, timeout=DEADLINE)
        view = rc.load_balanced_view()
        ok = view.apply_async(wait_and_return, 0, "before the restart")
        assert ok.get(timeout=DEADLINE) == "before the restart"
        failed = view.apply_async(fail_with, "failed before the restart")
        assert get_error(failed) == "ValueError"
        ok_id, failed_id = ok.msg_ids[0], failed.msg_ids[0]

        # Stop everything but the profile directory (and so tasks.db), then restart.
        for client in cluster.clients:
            client.close(linger=0)
        cluster.clients.clear()
        cluster.remember_children()
        cluster._terminate(cluster.engines, [], 10)
        cluster._terminate([cluster.controller], [], 15)
        cluster.extra_args = ("--sqlitedb", "--restore")
        cluster.controller_log = cluster.tmp / "controller-restarted.log"
        cluster.start_controller()
        cluster.start_engine()
        rc = cluster.client()
        rc.wait_for_engines(1, timeout=DEADLINE)
        view = rc.load_balanced_view()

        with view.temp_flags(after=[ok_id]):
            after_ok = view.apply_async(wait_and_return, 0, "after the restart")
        with view.temp_flags(after=[failed_id]):
            after_failed = view.apply_async(wait_and_return, 0, "never")
        with view.temp_flags(after=ipp.Dependency([failed_id], success=False, failure=True)):
            on_failure = view.apply_async(wait_and_return, 0, "ran after the old failure")
        if controller_under_test() == "ours":
            assert after_ok.get(timeout=DEADLINE) == "after the restart"
            assert get_error(after_failed) == "ImpossibleDependency"
            assert on_failure.get(timeout=DEADLINE) == "ran after the old failure"
        else:
            for ar in (after_ok, after_failed, on_failure):
                assert get_error(ar) == "InvalidDependency"
    finally:
        cluster.stop()
