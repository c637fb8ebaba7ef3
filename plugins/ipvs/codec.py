"""IPVS generic-netlink messages: a precompiled encoder and a raw-attribute decoder.

Standard library only (sans-IO). pyroute2's generic nla encoder costs 150-250 us per IPVS
message; a 10,000-service table is 50,000 messages, so messages are built here from
precompiled :class:`struct.Struct` objects (a few microseconds each). Dumps are decoded
from the raw attributes, so a missing attribute is never replaced by a class default.

Attribute numbers are those of ``include/uapi/linux/ip_vs.h``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

from clusterbus import DecodeError

from .table import AF_INET, AF_INET6, SVC_F_HASHED, Dest, Service, ServiceKey

# -- constants (linux/ip_vs.h, linux/netlink.h) ------------------------------------------

CMD_NEW_SERVICE, CMD_SET_SERVICE, CMD_DEL_SERVICE, CMD_GET_SERVICE = 1, 2, 3, 4
CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST = 5, 6, 7, 8
CMD_NEW_DAEMON, CMD_DEL_DAEMON, CMD_GET_DAEMON = 9, 10, 11
CMD_SET_CONFIG, CMD_GET_CONFIG = 12, 13
CMD_GET_INFO = 15

ATTR_SERVICE, ATTR_DEST, ATTR_DAEMON = 1, 2, 3
ATTR_TIMEOUT_TCP, ATTR_TIMEOUT_TCP_FIN, ATTR_TIMEOUT_UDP = 4, 5, 6

SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED_NAME, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK, SVC_PE_NAME = 6, 7, 8, 9, 11

DEST_ADDR, DEST_PORT, DEST_FWD, DEST_WEIGHT, DEST_U_THRESH, DEST_L_THRESH = 1, 2, 3, 4, 5, 6
DEST_ACTIVE, DEST_INACT, DEST_PERSIST, DEST_ADDR_FAMILY = 7, 8, 9, 11

DAEMON_STATE, DAEMON_MCAST_IFN, DAEMON_SYNC_ID, DAEMON_SYNC_MAXLEN = 1, 2, 3, 4
DAEMON_MCAST_GROUP, DAEMON_MCAST_GROUP6, DAEMON_MCAST_PORT, DAEMON_MCAST_TTL = 5, 6, 7, 8
STATE_MASTER, STATE_BACKUP = 1, 2

INFO_VERSION, INFO_CONN_TAB_SIZE = 1, 2

NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
GENL_VERSION = 1

_NLMSG = struct.Struct("=IHHII")      # len, type, flags, seq, pid
_GENL = struct.Struct("=BBH")         # cmd, version, reserved
_NLA = struct.Struct("=HH")           # len, type
_NLA_U16 = struct.Struct("=HHH2x")
_NLA_U32 = struct.Struct("=HHI")
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")
_BE16 = struct.Struct(">H")
_FLAGS = struct.Struct("=HHII")       # nla header + struct ip_vs_flags {flags, mask}
_ERR = struct.Struct("=i")

HEADER_LEN = _NLMSG.size + _GENL.size


def _pad(n: int) -> int:
    return (n + 3) & ~3


def _nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _NLA.pack(n, kind) + payload + b"\0" * (_pad(n) - n)


def _u16(kind: int, value: int) -> bytes:
    return _NLA_U16.pack(6, kind, value)


def _be16(kind: int, value: int) -> bytes:
    return _NLA.pack(6, kind) + _BE16.pack(value) + b"\0\0"


def _u32(kind: int, value: int) -> bytes:
    return _NLA_U32.pack(8, kind, value)


def _str(kind: int, value: str) -> bytes:
    return _nla(kind, value.encode() + b"\0")


def _addr16(af: int, addr: str) -> bytes:
    # union nf_inet_addr is 16 bytes; ipvsadm always sends all of it.
    raw = socket.inet_pton(af, addr)
    return raw + b"\0" * (16 - len(raw))


_ADDR_CACHE: dict[tuple[int, int, str], bytes] = {}


def _addr_attr(kind: int, af: int, addr: str) -> bytes:
    # Encoded address attributes are reused: a table repeats the same addresses a lot.
    key = (kind, af, addr)
    raw = _ADDR_CACHE.get(key)
    if raw is None:
        if len(_ADDR_CACHE) > 100_000:
            _ADDR_CACHE.clear()
        raw = _ADDR_CACHE[key] = _NLA.pack(20, kind) + _addr16(af, addr)
    return raw


def netmask_value(af: int, prefix: int) -> int:
    """The kernel's ``netmask`` field: a big-endian mask for IPv4, the prefix length for IPv6."""
    if af == AF_INET6:
        return prefix
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return int(_U32.unpack(mask.to_bytes(4, "big"))[0])


def netmask_prefix(af: int, value: int) -> int:
    """Inverse of :func:`netmask_value`."""
    if af == AF_INET6:
        return value
    return bin(int.from_bytes(_U32.pack(value), "big")).count("1")


def service_id(key: ServiceKey) -> bytes:
    """The attributes that identify a service (the nested SERVICE payload)."""
    if key.fwmark:
        # ipvsadm sends TCP for firewall-mark services; the kernel keys them by mark only.
        return _u16(SVC_AF, key.af) + _u16(SVC_PROTOCOL, 6) + _u32(SVC_FWMARK, key.fwmark)
    return (_u16(SVC_AF, key.af) + _u16(SVC_PROTOCOL, key.protocol)
            + _addr_attr(SVC_ADDR, key.af, key.addr) + _be16(SVC_PORT, key.port))


def service_full(svc: Service) -> bytes:
    """Every attribute of a service: a ``set`` without one resets it in the kernel."""
    body = (service_id(svc.key) + _str(SVC_SCHED_NAME, svc.scheduler)
            + _FLAGS.pack(12, SVC_FLAGS, svc.flags, 0xFFFFFFFF)
            + _u32(SVC_TIMEOUT, svc.timeout)
            + _u32(SVC_NETMASK, netmask_value(svc.key.af, svc.netmask)))
    if svc.pe_name:
        body += _str(SVC_PE_NAME, svc.pe_name)
    return body


def dest_full(d: Dest) -> bytes:
    """Every attribute of a real server."""
    return (_addr_attr(DEST_ADDR, d.af, d.addr) + _be16(DEST_PORT, d.port)
            + _u32(DEST_FWD, d.forward) + _u32(DEST_WEIGHT, d.weight)
            + _u32(DEST_U_THRESH, d.u_threshold) + _u32(DEST_L_THRESH, d.l_threshold)
            + _u16(DEST_ADDR_FAMILY, d.af))


def dest_id(d: Dest) -> bytes:
    """The attributes that identify a real server within its service."""
    return (_addr_attr(DEST_ADDR, d.af, d.addr) + _be16(DEST_PORT, d.port)
            + _u16(DEST_ADDR_FAMILY, d.af))


def nested(kind: int, payload: bytes) -> bytes:
    """A nested attribute."""
    return _NLA.pack(4 + len(payload), kind | NLA_F_NESTED) + payload


def message(family: int, cmd: int, flags: int, seq: int, payload: bytes = b"", pid: int = 0) -> bytes:
    """A complete generic-netlink message."""
    return (_NLMSG.pack(HEADER_LEN + len(payload), family, flags, seq, pid)
            + _GENL.pack(cmd, GENL_VERSION, 0) + payload)


def daemon_attrs(*, state: int, interface: str = "", syncid: int = 0, maxlen: int = 0,
                 group: str = "", port: int = 0, ttl: int = 0) -> bytes:
    """The nested DAEMON payload for start (all given fields) or stop (``state`` only)."""
    body = _u32(DAEMON_STATE, state)
    if interface:
        body += _str(DAEMON_MCAST_IFN, interface) + _u32(DAEMON_SYNC_ID, syncid)
        if maxlen:
            body += _u16(DAEMON_SYNC_MAXLEN, maxlen)
        if group:
            if ":" in group:
                body += _nla(DAEMON_MCAST_GROUP6, socket.inet_pton(AF_INET6, group))
            else:
                body += _nla(DAEMON_MCAST_GROUP, socket.inet_pton(AF_INET, group))
        if port:
            body += _u16(DAEMON_MCAST_PORT, port)
        if ttl:
            body += _nla(DAEMON_MCAST_TTL, bytes([ttl]))
    return nested(ATTR_DAEMON, body)


def timeout_attrs(tcp: int, tcp_fin: int, udp: int) -> bytes:
    """SET_CONFIG payload (0 leaves a timeout unchanged)."""
    return _u32(ATTR_TIMEOUT_TCP, tcp) + _u32(ATTR_TIMEOUT_TCP_FIN, tcp_fin) + _u32(ATTR_TIMEOUT_UDP, udp)


# -- decoding -------------------------------------------------------------------------


def attrs(data: bytes | memoryview, start: int = 0, end: int | None = None) -> dict[int, memoryview]:
    """Attributes of a flat region, by type (nested flag masked off).

    :raises DecodeError: an attribute runs past the region or is shorter than its header.
    """
    mv = memoryview(data)
    end = len(mv) if end is None else end
    out: dict[int, memoryview] = {}
    off = start
    while off + 4 <= end:
        n, kind = _NLA.unpack_from(mv, off)
        if n < 4 or off + n > end:
            raise DecodeError(f"attribute {kind & 0x3FFF} has bad length {n}", offset=off)
        out[kind & 0x3FFF] = mv[off + 4:off + n]
        off += _pad(n)
    if off < end:
        raise DecodeError(f"{end - off} trailing bytes, shorter than an attribute header",
                          offset=off)
    return out


def _need(a: dict[int, memoryview], kind: int, what: str) -> memoryview:
    v = a.get(kind)
    if v is None:
        raise DecodeError(f"{what}: attribute {kind} missing")
    return v


def _get_u32(a: dict[int, memoryview], kind: int, default: int = 0) -> int:
    v = a.get(kind)
    if v is None:
        return default
    if len(v) < 4:
        raise DecodeError(f"attribute {kind}: {len(v)} bytes, expected 4")
    return int(_U32.unpack_from(v)[0])


def _get_u16(a: dict[int, memoryview], kind: int, default: int = 0) -> int:
    v = a.get(kind)
    if v is None:
        return default
    if len(v) < 2:
        raise DecodeError(f"attribute {kind}: {len(v)} bytes, expected 2")
    return int(_U16.unpack_from(v)[0])


def _get_be16(a: dict[int, memoryview], kind: int) -> int:
    v = a.get(kind)
    if v is None or len(v) < 2:
        return 0
    return int(_BE16.unpack_from(v)[0])


def _get_str(a: dict[int, memoryview], kind: int) -> str:
    v = a.get(kind)
    return "" if v is None else bytes(v).split(b"\0", 1)[0].decode(errors="replace")


def _get_addr(v: memoryview, af: int) -> str:
    if af not in (AF_INET, AF_INET6):
        raise DecodeError(f"address of family {af}")
    size = 16 if af == AF_INET6 else 4
    if len(v) < size:
        raise DecodeError(f"address of {len(v)} bytes for family {af}")
    return socket.inet_ntop(af, bytes(v[:size]))


def decode_service(payload: memoryview) -> Service:
    """A SERVICE nested attribute from a dump -> :class:`Service`.

    :raises DecodeError: a required attribute is missing or malformed.
    """
    a = attrs(payload)
    af = _get_u16(a, SVC_AF)
    if af not in (AF_INET, AF_INET6):
        raise DecodeError(f"service with address family {af}")
    fwmark = _get_u32(a, SVC_FWMARK)
    if fwmark:
        key = ServiceKey(af, fwmark=fwmark)
    else:
        key = ServiceKey(af, _get_u16(a, SVC_PROTOCOL),
                         _get_addr(_need(a, SVC_ADDR, "service"), af), _get_be16(a, SVC_PORT))
    flags_raw = a.get(SVC_FLAGS)
    flags = int(_U32.unpack_from(flags_raw)[0]) if flags_raw is not None and len(flags_raw) >= 4 else 0
    return Service(key=key, scheduler=_get_str(a, SVC_SCHED_NAME),
                   flags=flags & ~SVC_F_HASHED, timeout=_get_u32(a, SVC_TIMEOUT),
                   netmask=netmask_prefix(af, _get_u32(a, SVC_NETMASK)),
                   pe_name=_get_str(a, SVC_PE_NAME))


def decode_dest(payload: memoryview, svc_af: int) -> tuple[Dest, dict[str, int]]:
    """A DEST nested attribute from a dump -> (:class:`Dest`, connection counters)."""
    a = attrs(payload)
    af = _get_u16(a, DEST_ADDR_FAMILY, svc_af)
    d = Dest(af=af, addr=_get_addr(_need(a, DEST_ADDR, "dest"), af), port=_get_be16(a, DEST_PORT),
             forward=_get_u32(a, DEST_FWD) & 0x7, weight=_get_u32(a, DEST_WEIGHT),
             u_threshold=_get_u32(a, DEST_U_THRESH), l_threshold=_get_u32(a, DEST_L_THRESH))
    conns = {"active": _get_u32(a, DEST_ACTIVE), "inactive": _get_u32(a, DEST_INACT),
             "persistent": _get_u32(a, DEST_PERSIST)}
    return d, conns


def decode_daemon(payload: memoryview) -> dict[str, object]:
    """A DAEMON nested attribute -> plain data."""
    a = attrs(payload)
    state = _get_u32(a, DAEMON_STATE)
    out: dict[str, object] = {
        "state": {STATE_MASTER: "master", STATE_BACKUP: "backup"}.get(state, str(state)),
        "interface": _get_str(a, DAEMON_MCAST_IFN),
        "syncid": _get_u32(a, DAEMON_SYNC_ID),
        "maxlen": _get_u16(a, DAEMON_SYNC_MAXLEN),
        "port": _get_u16(a, DAEMON_MCAST_PORT),
    }
    if DAEMON_MCAST_GROUP in a and len(a[DAEMON_MCAST_GROUP]) >= 4:
        out["group"] = socket.inet_ntop(AF_INET, bytes(a[DAEMON_MCAST_GROUP][:4]))
    elif DAEMON_MCAST_GROUP6 in a and len(a[DAEMON_MCAST_GROUP6]) >= 16:
        out["group"] = socket.inet_ntop(AF_INET6, bytes(a[DAEMON_MCAST_GROUP6][:16]))
    if DAEMON_MCAST_TTL in a and len(a[DAEMON_MCAST_TTL]) >= 1:
        out["ttl"] = a[DAEMON_MCAST_TTL][0]
    return out


def messages(data: bytes) -> Iterator[tuple[int, int, int, memoryview]]:
    """Split a datagram into ``(type, flags, seq, body)``; body follows the nlmsghdr.

    :raises DecodeError: a message header claims more bytes than there are.
    """
    mv = memoryview(data)
    off = 0
    while off + _NLMSG.size <= len(mv):
        n, kind, flags, seq, _pid = _NLMSG.unpack_from(mv, off)
        if n < _NLMSG.size or off + n > len(mv):
            raise DecodeError(f"netlink message of length {n}", offset=off)
        yield kind, flags, seq, mv[off + _NLMSG.size:off + n]
        off += _pad(n)


def error_code(body: memoryview) -> int:
    """The (positive) errno of an NLMSG_ERROR body, 0 for an ack."""
    if len(body) < 4:
        raise DecodeError("short NLMSG_ERROR")
    return -int(_ERR.unpack_from(body)[0])


def genl_attrs(body: memoryview) -> dict[int, memoryview]:
    """Top-level attributes of a generic-netlink message body."""
    if len(body) < _GENL.size:
        raise DecodeError("short generic netlink header")
    return attrs(body, _GENL.size)
