"""The clusterbus netlink codec (sans-IO): layout, round trip, strictness on bad bytes."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterbus.addresses import node_address_or_none
from clusterbus.errors import DecodeError, LocalProtocolError
from clusterbus.netlink.message import (
    MSG_TYPE,
    VERSION,
    Attr,
    MessageError,
    NodeMessage,
    decode,
    encode,
)
from clusterbus.view import NodeState

# nlmsghdr(len 64, type 0x4342, flags 0, seq 7, pid 1234) + (cmd 1, version 1, reserved 0)
# + NODE 3 + ADDR 10.77.0.3 + ADDR fd00:77::3 + INCARNATION 9, on a little-endian host
# (the example of docs/netlink.md).
EXAMPLE_HEX = (
    "40000000" "4243" "0000" "07000000" "d2040000"
    "01" "01" "0000"
    "0800" "0100" "03000000"
    "0800" "0200" "0a4d0003"
    "1400" "0200" "fd000077000000000000000000000003"
    "0800" "0300" "09000000"
)
LITTLE = struct.pack("=H", 1) == b"\x01\x00"


def _hdr(length: int, mtype: int = MSG_TYPE, flags: int = 0, seq: int = 0, pid: int = 0) -> bytes:
    return struct.pack("=IHHII", length, mtype, flags, seq, pid)


def _nla(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * (-n % 4)


def _msg(body: bytes, cmd: int = 1, version: int = VERSION, reserved: int = 0,
         mtype: int = MSG_TYPE) -> bytes:
    fam = struct.pack("=BBH", cmd, version, reserved)
    return _hdr(16 + len(fam) + len(body), mtype) + fam + body


def _u32(v: int) -> bytes:
    return struct.pack("=I", v)


@pytest.mark.skipif(not LITTLE, reason="the documented example is little-endian")
def test_documented_example_bytes():
    data = encode(NodeState.UP, 3, ("10.77.0.3", "fd00:77::3"), 9, seq=7, pid=1234)
    assert data.hex() == EXAMPLE_HEX
    assert decode(bytes.fromhex(EXAMPLE_HEX)) == [NodeMessage(
        state=NodeState.UP, node=3, addrs=("10.77.0.3", "fd00:77::3"), incarnation=9,
        seq=7, pid=1234)]


def test_layout_is_netlink():
    data = encode(NodeState.GOING_DOWN, 0xFFFFFFFF, (), 0)
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", data)
    assert (length, mtype, flags) == (len(data), MSG_TYPE, 0)
    assert mtype >= 0x10  # NLMSG_MIN_TYPE
    assert data[16:20] == bytes([NodeState.GOING_DOWN, VERSION, 0, 0])
    assert len(data) % 4 == 0


@pytest.mark.parametrize("state", list(NodeState))
def test_each_state_round_trips(state):
    [m] = decode(encode(state, 12, ("192.0.2.1",), 4))
    assert (m.state, m.node, m.addrs, m.incarnation) == (state, 12, ("192.0.2.1",), 4)


def test_several_messages_in_one_datagram_and_noop_skipped():
    a = encode(NodeState.UP, 1, ("10.0.0.1",), 1, seq=1)
    noop = _hdr(16, mtype=1)
    b = encode(NodeState.DOWN, 2, (), 0, seq=2)
    out = decode(a + noop + b)
    assert [(m.node, m.state, m.seq) for m in out] == [(1, NodeState.UP, 1),
                                                       (2, NodeState.DOWN, 2)]


def test_attributes_in_any_order_and_unknown_attributes_skipped():
    body = (_nla(Attr.INCARNATION, _u32(5)) + _nla(99, b"\x01\x02\x03")
            + _nla(Attr.ADDR, bytes.fromhex("fd00" + "00" * 13 + "08"))
            + _nla(Attr.NODE, _u32(8)))
    [m] = decode(_msg(body, cmd=NodeState.COMING_UP))
    assert (m.state, m.node, m.incarnation, m.addrs) == (NodeState.COMING_UP, 8, 5, ("fd00::8",))


def test_last_attribute_and_message_may_lack_padding():
    body = _nla(Attr.NODE, _u32(4)) + struct.pack("=HH", 5, 99) + b"x"  # 5-byte attr at end
    data = _msg(body)
    assert len(data) % 4 == 1
    assert decode(data)[0].node == 4


def test_incarnation_absent_means_zero():
    [m] = decode(_msg(_nla(Attr.NODE, _u32(4))))
    assert m.incarnation == 0 and m.addrs == ()


BAD = {
    "empty": b"",
    "short_header": _hdr(16)[:15],
    "nlmsg_len_below_header": _hdr(8) + bytes(8),
    "nlmsg_len_past_end": _hdr(100) + bytes(20),
    "nlmsg_error": _hdr(36, mtype=2) + bytes(20),
    "nlmsg_done": _hdr(20, mtype=3) + bytes(4),
    "nlmsg_overrun": _hdr(16, mtype=4),
    "foreign_type": _msg(_nla(Attr.NODE, _u32(1)), mtype=0x10),
    "no_family_header": _hdr(18) + b"\x01\x01",
    "bad_version": _msg(_nla(Attr.NODE, _u32(1)), version=2),
    "command_zero": _msg(_nla(Attr.NODE, _u32(1)), cmd=0),
    "command_unknown": _msg(_nla(Attr.NODE, _u32(1)), cmd=7),
    "node_zero": _msg(_nla(Attr.NODE, _u32(0))),
    "addr_loopback": _msg(_nla(Attr.NODE, _u32(1)) + _nla(Attr.ADDR, bytes([127, 0, 0, 1]))),
    "addr_unspecified": _msg(_nla(Attr.NODE, _u32(1)) + _nla(Attr.ADDR, bytes(16))),
    "addr_multicast": _msg(_nla(Attr.NODE, _u32(1)) + _nla(Attr.ADDR, bytes([224, 0, 0, 1]))),
    "addr_mapped_loopback": _msg(_nla(Attr.NODE, _u32(1)) + _nla(
        Attr.ADDR, bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1]))),
    "dump_without_cookie": _msg(b"", cmd=5),
    "dump_done_without_count": _msg(_nla(Attr.COOKIE, _u32(3)), cmd=6),
    "reserved_set": _msg(_nla(Attr.NODE, _u32(1)), reserved=1),
    "missing_node": _msg(_nla(Attr.INCARNATION, _u32(1))),
    "duplicate_node": _msg(_nla(Attr.NODE, _u32(1)) + _nla(Attr.NODE, _u32(2))),
    "duplicate_incarnation": _msg(_nla(Attr.NODE, _u32(1)) + _nla(Attr.INCARNATION, _u32(1))
                                  + _nla(Attr.INCARNATION, _u32(2))),
    "node_short": _msg(_nla(Attr.NODE, b"\x01\x00")),
    "node_long": _msg(_nla(Attr.NODE, bytes(8))),
    "incarnation_short": _msg(_nla(Attr.NODE, _u32(1)) + _nla(Attr.INCARNATION, b"\x01")),
    "addr_5_bytes": _msg(_nla(Attr.NODE, _u32(1)) + _nla(Attr.ADDR, bytes(5))),
    "addr_empty": _msg(_nla(Attr.NODE, _u32(1)) + _nla(Attr.ADDR, b"")),
    "nla_len_below_header": _msg(_nla(Attr.NODE, _u32(1)) + struct.pack("=HH", 2, 99)),
    "nla_len_past_end": _msg(_nla(Attr.NODE, _u32(1)) + struct.pack("=HH", 40, 99)),
    "nla_trailing_bytes": _msg(_nla(Attr.NODE, _u32(1)) + b"\x00\x00"),
    "unspec_attr": _msg(_nla(Attr.NODE, _u32(1)) + _nla(0, b"")),
    "nested_flag_on_node": _msg(_nla(Attr.NODE | 0x8000, _u32(1))),
    "too_many_addrs": _msg(_nla(Attr.NODE, _u32(1))
                           + b"".join(_nla(Attr.ADDR, bytes([10, 0, 0, i])) for i in range(1, 18))),
    "good_then_trailing": encode(NodeState.UP, 1) + b"\x00" * 8,
    "good_then_bad": encode(NodeState.UP, 1) + _msg(b"", cmd=9),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_raises_decode_error_with_offset(name):
    with pytest.raises(DecodeError) as info:
        decode(BAD[name])
    assert isinstance(info.value, MessageError) and info.value.kind
    assert info.value.offset is not None and 0 <= info.value.offset <= len(BAD[name])


def test_error_kinds_are_specific():
    def kind(name: str) -> str:
        with pytest.raises(MessageError) as info:
            decode(BAD[name])
        return info.value.kind
    assert kind("duplicate_node") == "duplicate_attribute"
    assert kind("addr_5_bytes") == "bad_address"
    assert kind("command_unknown") == "unknown_command"
    assert kind("nlmsg_error") == "control_message"
    assert kind("missing_node") == "missing_node"
    assert kind("nlmsg_len_past_end") == "truncated"
    assert kind("node_zero") == "bad_node"
    assert kind("too_many_addrs") == "too_many_addrs"
    for name in ("addr_loopback", "addr_unspecified", "addr_multicast", "addr_mapped_loopback"):
        assert kind(name) == "bad_address"
    assert kind("dump_without_cookie") == "missing_cookie"


@pytest.mark.parametrize("args", [
    dict(state="up", node=1),
    dict(state=NodeState.UP, node=-1),
    dict(state=NodeState.UP, node=2**32),
    dict(state=NodeState.UP, node=1, incarnation=2**32),
    dict(state=NodeState.UP, node=1, addrs=("not-an-ip",)),
    dict(state=NodeState.UP, node=1, addrs="10.0.0.1"),
    dict(state=NodeState.UP, node=1, addrs=tuple(f"10.0.0.{i}" for i in range(1, 18))),
    dict(state=NodeState.UP, node=0),
    dict(state=NodeState.UP, node=1, addrs=("127.0.0.1",)),
    dict(state=NodeState.UP, node=1, addrs=("ff02::1",)),
])
def test_encode_rejects_bad_arguments(args):
    with pytest.raises(LocalProtocolError):
        encode(**args)


# -- property tests -------------------------------------------------------------------------

addresses = st.one_of(
    st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1)),
    st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1)),
).filter(lambda a: node_address_or_none(a) == a)  # node addresses, canonical
messages = st.builds(
    lambda state, node, addrs, inc, seq, pid: (state, node, tuple(addrs), inc, seq, pid),
    st.sampled_from(list(NodeState)),
    st.integers(1, 2**32 - 1),
    st.lists(addresses, max_size=6),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)


@given(st.lists(messages, min_size=1, max_size=4))
def test_round_trip(msgs):
    data = b"".join(encode(s, n, a, i, seq=q, pid=p) for s, n, a, i, q, p in msgs)
    out = decode(data)
    # a repeated address is decoded once, at its first place
    want = [(s, n, tuple(dict.fromkeys(a)), i, q, p) for s, n, a, i, q, p in msgs]
    assert [(m.state, m.node, m.addrs, m.incarnation, m.seq, m.pid) for m in out] == want


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    try:
        out = decode(data)
    except DecodeError as exc:
        assert exc.offset is not None
    else:
        assert all(isinstance(m, NodeMessage) for m in out)


@settings(max_examples=500)
@given(messages, st.data())
def test_mutated_messages_decode_or_raise_decode_error(msg, data):
    raw = bytearray(encode(msg[0], msg[1], msg[2], msg[3], seq=msg[4], pid=msg[5]))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        i = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and raw:
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[i:]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        out = decode(bytes(raw))
    except DecodeError as exc:
        assert exc.offset is not None
    else:
        assert all(isinstance(m, NodeMessage) for m in out)


def test_dump_messages_round_trip():
    from clusterbus.netlink.message import (
        DumpDone,
        DumpEntry,
        DumpRequest,
        decode_reports,
        encode_dump_done,
        encode_dump_request,
    )
    from clusterbus.view import NodeReport

    data = (encode_dump_request(77, pid=9)
            + encode(NodeState.UP, 3, ("10.0.0.3",), 2, cookie=77)
            + encode_dump_done(77, 1) + encode(NodeState.DOWN, 4))
    got = decode_reports(data)
    assert got == [DumpRequest(77, 9),
                   DumpEntry(77, NodeReport(state=NodeState.UP, node=3, addrs=("10.0.0.3",),
                                            incarnation=2, reason="netlink")),
                   DumpDone(77, 1),
                   NodeReport(state=NodeState.DOWN, node=4, reason="netlink")]
    assert [type(m).__name__ for m in decode(data)] == [
        "DumpRequest", "NodeMessage", "DumpDone", "NodeMessage"]
    assert decode(data)[1].cookie == 77
    with pytest.raises(LocalProtocolError):
        encode_dump_request(0)
