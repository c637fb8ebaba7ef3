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

from ..errors import DecodeError, LocalProtocolError
from ..events import MAX_NODE
from ..view import NodeState

__all__ = [
    "NETLINK_USERSOCK",
    "MSG_TYPE",
    "VERSION",
    "Command",
    "Attr",
    "NodeMessage",
    "MessageError",
    "encode",
    "decode",
    "decode_fields",
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
MAX_ADDRS = 256  # keeps a message well below NLMSG_MAX_LEN (256 * 20 bytes)


class MessageError(DecodeError):
    """A :class:`~clusterbus.errors.DecodeError` with a short, stable ``kind`` for counters.

    :param msg: what was wrong.
    :param offset: byte offset of the fault in the datagram.
    :param kind: one of ``empty``, ``truncated``, ``bad_length``, ``control_message``,
        ``foreign_type``, ``bad_version``, ``unknown_command``, ``bad_header``,
        ``bad_attribute``, ``duplicate_attribute``, ``bad_address``, ``too_many_addrs``,
        ``missing_node``.
    """

    def __init__(self, msg: str, *, offset: int | None = None, kind: str) -> None:
        super().__init__(msg, offset=offset)
        self.kind = kind


def _align(n: int) -> int:
    """NLMSG_ALIGN / NLA_ALIGN: round up to 4 bytes."""
    return (n + 3) & ~3


class Command(enum.IntEnum):
    """Family header ``command`` byte: the state the node moved into."""

    NODE_UP = 1  #: the node is a full member
    NODE_DOWN = 2  #: the node left or died
    NODE_COMINGUP = 3  #: the node is joining
    NODE_GOINGDOWN = 4  #: the node announced that it is leaving

    @property
    def state(self) -> NodeState:
        """The :class:`~clusterbus.view.NodeState` this command announces."""
        return _STATE_FOR_COMMAND[self]

    @classmethod
    def for_state(cls, state: NodeState) -> Command:
        """The command announcing ``state``."""
        return _COMMAND_FOR_STATE[state]


_STATE_FOR_COMMAND = {
    Command.NODE_UP: NodeState.UP,
    Command.NODE_DOWN: NodeState.DOWN,
    Command.NODE_COMINGUP: NodeState.COMING_UP,
    Command.NODE_GOINGDOWN: NodeState.GOING_DOWN,
}
_COMMAND_FOR_STATE = {v: k for k, v in _STATE_FOR_COMMAND.items()}


class Attr(enum.IntEnum):
    """Attribute types (``nla_type``). Unknown types are skipped (forward compatibility)."""

    UNSPEC = 0  #: never sent
    NODE = 1  #: u32, host byte order; exactly once
    ADDR = 2  #: 4 (IPv4) or 16 (IPv6) bytes, network byte order; repeated, one per address
    INCARNATION = 3  #: u32, host byte order; at most once (absent = 0, unknown)


#: One decoded message as :func:`decode_fields` returns it:
#: ``(state, node, addrs, incarnation, seq, pid, flags)``.
Fields = tuple[NodeState, int, tuple[str, ...], int, int, int, int]


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
    """

    state: NodeState
    node: int
    addrs: tuple[str, ...] = ()
    incarnation: int = 0
    seq: int = 0
    pid: int = 0
    flags: int = 0


def _addr_bytes(addr: str) -> bytes:
    try:
        return ipaddress.ip_address(addr).packed
    except ValueError:
        raise LocalProtocolError(f"{addr!r} is not an IPv4 or IPv6 address") from None


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
) -> bytes:
    """Build one clusterbus netlink message.

    Attributes go out in the order NODE, ADDR..., INCARNATION (the decoder accepts any
    order). INCARNATION is always sent, 0 meaning unknown.

    :param state: the state to announce.
    :param node: node number (u32).
    :param addrs: IPv4/IPv6 addresses as text, one ADDR attribute each.
    :param incarnation: u32, 0 = unknown.
    :param seq: ``nlmsg_seq``.
    :param pid: ``nlmsg_pid`` (the kernel does not check it for user-to-user multicast).
    :param flags: ``nlmsg_flags``.
    :returns: the message, its length a multiple of 4.
    :raises LocalProtocolError: a value does not fit the format (a bug in the caller).
    """
    if not isinstance(state, NodeState):
        raise LocalProtocolError(f"state: expected NodeState, got {state!r}")
    if isinstance(addrs, str):
        raise LocalProtocolError("addrs: expected a sequence of addresses, got one string")
    if len(addrs) > MAX_ADDRS:
        raise LocalProtocolError(f"at most {MAX_ADDRS} addresses fit one message")
    parts = [_nla(Attr.NODE, _U32.pack(_u32(node, "node")))]
    parts += [_nla(Attr.ADDR, _addr_bytes(a)) for a in addrs]
    parts.append(_nla(Attr.INCARNATION, _U32.pack(_u32(incarnation, "incarnation"))))
    body = _FAMHDR.pack(Command.for_state(state), VERSION, 0) + b"".join(parts)
    for value, what in ((seq, "seq"), (pid, "pid")):
        _u32(value, what)
    if type(flags) is not int or not 0 <= flags <= 0xFFFF:
        raise LocalProtocolError(f"flags {flags!r} is not a u16")
    return _NLMSGHDR.pack(NLMSG_HDRLEN + len(body), MSG_TYPE, flags, seq, pid) + body


def decode(data: bytes | bytearray | memoryview) -> list[NodeMessage]:
    """Decode one datagram: one or more netlink messages back to back.

    All or nothing: if any message in the datagram is bad, the whole datagram is
    rejected, so a half-understood datagram never changes the view. NLMSG_NOOP messages
    are skipped; every other netlink control type (ERROR, DONE, OVERRUN, ...) and every
    foreign type is an error, since only clusterbus senders belong on this group.

    :param data: the datagram as received.
    :returns: the messages, in order (empty only when the datagram held only NOOPs).
    :raises MessageError: (a :class:`~clusterbus.errors.DecodeError`) the datagram is not
        a valid sequence of clusterbus messages; ``offset`` is where the fault was found.
    """
    return [NodeMessage(state=state, node=node, addrs=addrs, incarnation=incarnation,
                        seq=seq, pid=pid, flags=flags)
            for state, node, addrs, incarnation, seq, pid, flags in decode_fields(data)]


def decode_fields(data: bytes | bytearray | memoryview) -> list[Fields]:
    """Decode one datagram: one or more netlink messages back to back.

    All or nothing: if any message in the datagram is bad, the whole datagram is
    rejected, so a half-understood datagram never changes the view. NLMSG_NOOP messages
    are skipped; every other netlink control type (ERROR, DONE, OVERRUN, ...) and every
    foreign type is an error, since only clusterbus senders belong on this group.

    This is :func:`decode` without building a :class:`NodeMessage` per message (the
    netlink source's per-datagram path); the checks are the same.

    Every message's fields hold what :class:`~clusterbus.view.NodeReport` checks:
    ``node`` and ``incarnation`` are u32, ``addrs`` is a tuple of distinct canonical
    address strings (the engine takes them as they are).

    :param data: the datagram as received.
    :returns: ``(state, node, addrs, incarnation, seq, pid, flags)`` per message, in
        order (empty only when the datagram held only NOOPs).
    :raises MessageError: (a :class:`~clusterbus.errors.DecodeError`) the datagram is not
        a valid sequence of clusterbus messages; ``offset`` is where the fault was found.
    """
    buf = bytes(data)
    n = len(buf)
    out: list[Fields] = []
    pos = 0
    # The two shapes the encoder makes for nearly every message: NODE, then INCARNATION,
    # with or without one IPv4 ADDR, no attribute flags, 36 or 44 bytes (multiples of
    # 4: the next message follows without padding). One unpack each gives exactly what
    # the general path gives for those bytes; at the first message of any other shape
    # (or any field out of line) the whole datagram takes the general path.
    while pos < n:
        if n - pos < 36:
            return _decode_all(buf)
        length, mtype, flags, seq, pid, cmd, version, reserved, nla_len, nla_type, node = \
            _FAST_HEAD.unpack_from(buf, pos)
        state = _STATE_FOR_BYTE.get(cmd)
        if mtype != MSG_TYPE or version != VERSION or reserved or nla_len != 8 \
                or nla_type != _ATTR_NODE or state is None or pos + length > n:
            return _decode_all(buf)
        if length == 36:
            ilen, itype, incarnation = _FAST_INC.unpack_from(buf, pos + 28)
            if ilen != 8 or itype != _ATTR_INCARNATION:
                return _decode_all(buf)
            out.append((state, node, (), incarnation, seq, pid, flags))
        elif length == 44:
            alen, atype, addr, ilen, itype, incarnation = _FAST_V4_INC.unpack_from(buf, pos + 28)
            if alen != 8 or atype != _ATTR_ADDR or ilen != 8 or itype != _ATTR_INCARNATION:
                return _decode_all(buf)
            out.append((state, node, (_addr_text(addr),), incarnation, seq, pid, flags))
        else:
            return _decode_all(buf)
        pos += length
    return out or _decode_all(buf)  # an empty datagram: the general path says why


def _decode_all(buf: bytes) -> list[Fields]:
    if not buf:
        raise MessageError("empty datagram", offset=0, kind="empty")
    out: list[Fields] = []
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
                 pid: int) -> Fields:
    end = start + length
    pos = start + NLMSG_HDRLEN
    if end - pos < FAMHDR_LEN:
        raise MessageError("message too short for the family header", offset=pos,
                           kind="truncated")
    cmd, version, reserved = _FAMHDR.unpack_from(buf, pos)
    if version != VERSION:
        raise MessageError(f"unsupported version {version} (expected {VERSION})",
                           offset=pos + 1, kind="bad_version")
    state = _STATE_FOR_BYTE.get(cmd)
    if state is None:
        raise MessageError(f"unknown command {cmd}", offset=pos, kind="unknown_command")
    if reserved != 0:
        raise MessageError(f"reserved field is {reserved:#x}, must be 0", offset=pos + 2,
                           kind="bad_header")
    pos += FAMHDR_LEN
    node: int | None = None
    incarnation: int | None = None
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
            addrs.append(_addr_text(payload))
        elif atype == _ATTR_UNSPEC:
            raise MessageError("attribute type 0 (UNSPEC)", offset=pos + 2,
                               kind="bad_attribute")
        # NLA_NEXT (NLA_ALIGN inline); an attribute at the very end of the message may
        # lack its padding.
        pos += min((nla_len + 3) & ~3, left)
    if node is None:
        raise MessageError("missing NODE attribute", offset=start, kind="missing_node")
    # a repeated address counts once (first place kept), as NodeReport would keep it
    distinct = tuple(addrs) if len(addrs) < 2 else tuple(dict.fromkeys(addrs))
    return state, node, distinct, incarnation or 0, seq, pid, flags


_KNOWN_ATTRS = frozenset((Attr.NODE, Attr.ADDR, Attr.INCARNATION))
_ATTR_UNSPEC, _ATTR_NODE, _ATTR_ADDR, _ATTR_INCARNATION = (
    int(Attr.UNSPEC), int(Attr.NODE), int(Attr.ADDR), int(Attr.INCARNATION))
#: command byte -> state, for the decoder (no enum construction per message)
_STATE_FOR_BYTE = {int(c): s for c, s in _STATE_FOR_COMMAND.items()}


@functools.lru_cache(maxsize=4096)
def _addr_text(packed: bytes) -> str:
    """Canonical text of a 4- or 16-byte address. Cached: the same few addresses come
    back in every message about a node; bounded, so new addresses only cost a parse."""
    return str(ipaddress.ip_address(packed))


def _payload_u32(payload: bytes, name: str, offset: int) -> int:
    if len(payload) != _U32.size:
        raise MessageError(f"{name} payload is {len(payload)} bytes, expected 4",
                           offset=offset, kind="bad_attribute")
    value: int = _U32.unpack(payload)[0]
    return value
