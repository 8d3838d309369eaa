"""ipp_rs's pure-Python foundation against ipyparallel 9.2.0: ``ipp_rs.serialize`` (canning,
message layout, zero-copy buffers, wire compatibility both ways, with and without
ipyparallel importable), ``ipp_rs.error``, ``ipp_rs.dependency`` and ``ipp_rs.util``.

The tests process has ipyparallel installed (so ipp_rs delegates canning to it); the
"without ipyparallel" cases run in subprocesses where a ``sys.meta_path`` finder refuses
``ipyparallel`` (see blockipp.py).
"""

from __future__ import annotations

import functools
import json
import pickle
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import ipyparallel as ipp
import ipyparallel.error as ipp_error
import ipyparallel.serialize as ipp_serialize
import ipyparallel.util as ipp_util
import numpy as np
import pytest
from ipyparallel.controller import dependency as ipp_dependency

import ipp_rs.dependency as rs_dependency
import ipp_rs.error as rs_error
import ipp_rs.serialize as rs
import ipp_rs.util as rs_util
from blockipp import blocking_env

TIMEOUT = 120


# -- helpers ----------------------------------------------------------------------------------


def main_function(f):
    """`f` shipped by value (module ``__main__``), keeping its closure."""
    f.__module__ = "__main__"
    return f


def round_trip(obj, g=None, **kwargs):
    bufs = rs.serialize_object(obj, **kwargs)
    out, rest = rs.deserialize_object(bufs, g)
    assert rest == []
    return out


def as_bytes(bufs):
    return [bytes(b) for b in bufs]


def assert_same(a, b):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, (list, tuple)) and not isinstance(a, str):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert type(a) is type(b) and sorted(a) == sorted(b)
        for k in a:
            assert_same(a[k], b[k])
    else:
        assert a == b


ARRAYS = {
    "int8": np.arange(-50, 50, dtype=np.int8),
    "uint16_2d": np.arange(2000, dtype=np.uint16).reshape(40, 50),
    "float64_3d": np.linspace(0, 1, 3 * 4 * 100).reshape(3, 4, 100),
    "float32_small": np.arange(5, dtype=np.float32),
    "complex128": np.arange(300) * (1 + 2j),
    "bool": np.arange(2000) % 3 == 0,
    "big_endian": np.arange(1000, dtype=">i4"),
    "structured": np.array(
        [(i, i * 0.5, b"ab") for i in range(200)],
        dtype=[("a", "<i4"), ("b", "<f8"), ("c", "S2")],
    ),
    "fortran": np.asfortranarray(np.arange(3000.0).reshape(30, 100)),
    "strided": np.arange(10_000)[::3],
    "transposed": np.arange(6000).reshape(60, 100).T,
    "empty": np.zeros((0, 4)),
    "zero_d": np.array(3.5),
    "object": np.array([1, "two", None], dtype=object),
    "unicode": np.array(["alpha", "beta", "gamma"] * 100),
}


# -- delegation policy ------------------------------------------------------------------------


def test_with_ipyparallel_importable_the_canning_is_ipyparallels():
    from ipyparallel.serialize import canning as ipp_canning

    assert rs.IPYPARALLEL is True
    for name in (
        "CannedObject", "Reference", "CannedCell", "CannedFunction", "CannedPartial",
        "CannedClass", "CannedArray", "CannedBytes", "CannedMemoryView", "CannedBuffer",
        "can", "uncan", "can_map", "uncan_map",
    ):
        assert getattr(rs, name) is getattr(ipp_canning, name), name
    assert rs.Reference is ipp.Reference
    # The helpers shipped by reference name ipyparallel's modules, so ipengine reads them.
    assert rs_util._push is ipp_util._push
    assert rs_dependency.dependent is ipp_dependency.dependent
    assert rs_dependency.require is ipp_dependency.require


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_numpy_arrays_round_trip(name):
    arr = ARRAYS[name]
    out = round_trip(arr)
    assert_same(arr, out)
    # inside containers too
    out_list = round_trip([arr, 1])
    assert_same([arr, 1], out_list)


def test_large_buffers_travel_separately_without_copies():
    blob = b"x" * 10_000
    bufs = rs.serialize_object(blob)
    assert len(bufs) == 2 and bufs[1] is blob

    view = memoryview(bytearray(b"y" * 5000))
    bufs = rs.serialize_object(view)
    assert bufs[1] is view
    out = round_trip(view)
    assert isinstance(out, memoryview) and out.tobytes() == b"y" * 5000

    arr = np.arange(10_000, dtype=np.float64)
    bufs = rs.serialize_object(arr)
    assert isinstance(bufs[1], memoryview) and bufs[1].obj is arr
    # Reading makes views of the received buffer, not copies.
    frame = bytearray(bufs[1].tobytes())
    out, _ = rs.deserialize_object([bufs[0], memoryview(frame)])
    assert np.shares_memory(out, np.frombuffer(frame, dtype=np.uint8))
    np.testing.assert_array_equal(out, arr)

    # A non-contiguous array is made contiguous once.
    strided = np.arange(20_000.0)[::2]
    bufs = rs.serialize_object(strided)
    assert bufs[1].obj is not strided and bufs[1].c_contiguous

    # Small ones go inside the pickle.
    assert len(rs.serialize_object(b"small")) == 1
    assert len(rs.serialize_object(memoryview(b"small"))) == 1
    assert round_trip(memoryview(b"small")).tobytes() == b"small"
    # buffer_threshold decides
    assert len(rs.serialize_object(b"x" * 100, buffer_threshold=50)) == 2


def test_containers_round_trip_with_their_buffers():
    big = b"b" * 3000
    arr = np.arange(500)
    obj = [1, "two", (3.0, None), {"k": [1, 2]}, {4, 5}, big, arr, memoryview(b"m" * 2000)]
    bufs = rs.serialize_object(obj)
    assert len(bufs) == 4  # the pickle + 3 large buffers
    out = round_trip(obj)
    assert out[:6] == obj[:6]
    np.testing.assert_array_equal(out[6], arr)
    assert out[7].tobytes() == b"m" * 2000
    assert round_trip((1, big)) == (1, big)
    assert round_trip({1, 2, 3}) == {1, 2, 3}

    d = {"b": big, "a": arr, "c": {"nested": [1, 2]}}
    bufs = rs.serialize_object(d)
    # dict values canned in sorted key order
    assert bufs[1].obj is arr and bufs[2] is big
    out = round_trip(d)
    assert out["b"] == big and out["c"] == {"nested": [1, 2]}

    # containers of item_threshold items or more are pickled whole
    many = list(range(100)) + [big]
    assert len(rs.serialize_object(many)) == 1
    assert round_trip(many) == many
    many_dict = {i: i for i in range(100)}
    assert round_trip(many_dict) == many_dict
    assert len(rs.serialize_object([big, big], item_threshold=2)) == 1


def test_functions_round_trip():
    g = {"scale": 10}

    @rs_util.interactive
    def uses_global(x, *, extra=1):
        return x * scale + extra  # noqa: F821 - from the namespace

    f = round_trip(uses_global, g)
    assert f(2) == 21 and f(2, extra=0) == 20
    assert f.__globals__ is g

    offset = 5

    @main_function
    def closure(x: int = 3) -> int:
        return x + offset

    f = round_trip(closure, {})
    assert f() == 8 and f(1) == 6
    assert f.__annotations__ == closure.__annotations__ == {"x": "int", "return": "int"}

    square = main_function(lambda x: x * x)
    assert round_trip(square, {})(7) == 49

    partial = functools.partial(main_function(lambda a, b, c: (a + b, len(c))), 1, c=b"c" * 2000)
    bufs = rs.serialize_object(partial)
    assert len(bufs) == 2  # the partial's large argument travels as a buffer
    p = round_trip(partial, {})
    assert isinstance(p, functools.partial) and p(2) == (3, 2000)

    # Functions of importable modules are shipped by value too, rebuilt with the globals
    # of their module on the receiving side.
    f = round_trip(json.dumps, {})
    assert f is not json.dumps and f.__globals__ is json.__dict__
    assert f([1], indent=None) == "[1]"


def test_classes_from_main_are_shipped_by_value():
    class Point:
        dims = 2

        def __init__(self, x):
            self.x = x

        def double(self):
            return type(self)(self.x * 2)

    Point.__module__ = "__main__"
    g = {}
    cls = round_trip(Point, g)
    g["Point"] = cls
    assert cls is not Point and cls.__name__ == "Point" and cls.dims == 2
    assert cls(3).double().x == 6
    # Other classes travel by reference.
    assert round_trip(datetime) is datetime


def test_references_are_evaluated_in_the_namespace():
    ref = rs.Reference("a + b")
    assert repr(ref) == "<Reference: 'a + b'>"
    assert round_trip(ref, {"a": 1, "b": 2}) == 3
    assert round_trip([ref, {"k": ref}], {"a": 1, "b": 2}) == [3, {"k": 3}]
    with pytest.raises(TypeError):
        rs.Reference(3)


def test_apply_messages_have_ipyparallels_layout_byte_for_byte():
    k = 3

    @main_function
    def f(x, *, y=2):
        return x + k

    args = (
        np.arange(100.0).reshape(10, 10).T,
        b"x" * 5000,
        memoryview(b"z" * 2000),
        [1, (2, 3), {"a": {4}}],
        rs.Reference("k"),
        functools.partial(f, 1),
        list(range(100)),
    )
    kwargs = {"b": ARRAYS["structured"], "a": "s"}
    ours = rs.pack_apply_message(f, args, kwargs)
    theirs = ipp_serialize.pack_apply_message(f, args, kwargs)
    assert as_bytes(ours) == as_bytes(theirs)
    info = pickle.loads(ours[1])
    # 7 pickles + the bytes and memoryview (the 800-byte array stays in its pickle)
    assert info == {"nargs": 7, "narg_bufs": 9, "kw_keys": ["a", "b"]}
    # and the large buffers are the objects themselves
    assert any(b is args[1] for b in ours) and any(b is args[2] for b in ours)


def test_cross_compatibility_in_process():
    g = {"k": 4}
    bufs = rs.pack_apply_message(main_function(lambda x, y=0: x + y + k), (1,), {"y": rs.Reference("k")})  # noqa: F821
    f, args, kwargs = ipp_serialize.unpack_apply_message(bufs, g)
    assert f(*args, **kwargs) == 9
    bufs = ipp_serialize.pack_apply_message(main_function(lambda x: x * k), (np.arange(300),), {})  # noqa: F821
    f, args, kwargs = rs.unpack_apply_message(bufs, g)
    np.testing.assert_array_equal(f(*args), np.arange(300) * 4)
    obj, rest = ipp_serialize.deserialize_object(rs.serialize_object({"a": b"q" * 3000}))
    assert obj == {"a": b"q" * 3000} and rest == []


def test_prepickled_objects_are_sent_as_they_are():
    pre = rs.PrePickled([1, b"x" * 3000])
    assert rs.serialize_object(pre) == pre.buffers
    theirs = ipp_serialize.PrePickled([1, 2])
    assert rs.serialize_object(theirs) == theirs.buffers


def test_unpack_rejects_short_and_inconsistent_messages():
    with pytest.raises(ValueError, match="at least 2"):
        rs.unpack_apply_message([b"x"])
    bufs = rs.pack_apply_message(main_function(lambda: 1), (), {})
    with pytest.raises(ValueError, match="left over"):
        rs.unpack_apply_message(bufs + [rs.serialize_object(1)[0]])


def test_use_cloudpickle_switches_both_pickler_modules():
    from ipyparallel.serialize import serialize as ipp_ser_module

    from ipp_rs.serialize import serialize as rs_ser_module

    try:
        rs.use_cloudpickle()
        import cloudpickle

        assert rs_ser_module.pickle is cloudpickle and ipp_ser_module.pickle is cloudpickle
        assert rs.can_map.get(type(lambda: 0)) is None
        captured = 7
        f = round_trip(lambda: captured)  # a closure of this test module, by value
        assert f() == 7
    finally:
        rs.use_pickle()
    assert rs_ser_module.pickle is pickle and ipp_ser_module.pickle is pickle
    assert rs.can_map[type(lambda: 0)] is rs.CannedFunction


# -- without ipyparallel ----------------------------------------------------------------------

# Runs in a process where ipyparallel cannot be imported: writes its own pickles, reads the
# ones the test process (with ipyparallel) wrote, and runs the same round trips.
NO_IPP_SCRIPT = r'''
import functools, json, pickle, sys
from pathlib import Path

import numpy as np

try:
    import ipyparallel  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("ipyparallel is importable: the block did not work")

import ipp_rs.serialize as rs
from ipp_rs import dependency, error
from ipp_rs.util import interactive

assert rs.IPYPARALLEL is False
assert rs.CannedFunction.__module__ == "ipp_rs.serialize.canning"
assert "ipyparallel" not in sys.modules or sys.modules["ipyparallel"] is None

work = Path(sys.argv[1])
results = {}

# 1. round trips with our own classes
def rt(obj, g=None):
    out, rest = rs.deserialize_object(rs.serialize_object(obj), g)
    assert rest == []
    return out

k = 3
def closure(x, *, y=1):
    return x + k + y
closure.__module__ = "__main__"
assert rt(closure, {"k": 3})(1) == 5
assert rt(interactive(lambda x: x * scale), {"scale": 2})(4) == 8  # noqa: F821
arr = np.arange(3000.0).reshape(30, 100)[:, ::3]
np.testing.assert_array_equal(rt(arr), arr)
# ipyparallel's CannedArray cannot take these (the buffer protocol has no datetime64)
dates = np.arange("2024-01-01", "2024-12-31", dtype="datetime64[D]").reshape(5, -1)
np.testing.assert_array_equal(rt(dates), dates)
np.testing.assert_array_equal(rt(np.array([1, None], dtype=object)), np.array([1, None], dtype=object))
blob = b"z" * 5000
bufs = rs.serialize_object(blob)
assert bufs[1] is blob
out = rt([1, {"a": blob}, memoryview(b"m" * 2000)])
assert out[1] == {"a": blob} and out[2].tobytes() == b"m" * 2000
assert rt(rs.Reference("a"), {"a": 11}) == 11
p = rt(functools.partial(interactive(lambda a, b: a + len(b)), 1, b=b"q" * 2000), {})
assert p() == 2001
class Point:
    def __init__(self, x):
        self.x = x
Point.__module__ = "__main__"
assert rt(Point, {})(2).x == 2
results["round_trips"] = "ok"

# 2. read what ipyparallel packed (names of ipyparallel modules read as ours)
g = {"k": 10, "__builtins__": __builtins__}
for path in sorted(work.glob("from_ipp_*.pickle")):
    bufs = pickle.loads(path.read_bytes())
    f, args, kwargs = rs.unpack_apply_message(bufs, g)
    value = f(*args, **kwargs)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    results[path.stem] = repr(value)
err = pickle.loads((work / "from_ipp_error.bin").read_bytes())
err_obj, _ = rs.deserialize_object(err)
results["from_ipp_error"] = [type(err_obj).__module__, type(err_obj).__name__, str(err_obj)]

# 3. write our own pickles for ipyparallel to read
def apply_msg(name, f, args=(), kwargs={}):
    f.__module__ = "__main__"
    bufs = rs.pack_apply_message(f, args, kwargs)
    (work / f"from_rs_{name}.pickle").write_bytes(pickle.dumps([bytes(b) for b in bufs]))

apply_msg("closure", closure, (1,), {"y": rs.Reference("k")})
apply_msg("arrays", lambda a, b, c: (a.sum(), len(b), c.tobytes()[:3]),
          (np.arange(1000).reshape(10, 100).T, b"x" * 4000, memoryview(b"abc" * 1000)))
apply_msg("partial", lambda p: p(), (functools.partial(interactive(lambda a, b: a * b), 6, b=7),))
apply_msg("class", lambda cls: cls(5).x, (Point,))
apply_msg("dependent", lambda d: d(2), (dependency.require("json")(interactive(lambda x: x + 1)),))
(work / "from_rs_error.bin").write_bytes(pickle.dumps(
    rs.serialize_object(error.RemoteError("ValueError", "bad", "Traceback...", {"engine_id": 1, "method": "apply"}))
))
print(json.dumps(results))
'''


def run_python(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


@pytest.fixture
def no_ipp_env(tmp_path):
    return blocking_env(tmp_path / "block")


def test_without_ipyparallel_our_classes_round_trip_and_interoperate(tmp_path, no_ipp_env):
    work = tmp_path / "work"
    work.mkdir()

    def write(name, f, args=(), kwargs=None):
        f.__module__ = "__main__"
        bufs = ipp_serialize.pack_apply_message(f, args, kwargs or {})
        (work / f"from_ipp_{name}.pickle").write_bytes(pickle.dumps([bytes(b) for b in bufs]))

    offset = 2

    def closure(x):
        return x + offset + k  # noqa: F821 - the reader's namespace

    write("closure", closure, (1,))
    write("arrays", lambda a, b: (int(a.sum()), len(b)), (np.arange(1000).reshape(10, 100)[:, ::2], b"b" * 4000))
    write("reference", lambda r, m: (r, m.tobytes()[:2]), (ipp.Reference("k * 2"), memoryview(b"mm" * 1000)))
    write("partial", lambda p: p(), (functools.partial(ipp.interactive(lambda a, b: a - b), 9, b=4),))
    (work / "from_ipp_error.bin").write_bytes(
        pickle.dumps(ipp_serialize.serialize_object(ipp_error.TaskRejectError("nope")))
    )

    # (ipyparallel's @require runs `from ipyparallel.error import ...` on the engine: it needs
    # the engine's import aliases, see test_engine_kernel_runs_apply_requests.)
    done = run_python(NO_IPP_SCRIPT, str(work), env=no_ipp_env)
    results = json.loads(done.stdout)
    assert results["round_trips"] == "ok"
    assert results["from_ipp_closure"] == "13"
    assert results["from_ipp_arrays"] == repr((int(np.arange(1000).reshape(10, 100)[:, ::2].sum()), 4000))
    assert results["from_ipp_reference"] == repr((20, b"mm"))
    assert results["from_ipp_partial"] == "5"
    assert results["from_ipp_error"] == ["ipp_rs.error", "TaskRejectError", "nope"]

    # What ipp_rs pickled without ipyparallel, ipyparallel reads (ipp_rs installed here).
    g = {"k": 30}

    def read(name):
        bufs = pickle.loads((work / f"from_rs_{name}.pickle").read_bytes())
        f, args, kwargs = ipp_serialize.unpack_apply_message(bufs, g)
        return f(*args, **kwargs)

    assert read("closure") == 1 + 30 + 30  # x + k + y=Reference("k")
    assert read("arrays") == (np.arange(1000).sum(), 4000, b"abc")
    assert read("partial") == 42
    assert read("class") == 5
    assert read("dependent") == 3
    err, _ = ipp_serialize.deserialize_object(pickle.loads((work / "from_rs_error.bin").read_bytes()))
    assert isinstance(err, rs_error.RemoteError)
    assert str(err) == "[1:apply] ValueError: bad"


# The engine's Kernel, with or without ipyparallel: apply requests packed by ipyparallel
# (argv[2] "ipp") or by ipp_rs in this process ("rs"); @require / @depend of both packages.
KERNEL_SCRIPT = r'''
import json, pickle, sys
from pathlib import Path

mode, packer = sys.argv[1], sys.argv[2]
from ipp_rs.engine.kernel import Kernel
import ipp_rs.serialize as rs
assert rs.IPYPARALLEL == (mode == "ipp"), (mode, rs.IPYPARALLEL)

class Sink:
    def __init__(self):
        self.events = []
    def stream(self, name, text):
        self.events.append([name, text])
    def execute_input(self, code, count): pass
    def execute_result(self, data, metadata, count): pass
    def display_data(self, data, metadata): pass

k = Kernel()
sink = Sink()
out = {}
for path in sorted(Path(sys.argv[3]).glob(f"{packer}_*.pickle")):
    reply = k.apply("m-" + path.stem, pickle.loads(path.read_bytes()), sink)
    if reply[0] == "ok":
        value, rest = rs.deserialize_object(reply[1])
        if hasattr(value, "tolist"):
            value = value.tolist()
        out[path.stem[len(packer) + 1:]] = ["ok", repr(value)]
    else:
        out[path.stem[len(packer) + 1:]] = list(reply[:3])
out["stdout"] = "".join(text for name, text in sink.events if name == "stdout")
print(json.dumps(out))
'''

KERNEL_PACK_SCRIPT = r'''
import pickle, sys
from pathlib import Path
import numpy as np

packer, work = sys.argv[1], Path(sys.argv[2])
if packer == "ipp":
    import ipyparallel as pkg
    from ipyparallel import serialize, util, error
    from ipyparallel.controller.dependency import require, depend
else:
    import ipp_rs.serialize as serialize
    from ipp_rs import util, error
    from ipp_rs.dependency import require, depend
interactive = util.interactive

def save(name, f, args=(), kwargs={}):
    bufs = serialize.pack_apply_message(f, args, kwargs)
    (work / f"{packer}_{name}.pickle").write_bytes(pickle.dumps([bytes(b) for b in bufs]))

save("a_push", util._push, (), {"pushed": np.arange(2000)})
save("b_pull", util._pull, ("pushed",))
save("print", interactive(lambda: print("hello") or 1))
save("require_ok", require("json")(interactive(lambda: json.dumps([1]))))
save("require_missing", require("module_that_does_not_exist_anywhere")(interactive(lambda: 1)))
save("depend_false", depend(interactive(lambda: False))(interactive(lambda: 1)))
save("raise_unmet", interactive(lambda E=error.UnmetDependency: (_ for _ in ()).throw(E())))
save("error", interactive(lambda: 1 / 0))
save("z_uses_pushed", interactive(lambda: int(pushed.sum())))
'''


@pytest.mark.parametrize("mode", ["ipp", "no-ipp"])
@pytest.mark.parametrize("packer", ["ipp", "rs"])
def test_engine_kernel_runs_apply_requests(tmp_path, mode, packer):
    # "rs" packs without ipyparallel: pickles of ipp_rs's own classes (with ipyparallel they
    # would be ipyparallel's, the "ipp" case).
    pack_env = blocking_env(tmp_path / "block") if packer == "rs" else None
    run_python(KERNEL_PACK_SCRIPT, packer, str(tmp_path), env=pack_env)
    env = blocking_env(tmp_path / "block") if mode == "no-ipp" else None
    out = json.loads(run_python(KERNEL_SCRIPT, mode, packer, str(tmp_path), env=env).stdout)
    assert out["a_push"] == ["ok", "None"]
    assert out["b_pull"] == ["ok", repr(list(range(2000)))]
    assert out["print"] == ["ok", "1"]
    assert out["stdout"] == "hello\n"
    assert out["require_ok"] == ["ok", "'[1]'"]
    assert out["require_missing"] == ["unmet"]
    assert out["depend_false"] == ["unmet"]
    assert out["raise_unmet"] == ["unmet"]
    assert out["error"] == ["error", "ZeroDivisionError", "division by zero"]
    assert out["z_uses_pushed"] == ["ok", repr(sum(range(2000)))]


# -- errors -----------------------------------------------------------------------------------

IPP_ERROR_CLASSES = [
    "IPythonError", "KernelError", "EngineError", "NoEnginesRegistered", "TaskAborted",
    "TaskTimeout", "UnmetDependency", "ImpossibleDependency", "DependencyTimeout",
    "InvalidDependency", "RemoteError", "TaskRejectError", "CompositeError",
    "AlreadyDisplayedError",
]


@pytest.mark.parametrize("name", IPP_ERROR_CLASSES)
def test_error_classes_have_ipyparallels_hierarchy(name):
    ours, theirs = getattr(rs_error, name), getattr(ipp_error, name)
    assert [c.__name__ for c in ours.__mro__] == [c.__name__ for c in theirs.__mro__]


def test_every_ipyparallel_error_class_exists():
    for name, value in vars(ipp_error).items():
        if isinstance(value, type) and issubclass(value, BaseException):
            assert hasattr(rs_error, name), name
    assert rs_error.TimeoutError is TimeoutError
    assert issubclass(rs_error.TaskTimeLimit, rs_error.RemoteError)
    assert issubclass(rs_error.ResultCulled, rs_error.RemoteError)


ENGINE_INFO = {"engine_id": 3, "engine_uuid": "abc", "method": "apply"}
TB = "Traceback (most recent call last):\n  File \"<x>\", line 1\nZeroDivisionError: division by zero"


@pytest.mark.parametrize("engine_info", [ENGINE_INFO, None, {}])
def test_remote_error_renders_as_ipyparallels(engine_info, capsys):
    ours = rs_error.RemoteError("ZeroDivisionError", "division by zero", TB, engine_info)
    theirs = ipp_error.RemoteError("ZeroDivisionError", "division by zero", TB, engine_info)
    assert str(ours) == str(theirs)
    assert repr(ours) == repr(theirs)
    assert ours.args == theirs.args
    assert ours.render_traceback() == theirs.render_traceback()
    assert ours._render_traceback_() == theirs._render_traceback_()
    ours.print_traceback()
    theirs.print_traceback()
    printed = capsys.readouterr().out
    half = len(printed) // 2
    assert printed[:half] == printed[half:]
    assert rs_error.RemoteError("E", "v", None).render_traceback()[-1] == "No traceback available"


def test_remote_error_without_method_still_renders():
    err = rs_error.RemoteError("EngineError", "died", "", {"engine_id": 2})
    assert str(err) == "[2] EngineError: died"


def elist(n):
    return [
        (f"E{i}", f"value {i}", f"tb line {i}\nlast {i}", {"engine_id": i, "method": "apply"})
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [1, 4, 6])
def test_composite_error_renders_as_ipyparallels(n):
    ours = rs_error.CompositeError("one or more exceptions raised in: apply", elist(n))
    theirs = ipp_error.CompositeError("one or more exceptions raised in: apply", elist(n))
    assert str(ours) == str(theirs)
    assert repr(ours) == repr(theirs)
    assert ours.render_traceback() == theirs.render_traceback()
    assert ours.render_traceback(excid=n - 1) == theirs.render_traceback(excid=n - 1)
    assert tuple(ours.args) == tuple(theirs.args)
    with pytest.raises(IndexError):
        ours.render_traceback(excid=n)
    with pytest.raises(rs_error.RemoteError) as info:
        ours.raise_exception(n - 1)
    assert str(info.value) == f"[{n - 1}:apply] E{n - 1}: value {n - 1}"
    with pytest.raises(IndexError):
        ours.raise_exception(n)


def test_errors_pickle_round_trip():
    for err in [
        rs_error.RemoteError("ValueError", "bad", TB, ENGINE_INFO),
        rs_error.TaskTimeLimit("TaskTimeLimit", "too long", "", ENGINE_INFO),
        rs_error.ResultCulled("KeyError", "'task x was culled from the task database (r)'", ""),
        rs_error.CompositeError("msg", elist(3)),
        rs_error.UnmetDependency("json"),
        rs_error.NoEnginesRegistered(),
        rs_error.AlreadyDisplayedError(rs_error.CompositeError("m", elist(2))),
    ]:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert str(back) == str(err)
        assert repr(back.args) == repr(err.args)
        for attr in ("ename", "evalue", "traceback", "engine_info", "elist", "msg"):
            assert getattr(back, attr, None) == getattr(err, attr, None), attr


def test_wrap_and_unwrap_exception_as_ipyparallel():
    try:
        1 / 0
    except ZeroDivisionError:
        ours = rs_error.wrap_exception(ENGINE_INFO)
        theirs = ipp_error.wrap_exception(ENGINE_INFO)
    assert ours == theirs
    o, t = rs_error.unwrap_exception(ours), ipp_error.unwrap_exception(theirs)
    assert type(o) is rs_error.RemoteError
    assert (o.ename, o.evalue, o.traceback, o.engine_info) == (t.ename, t.evalue, t.traceback, t.engine_info)


def test_unwrap_exception_makes_our_extensions():
    limit = rs_error.unwrap_exception(
        {"ename": "TaskTimeLimit", "evalue": "the task ran longer", "traceback": [], "engine_info": ENGINE_INFO}
    )
    assert type(limit) is rs_error.TaskTimeLimit and limit.ename == "TaskTimeLimit"
    # the controller's culled-record reply (ipp-core's key_error_value of Error::Culled)
    culled = rs_error.unwrap_exception(
        {"ename": "KeyError", "evalue": "'task 1f2e-3 was culled from the task database (record_limit)'", "traceback": []}
    )
    assert type(culled) is rs_error.ResultCulled and culled.msg_id == "1f2e-3"
    missing = rs_error.unwrap_exception({"ename": "KeyError", "evalue": "'No such message: x'", "traceback": []})
    assert type(missing) is rs_error.RemoteError


def test_collect_exceptions_as_ipyparallel():
    ok = [1, 2]
    assert rs_error.collect_exceptions(ok, "apply") is ok
    errors = [rs_error.RemoteError(*e) for e in elist(2)]
    with pytest.raises(rs_error.CompositeError) as info:
        rs_error.collect_exceptions({0: errors[0], 1: 5, 2: errors[1]}, "apply")
    theirs = ipp_error.CompositeError("one or more exceptions raised in: apply", elist(2))
    assert str(info.value) == str(theirs)
    # CompositeErrors are flattened
    with pytest.raises(rs_error.CompositeError) as nested:
        rs_error.collect_exceptions([info.value, errors[0]], "map")
    assert len(nested.value.elist) == 3


# -- dependencies -----------------------------------------------------------------------------


class FakeAsyncResult:
    def __init__(self, *msg_ids):
        self.msg_ids = list(msg_ids)


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((), {}),
        (("a",), {}),
        ((["a", "b"],), {"all": False}),
        ((["a"],), {"success": False, "failure": True}),
        (({"dependencies": ["x", "y"], "all": False, "success": True, "failure": True},), {}),
    ],
)
def test_dependency_encoding_equals_ipyparallels(args, kwargs):
    ours = rs_dependency.Dependency(*args, **kwargs)
    theirs = ipp_dependency.Dependency(*args, **kwargs)
    o, t = ours.as_dict(), theirs.as_dict()
    assert sorted(o.pop("dependencies")) == sorted(t.pop("dependencies"))
    assert o == t
    universe = ["a", "b", "x", "y"]
    for completed in ([], ["a"], ["a", "b"], universe):
        for failed in (None, [], ["b"], ["x", "y"]):
            c, f = set(completed), None if failed is None else set(failed)
            assert ours.check(c, f) == theirs.check(c, f)
            assert ours.unreachable(c, f) == theirs.unreachable(c, f)


def test_dependency_accepts_async_results_of_either_package():
    dep = rs_dependency.Dependency([FakeAsyncResult("m1", "m2"), "m3"])
    assert dep == {"m1", "m2", "m3"}
    assert rs_dependency.Dependency(FakeAsyncResult("z")) == {"z"}
    with pytest.raises(TypeError):
        rs_dependency.Dependency([3])
    with pytest.raises(ValueError):
        rs_dependency.Dependency(["a"], success=False, failure=False)


def test_depend_and_require_make_the_same_objects_as_ipyparallel():
    @rs_dependency.require("json", n=5)
    @rs_util.interactive
    def f(x):
        return x

    assert isinstance(f, ipp_dependency.dependent)
    assert f(3) == 3 and f.__name__ == "f"
    assert f.dargs == ("json",) and set(f.dkwargs) == {"n"}
    d = rs_dependency.depend(lambda: True)(lambda: 1)
    assert isinstance(d, ipp_dependency.dependent)
    with pytest.raises(TypeError):
        rs_dependency.require(3)


# -- util -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-06T07:08:09.123456Z",
        "2024-05-06T07:08:09.1Z",
        "2024-05-06T07:08:09Z",
        "2024-05-06T07:08:09.123+02:00",
        "2024-05-06T07:08:09-0530",
        "2024-05-06T07:08:09.5",
        "not a date",
        "2024-05-06",
    ],
)
def test_dates_are_parsed_as_ipyparallel(text):
    ours = rs_util.extract_dates({"d": [text]})["d"][0]
    with pytest.warns(DeprecationWarning) if text.endswith(".5") else _no_warning():
        theirs = ipp_util.extract_dates({"d": [text]})["d"][0]
    assert ours == theirs
    if isinstance(ours, datetime):
        assert ours.tzinfo is not None
        assert ours.utcoffset() == theirs.utcoffset()


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_date_helpers():
    naive = datetime(2024, 1, 2, 3, 4, 5)
    aware = rs_util.ensure_timezone(naive)
    assert aware.tzinfo is not None and aware.replace(tzinfo=None) == naive
    assert aware == ipp_util.ensure_timezone(naive)
    utc = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert rs_util.ensure_timezone(utc) is utc
    assert rs_util.compare_datetimes(utc + timedelta(seconds=3), utc) == timedelta(seconds=3)
    assert rs_util.utcnow().tzinfo is not None
    assert rs_util._parse_date(None) is None
    assert json.dumps({"d": utc}, default=rs_util.date_default) == '{"d": "2024-01-02T03:04:05Z"}'
    assert rs_util.squash_dates({"d": [utc]}) == {"d": [utc.isoformat()]}


def test_int_keys_and_interactive():
    assert rs_util.int_keys({"1": "a", "x": 1, "2.5": 2}) == {1: "a", "x": 1, 2.5: 2}
    with pytest.raises(KeyError):
        rs_util.int_keys({"1": 1, 1: 2})

    def f():
        return 1

    g = rs_util.interactive(f)
    assert g.__module__ == "__main__" and g.__globals__ is sys.modules["__main__"].__dict__
    assert g() == 1


def test_package_docstring_states_the_policy():
    doc = rs.__doc__ or ""
    assert "ipyparallel importable" in doc and "ipyparallel not importable" in doc
    assert Path(rs.__file__).parent.name == "serialize"
