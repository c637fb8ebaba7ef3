"""conn-sync's conntrack entry form and ctnetlink codec (clusterbus.plugins.connsync.conntrack):
the wire dict round-trips through msgpack, bad input raises only its DecodeError, kernel
messages built by pyroute2's own nfct_msg encoder decode, and the requests this module
builds read back through pyroute2's decoder as intended; garbage only moves counters.
The real-kernel side is tests/integration/test_connsync_conntrack.py."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterbus import errors
from clusterbus.plugins.connsync import conntrack as ctmod
from clusterbus.plugins.connsync.conntrack import (
    IPS_DST_NAT,
    IPS_SRC_NAT,
    Conntrack,
    CtEntry,
    DecodeError,
    decode_ct,
)


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

def _tcp_protoinfo(tcp: tuple[int, int, int, int, int]) -> dict:
    state, ws_o, ws_r, fl_o, fl_r = tcp
    return {"attrs": [["CTA_PROTOINFO_TCP", {"attrs": [
        ["CTA_PROTOINFO_TCP_STATE", state], ["CTA_PROTOINFO_TCP_WSCALE_ORIGINAL", ws_o],
        ["CTA_PROTOINFO_TCP_WSCALE_REPLY", ws_r], ["CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", (fl_o, 0)],
        ["CTA_PROTOINFO_TCP_FLAGS_REPLY", (fl_r, 0)]]}]]}


def _event_bytes(kind: int, flags: int, family: int = 2, proto: int = 6, tcp: bool = False) -> bytes:
    """A kernel conntrack message as pyroute2 encodes it."""
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, nfct_msg

    if family == 2:
        o = NFCTAttrTuple(family=2, saddr="10.0.0.1", daddr="10.0.0.2", proto=proto, sport=1000, dport=80)
    else:
        o = NFCTAttrTuple(family=10, saddr="2001:db8::1", daddr="2001:db8::2", proto=proto,
                          sport=1000, dport=80)
    if proto == 1:
        o = NFCTAttrTuple(family=2, saddr="10.0.0.1", daddr="10.0.0.2", proto=1, icmp_id=5,
                          icmp_type=8, icmp_code=0)
    extra = {"protoinfo": _tcp_protoinfo((3, 7, 6, 0x23, 0x22))} if tcp else {}
    m = nfct_msg.create_from(tuple_orig=o, tuple_reply=o.reverse(), status=14, timeout=100, mark=9, **extra)
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
    assert events[2].entry.src == "2001:db8::1"
    assert ct.counters == {"events.new": 1, "events.update": 1, "events.destroy": 1,
                           "events.skipped.unsupported": 1}


def test_decode_reads_pyroute2s_tcp_protoinfo() -> None:
    e = decode_ct(_event_bytes(0x100, 0x600, tcp=True), 16)
    assert e is not None and e.tcp == (3, 7, 6, 0x23, 0x22)


def _pyroute2_view(raw: bytes) -> dict:
    from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

    m = nfct_msg(raw)
    m.decode()

    def tup(name: str) -> tuple | None:
        t = m.get_attr(name)
        if t is None:
            return None
        ip, pr = t.get_attr("CTA_TUPLE_IP"), t.get_attr("CTA_TUPLE_PROTO")
        v = "V4" if m["nfgen_family"] == 2 else "V6"
        return (ip.get_attr(f"CTA_IP_{v}_SRC"), ip.get_attr(f"CTA_IP_{v}_DST"), pr.get_attr("CTA_PROTO_NUM"),
                pr.get_attr("CTA_PROTO_SRC_PORT"), pr.get_attr("CTA_PROTO_DST_PORT"))

    def nat(name: str) -> tuple | None:
        n = m.get_attr(name)
        if n is None:
            return None
        v = "V4" if m["nfgen_family"] == 2 else "V6"
        p = n.get_attr("CTA_NAT_PROTO")
        return (n.get_attr(f"CTA_NAT_{v}_MINIP"), n.get_attr(f"CTA_NAT_{v}_MAXIP"),
                p.get_attr("CTA_PROTONAT_PORT_MIN"), p.get_attr("CTA_PROTONAT_PORT_MAX"))

    info = m.get_attr("CTA_PROTOINFO")
    tcp = info.get_attr("CTA_PROTOINFO_TCP") if info is not None else None
    return {"type": m["header"]["type"], "flags": m["header"]["flags"], "seq": m["header"]["sequence_number"],
            "family": m["nfgen_family"], "orig": tup("CTA_TUPLE_ORIG"), "reply": tup("CTA_TUPLE_REPLY"),
            "status": m.get_attr("CTA_STATUS"), "timeout": m.get_attr("CTA_TIMEOUT"),
            "mark": m.get_attr("CTA_MARK"), "zone": m.get_attr("CTA_ZONE"),
            "nat_src": nat("CTA_NAT_SRC"), "nat_dst": nat("CTA_NAT_DST"),
            "tcp": None if tcp is None else tuple(tcp.get_attr(f"CTA_PROTOINFO_TCP_{k}") for k in (
                "STATE", "WSCALE_ORIGINAL", "WSCALE_REPLY", "FLAGS_ORIGINAL", "FLAGS_REPLY"))}


def test_requests_read_back_through_pyroute2() -> None:
    plain = _entry(mark=5)
    v = _pyroute2_view(ctmod.encode_ct_new(plain, seq=7, create=True))
    assert v == {"type": 0x100, "flags": 0x1 | 0x4 | 0x200 | 0x400, "seq": 7, "family": 2,
                 "orig": ("10.0.0.1", "10.0.0.2", 6, 40000, 80), "reply": ("10.0.0.2", "10.0.0.1", 6, 80, 40000),
                 "status": 0x2 | 0x4 | 0x8, "timeout": 431999, "mark": 5, "zone": None,
                 "nat_src": None, "nat_dst": None, "tcp": (3, 7, 7, (0x2B, 0xFF), (0x2B, 0xFF))}
    upd = _pyroute2_view(ctmod.encode_ct_new(plain, seq=8, create=False, timeout=60, with_status=False))
    assert (upd["flags"], upd["reply"], upd["status"], upd["timeout"]) == (0x5, None, None, 60)
    # DNAT: mirror reply tuple plus the binding; the kernel derives the translated reply
    dnat = _entry(rsrc="10.0.0.9", rsport=8080, zone=3, status=14 | IPS_DST_NAT)
    d = _pyroute2_view(ctmod.encode_ct_new(dnat, seq=9, create=True))
    assert d["reply"] == ("10.0.0.2", "10.0.0.1", 6, 80, 40000) and d["zone"] == 3
    assert d["nat_dst"] == ("10.0.0.9", "10.0.0.9", 8080, 8080) and d["nat_src"] is None
    snat6 = _entry(family=10, proto=17, src="2001:db8::1", dst="2001:db8::2", rsrc="2001:db8::2",
                   rdst="2001:db8::77", rdport=5000, tcp=None, status=IPS_SRC_NAT)
    s6 = _pyroute2_view(ctmod.encode_ct_new(snat6, seq=10, create=True))
    assert s6["nat_src"] == ("2001:db8::77", "2001:db8::77", 5000, 5000) and s6["nat_dst"] is None
    # IPVS-NAT (net.ipv4.vs.conntrack=1): the real server's reply tuple, set by IPVS with
    # no NAT binding (no NAT bits): created as it is, no binding (that would need nf_nat)
    ipvs = _entry(rsrc="10.0.1.3", rsport=8080)
    iv = _pyroute2_view(ctmod.encode_ct_new(ipvs, seq=13, create=True))
    assert iv["reply"] == ("10.0.1.3", "10.0.0.1", 6, 8080, 40000), iv
    assert iv["nat_dst"] is None and iv["nat_src"] is None
    dl = _pyroute2_view(ctmod.encode_ct_delete(plain, seq=11))
    assert (dl["type"], dl["flags"], dl["orig"], dl["reply"]) == (0x102, 0x5, v["orig"], None)
    dump = ctmod.encode_ct_dump(seq=12)
    assert dump[4:8] == (0x101).to_bytes(2, "little") + (0x301).to_bytes(2, "little") and len(dump) == 20


@given(entries())
@settings(max_examples=200, deadline=None)
def test_decode_reads_what_a_dump_would_hold(e: CtEntry) -> None:
    """decode_ct on a create request built from ``e`` (same attribute layout as a dump
    reply) gives ``e`` back when it has no NAT binding (a request for a netfilter NAT entry
    carries the mirror reply; a reply tuple altered without NAT bits is sent as it is)."""
    raw = ctmod.encode_ct_new(e, seq=1, create=True)
    got = decode_ct(raw, 16)
    assert got is not None
    if not e.status & (IPS_SRC_NAT | IPS_DST_NAT) \
            or (e.rsrc, e.rdst, e.rsport, e.rdport) == (e.dst, e.src, e.dport, e.sport):
        tcp = None if e.tcp is None else (*e.tcp[:3], e.tcp[3] | 0x08, e.tcp[4] | 0x08)
        want = CtEntry(**{**{k: getattr(e, k) for k in e.__slots__},
                          "status": (e.status & 0x6) | 0x8, "timeout": max(1, e.timeout), "tcp": tcp})
        assert got == want


@given(st.binary(max_size=300), st.integers(0, 300), st.integers(0, 255), st.integers(0, 100))
@settings(max_examples=300, deadline=None)
def test_fuzz_event_bytes_only_move_counters(garbage: bytes, pos: int, byte: int, cut: int) -> None:
    ct = Conntrack()
    good = bytearray(_event_bytes(0x100, 0x600, tcp=True))
    good[pos % len(good)] = byte
    for data in (garbage, bytes(good), bytes(good[:len(good) - cut])):
        for ev in ct.parse_events(data):          # whatever parses is a valid entry
            assert CtEntry.from_wire(ev.entry.to_wire()) == ev.entry


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_fuzz_decode_ct_raises_only_decode_error(data: bytes) -> None:
    try:
        decode_ct(data)
    except DecodeError:
        pass
