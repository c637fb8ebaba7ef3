"""The codec's fast path for membership events: it must build exactly the event the
general path (the validating constructor) builds, and refuse exactly what it refuses,
with the same FrameError code and message."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterbus.bus import codec
from clusterbus.errors import DecodeError
from clusterbus.events import NodeComingUp, NodeDown, NodeGoingDown, NodeUp

CLASSES = (NodeUp, NodeDown, NodeComingUp, NodeGoingDown)
U32 = 2**32 - 1
U64 = 2**64 - 1

#: Values a field may hold after msgpack (use_list=False) or a direct caller: the
#: boundaries of every check, wrong types, non-canonical and repeated addresses.
ODD_VALUES = [
        None, True, False, 0, 1, -1, U32, U32 + 1, U64, U64 + 1, 2**70, 0.0, 1.5, -0.5,
        float("nan"), float("inf"), "", "x", "netlink", "r" * 64, "r" * 65, b"bytes",
        (), (1,), (1, 2), (U32 + 1,), (-1,), (True,), ("1",), [], [3], {}, {"a": 1},
        ("10.77.0.1",), ("10.77.0.1", "10.77.0.2"), ("10.77.0.1", "10.77.0.1"),
        ("fd00:77::1",), ("fd00:77:0::1",), ("FD00:77::1",), ("not an ip",), ("",),
        ("10.77.0.1", "fd00:77::0001"), ["10.77.0.1"], (None,), 2, 3, (3,), (7,),
]
ODD = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.integers(-(2**65), 2**65),
    st.floats(),
    st.text(max_size=70),
    st.tuples(st.integers(-1, 2**33)),
)


def valid_body(cls: type, data: st.DataObject) -> dict[str, Any]:
    node = data.draw(st.integers(0, U32))
    addrs = data.draw(st.lists(st.ip_addresses().map(str), max_size=2, unique=True)
                      .map(tuple))
    return {
        "v": 1, "origin": data.draw(st.integers(0, U32)), "seq": data.draw(st.integers(1, U64)),
        "time": data.draw(st.floats(0, 1e12)), "node": node, "addrs": addrs,
        "view": data.draw(st.integers(1, U64)),
        "joined": data.draw(st.sampled_from([(), (node,), (node, node + 1)])),
        "left": data.draw(st.sampled_from([(), (node,), (7,)])),
        "reason": data.draw(st.text(min_size=1, max_size=64)),
        "incarnation": data.draw(st.integers(0, U32)),
    }


def outcome(topic: str, body: dict[str, Any]) -> tuple[str, Any]:
    try:
        event = codec.decode_event(topic, dict(body))
    except codec.FrameError as exc:
        return ("error", (type(exc), exc.code, str(exc)))
    # equal values and equal types (an int time must come back converted either way)
    return ("event", (type(event), event,
                      tuple(type(getattr(event, n)) for n in event.field_names())))


def general(topic: str, body: dict[str, Any]) -> tuple[str, Any]:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(codec, "_MEMBERSHIP", {})
        return outcome(topic, body)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.TOPIC)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fast_path_agrees_with_the_general_path(cls: type, data: st.DataObject) -> None:
    body = valid_body(cls, data)
    for name in data.draw(st.lists(st.sampled_from(sorted(body)), max_size=3, unique=True)):
        body[name] = data.draw(ODD)
    assert outcome(cls.TOPIC, body) == general(cls.TOPIC, body)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.TOPIC)
def test_every_odd_value_in_every_field(cls: type) -> None:
    base = {"v": 1, "origin": 1, "seq": 5, "time": 2.5, "node": 3, "addrs": ("10.77.0.3",),
            "view": 9, "joined": (3,), "left": (), "reason": "netlink", "incarnation": 0}
    for name in base:
        for value in ODD_VALUES:
            body = {**base, name: value}
            assert outcome(cls.TOPIC, body) == general(cls.TOPIC, body), (name, value)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.TOPIC)
def test_usual_bodies_take_the_fast_path(cls: type) -> None:
    # What the daemon sends: one canonical address or none, joined/left of one node.
    for addrs, joined in ((("10.77.0.3",), (3,)), ((), ()), (("fd00:77::3",), ())):
        event = cls(origin=1, seq=5, time=2.5, node=3, addrs=addrs, view=9, joined=joined,
                    reason="netlink", incarnation=4)
        body = msgpack.unpackb(codec.encode(event)[1], raw=False, use_list=False)
        fast = codec._fast_membership(cls, body)
        assert fast == event and type(fast) is cls


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"addrs": ("10.77.0.1", "10.77.0.2")}, "two addresses"),
        ({"joined": (1, 2)}, "two nodes"),
        ({"time": 3}, "an int time (converted by the constructor)"),
        ({"addrs": ("FD00:77::1",)}, "a non-canonical address"),
        ({"node": -1}, "a refusal"),
        ({"v": 2}, "another version"),
    ],
)
def test_the_rest_takes_the_general_path(change: dict[str, Any], why: str) -> None:
    body = {"v": 1, "origin": 1, "seq": 5, "time": 2.5, "node": 3, "addrs": (), "view": 9,
            "joined": (), "left": (), "reason": "netlink", "incarnation": 0, **change}
    # membership_event hands these to the validating constructor: the same event or the
    # same refusal as the general path; only another version is left to the general path
    if "v" in change:
        assert codec._fast_membership(NodeUp, body) is None, why
    else:
        assert outcome("node.up", body) == general("node.up", body), why


def test_refusal_by_the_constructor_is_a_frame_error() -> None:
    body = {"v": 1, "origin": -1, "seq": 5, "time": 2.5, "node": 3, "addrs": (), "view": 9,
            "joined": (), "left": (), "reason": "netlink", "incarnation": 0}
    with pytest.raises(codec.FrameError) as info:
        codec._fast_membership(NodeUp, body)
    assert isinstance(info.value, DecodeError) and info.value.code == "bad_field"
    assert "origin" in str(info.value)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.TOPIC)
@pytest.mark.parametrize("addrs", [(), ("10.77.0.3",), ("10.77.0.3", "fd00:77::3")])
def test_membership_bodies_hold_every_field_in_order(cls: type, addrs: tuple[str, ...]) -> None:
    # the hand-written items of membership events must follow the class, and the
    # array-to-map splice must give exactly the map msgpack would write
    event = cls(origin=2**32 - 1, seq=2**64 - 1, time=2.5, node=3, addrs=addrs, view=9,
                joined=(3,), reason="netlink", incarnation=4)
    items = codec._membership_items(event)
    assert items[0::2] == ("v", *cls.field_names())
    body = dict(zip(items[0::2], items[1::2]))
    assert body == {"v": cls.VERSION, **event.to_dict()}
    assert msgpack.packb(items, use_bin_type=True)[:3] == b"\xdc\x00\x16"
    assert codec.encode(event)[1] == msgpack.packb(body, use_bin_type=True)
    assert codec.decode(codec.encode(event)) == event


def test_a_failed_encode_leaves_the_packer_clean() -> None:
    good = NodeUp(origin=1, seq=1, time=1.0, node=3, view=1, reason="netlink")
    expected = codec.encode(good)
    bad = NodeUp(origin=1, seq=2, time=1.0, node=3, view=2, reason="netlink")
    object.__setattr__(bad, "addrs", (object(),))  # cannot be packed
    with pytest.raises(TypeError):
        codec.encode(bad)
    assert codec.encode(good) == expected
