"""Netfilter connection tracking for conn-sync (``[connsync] conntrack = true``), over
ctnetlink with pyroute2's NFCT socket.

- :class:`CtEntry`: one conntrack entry in a compact form that crosses the cluster links
  (:meth:`CtEntry.to_wire` is a small msgpack-friendly dict; :meth:`CtEntry.from_wire`
  rejects anything else with :class:`DecodeError`).
- :class:`Conntrack`: the I/O side. :meth:`~Conntrack.dump` reads the table
  (``AsyncNFCTSocket.dump``), :meth:`~Conntrack.apply` creates a peer's entry or updates
  the one the kernel holds (``AsyncNFCTSocket.entry("add"/"set")``), and
  :meth:`~Conntrack.subscribe` delivers new/update/destroy events from the event loop: a
  netlink socket bound to the conntrack multicast groups, read with ``loop.add_reader``
  (no polling), its messages decoded by pyroute2's ``nfct_msg``.

What this carries: IPv4 and IPv6 entries of the port-carrying protocols (TCP, UDP,
UDP-Lite, SCTP, DCCP): both tuples (so a NAT entry's translated reply tuple is kept),
status, timeout, mark, zone, and TCP's state, window scales and flags. Not carried:
ICMP entries, helpers and expectations, sequence adjustment, labels, secmark, counters
(an entry of another protocol is skipped and counted). A created entry gets
``IP_CT_TCP_FLAG_BE_LIBERAL``: the peer's sequence windows cannot be synced, so the new
owner must not drop in-window packets it never saw (conntrackd does the same).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clusterbus import errors

__all__ = ["DecodeError", "CtEntry", "CtEvent", "Conntrack", "PORT_PROTOCOLS"]

log = logging.getLogger(__name__)

#: Protocols whose conntrack tuples carry ports: TCP, UDP, UDP-Lite, SCTP, DCCP.
PORT_PROTOCOLS = frozenset({6, 17, 136, 132, 33})

# linux/netfilter/nf_conntrack_common.h, nf_conntrack_tcp.h, nfnetlink_compat.h
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 1 << 1, 1 << 2, 1 << 3
IPS_SRC_NAT, IPS_DST_NAT = 1 << 4, 1 << 5
TCP_FLAG_BE_LIBERAL = 0x08
TCP_CONNTRACK_MAX = 10
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3
NETLINK_NETFILTER = 12
_MSG_NEW, _MSG_DELETE = (1 << 8) | 0, (1 << 8) | 2     # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_*
NLM_F_CREATE = 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
_NLMSG = struct.Struct("=IHHII")
_U32, _U16 = 0xFFFFFFFF, 0xFFFF
_AF_INET, _AF_INET6 = 2, 10
_ADDR_LEN = {_AF_INET: 4, _AF_INET6: 16}


class DecodeError(errors.DecodeError):
    """A conntrack entry from a peer (or the kernel) that does not hold together."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CtEntry:
    """One conntrack entry. ``src``/``dst``/``sport``/``dport`` is the original tuple,
    ``rsrc``/``rdst``/``rsport``/``rdport`` the reply tuple (they differ under NAT).

    ``tcp`` is ``(state, wscale_orig, wscale_reply, flags_orig, flags_reply)`` for TCP
    (``TCP_CONNTRACK_*`` state, ``IP_CT_TCP_FLAG_*`` flags), None otherwise.
    ``timeout`` is in seconds (0 in a destroy event).
    """

    family: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    rsrc: str
    rdst: str
    rsport: int
    rdport: int
    status: int = 0
    timeout: int = 0
    mark: int = 0
    zone: int = 0
    tcp: tuple[int, int, int, int, int] | None = None

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise errors.LocalProtocolError(f"CtEntry: {problem}")

    def key(self) -> tuple[int, int, str, str, int, int, int]:
        """The identity: family, protocol, original tuple and zone."""
        return (self.family, self.proto, self.src, self.dst, self.sport, self.dport, self.zone)

    def to_wire(self) -> dict[str, Any]:
        """A compact msgpack-friendly dict (addresses as packed bytes)."""
        out: dict[str, Any] = {
            "f": self.family, "p": self.proto,
            "o": (_pack(self.src), _pack(self.dst), self.sport, self.dport),
            "r": (_pack(self.rsrc), _pack(self.rdst), self.rsport, self.rdport),
            "s": self.status, "t": self.timeout}
        if self.mark:
            out["m"] = self.mark
        if self.zone:
            out["z"] = self.zone
        if self.tcp is not None:
            out["tcp"] = self.tcp
        return out

    @classmethod
    def from_wire(cls, obj: object) -> CtEntry:
        """The inverse of :meth:`to_wire`, strict.

        :raises DecodeError: not a dict of exactly those fields with values in range.
        """
        if not isinstance(obj, Mapping):
            raise DecodeError(f"conntrack entry must be a map, not {type(obj).__name__}")
        unknown = set(obj) - _WIRE_KEYS
        if unknown:
            raise DecodeError(f"conntrack entry has unknown fields {sorted(map(str, unknown))}")
        missing = _WIRE_REQUIRED - set(obj)
        if missing:
            raise DecodeError(f"conntrack entry lacks {sorted(missing)}")
        family = obj["f"]
        if type(family) is not int or family not in _ADDR_LEN:
            raise DecodeError(f"conntrack entry: unknown address family {family!r}")
        orig, reply = (_wire_tuple(obj[k], family, k) for k in ("o", "r"))
        tcp = obj.get("tcp")
        if tcp is not None:
            if not isinstance(tcp, list | tuple) or len(tcp) != 5:
                raise DecodeError("conntrack entry: 'tcp' must hold 5 integers")
            tcp = tuple(tcp)
        fields = dict(family=family, proto=obj["p"], src=orig[0], dst=orig[1], sport=orig[2],
                      dport=orig[3], rsrc=reply[0], rdst=reply[1], rsport=reply[2], rdport=reply[3],
                      status=obj["s"], timeout=obj["t"], mark=obj.get("m", 0), zone=obj.get("z", 0),
                      tcp=tcp)
        entry = object.__new__(cls)
        for name, value in fields.items():
            object.__setattr__(entry, name, value)
        problem = _problem(entry)
        if problem:
            raise DecodeError(f"conntrack entry: {problem}")
        return entry


_WIRE_KEYS = frozenset({"f", "p", "o", "r", "s", "t", "m", "z", "tcp"})
_WIRE_REQUIRED = frozenset({"f", "p", "o", "r", "s", "t"})


def _int_ok(v: object, top: int) -> bool:
    return type(v) is int and 0 <= v <= top


def _problem(e: CtEntry) -> str | None:
    """What is wrong with ``e`` (None when nothing)."""
    if type(e.family) is not int or e.family not in _ADDR_LEN:
        return f"unknown address family {e.family!r}"
    if not _int_ok(e.proto, 255) or e.proto not in PORT_PROTOCOLS:
        return f"protocol {e.proto!r} is not one with ports {sorted(PORT_PROTOCOLS)}"
    cls = ipaddress.IPv4Address if e.family == _AF_INET else ipaddress.IPv6Address
    for name in ("src", "dst", "rsrc", "rdst"):
        text = getattr(e, name)
        try:
            ok = isinstance(text, str) and str(cls(text)) == text
        except ValueError:
            ok = False
        if not ok:
            return f"{name} is not a canonical {cls.__name__}: {text!r}"
    for name, top in (("sport", _U16), ("dport", _U16), ("rsport", _U16), ("rdport", _U16),
                      ("status", _U32), ("timeout", _U32), ("mark", _U32), ("zone", _U16)):
        if not _int_ok(getattr(e, name), top):
            return f"{name} out of range: {getattr(e, name)!r}"
    if e.tcp is not None:
        if e.proto != socket.IPPROTO_TCP:
            return "TCP state on a non-TCP entry"
        if (not isinstance(e.tcp, tuple) or len(e.tcp) != 5
                or not all(_int_ok(v, 255) for v in e.tcp) or e.tcp[0] >= TCP_CONNTRACK_MAX):
            return f"tcp must be (state < {TCP_CONNTRACK_MAX}, wscale x2, flags x2) bytes: {e.tcp!r}"
    return None


def _pack(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _wire_tuple(value: object, family: int, name: str) -> tuple[str, str, int, int]:
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise DecodeError(f"conntrack entry: {name!r} must be [src, dst, sport, dport]")
    src, dst, sport, dport = value
    size = _ADDR_LEN[family]
    for raw in (src, dst):
        if not isinstance(raw, bytes) or len(raw) != size:
            raise DecodeError(f"conntrack entry: {name!r} addresses must be {size} bytes")
    if family == _AF_INET:
        return str(ipaddress.IPv4Address(src)), str(ipaddress.IPv4Address(dst)), sport, dport
    return str(ipaddress.IPv6Address(src)), str(ipaddress.IPv6Address(dst)), sport, dport


@dataclass(frozen=True, slots=True, kw_only=True)
class CtEvent:
    """A conntrack event: ``kind`` is ``"new"``, ``"update"`` or ``"destroy"``."""

    kind: str
    entry: CtEntry


# -- pyroute2 message <-> CtEntry ----------------------------------------------------------------

def _tuple_of(msg: Any, attr: str, family: int) -> tuple[str, str, int, int, int] | None:
    t = msg.get_attr(attr)
    if t is None:
        return None
    ip, proto = t.get_attr("CTA_TUPLE_IP"), t.get_attr("CTA_TUPLE_PROTO")
    if ip is None or proto is None:
        return None
    v = "V4" if family == _AF_INET else "V6"
    src, dst = ip.get_attr(f"CTA_IP_{v}_SRC"), ip.get_attr(f"CTA_IP_{v}_DST")
    num = proto.get_attr("CTA_PROTO_NUM")
    sport, dport = proto.get_attr("CTA_PROTO_SRC_PORT"), proto.get_attr("CTA_PROTO_DST_PORT")
    if None in (src, dst, num, sport, dport):
        return None
    return str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), sport, dport, num


def entry_from_msg(msg: Any) -> CtEntry | None:
    """A :class:`CtEntry` from a pyroute2 ``nfct_msg``; None for what this module does not
    carry (ICMP, other families). Malformed data raises :class:`DecodeError`."""
    family = msg.get("nfgen_family")
    if family not in _ADDR_LEN:
        return None
    orig = _tuple_of(msg, "CTA_TUPLE_ORIG", family)
    reply = _tuple_of(msg, "CTA_TUPLE_REPLY", family)
    if orig is None or reply is None or orig[4] not in PORT_PROTOCOLS:
        return None
    tcp = None
    info = msg.get_attr("CTA_PROTOINFO")
    t = info.get_attr("CTA_PROTOINFO_TCP") if info is not None else None
    if t is not None and orig[4] == socket.IPPROTO_TCP:
        fo = t.get_attr("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL") or (0, 0)
        fr = t.get_attr("CTA_PROTOINFO_TCP_FLAGS_REPLY") or (0, 0)
        tcp = (t.get_attr("CTA_PROTOINFO_TCP_STATE") or 0,
               t.get_attr("CTA_PROTOINFO_TCP_WSCALE_ORIGINAL") or 0,
               t.get_attr("CTA_PROTOINFO_TCP_WSCALE_REPLY") or 0, fo[0], fr[0])
    try:
        return CtEntry(family=family, proto=orig[4], src=orig[0], dst=orig[1], sport=orig[2],
                       dport=orig[3], rsrc=reply[0], rdst=reply[1], rsport=reply[2],
                       rdport=reply[3], status=msg.get_attr("CTA_STATUS") or 0,
                       timeout=msg.get_attr("CTA_TIMEOUT") or 0, mark=msg.get_attr("CTA_MARK") or 0,
                       zone=msg.get_attr("CTA_ZONE") or 0, tcp=tcp)
    except errors.LocalProtocolError as exc:
        raise DecodeError(f"kernel conntrack entry: {exc}") from None


def _nat_attrs(e: CtEntry) -> dict[str, Any]:
    """CTA_NAT_SRC/DST for an entry whose reply tuple is not the mirror of the original.

    The kernel marks an entry as NATed (``IPS_SRC_NAT``/``IPS_DST_NAT``, which the NAT
    hooks act on; ctnetlink refuses to set them as status bits) only when its NAT setup
    (``nf_nat_setup_info``) changes the reply tuple, so such an entry is created with the
    mirror reply tuple plus these bindings, and the kernel derives the translated reply."""
    out: dict[str, Any] = {}
    v = "V4" if e.family == _AF_INET else "V6"
    if e.rdst != e.src or e.rdport != e.sport:          # source NAT
        out["nat_src"] = {"attrs": [[f"CTA_NAT_{v}_MINIP", e.rdst], [f"CTA_NAT_{v}_MAXIP", e.rdst],
                                    ["CTA_NAT_PROTO", {"attrs": [["CTA_PROTONAT_PORT_MIN", e.rdport],
                                                                 ["CTA_PROTONAT_PORT_MAX", e.rdport]]}]]}
    if e.rsrc != e.dst or e.rsport != e.dport:          # destination NAT
        out["nat_dst"] = {"attrs": [[f"CTA_NAT_{v}_MINIP", e.rsrc], [f"CTA_NAT_{v}_MAXIP", e.rsrc],
                                    ["CTA_NAT_PROTO", {"attrs": [["CTA_PROTONAT_PORT_MIN", e.rsport],
                                                                 ["CTA_PROTONAT_PORT_MAX", e.rsport]]}]]}
    return out


def _protoinfo(e: CtEntry) -> dict[str, Any] | None:
    if e.tcp is None:
        return None
    state, ws_o, ws_r, fl_o, fl_r = e.tcp
    return {"attrs": [["CTA_PROTOINFO_TCP", {"attrs": [
        ["CTA_PROTOINFO_TCP_STATE", state],
        ["CTA_PROTOINFO_TCP_WSCALE_ORIGINAL", ws_o],
        ["CTA_PROTOINFO_TCP_WSCALE_REPLY", ws_r],
        ["CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", (fl_o | TCP_FLAG_BE_LIBERAL, 0xFF)],
        ["CTA_PROTOINFO_TCP_FLAGS_REPLY", (fl_r | TCP_FLAG_BE_LIBERAL, 0xFF)]]}]]}


# -- the I/O side ---------------------------------------------------------------------------------

class Conntrack:
    """ctnetlink in the current network namespace: dump, create/update, events.

    ``counters`` (dotted keys): ``dump.entries``, ``dump.skipped.unsupported``,
    ``apply.created``, ``apply.updated``, ``apply.failed``, ``events.new``,
    ``events.update``, ``events.destroy``, ``events.skipped.unsupported``,
    ``events.dropped.bad_message``, ``events.overrun`` (the kernel dropped events: the
    caller should dump again).
    """

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self._events: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    async def dump(self) -> list[CtEntry]:
        """Every entry this module can carry, IPv4 and IPv6 (one ctnetlink dump)."""
        out: list[CtEntry] = []
        ct = _nfct(socket.AF_UNSPEC)
        try:
            async for msg in await ct.dump():
                entry = entry_from_msg(msg)
                if entry is None:
                    self._count("dump.skipped.unsupported")
                else:
                    out.append(entry)
        finally:
            ct.close()
        self._count("dump.entries", len(out))
        return out

    async def apply(self, entry: CtEntry, *, timeout: int | None = None) -> str:
        """Create ``entry`` (a peer's) in the kernel, or update the kernel's entry of the
        same original tuple (timeout, TCP state, mark, status bits).

        :param timeout: seconds to give the entry (default: ``entry.timeout``, at least 1).
        :returns: ``"created"`` or ``"updated"``.
        :raises pyroute2.netlink.exceptions.NetlinkError: the kernel refused it.
        """
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        orig = NFCTAttrTuple(family=entry.family, saddr=entry.src, daddr=entry.dst,
                             proto=entry.proto, sport=entry.sport, dport=entry.dport)
        nat = _nat_attrs(entry)
        reply = orig.reverse() if nat else NFCTAttrTuple(
            family=entry.family, saddr=entry.rsrc, daddr=entry.rdst, proto=entry.proto,
            sport=entry.rsport, dport=entry.rdport)
        common: dict[str, Any] = {"timeout": max(1, entry.timeout if timeout is None else timeout)}
        if entry.mark:
            common["mark"] = entry.mark
        info = _protoinfo(entry)
        if info is not None:
            common["protoinfo"] = info
        # ctnetlink refuses (EBUSY) a status that would clear CONFIRMED (set on every entry
        # it creates), SEEN_REPLY or ASSURED; the NAT bits come from the NAT setup only
        status = (entry.status & (IPS_SEEN_REPLY | IPS_ASSURED)) | IPS_CONFIRMED
        ct = _nfct(entry.family)
        try:
            try:
                await ct.entry("add", tuple_orig=orig, tuple_reply=reply, zone=entry.zone or None,
                               status=status, **nat, **common)
                self._count("apply.created")
                return "created"
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    self._count("apply.failed")
                    raise
            try:
                await ct.entry("set", tuple_orig=orig, zone=entry.zone or None,
                               status=status, **common)
            except NetlinkError as exc:
                if exc.code != errno.EBUSY:
                    self._count("apply.failed")
                    raise
                # the kernel's entry has status bits ours lacks (they only ever get set)
                await ct.entry("set", tuple_orig=orig, zone=entry.zone or None, **common)
            self._count("apply.updated")
            return "updated"
        finally:
            ct.close()

    async def delete(self, entry: CtEntry) -> bool:
        """Remove the kernel's entry with ``entry``'s original tuple. :returns: whether it was there."""
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        orig = NFCTAttrTuple(family=entry.family, saddr=entry.src, daddr=entry.dst,
                             proto=entry.proto, sport=entry.sport, dport=entry.dport)
        ct = _nfct(entry.family)
        try:
            await ct.entry("del", tuple_orig=orig, zone=entry.zone or None)
            return True
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                return False
            raise
        finally:
            ct.close()

    # -- events --------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[CtEvent], None], *,
                  on_overrun: Callable[[], None] | None = None, rcvbuf: int = 8 << 20) -> None:
        """Deliver conntrack events to ``callback`` from the running event loop.

        :param on_overrun: called when the kernel dropped events (ENOBUFS): dump again.
        :param rcvbuf: socket receive buffer (``SO_RCVBUFFORCE`` when allowed).
        """
        if self._events is not None:
            raise errors.LocalProtocolError("Conntrack.subscribe called twice")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)   # SO_RCVBUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            groups = ((1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_UPDATE - 1))
                      | (1 << (NFNLGRP_CONNTRACK_DESTROY - 1)))
            sock.bind((0, groups))
        except OSError:
            sock.close()
            raise
        self._events, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._readable, callback, on_overrun)

    def _readable(self, callback: Callable[[CtEvent], None],
                  on_overrun: Callable[[], None] | None) -> None:
        sock = self._events
        if sock is None:
            return
        for _ in range(256):          # bounded: other readers get their turn
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._count("events.overrun")
                    log.warning("conntrack events overran the socket buffer: resync needed")
                    if on_overrun is not None:
                        on_overrun()
                    continue
                raise
            for event in self.parse_events(data):
                callback(event)

    def parse_events(self, data: bytes) -> list[CtEvent]:
        """The events in one netlink datagram; bad messages are counted and skipped."""
        from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

        out: list[CtEvent] = []
        off, n = 0, len(data)
        while off + _NLMSG.size <= n:
            length, kind, flags, _, _ = _NLMSG.unpack_from(data, off)
            if length < _NLMSG.size or off + length > n:
                self._count("events.dropped.bad_message")
                break
            chunk = data[off:off + length]
            off += (length + 3) & ~3
            if kind not in (_MSG_NEW, _MSG_DELETE):
                continue
            try:
                msg = nfct_msg(chunk)
                msg.decode()
                entry = entry_from_msg(msg)
            except Exception as exc:  # pyroute2's parser raises many kinds on bad bytes
                self._count("events.dropped.bad_message")
                log.debug("conntrack event dropped: %s", exc)
                continue
            if entry is None:
                self._count("events.skipped.unsupported")
                continue
            what = "destroy" if kind == _MSG_DELETE else ("new" if flags & NLM_F_CREATE else "update")
            self._count(f"events.{what}")
            out.append(CtEvent(kind=what, entry=entry))
        return out

    def close(self) -> None:
        """Stop the events (if subscribed) and close the socket."""
        sock, self._events = self._events, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()


def _nfct(family: int) -> Any:
    """pyroute2's ``AsyncNFCTSocket`` for ``family`` (requests carry it in ``nfgen_family``;
    AF_UNSPEC dumps every family). Imported here: the codec part needs no pyroute2."""
    from pyroute2.netlink.nfnetlink.nfctsocket import AsyncNFCTSocket

    return AsyncNFCTSocket(nfgen_family=family)
