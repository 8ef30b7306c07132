"""The control protocol: every message round-trips; garbage only ever raises ProtocolError."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxmesh.mesh import protocol
from voxmesh.mesh.protocol import MAX_BODY_BYTES, VERSION, Message, ProtocolError

MESSAGES = sorted(protocol.registry().values(), key=lambda cls: cls.ID)

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
FLOATS = st.floats(allow_nan=False)  # NaN != NaN would make equality meaningless
SCALARS = st.none() | st.booleans() | INT64 | FLOATS | st.text(max_size=20) | st.binary(max_size=20)
ANY = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """Values of one annotated message field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(a) for a in typing.get_args(tp)))
    simple = {
        type(None): st.none(),
        bool: st.booleans(),
        int: INT64,
        float: FLOATS,
        str: st.text(max_size=40),
        bytes: st.binary(max_size=40),
    }
    if tp in simple:
        return simple[tp]
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return st.lists(strategy_for(item), max_size=5)
    if origin is dict or tp is dict:
        return st.dictionaries(st.text(max_size=10), ANY, max_size=5)
    if tp is Any:
        return ANY
    raise TypeError(f"no strategy for {tp!r}")


def messages_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return st.builds(cls, **fields)


ANY_MESSAGE = st.one_of(*(messages_of(cls) for cls in MESSAGES))


def decode_or_protocol_error(frames: list[bytes]) -> Message | None:
    """decode(); a ProtocolError is fine, any other exception fails the test."""
    try:
        msg = protocol.decode(frames)
    except ProtocolError:
        return None
    assert type(msg) in MESSAGES
    return msg


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(messages_of(cls))
    frames = protocol.encode(msg)
    assert frames[0] == VERSION and frames[1] == bytes((cls.ID,)) and len(frames) == 3
    assert protocol.decode(frames) == msg


def test_every_message_type_is_covered_and_ids_are_unique() -> None:
    ids = [cls.ID for cls in MESSAGES]
    assert len(ids) == len(set(ids)) and len(ids) >= 29
    assert all(0 < i < 256 for i in ids)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_frames_only_raise_protocol_error(frames: list[bytes]) -> None:
    decode_or_protocol_error(frames)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command=st.integers(0, 255), body=st.binary(max_size=200))
def test_valid_envelope_random_body_bytes(command: int, body: bytes) -> None:
    decode_or_protocol_error([VERSION, bytes((command,)), body])


@settings(max_examples=300, deadline=None)
@given(cls=st.sampled_from(MESSAGES), body=ANY)
def test_valid_envelope_random_msgpack_body(cls: type[Message], body: Any) -> None:
    packed = msgpack.packb(body, use_bin_type=True)
    decode_or_protocol_error([VERSION, bytes((cls.ID,)), packed])


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_wrong_field_types_are_protocol_errors(data: st.DataObject) -> None:
    msg = data.draw(ANY_MESSAGE)
    fields = msg.fields()
    if not fields:
        return
    name = data.draw(st.sampled_from(sorted(fields)))
    hints = typing.get_type_hints(type(msg))
    wrong = data.draw(ANY.filter(lambda v: not _fits(hints[name], v)))
    body = msgpack.packb({**fields, name: wrong}, use_bin_type=True)
    with pytest.raises(ProtocolError):
        protocol.decode([VERSION, bytes((msg.ID,)), body])


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_missing_required_field_is_a_protocol_error(data: st.DataObject) -> None:
    msg = data.draw(ANY_MESSAGE)
    required = [
        f.name
        for f in dataclasses.fields(msg)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if not required:
        return
    drop = data.draw(st.sampled_from(required))
    body = {k: v for k, v in msg.fields().items() if k != drop}
    with pytest.raises(ProtocolError, match=drop):
        protocol.decode([VERSION, bytes((msg.ID,)), msgpack.packb(body, use_bin_type=True)])


@settings(max_examples=100, deadline=None)
@given(msg=ANY_MESSAGE, extra=st.dictionaries(st.text(min_size=1, max_size=8), ANY, max_size=3))
def test_unknown_extra_fields_are_ignored(msg: Message, extra: dict[str, Any]) -> None:
    body = {**extra, **msg.fields()}
    assert protocol.decode([VERSION, bytes((msg.ID,)), msgpack.packb(body)]) == msg


def test_specific_bad_inputs() -> None:
    ok = protocol.encode(protocol.Heartbeat())
    cases = [
        [],
        ok[:2],
        [*ok, b""],
        [b"VXM2", ok[1], ok[2]],
        [VERSION, b"", ok[2]],
        [VERSION, b"\x02\x02", ok[2]],
        [VERSION, b"\x00", ok[2]],
        [VERSION, b"\xff", ok[2]],
        [VERSION, ok[1], b"\xc1"],  # reserved msgpack byte
        [VERSION, ok[1], msgpack.packb([1, 2])],  # not a map
        [VERSION, ok[1], msgpack.packb({1: 2})],  # non-string key
        [VERSION, ok[1], msgpack.packb({"info": {1: 2}})],  # map field with int key
        [VERSION, ok[1], b"\xa3\xff\xfe\xfd"],  # invalid UTF-8 string
        [VERSION, ok[1], msgpack.packb({"info": "x" * MAX_BODY_BYTES})],  # too big
    ]
    for frames in cases:
        with pytest.raises(ProtocolError):
            protocol.decode(frames)


def test_bool_is_not_an_int_and_ints_are_floats() -> None:
    speak = protocol.Speak(session="s", slot=1, epoch=2, utterance=3, text="hi")
    body = {**speak.fields(), "slot": True}
    with pytest.raises(ProtocolError, match="slot"):
        protocol.decode([VERSION, bytes((speak.ID,)), msgpack.packb(body)])
    hold = protocol.decode(
        [
            VERSION,
            bytes((protocol.Hold.ID,)),
            msgpack.packb({"session": "s", "epoch": 1, "t_issued": 5}),
        ]
    )
    assert isinstance(hold, protocol.Hold) and hold.t_issued == 5


def _fits(tp: Any, value: Any) -> bool:
    """Would ``value`` pass the protocol's check for ``tp``? (Mirrors the decoder's rules.)"""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in typing.get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_fits(item, v) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return True
