"""The clusterbus netlink message: codec, sans-IO (standard library only).

One message is a netlink header (``struct nlmsghdr``), a 4-byte family header
(``u8 command, u8 version, u16 reserved``, laid out like ``struct genlmsghdr``) and netlink
attributes (``struct nlattr`` TLVs), exactly as ``include/uapi/linux/netlink.h`` defines
them. docs/netlink.md has the byte layout and an annotated example.

Netlink integers are in host byte order (the sender and the receiver share a kernel);
addresses are in network byte order, like every address netlink carries.

:func:`decode` is strict where the kernel's and pyroute2's parsers are lenient: any bytes
either decode or raise :class:`~clusterbus.errors.DecodeError` with the offset of the fault.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import struct
from dataclasses import dataclass
from typing import NamedTuple

from ..addresses import canonical_address, node_address_problem
from ..errors import DecodeError, InvalidEvent, LocalProtocolError
from ..events import MAX_NODE, MAX_NODE_ADDRS, NodeState, node_addr
from ..view import NodeReport, node_report

__all__ = [
    "NETLINK_USERSOCK",
    "MSG_TYPE",
    "VERSION",
    "CMD_DUMP",
    "CMD_DUMP_DONE",
    "Attr",
    "NodeMessage",
    "DumpRequest",
    "DumpEntry",
    "DumpDone",
    "MessageError",
    "encode",
    "encode_dump_request",
    "encode_dump_done",
    "decode",
    "decode_reports",
]

#: The netlink protocol clusterbus messages travel on (include/uapi/linux/netlink.h).
NETLINK_USERSOCK = 2
#: nlmsg_type of clusterbus messages: "CB" (0x4342), well above NLMSG_MIN_TYPE (0x10),
#: so it cannot be mistaken for a netlink control message.
MSG_TYPE = 0x4342
#: Family header version this codec speaks.
VERSION = 1

NLMSG_NOOP = 0x1  # skipped; the other control types (< NLMSG_MIN_TYPE) are refused
NLMSG_MIN_TYPE = 0x10  # types below are reserved for netlink control messages

NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host byte order)
# decode_fields' fast path: nlmsghdr + family header + NODE attribute (28 bytes), then
# INCARNATION, or one IPv4 ADDR and INCARNATION
_FAST_HEAD = struct.Struct("=IHHIIBBHHHI")
_FAST_INC = struct.Struct("=HHI")
_FAST_V4_INC = struct.Struct("=HH4sHHI")
_FAMHDR = struct.Struct("=BBH")  # command, version, reserved
_NLATTR = struct.Struct("=HH")  # nla_len, nla_type
_U32 = struct.Struct("=I")

NLMSG_HDRLEN = _NLMSGHDR.size  # 16
FAMHDR_LEN = _FAMHDR.size  # 4
NLA_HDRLEN = _NLATTR.size  # 4
NLMSG_MAX_LEN = 0xFFFF  # one message never exceeds this (netlink's documented maximum)
#: Most ADDR attributes in one message: the one limit of addresses per node
#: (:data:`clusterbus.events.MAX_NODE_ADDRS`).
MAX_ADDRS = MAX_NODE_ADDRS
#: ``command`` byte of a dump request: "answer with your full table" (docs/netlink.md,
#: "Overrun recovery"). Commands 1..4 are the :class:`~clusterbus.events.NodeState` codes.
CMD_DUMP = 5
#: ``command`` byte that ends one emitter's answer to a dump request.
CMD_DUMP_DONE = 6


class MessageError(DecodeError):
    """A :class:`~clusterbus.errors.DecodeError` with a short, stable ``kind`` for counters.

    :param msg: what was wrong.
    :param offset: byte offset of the fault in the datagram.
    :param kind: one of ``empty``, ``truncated``, ``bad_length``, ``control_message``,
        ``foreign_type``, ``bad_version``, ``unknown_command``, ``bad_header``,
        ``bad_attribute``, ``duplicate_attribute``, ``bad_address``, ``too_many_addrs``,
        ``missing_node``, ``bad_node``, ``missing_cookie``.
    """

    def __init__(self, msg: str, *, offset: int | None = None, kind: str) -> None:
        super().__init__(msg, offset=offset)
        self.kind = kind


def _align(n: int) -> int:
    """NLMSG_ALIGN / NLA_ALIGN: round up to 4 bytes."""
    return (n + 3) & ~3


class Attr(enum.IntEnum):
    """Attribute types (``nla_type``). Unknown types are skipped (forward compatibility)."""

    UNSPEC = 0  #: never sent
    NODE = 1  #: u32, host byte order; exactly once
    ADDR = 2  #: 4 (IPv4) or 16 (IPv6) bytes, network byte order; repeated, one per address
    INCARNATION = 3  #: u32, host byte order; at most once (absent = 0, unknown)
    COOKIE = 4  #: u32, non-zero: the dump request a message belongs to; at most once
    COUNT = 5  #: u32: node messages in a dump answer (DUMP_DONE only); at most once


#: One decoded message, internal: ``(command, node, addrs, incarnation, seq, pid, flags,
#: cookie, count)`` (node 0 in DUMP/DUMP_DONE, which carry no NODE).
_Fields = tuple[int, int, tuple[str, ...], int, int, int, int, int, int]


class DumpRequest(NamedTuple):
    """A dump request seen on the group (another daemon's, or ours echoed)."""

    cookie: int
    pid: int  #: ``nlmsg_pid``: the requester's port id, where answers go


class DumpEntry(NamedTuple):
    """One node of an emitter's answer to the dump request ``cookie``."""

    cookie: int
    report: NodeReport


class DumpDone(NamedTuple):
    """The end of one emitter's answer: ``total`` node messages were sent for ``cookie``."""

    cookie: int
    total: int


#: What :func:`decode_reports` returns per message.
Item = NodeReport | DumpRequest | DumpEntry | DumpDone


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeMessage:
    """One decoded clusterbus netlink message.

    :param state: the state announced (from the command byte).
    :param node: node number.
    :param addrs: the node's addresses in message order (canonical text form; an
        address repeated in the message is kept once, at its first place).
    :param incarnation: boot/incarnation number, 0 when the sender did not say.
    :param seq: ``nlmsg_seq`` as the sender set it (informational).
    :param pid: ``nlmsg_pid`` as the sender set it (informational; the trusted sender
        identity comes from SCM_CREDENTIALS, not from this field).
    :param flags: ``nlmsg_flags`` as sent.
    :param cookie: non-zero when the message is part of an answer to a dump request.
    """

    state: NodeState
    node: int
    addrs: tuple[str, ...] = ()
    incarnation: int = 0
    seq: int = 0
    pid: int = 0
    flags: int = 0
    cookie: int = 0


def _addr_bytes(addr: str) -> bytes:
    try:
        return ipaddress.ip_address(node_addr(addr)).packed
    except InvalidEvent as exc:
        raise LocalProtocolError(str(exc)) from None


def _u32(value: int, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_NODE:
        raise LocalProtocolError(f"{what} {value!r} is not a u32")
    return value


def _nla(attr_type: int, payload: bytes) -> bytes:
    length = NLA_HDRLEN + len(payload)
    return _NLATTR.pack(length, attr_type) + payload + b"\0" * (_align(length) - length)


def encode(
    state: NodeState,
    node: int,
    addrs: tuple[str, ...] | list[str] = (),
    incarnation: int = 0,
    *,
    seq: int = 0,
    pid: int = 0,
    flags: int = 0,
    cookie: int = 0,
) -> bytes:
    """Build one clusterbus netlink message.

    Attributes go out in the order NODE, ADDR..., INCARNATION, COOKIE (the decoder accepts
    any order). INCARNATION is always sent, 0 meaning unknown; COOKIE only when non-zero.

    :param state: the state to announce (its code is the ``command`` byte).
    :param node: node number (u32).
    :param addrs: IPv4/IPv6 addresses as text, one ADDR attribute each (at most
        :data:`MAX_ADDRS`).
    :param incarnation: u32, 0 = unknown.
    :param seq: ``nlmsg_seq``.
    :param pid: ``nlmsg_pid`` (the kernel does not check it for user-to-user multicast).
    :param flags: ``nlmsg_flags``.
    :param cookie: the dump request this message answers (0: a plain report).
    :returns: the message, its length a multiple of 4.
    :raises LocalProtocolError: a value does not fit the format (a bug in the caller).
    """
    if not isinstance(state, NodeState):
        raise LocalProtocolError(f"state: expected NodeState, got {state!r}")
    if isinstance(addrs, str):
        raise LocalProtocolError("addrs: expected a sequence of addresses, got one string")
    if len(addrs) > MAX_ADDRS:
        raise LocalProtocolError(f"at most {MAX_ADDRS} addresses fit one message")
    if _u32(node, "node") == 0:
        raise LocalProtocolError("node 0 is not a node number")
    parts = [_nla(Attr.NODE, _U32.pack(node))]
    parts += [_nla(Attr.ADDR, _addr_bytes(a)) for a in addrs]
    parts.append(_nla(Attr.INCARNATION, _U32.pack(_u32(incarnation, "incarnation"))))
    if cookie:
        parts.append(_nla(Attr.COOKIE, _U32.pack(_u32(cookie, "cookie"))))
    return _message(int(state), parts, seq, pid, flags)


def encode_dump_request(cookie: int, *, seq: int = 0, pid: int = 0) -> bytes:
    """A dump request (command :data:`CMD_DUMP`): emitters that keep state answer it
    with their full table, sent to the requester's port id (docs/netlink.md).

    :param cookie: non-zero u32 naming this request; every answer carries it.
    :raises LocalProtocolError: ``cookie`` is 0 or not a u32.
    """
    if cookie == 0:
        raise LocalProtocolError("a dump request needs a non-zero cookie")
    return _message(CMD_DUMP, [_nla(Attr.COOKIE, _U32.pack(_u32(cookie, "cookie")))],
                    seq, pid, 0)


def encode_dump_done(cookie: int, count: int, *, seq: int = 0, pid: int = 0) -> bytes:
    """The last message of an answer to dump request ``cookie``: ``count`` node messages
    (each with the COOKIE attribute) came before it.

    :raises LocalProtocolError: ``cookie`` is 0, or a value is not a u32.
    """
    if cookie == 0:
        raise LocalProtocolError("a dump answer needs a non-zero cookie")
    return _message(CMD_DUMP_DONE, [_nla(Attr.COOKIE, _U32.pack(_u32(cookie, "cookie"))),
                                    _nla(Attr.COUNT, _U32.pack(_u32(count, "count")))],
                    seq, pid, 0)


def _message(command: int, parts: list[bytes], seq: int, pid: int, flags: int) -> bytes:
    body = _FAMHDR.pack(command, VERSION, 0) + b"".join(parts)
    for value, what in ((seq, "seq"), (pid, "pid")):
        _u32(value, what)
    if type(flags) is not int or not 0 <= flags <= 0xFFFF:
        raise LocalProtocolError(f"flags {flags!r} is not a u16")
    return _NLMSGHDR.pack(NLMSG_HDRLEN + len(body), MSG_TYPE, flags, seq, pid) + body


def decode(data: bytes | bytearray | memoryview) -> list[NodeMessage | DumpRequest | DumpDone]:
    """Decode one datagram: one or more netlink messages back to back.

    All or nothing: if any message in the datagram is bad, the whole datagram is
    rejected, so a half-understood datagram never changes the view. NLMSG_NOOP messages
    are skipped; every other netlink control type (ERROR, DONE, OVERRUN, ...) and every
    foreign type is an error, since only clusterbus senders belong on this group.

    :param data: the datagram as received.
    :returns: the messages, in order (empty only when the datagram held only NOOPs): a
        :class:`NodeMessage` per node message (``cookie`` set in dump answers), a
        :class:`DumpRequest` or :class:`DumpDone` per dump control message.
    :raises MessageError: (a :class:`~clusterbus.errors.DecodeError`) the datagram is not
        a valid sequence of clusterbus messages; ``offset`` is where the fault was found.
    """
    out: list[NodeMessage | DumpRequest | DumpDone] = []
    for cmd, node, addrs, incarnation, seq, pid, flags, cookie, count in _decode_all(bytes(data)):
        if cmd == CMD_DUMP:
            out.append(DumpRequest(cookie, pid))
        elif cmd == CMD_DUMP_DONE:
            out.append(DumpDone(cookie, count))
        else:
            out.append(NodeMessage(state=_STATE_FOR_BYTE[cmd], node=node, addrs=addrs,
                                   incarnation=incarnation, seq=seq, pid=pid, flags=flags,
                                   cookie=cookie))
    return out


def decode_reports(data: bytes | bytearray | memoryview,
                   reason: str = "netlink") -> list[Item]:
    """Decode one datagram into what the netlink source acts on: a
    :class:`~clusterbus.view.NodeReport` per plain node message (``reason`` ``reason``),
    a :class:`DumpEntry` per node message of a dump answer, a :class:`DumpRequest` or
    :class:`DumpDone` per dump control message. Same checks as :func:`decode` (all or
    nothing): the reports are built with NodeReport's own checks, and the decoder refuses
    first, with its ``kind``, what they would refuse (node 0: ``bad_node``; an address
    that is not a node address: ``bad_address``; too many: ``too_many_addrs``).

    :raises MessageError: the datagram is not a valid sequence of clusterbus messages.
    """
    buf = bytes(data)
    n = len(buf)
    out: list[Item] = []
    pos = 0
    # The two shapes the encoder makes for nearly every message: NODE, then INCARNATION,
    # with or without one IPv4 ADDR, no attribute flags, 36 or 44 bytes (multiples of
    # 4: the next message follows without padding). One unpack each gives exactly what
    # the general path gives for those bytes; at the first message of any other shape
    # (or any field out of line) the whole datagram takes the general path.
    while pos < n:
        if n - pos < 36:
            return _reports(_decode_all(buf), reason)
        length, mtype, _flags, _seq, _pid, cmd, version, reserved, nla_len, nla_type, node = \
            _FAST_HEAD.unpack_from(buf, pos)
        state = _STATE_FOR_BYTE.get(cmd)
        if mtype != MSG_TYPE or version != VERSION or reserved or nla_len != 8 \
                or nla_type != _ATTR_NODE or state is None or pos + length > n or not node:
            return _reports(_decode_all(buf), reason)
        if length == 36:
            ilen, itype, incarnation = _FAST_INC.unpack_from(buf, pos + 28)
            if ilen != 8 or itype != _ATTR_INCARNATION:
                return _reports(_decode_all(buf), reason)
            out.append(node_report(state, node, (), incarnation, reason))
        elif length == 44:
            alen, atype, addr, ilen, itype, incarnation = _FAST_V4_INC.unpack_from(buf, pos + 28)
            text = _node_addr_text(addr)
            if alen != 8 or atype != _ATTR_ADDR or ilen != 8 or itype != _ATTR_INCARNATION \
                    or text is None:
                return _reports(_decode_all(buf), reason)
            out.append(node_report(state, node, (text,), incarnation, reason))
        else:
            return _reports(_decode_all(buf), reason)
        pos += length
    return out or _reports(_decode_all(buf), reason)  # empty: the general path says why


def _reports(fields: list[_Fields], reason: str) -> list[Item]:
    out: list[Item] = []
    for cmd, node, addrs, incarnation, _seq, pid, _flags, cookie, count in fields:
        if cmd == CMD_DUMP:
            out.append(DumpRequest(cookie, pid))
        elif cmd == CMD_DUMP_DONE:
            out.append(DumpDone(cookie, count))
        else:
            try:
                report = NodeReport(state=_STATE_FOR_BYTE[cmd], node=node, addrs=addrs,
                                    incarnation=incarnation, reason=reason)
            except InvalidEvent as exc:  # the decoder refuses all of it first; kept safe
                raise MessageError(str(exc), kind="bad_field") from None
            out.append(DumpEntry(cookie, report) if cookie else report)
    return out


def _decode_all(buf: bytes) -> list[_Fields]:
    if not buf:
        raise MessageError("empty datagram", offset=0, kind="empty")
    out: list[_Fields] = []
    pos = 0
    while pos < len(buf):
        remaining = len(buf) - pos
        if remaining < NLMSG_HDRLEN:
            raise MessageError(f"{remaining} trailing bytes, shorter than a netlink header",
                               offset=pos, kind="truncated")
        length, mtype, flags, seq, pid = _NLMSGHDR.unpack_from(buf, pos)
        if length < NLMSG_HDRLEN:
            raise MessageError(f"nlmsg_len {length} is shorter than the header",
                               offset=pos, kind="bad_length")
        if length > remaining:
            raise MessageError(f"truncated message: nlmsg_len {length}, {remaining} bytes left",
                               offset=pos, kind="truncated")
        if mtype == NLMSG_NOOP:
            pass
        elif mtype < NLMSG_MIN_TYPE:
            raise MessageError(f"netlink control message type {mtype} on a multicast group",
                               offset=pos + 4, kind="control_message")
        elif mtype != MSG_TYPE:
            raise MessageError(f"nlmsg_type {mtype:#06x} is not a clusterbus message "
                               f"({MSG_TYPE:#06x})", offset=pos + 4, kind="foreign_type")
        else:
            out.append(_decode_body(buf, pos, length, flags, seq, pid))
        # NLMSG_NEXT: the next message starts at the aligned end; the last message of a
        # datagram may lack its padding.
        pos += min(_align(length), remaining)
    return out


def _decode_body(buf: bytes, start: int, length: int, flags: int, seq: int,
                 pid: int) -> _Fields:
    end = start + length
    pos = start + NLMSG_HDRLEN
    if end - pos < FAMHDR_LEN:
        raise MessageError("message too short for the family header", offset=pos,
                           kind="truncated")
    cmd, version, reserved = _FAMHDR.unpack_from(buf, pos)
    if version != VERSION:
        raise MessageError(f"unsupported version {version} (expected {VERSION})",
                           offset=pos + 1, kind="bad_version")
    if cmd not in _STATE_FOR_BYTE and cmd != CMD_DUMP and cmd != CMD_DUMP_DONE:
        raise MessageError(f"unknown command {cmd}", offset=pos, kind="unknown_command")
    if reserved != 0:
        raise MessageError(f"reserved field is {reserved:#x}, must be 0", offset=pos + 2,
                           kind="bad_header")
    pos += FAMHDR_LEN
    node: int | None = None
    incarnation: int | None = None
    cookie: int | None = None
    count: int | None = None
    addrs: list[str] = []
    while pos < end:
        left = end - pos
        if left < NLA_HDRLEN:
            raise MessageError(f"{left} trailing bytes, shorter than an attribute header",
                               offset=pos, kind="bad_attribute")
        nla_len, raw_type = _NLATTR.unpack_from(buf, pos)
        if nla_len < NLA_HDRLEN:
            raise MessageError(f"attribute length {nla_len} is shorter than its header",
                               offset=pos, kind="bad_attribute")
        if nla_len > left:
            raise MessageError(f"attribute length {nla_len} runs past the message "
                               f"({left} bytes left)", offset=pos, kind="bad_attribute")
        atype = raw_type & NLA_TYPE_MASK
        payload = buf[pos + NLA_HDRLEN:pos + nla_len]
        if atype in _KNOWN_ATTRS and raw_type & (NLA_F_NESTED | NLA_F_NET_BYTEORDER):
            raise MessageError(f"attribute {Attr(atype).name} has flags {raw_type:#06x}",
                               offset=pos + 2, kind="bad_attribute")
        # plain ints, not Attr members: an IntEnum comparison costs an attribute lookup
        if atype == _ATTR_NODE:
            if node is not None:
                raise MessageError("duplicate NODE attribute", offset=pos,
                                   kind="duplicate_attribute")
            node = _payload_u32(payload, "NODE", pos)
            if node == 0:
                raise MessageError("node 0 is not a node number", offset=pos, kind="bad_node")
        elif atype == _ATTR_INCARNATION:
            if incarnation is not None:
                raise MessageError("duplicate INCARNATION attribute", offset=pos,
                                   kind="duplicate_attribute")
            incarnation = _payload_u32(payload, "INCARNATION", pos)
        elif atype == _ATTR_ADDR:
            if len(addrs) == MAX_ADDRS:
                raise MessageError(f"more than {MAX_ADDRS} ADDR attributes", offset=pos,
                                   kind="too_many_addrs")
            if len(payload) != 4 and len(payload) != 16:
                raise MessageError(f"ADDR payload is {len(payload)} bytes, expected 4 (IPv4) "
                                   "or 16 (IPv6)", offset=pos, kind="bad_address")
            text = _node_addr_text(payload)
            if text is None:
                canon = _canonical_text(payload)
                raise MessageError(f"ADDR {canon} {node_address_problem(canon)}, not a node "
                                   "address", offset=pos, kind="bad_address")
            addrs.append(text)
        elif atype == _ATTR_COOKIE:
            if cookie is not None:
                raise MessageError("duplicate COOKIE attribute", offset=pos,
                                   kind="duplicate_attribute")
            cookie = _payload_u32(payload, "COOKIE", pos)
            if cookie == 0:
                raise MessageError("COOKIE 0", offset=pos, kind="bad_attribute")
        elif atype == _ATTR_COUNT:
            if count is not None:
                raise MessageError("duplicate COUNT attribute", offset=pos,
                                   kind="duplicate_attribute")
            count = _payload_u32(payload, "COUNT", pos)
        elif atype == _ATTR_UNSPEC:
            raise MessageError("attribute type 0 (UNSPEC)", offset=pos + 2,
                               kind="bad_attribute")
        # NLA_NEXT (NLA_ALIGN inline); an attribute at the very end of the message may
        # lack its padding.
        pos += min((nla_len + 3) & ~3, left)
    if cmd == CMD_DUMP or cmd == CMD_DUMP_DONE:
        if cookie is None:
            raise MessageError("dump message without COOKIE", offset=start,
                               kind="missing_cookie")
        if cmd == CMD_DUMP_DONE and count is None:
            raise MessageError("DUMP_DONE without COUNT", offset=start, kind="bad_attribute")
        return cmd, 0, (), 0, seq, pid, flags, cookie, count or 0
    if node is None:
        raise MessageError("missing NODE attribute", offset=start, kind="missing_node")
    # a repeated address counts once (first place kept), as NodeReport would keep it
    distinct = tuple(addrs) if len(addrs) < 2 else tuple(dict.fromkeys(addrs))
    return cmd, node, distinct, incarnation or 0, seq, pid, flags, cookie or 0, 0


_KNOWN_ATTRS = frozenset(int(a) for a in Attr if a)
_ATTR_UNSPEC, _ATTR_NODE, _ATTR_ADDR, _ATTR_INCARNATION, _ATTR_COOKIE, _ATTR_COUNT = (
    int(Attr.UNSPEC), int(Attr.NODE), int(Attr.ADDR), int(Attr.INCARNATION),
    int(Attr.COOKIE), int(Attr.COUNT))
#: command byte -> state, for the decoder (no enum construction per message)
_STATE_FOR_BYTE = {int(s): s for s in NodeState}


def _canonical_text(packed: bytes) -> str:
    # the text of 4 or 16 bytes, then the one rule of clusterbus.addresses (an
    # IPv4-mapped address becomes the IPv4 address)
    return canonical_address(str(ipaddress.ip_address(packed)))


@functools.lru_cache(maxsize=4096)
def _node_addr_text(packed: bytes) -> str | None:
    """Canonical text of a 4- or 16-byte node address (the rule of
    :func:`clusterbus.addresses.canonical_node_address`), ``None`` when it is not one. Cached: the same
    few addresses come back in every message about a node; bounded, so new addresses
    only cost a parse."""
    text = _canonical_text(packed)
    return None if node_address_problem(text) is not None else text


def _payload_u32(payload: bytes, name: str, offset: int) -> int:
    if len(payload) != _U32.size:
        raise MessageError(f"{name} payload is {len(payload)} bytes, expected 4",
                           offset=offset, kind="bad_attribute")
    value: int = _U32.unpack(payload)[0]
    return value
