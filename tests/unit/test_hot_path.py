"""The per-event fast paths give exactly what the general paths give: the netlink decoder's
one-unpack shapes, the events' inline validation, the address caches, and the plugin
host's per-hook call table (isolation and failure counts included)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterbus import hookimpl
from clusterbus.addresses import ADDR_CACHE_SIZE, address_or_none, node_address_or_none
from clusterbus.engine import Engine
from clusterbus.errors import InvalidEvent
from clusterbus.events import (
    NodeDown,
    NodeUp,
    canonical_addr,
)
from clusterbus.netlink import message
from clusterbus.pluginhost import PluginHost
from clusterbus.view import NodeReport, NodeState


def general(buf: bytes) -> object:
    try:
        return message._reports(message._decode_all(buf), "netlink")
    except message.MessageError as exc:
        return ("error", exc.kind, exc.offset)


def fast(buf: bytes) -> object:
    try:
        return message.decode_reports(buf)
    except message.MessageError as exc:
        return ("error", exc.kind, exc.offset)


SHAPES = [
    message.encode(NodeState.UP, 7, ("10.77.0.7",), 3, seq=9, pid=4, flags=1),
    message.encode(NodeState.DOWN, 7, (), 0),
    message.encode(NodeState.GOING_DOWN, 2**32 - 1, (), 2**32 - 1),
]


def test_fast_shapes_are_taken_and_agree() -> None:
    assert [len(m) for m in SHAPES] == [44, 36, 36]
    for m in SHAPES:
        assert fast(m) == general(m)
    assert message.decode_reports(SHAPES[0]) == [
        NodeReport(state=NodeState.UP, node=7, addrs=("10.77.0.7",), incarnation=3,
                   reason="netlink")]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(SHAPES), st.lists(st.tuples(st.integers(0, 43), st.integers(0, 255)),
                                         min_size=1, max_size=3))
def test_mutated_fast_shapes_agree_with_the_general_decoder(
        msg: bytes, changes: list[tuple[int, int]]) -> None:
    buf = bytearray(msg)
    for pos, value in changes:
        if pos < len(buf):
            buf[pos] = value
    assert fast(bytes(buf)) == general(bytes(buf))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=36, max_size=44))
def test_arbitrary_bytes_agree_with_the_general_decoder(buf: bytes) -> None:
    assert fast(buf) == general(buf)


def test_canonical_addr_cache_keeps_every_check() -> None:
    assert canonical_addr("FD00:77::0001") == "fd00:77::1"
    assert canonical_addr("FD00:77::0001") == "fd00:77::1"  # from the cache

    class Text(str):
        pass

    got = canonical_addr(Text("10.0.0.1"))
    assert got == "10.0.0.1" and type(got) is str
    for _ in range(2):  # a refused string is remembered, and refused again with its field
        with pytest.raises(InvalidEvent, match="where: '10.0.0.256'"):
            canonical_addr("10.0.0.256", "where")
    with pytest.raises(InvalidEvent):
        canonical_addr(b"10.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent):
        canonical_addr(167772161)  # an int is an address to ipaddress, not to us
    assert address_or_none.cache_info().maxsize == ADDR_CACHE_SIZE


BASE: dict[str, Any] = dict(origin=1, seq=1, time=1.0, node=3, view=1, reason="netlink")


@pytest.mark.parametrize(
    ("fields", "want"),
    [
        ({"addrs": ("FD00::1",)}, {"addrs": ("fd00::1",)}),
        ({"addrs": ["10.0.0.1", "fd00::1"]}, {"addrs": ("10.0.0.1", "fd00::1")}),
        ({"joined": [3]}, {"joined": (3,)}),
        ({"left": [3, 4]}, {"left": (3, 4)}),
        ({"time": 2}, {"time": 2.0}),
    ],
)
def test_membership_event_slow_path_still_converts(fields: dict[str, Any],
                                                   want: dict[str, Any]) -> None:
    ev = NodeUp(**{**BASE, **fields})
    for name, value in want.items():
        assert getattr(ev, name) == value and type(getattr(ev, name)) is type(value)


@pytest.mark.parametrize(
    "fields",
    [
        {"node": True}, {"node": -1}, {"node": 2**32}, {"view": 0}, {"seq": 0},
        {"origin": 1.0}, {"time": float("nan")}, {"time": float("inf")}, {"time": -1.0},
        {"time": True}, {"time": 10**400}, {"addrs": ("10.0.0.1", "10.0.0.1")}, {"addrs": ("nope",)},
        {"addrs": "10.0.0.1"}, {"addrs": (1,)}, {"joined": (True,)}, {"left": (-1,)},
        {"joined": 3}, {"reason": ""}, {"reason": "x" * 65}, {"reason": b"netlink"},
        {"incarnation": 2**32},
    ],
)
def test_membership_event_refusals(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent):
        NodeDown(**{**BASE, **fields})


def test_node_report_refuses_a_reason_the_event_would_refuse() -> None:
    with pytest.raises(InvalidEvent):
        NodeReport(state=NodeState.UP, node=1, reason="x" * 65)
    rep = NodeReport(state=NodeState.UP, node=1, addrs=["FD00::1", "fd00::1"], reason="x")
    assert rep.addrs == ("fd00::1",)


class Seen:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[int] = []


def test_notify_isolates_counts_and_sees_late_plugins() -> None:
    host = PluginHost()
    order: list[str] = []

    class Full:
        @hookimpl
        def clusterbus_node_up(self, event: Any, cluster: Any) -> None:
            order.append("full")

    class Raising:
        @hookimpl
        def clusterbus_node_up(self, event: Any, cluster: Any) -> None:
            order.append("raising")
            raise RuntimeError("boom")

    class EventOnly:  # takes a subset of the hook's arguments
        @hookimpl
        def clusterbus_node_up(self, event: Any) -> None:
            order.append(f"event-only:{event.node}")

    host.register(Full(), "full")
    host.register(Raising(), "raising")
    engine = Engine(origin=1, plugins=host)
    engine.report(NodeReport(state=NodeState.UP, node=5, reason="t"))
    assert sorted(order) == ["full", "raising"]
    assert host.failures["raising"] == 1
    host.register(EventOnly(), "event-only")  # after the call table was built
    order.clear()
    engine.report(NodeReport(state=NodeState.DOWN, node=5, reason="t"))
    engine.report(NodeReport(state=NodeState.UP, node=5, reason="t"))
    assert sorted(order) == ["event-only:5", "full", "raising"]
    assert host.failures["raising"] == 2 and host.failures["full"] == 0
    assert engine.seq == 3


def test_event_call_table_runs_the_topic_hook_then_clusterbus_event() -> None:
    host = PluginHost()
    calls: list[str] = []

    class Both:
        @hookimpl
        def clusterbus_event(self, cluster: Any, event: Any) -> None:  # any argument order
            calls.append(f"event:{event.TOPIC}")

        @hookimpl
        def clusterbus_node_up(self, event: Any, cluster: Any) -> None:
            calls.append("node_up")

    host.register(Both(), "both")
    engine = Engine(origin=1, plugins=host)
    engine.report(NodeReport(state=NodeState.UP, node=5, reason="t"))
    # node.coming_up has no implementation of its own hook: only clusterbus_event runs
    engine.report(NodeReport(state=NodeState.COMING_UP, node=6, reason="t"))
    assert calls == ["node_up", "event:node.up", "event:node.coming_up"]
    assert [(name, hook) for name, hook, _ in host._event_table("node.coming_up")] == [
        ("both", "clusterbus_event")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SHAPES), min_size=2, max_size=5),
       st.lists(st.tuples(st.integers(0, 219), st.integers(0, 255)), max_size=2))
def test_multi_message_datagrams_agree_with_the_general_decoder(
        msgs: list[bytes], changes: list[tuple[int, int]]) -> None:
    buf = bytearray(b"".join(msgs))
    for pos, value in changes:
        if pos < len(buf):
            buf[pos] = value
    assert fast(bytes(buf)) == general(bytes(buf))


def test_a_datagram_mixing_shapes_takes_the_general_path_whole() -> None:
    odd = message.encode(NodeState.UP, 8, ("fd00::8", "10.0.0.8"), 1)  # not a fast shape
    buf = SHAPES[0] + odd + SHAPES[1]
    assert fast(buf) == general(buf) and len(message.decode_reports(buf)) == 3


addresses = st.one_of(st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1"]),
                      st.ip_addresses().map(str))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(NodeState)), st.integers(1, 2**32 - 1),
                          st.lists(addresses, max_size=4), st.integers(0, 2**32 - 1)),
                min_size=1, max_size=3))
def test_decoded_reports_are_what_the_report_constructor_builds(
        msgs: list[tuple[NodeState, int, list[str], int]]) -> None:
    # decode_reports builds its NodeReports through the one validating constructor: the
    # same reports as NodeReport(...) of what decode() returns, or the same refusal
    try:
        buf = b"".join(message.encode(s, n, a, i) for s, n, a, i in msgs)
    except Exception:  # an address the encoder refuses (loopback, ...): nothing to send
        return
    want = [NodeReport(state=m.state, node=m.node, addrs=m.addrs, incarnation=m.incarnation,
                       reason="netlink") for m in message.decode(buf)]
    assert message.decode_reports(buf) == want


node_addresses = addresses.filter(lambda a: node_address_or_none(a) is not None)
reports = st.lists(st.tuples(st.sampled_from(list(NodeState)), st.integers(1, 4),
                             st.lists(node_addresses, max_size=3), st.integers(0, 3)),
                   max_size=30)


@settings(max_examples=200, deadline=None)
@given(reports)
def test_engine_events_equal_what_the_validating_constructor_builds(
        rs: list[tuple[NodeState, int, list[str], int]]) -> None:
    engine = Engine(origin=7, plugins=PluginHost(), clock=lambda: 1234.5)
    seqs = []
    for state, node, addrs, inc in rs:
        ev = engine.report(NodeReport(state=state, node=node, addrs=addrs, incarnation=inc,
                                      reason="test"))
        if ev is not None:
            assert type(ev)(**ev.to_dict()) == ev  # every field passes the validators
            assert type(ev) is state.event_class and ev.view == engine.view.view_id
            seqs.append(ev.seq)
    assert seqs == list(range(1, len(seqs) + 1))


class Duck:  # looks like a NodeReport, never went through its checks
    state, node, addrs, incarnation, reason = NodeState.UP, -1, ("nope",), 0, ""


@pytest.mark.parametrize("clock", [lambda: float("nan"), lambda: -1.0, lambda: True,
                                   lambda: "now", lambda: 10**400])
def test_no_public_path_builds_an_invalid_membership_event(clock: Any) -> None:
    from clusterbus.errors import LocalProtocolError

    engine = Engine(origin=1, plugins=PluginHost(), clock=clock)
    with pytest.raises(InvalidEvent):  # a bad clock: refused, seq does not move
        engine.report(NodeReport(state=NodeState.UP, node=1, reason="t"))
    assert engine.seq == 0
    with pytest.raises(LocalProtocolError):
        engine.report(Duck())  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent):  # a bad origin
        Engine(origin=-1, plugins=PluginHost(), clock=lambda: 1.0).report(
            NodeReport(state=NodeState.UP, node=1, reason="t"))
    with pytest.raises(LocalProtocolError):  # membership events only come from report()
        engine.publish(NodeUp, node=1, view=1, reason="t")


def test_engine_converts_an_int_clock_like_the_constructor() -> None:
    engine = Engine(origin=1, plugins=PluginHost(), clock=lambda: 5)
    ev = engine.report(NodeReport(state=NodeState.UP, node=1, reason="t"))
    assert ev is not None and ev.time == 5.0 and type(ev.time) is float
