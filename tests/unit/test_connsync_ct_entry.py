"""conn-sync's conntrack entry form (clusterbus.plugins.connsync.conntrack): the wire dict
round-trips through msgpack, bad input raises only its DecodeError, and kernel event bytes
(built with pyroute2's own nfct_msg encoder) parse; garbage only moves counters.
The real-kernel side is tests/integration/test_connsync_conntrack.py."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterbus import errors
from clusterbus.plugins.connsync.conntrack import Conntrack, CtEntry, DecodeError, entry_from_msg


def _entry(**kw: object) -> CtEntry:
    base: dict[str, object] = dict(family=2, proto=6, src="10.0.0.1", dst="10.0.0.2", sport=40000,
                                   dport=80, rsrc="10.0.0.2", rdst="10.0.0.1", rsport=80, rdport=40000,
                                   status=14, timeout=431999, tcp=(3, 7, 7, 0x23, 0x23))
    base.update(kw)
    return CtEntry(**base)  # type: ignore[arg-type]


def _through_msgpack(obj: object) -> object:
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False, use_list=False,
                           strict_map_key=True)


def test_wire_round_trip_and_size() -> None:
    e = _entry(mark=7, zone=3)
    assert CtEntry.from_wire(_through_msgpack(e.to_wire())) == e
    assert len(msgpack.packb(e.to_wire(), use_bin_type=True)) < 80     # compact
    six = _entry(family=10, proto=17, src="2001:db8::1", dst="::2", rsrc="::2", rdst="2001:db8::1",
                 tcp=None)
    assert CtEntry.from_wire(_through_msgpack(six.to_wire())) == six
    assert CtEntry.from_wire(six.to_wire()) == six                      # lists or tuples


@pytest.mark.parametrize("mutate, words", [
    (lambda w: [w], "must be a map"),
    (lambda w: {**w, "x": 1}, "unknown fields"),
    (lambda w: {k: v for k, v in w.items() if k != "t"}, "lacks"),
    (lambda w: {**w, "f": 3}, "unknown address family"),
    (lambda w: {**w, "f": True}, "unknown address family"),
    (lambda w: {**w, "p": 1}, "is not one with ports"),
    (lambda w: {**w, "o": (b"\x01\x02\x03", b"\0" * 4, 1, 2)}, "must be 4 bytes"),
    (lambda w: {**w, "o": ("10.0.0.1", b"\0" * 4, 1, 2)}, "must be 4 bytes"),
    (lambda w: {**w, "r": (b"\0" * 4, b"\0" * 4, 1)}, "must be [src, dst, sport, dport]"),
    (lambda w: {**w, "o": (b"\0" * 4, b"\0" * 4, 70000, 2)}, "sport out of range"),
    (lambda w: {**w, "s": -1}, "status out of range"),
    (lambda w: {**w, "t": 1.5}, "timeout out of range"),
    (lambda w: {**w, "m": 1 << 32}, "mark out of range"),
    (lambda w: {**w, "tcp": (3, 7, 7, 0)}, "'tcp' must hold 5 integers"),
    (lambda w: {**w, "tcp": (10, 7, 7, 0, 0)}, "tcp must be"),
    (lambda w: {**w, "tcp": (3, 7, 7, 0, 256)}, "tcp must be"),
    (lambda w: {**w, "p": 17}, "TCP state on a non-TCP entry"),
])
def test_from_wire_rejects(mutate, words: str) -> None:
    with pytest.raises(DecodeError) as info:
        CtEntry.from_wire(mutate(_entry().to_wire()))
    assert words in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, errors.DecodeError)


def test_construction_is_checked() -> None:
    for kw in (dict(src="10.0.0.01"), dict(family=10), dict(proto=1), dict(dport=-1),
               dict(tcp=(3, 0, 0, 0)), dict(zone=1 << 16)):
        with pytest.raises(errors.LocalProtocolError):
            _entry(**kw)
    assert _entry().key() == (2, 6, "10.0.0.1", "10.0.0.2", 40000, 80, 0)


addr4 = st.ip_addresses(v=4).map(str)
addr6 = st.ip_addresses(v=6).map(str)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def entries(draw: st.DrawFn) -> CtEntry:
    six = draw(st.booleans())
    a = addr6 if six else addr4
    proto = draw(st.sampled_from([6, 17, 132, 136, 33]))
    tcp = None
    if proto == 6 and draw(st.booleans()):
        tcp = (draw(st.integers(0, 9)), *draw(st.tuples(*[st.integers(0, 255)] * 4)))
    return CtEntry(family=10 if six else 2, proto=proto, src=draw(a), dst=draw(a), sport=draw(u16),
                   dport=draw(u16), rsrc=draw(a), rdst=draw(a), rsport=draw(u16), rdport=draw(u16),
                   status=draw(u32), timeout=draw(u32), mark=draw(u32), zone=draw(u16), tcp=tcp)


@given(entries())
@settings(max_examples=200, deadline=None)
def test_built_entries_round_trip(e: CtEntry) -> None:
    assert CtEntry.from_wire(_through_msgpack(e.to_wire())) == e


leaf = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**33), st.binary(max_size=17),
                 st.text(max_size=5), st.floats())
values = st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.sampled_from(["f", "p", "o", "r", "s", "t", "m", "z",
                                                                  "tcp", "x"]), inner, max_size=9)),
    max_leaves=24)


@given(st.one_of(values, entries().map(lambda e: e.to_wire()).flatmap(
    lambda w: st.tuples(st.just(w), st.sampled_from(sorted(w)), values).map(
        lambda t: {**t[0], t[1]: t[2]}))))
@settings(max_examples=400, deadline=None)
def test_fuzz_from_wire_raises_only_decode_error(obj: object) -> None:
    try:
        e = CtEntry.from_wire(obj)
    except DecodeError:
        return
    assert CtEntry.from_wire(e.to_wire()) == e


# -- kernel event bytes ---------------------------------------------------------------------------

def _event_bytes(kind: int, flags: int, family: int = 2, proto: int = 6) -> bytes:
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, nfct_msg

    if family == 2:
        o = NFCTAttrTuple(family=2, saddr="10.0.0.1", daddr="10.0.0.2", proto=proto, sport=1000, dport=80)
    else:
        o = NFCTAttrTuple(family=10, saddr="2001:db8::1", daddr="2001:db8::2", proto=proto,
                          sport=1000, dport=80)
    if proto == 1:
        o = NFCTAttrTuple(family=2, saddr="10.0.0.1", daddr="10.0.0.2", proto=1, icmp_id=5,
                          icmp_type=8, icmp_code=0)
    m = nfct_msg.create_from(tuple_orig=o, tuple_reply=o.reverse(), status=14, timeout=100, mark=9)
    m["header"]["type"] = kind
    m["header"]["flags"] = flags
    m["nfgen_family"] = family
    m.encode()
    return bytes(m.data)


def test_parse_events_kinds_and_counters() -> None:
    ct = Conntrack()
    data = (_event_bytes(0x100, 0x600) + _event_bytes(0x100, 0) + _event_bytes(0x102, 0, family=10, proto=17)
            + _event_bytes(0x100, 0x600, proto=1) + _event_bytes(0x103, 0))
    events = ct.parse_events(data)
    assert [e.kind for e in events] == ["new", "update", "destroy"]
    assert events[0].entry == _entry(sport=1000, rdport=1000, timeout=100, mark=9, tcp=None)
    assert events[2].entry.family == 10 and events[2].entry.proto == 17
    assert ct.counters == {"events.new": 1, "events.update": 1, "events.destroy": 1,
                           "events.skipped.unsupported": 1}


@given(st.binary(max_size=300), st.integers(0, 187), st.integers(0, 255), st.integers(0, 100))
@settings(max_examples=300, deadline=None)
def test_fuzz_event_bytes_only_move_counters(garbage: bytes, pos: int, byte: int, cut: int) -> None:
    ct = Conntrack()
    good = bytearray(_event_bytes(0x100, 0x600))
    good[pos % len(good)] = byte
    for data in (garbage, bytes(good), bytes(good[:len(good) - cut])):
        for ev in ct.parse_events(data):          # whatever parses is a valid entry
            assert CtEntry.from_wire(ev.entry.to_wire()) == ev.entry


def test_entry_from_msg_skips_what_it_does_not_carry() -> None:
    from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

    m = nfct_msg(_event_bytes(0x100, 0x600, proto=1))
    m.decode()
    assert entry_from_msg(m) is None
