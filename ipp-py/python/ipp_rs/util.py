"""Small helpers, as ``ipyparallel.util``: :func:`interactive`, the engine-side helpers of
``push`` / ``pull`` / ``execute``, ISO 8601 dates of message headers read as aware
datetimes, and ``int_keys``.

:func:`get_ipython` answers for our engine's namespace while a Python engine
(:mod:`ipp_rs.engine`) runs (it sets :data:`engine_shell`); elsewhere it is IPython's
``get_ipython`` (``None`` outside IPython). Functions that ipyparallel's client ships by
reference from ``ipyparallel.util`` (``_push``, ``_pull``, ``_execute``) run with this
module's globals on an engine without ipyparallel, so they find the namespace here.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from .serialize.canning import interactive

__all__ = [
    "interactive",
    "get_ipython",
    "ensure_timezone",
    "extract_dates",
    "squash_dates",
    "date_default",
    "compare_datetimes",
    "utcnow",
    "int_keys",
    "ISO8601",
    "ISO8601_PAT",
]

utc = timezone.utc

#: The engine's shell (``user_ns`` / ``user_global_ns``) while ipp_rs's Python engine
#: runs; set by :class:`ipp_rs.engine.kernel.Kernel`.
engine_shell: Optional[Any] = None


def get_ipython() -> Any:
    """The shell whose namespace engine-side helpers use: our engine's while it runs, else
    IPython's current shell (``None`` outside IPython or without IPython)."""
    if engine_shell is not None:
        return engine_shell
    try:
        from IPython import get_ipython as ipython_get_ipython
    except ImportError:
        return None
    return ipython_get_ipython()


def _push(**ns: Any) -> None:
    """Engine side of ``push``: binds each name in the namespace."""
    user_ns = get_ipython().user_global_ns
    tmp = "_IP_PUSH_TMP_"
    while tmp in user_ns:
        tmp = tmp + "_"
    try:
        for name, value in ns.items():
            user_ns[tmp] = value
            exec(f"{name} = {tmp}", user_ns)
    finally:
        user_ns.pop(tmp, None)


def _pull(keys: Any) -> Any:
    """Engine side of ``pull``: evaluates the name(s) in the namespace."""
    user_ns = get_ipython().user_global_ns
    if isinstance(keys, (list, tuple, set)):
        return [eval(key, user_ns) for key in keys]
    return eval(keys, user_ns)


def _execute(code: str) -> None:
    """Engine side of ``execute`` sent as an apply: runs `code` in the namespace."""
    user_ns = get_ipython().user_global_ns
    exec(code, user_ns)


# -- dates ------------------------------------------------------------------------------------

ISO8601 = "%Y-%m-%dT%H:%M:%S.%f"
ISO8601_PAT = re.compile(
    r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,6})?(Z|([\+\-]\d{2}:?\d{2}))?$"
)


def _local_timezone(dt: datetime) -> timezone:
    """The local UTC offset at naive local time `dt`."""
    offset = dt.astimezone().utcoffset() or timedelta(0)
    return timezone(offset)


def ensure_timezone(dt: datetime) -> datetime:
    """`dt` with a timezone: naive datetimes are taken as local time."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=_local_timezone(dt))
    return dt


def _parse_date(s: Optional[str]) -> Any:
    """An ISO 8601 timestamp as an aware datetime (naive ones as local time); anything
    else (including ``None``) unchanged."""
    if s is None:
        return s
    m = ISO8601_PAT.match(s)
    if not m:
        return s
    base, fraction, tz = m.group(1), m.group(2), m.group(3)
    dt = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S")
    if fraction:
        dt = dt.replace(microsecond=int(fraction[1:].ljust(6, "0")))
    if tz is None:
        return ensure_timezone(dt)
    if tz == "Z":
        return dt.replace(tzinfo=utc)
    sign = 1 if tz[0] == "+" else -1
    digits = tz[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return dt.replace(tzinfo=timezone(sign * offset))


def extract_dates(obj: Any) -> Any:
    """ISO 8601 strings in unpacked JSON (dicts, lists, tuples) as aware datetimes."""
    if isinstance(obj, dict):
        return {k: extract_dates(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [extract_dates(o) for o in obj]
    if isinstance(obj, str):
        return _parse_date(obj)
    return obj


# ipyparallel's private name for it.
_extract_dates = extract_dates


def squash_dates(obj: Any) -> Any:
    """Datetimes in `obj` (dicts, lists, tuples) as ISO 8601 strings."""
    if isinstance(obj, dict):
        return {k: squash_dates(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [squash_dates(o) for o in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def date_default(obj: Any) -> Any:
    """``json.dumps(..., default=date_default)``: datetimes as ISO 8601 (naive ones taken
    as local time); other types raise TypeError."""
    if isinstance(obj, datetime):
        return ensure_timezone(obj).isoformat().replace("+00:00", "Z")
    raise TypeError(f"{obj!r} is not JSON serializable")


def compare_datetimes(a: datetime, b: datetime) -> timedelta:
    """``a - b``, taking a naive datetime as local time when the other is aware."""
    if a.tzinfo is None and b.tzinfo is not None:
        a = ensure_timezone(a)
    elif a.tzinfo is not None and b.tzinfo is None:
        b = ensure_timezone(b)
    return a - b


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(utc)


def int_keys(dikt: dict) -> dict:
    """Turns the keys of a dict that JSON made strings back into ints (or floats) where
    they parse; in place, and returned."""
    for k in list(dikt):
        if isinstance(k, str):
            nk: Any = None
            try:
                nk = int(k)
            except ValueError:
                try:
                    nk = float(k)
                except ValueError:
                    continue
            if nk in dikt:
                raise KeyError(f"already have key {nk!r}")
            dikt[nk] = dikt.pop(k)
    return dikt


# When ipyparallel is importable, the helpers a client ships by reference are ipyparallel's,
# so the pickled requests name ``ipyparallel.util`` and a real ipyparallel engine (without
# ipp_rs) runs them (see ipp_rs.serialize on the wire-compatibility policy).
try:
    from ipyparallel import util as _ipp_util
except ImportError:
    _ipp_util = None

if _ipp_util is not None:
    _push = _ipp_util._push  # noqa: F811
    _pull = _ipp_util._pull  # noqa: F811
    _execute = _ipp_util._execute  # noqa: F811
