"""The ipp_rs client's cache of serialized functions (``ipp_rs.client._packing``): a
function is serialized once and its frames reused while nothing it is made of has changed;
what could change in place is serialized at every call. No cluster needed: the frames are
unpacked here as an engine would."""

from ipp_rs.client._packing import function_frames, pack_apply
from ipp_rs.serialize import unpack_apply_message


def run_packed(f, *args):
    """What an engine gets from ``apply(f, *args)``: the function unpacked and called."""
    g, unpacked_args, kwargs = unpack_apply_message(pack_apply(f, args, {}), {})
    return g, g(*unpacked_args, **kwargs)


def plain(x):
    return x + 1


def hinted(x: int, y: "str" = "a") -> None:
    return None


def hinted_without_defaults(x: int, y: "str") -> None:
    return None


class Custom:
    pass


def custom_hint(x: Custom) -> int:
    return 1


def test_a_plain_function_is_serialized_once():
    assert function_frames(plain) is function_frames(plain)
    assert run_packed(plain, 2)[1] == 3


def test_a_function_with_builtin_and_string_type_hints_is_serialized_once():
    assert function_frames(hinted) is function_frames(hinted)
    g, result = run_packed(hinted, 1)
    assert result is None
    assert g.__annotations__ == {"x": int, "y": "str", "return": None}


def test_a_type_hint_of_a_user_class_is_serialized_at_every_call():
    assert function_frames(custom_hint) is not function_frames(custom_hint)


def test_a_changed_type_hint_or_default_is_not_sent_stale():
    def f(x: int = 1) -> int:
        return x * 10

    first = function_frames(f)
    assert function_frames(f) is first
    f.__annotations__["return"] = str
    second = function_frames(f)
    assert second is not first
    assert run_packed(f)[0].__annotations__["return"] is str
    f.__defaults__ = (5,)
    assert function_frames(f) is not second
    assert run_packed(f)[1] == 50


def test_a_closure_is_serialized_at_every_call():
    count = 0

    def counter():
        return count

    assert function_frames(counter) is not function_frames(counter)
    count = 7
    assert run_packed(counter)[1] == 7


def test_the_engine_reads_a_hinted_function_once_and_gives_each_call_its_own():
    from ipp_rs.serialize import serialize as engine_side

    bufs = pack_apply(hinted_without_defaults, (), {})
    engine_side._FUNCTION_MEMO.clear()
    first, _, _ = unpack_apply_message(bufs, {})
    assert bytes(bufs[0]) in engine_side._FUNCTION_MEMO
    second, _, _ = unpack_apply_message(bufs, {})
    assert first is not second
    first.__annotations__["x"] = float
    assert second.__annotations__["x"] is int


def test_the_engine_reads_a_function_hinted_with_a_user_class_every_time():
    from ipp_rs.serialize import serialize as engine_side

    engine_side._FUNCTION_MEMO.clear()
    unpack_apply_message(pack_apply(custom_hint, (), {}), {"Custom": Custom})
    assert not engine_side._FUNCTION_MEMO
