"""Task dependencies, as ``ipyparallel.controller.dependency``: :class:`Dependency` (a set
of msg_ids a task waits for, sent in the request metadata as ``after`` / ``follow``) and
the function dependencies :func:`depend` / :class:`dependent` / :func:`require` (checked on
the engine before the task runs; an unmet one raises :class:`~ipp_rs.error.UnmetDependency`
and the scheduler tries another engine).

Wire compatibility (see :mod:`ipp_rs.serialize`): a ``dependent`` is pickled (canned) into
the request. When ipyparallel is importable, :func:`depend`, :class:`dependent` and
:func:`require` are ipyparallel's own, so a real ipyparallel engine reads the request;
without it they are ours (same attributes; ``ipp_rs`` is then needed on the engine).
:class:`Dependency` is always ours: it travels as JSON (:meth:`Dependency.as_dict`, the
same encoding as ipyparallel's), and it accepts any AsyncResult (ipp_rs's or
ipyparallel's: anything with ``msg_ids``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Iterable, Optional

from .error import UnmetDependency
from .serialize import can
from .serialize.canning import interactive

__all__ = ["depend", "require", "dependent", "Dependency"]


class depend:
    """Dependency decorator, for use with tasks: ``@depend(df, *args, **kwargs)`` makes the
    engine call ``df(*args, **kwargs)`` before the task; if it returns False or raises
    :class:`~ipp_rs.error.UnmetDependency`, the task is not run there and another engine is
    tried.

    Examples
    --------
    ::

        @depend(df, a, b, c=5)
        def f(m, n, p): ...

        view.apply(f, 1, 2, 3)
    """

    def __init__(self, _wrapped_f: Callable, *args: Any, **kwargs: Any):
        self.f = _wrapped_f
        self.args = args
        self.kwargs = kwargs

    def __call__(self, f: Callable) -> "dependent":
        return dependent(f, self.f, *self.args, **self.kwargs)


class dependent:
    """A function that depends on another function (an object, not a closure, so it
    pickles)."""

    def __init__(self, _wrapped_f: Callable, _wrapped_df: Callable, *dargs: Any, **dkwargs: Any):
        self.f = _wrapped_f
        self.__name__ = getattr(_wrapped_f, "__name__", "f")
        self.df = _wrapped_df
        self.dargs = dargs
        self.dkwargs = dkwargs

    def check_dependency(self) -> None:
        """Raises UnmetDependency when the dependency function returns False."""
        if self.df(*self.dargs, **self.dkwargs) is False:
            raise UnmetDependency()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.f(*args, **kwargs)


@interactive
def _require(*modules: str, **mapping: Any) -> bool:
    """Engine side of :func:`require`: imports the modules into the namespace (an
    ImportError is an unmet dependency) and binds the shipped objects."""
    from ipp_rs.error import UnmetDependency
    from ipp_rs.serialize import uncan

    user_ns = globals()
    for name in modules:
        try:
            exec(f"import {name}", user_ns)
        except ImportError:
            raise UnmetDependency(name)
    for name, cobj in mapping.items():
        user_ns[name] = uncan(cobj, user_ns)
    return True


def require(*objects: Any, **mapping: Any) -> depend:
    """Decorator requiring modules and objects on the engine when the function runs there.

    Modules (or their names) are imported into the engine's namespace first; a module that
    cannot be imported is an unmet dependency. Functions passed positionally are pushed
    under their ``__name__``; other objects are passed by keyword.

    Examples
    --------
    ::

        @ipp.require('numpy')
        def norm(a):
            return numpy.linalg.norm(a, 2)

        foo = lambda x: x * x

        @ipp.require(foo)
        def bar(a):
            return foo(1 - a)
    """
    names = []
    for obj in objects:
        if isinstance(obj, ModuleType):
            obj = obj.__name__
        if isinstance(obj, str):
            names.append(obj)
        elif hasattr(obj, "__name__"):
            mapping[obj.__name__] = obj
        else:
            raise TypeError(
                "Objects other than modules and functions "
                f"must be passed by kwarg, but got: {type(obj)}"
            )
    for name, obj in mapping.items():
        mapping[name] = can(obj)
    return depend(_require, *names, **mapping)


class Dependency(set):
    """A set of msg_id dependencies of a task.

    Parameters
    ----------
    dependencies : list/set of msg_ids or AsyncResults, or the output of :meth:`as_dict`
        The msg_ids to depend on.
    all : bool [default True]
        Met when *all* the tasks have finished (else when *any* has).
    success : bool [default True]
        Successes fulfil the dependency.
    failure : bool [default False]
        Failures fulfil the dependency.

    With ``all=success=True`` and ``failure=False``, the task fails with
    ImpossibleDependency as soon as one task it depends on fails.
    """

    all = True
    success = True
    failure = True

    def __init__(
        self,
        dependencies: Any = (),
        all: bool = True,
        success: bool = True,
        failure: bool = False,
    ):
        if isinstance(dependencies, dict):
            all = dependencies.get("all", True)
            success = dependencies.get("success", success)
            failure = dependencies.get("failure", failure)
            dependencies = dependencies.get("dependencies", [])
        ids: list = []
        if isinstance(dependencies, str) or _is_async_result(dependencies):
            dependencies = [dependencies]
        for d in dependencies:
            if isinstance(d, str):
                ids.append(d)
            elif _is_async_result(d):
                ids.extend(d.msg_ids)
            else:
                raise TypeError(f"invalid dependency type: {type(d)!r}")
        set.__init__(self, ids)
        self.all = all
        if not (success or failure):
            raise ValueError("Must depend on at least one of successes or failures!")
        self.success = success
        self.failure = failure

    def check(self, completed: Iterable[str], failed: Optional[Iterable[str]] = None) -> bool:
        """Whether the dependency is met, given the completed and failed msg_ids."""
        if len(self) == 0:
            return True
        against: set = set()
        if self.success:
            against = set(completed)
        if failed is not None and self.failure:
            against = against.union(failed)
        if self.all:
            return self.issubset(against)
        return not self.isdisjoint(against)

    def unreachable(self, completed: Iterable[str], failed: Optional[Iterable[str]] = None) -> bool:
        """Whether the dependency can no longer be met."""
        if len(self) == 0:
            return False
        against: set = set()
        if not self.success:
            against = set(completed)
        if failed is not None and not self.failure:
            against = against.union(failed)
        if self.all:
            return not self.isdisjoint(against)
        return self.issubset(against)

    def as_dict(self) -> dict:
        """The JSON form sent in request metadata: ``{"dependencies": [...], "all": ...,
        "success": ..., "failure": ...}``."""
        return dict(
            dependencies=list(self),
            all=self.all,
            success=self.success,
            failure=self.failure,
        )


def _is_async_result(obj: Any) -> bool:
    """An AsyncResult of ipp_rs or ipyparallel (anything with a ``msg_ids`` list)."""
    return not isinstance(obj, (str, bytes, dict)) and isinstance(
        getattr(obj, "msg_ids", None), (list, tuple)
    )


# With ipyparallel importable, the canned function dependencies are ipyparallel's (see the
# module docstring).
try:
    from ipyparallel.controller import dependency as _ipp_dependency
except ImportError:
    _ipp_dependency = None

if _ipp_dependency is not None:
    depend = _ipp_dependency.depend  # type: ignore[misc] # noqa: F811
    dependent = _ipp_dependency.dependent  # type: ignore[misc] # noqa: F811
    require = _ipp_dependency.require  # noqa: F811
    _require = _ipp_dependency._require  # noqa: F811
