"""IPVS generic-netlink codec (no kernel): encoded attributes decode back; bad input is a DecodeError."""

from __future__ import annotations

import pytest

from clusterbus.errors import DecodeError
from clusterbus.plugins.ipvs import codec
from clusterbus.plugins.ipvs.table import (
    AF_INET,
    AF_INET6,
    Dest,
    Entry,
    Op,
    OpKind,
    Service,
    ServiceKey,
    diff,
)

SERVICES = [
    Service(key=ServiceKey(AF_INET, 6, "10.78.0.100", 80), scheduler="mh", flags=0x19,
            timeout=300, netmask=24),
    Service(key=ServiceKey(AF_INET6, 17, "fd00:77::100", 53), scheduler="sh", flags=0x4,
            netmask=64),
    Service(key=ServiceKey(AF_INET, fwmark=10), scheduler="rr"),
    Service(key=ServiceKey(AF_INET, 132, "10.78.0.100", 9), scheduler="sed", pe_name="sip"),
]


@pytest.mark.parametrize("svc", SERVICES, ids=str)
def test_service_round_trip(svc: Service) -> None:
    assert codec.decode_service(memoryview(codec.service_full(svc))) == svc


def test_dest_round_trip_and_address_attr_kinds() -> None:
    d = Dest(af=AF_INET, addr="10.78.0.100", port=8080, forward=3, weight=7, u_threshold=9,
             l_threshold=2)
    # the same address as a service address and as a real server address: attr types differ
    svc = codec.service_id(ServiceKey(AF_INET, 6, "10.78.0.100", 80))
    dest = codec.dest_full(d)
    assert codec.attrs(svc)[codec.SVC_ADDR][:4] == bytes([10, 78, 0, 100])
    assert codec.SVC_ADDR in codec.attrs(svc) and codec.DEST_ADDR in codec.attrs(dest)
    got, conns = codec.decode_dest(memoryview(dest), AF_INET)
    assert got == d and conns == {"active": 0, "inactive": 0, "persistent": 0}


@pytest.mark.parametrize("svc", SERVICES[:2], ids=str)
def test_truncated_service_raises_decode_error(svc: Service) -> None:
    raw = codec.service_full(svc)
    refused = 0
    for cut in range(1, len(raw)):
        # never IndexError or struct.error: a DecodeError, or (cut at an attribute's end)
        # a service that lacks the later attributes
        try:
            got = codec.decode_service(memoryview(raw[:cut]))
        except DecodeError:
            refused += 1
            continue
        assert isinstance(got, Service) and got.key.af == svc.key.af
    assert refused > len(raw) // 2


def test_message_framing() -> None:
    msg = codec.message(0x1A, codec.CMD_NEW_SERVICE, codec.NLM_F_REQUEST, 42,
                        codec.nested(codec.ATTR_SERVICE, codec.service_full(SERVICES[0])), pid=7)
    [(kind, flags, seq, body)] = list(codec.messages(msg))
    assert (kind, flags, seq) == (0x1A, codec.NLM_F_REQUEST, 42)
    top = codec.genl_attrs(body)
    assert codec.decode_service(top[codec.ATTR_SERVICE]) == SERVICES[0]
    with pytest.raises(DecodeError):
        list(codec.messages(msg[:-3]))


@pytest.mark.parametrize(("af", "prefix"), [(AF_INET, 32), (AF_INET, 24), (AF_INET, 1),
                                            (AF_INET6, 128), (AF_INET6, 64)])
def test_netmask(af: int, prefix: int) -> None:
    assert codec.netmask_prefix(af, codec.netmask_value(af, prefix)) == prefix


def test_diff_orders_and_counts() -> None:
    a, b = SERVICES[0], SERVICES[2]
    d1 = Dest(af=AF_INET, addr="10.78.0.11", port=80)
    d2 = Dest(af=AF_INET, addr="10.78.0.12", port=80)
    current = {a.key: Entry(a, {d1.ident: d1, d2.ident: d2}), b.key: Entry(b)}
    want_a = Service(key=a.key, scheduler="rr")
    d1w = Dest(af=AF_INET, addr="10.78.0.11", port=80, weight=0)
    desired = {a.key: Entry(want_a, {d1w.ident: d1w})}
    plan = diff(current, desired)
    assert [op.kind for op in plan.ops] == [OpKind.DEL_DEST, OpKind.DEL_SERVICE,
                                            OpKind.SET_SERVICE, OpKind.SET_DEST]
    assert (plan.added, plan.removed, plan.changed) == (0, 2, 2)
    assert diff(current, desired, prune=False).removed == 1
    assert diff(desired, desired).ops == []
    assert Op(OpKind.SET_DEST, want_a, d1w).describe() == "set-dest tcp 10.78.0.100:80 -> 10.78.0.11:80 nat weight 0"


def test_dest_of_an_unknown_address_family_raises_decode_error() -> None:
    # found by bench/fuzz.py: a ValueError from inet_ntop escaped instead
    d = Dest(af=AF_INET, addr="10.78.0.100", port=8080, forward=3, weight=7, u_threshold=9,
             l_threshold=2)
    a = codec.attrs(codec.dest_full(d))
    assert a[codec.DEST_ADDR_FAMILY][:2] == AF_INET.to_bytes(2, "little")
    payload = (codec._u16(codec.DEST_ADDR_FAMILY, 16588)
               + codec._nla(codec.DEST_ADDR, bytes(a[codec.DEST_ADDR])))
    with pytest.raises(DecodeError):
        codec.decode_dest(memoryview(payload), AF_INET)
