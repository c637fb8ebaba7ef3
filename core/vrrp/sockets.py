"""The speaker's packet sockets: raw VRRP (IP protocol 112) and the announcement sockets.

- :class:`VrrpSocket`: one per (interface, family), bound to the interface, joined to
  224.0.0.18 / ff02::12, TTL / hop limit 255 on send (RFC 5798 §5.1.1.3, §5.1.2.3),
  multicast loop off, kernel receive timestamps on. :meth:`VrrpSocket.read` returns a
  :class:`Packet` with what the router's receive checks need (source, destination,
  TTL / hop limit); :meth:`VrrpSocket.send` sends with the instance's primary address as
  source (``IP_PKTINFO`` / ``IPV6_PKTINFO``), because the v3 checksum covers it.
- :class:`Announcer`: gratuitous ARP on an ``AF_PACKET`` socket, unsolicited neighbour
  advertisements on an ICMPv6 raw socket; frames from :mod:`clusterbus.vrrp.announce`.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from dataclasses import dataclass

from .announce import garp_frame, unsolicited_na
from .packet import IPPROTO_VRRP, MULTICAST_V4, MULTICAST_V6, VRRP_TTL

__all__ = ["Packet", "VrrpSocket", "Announcer", "arrival", "strip_ipv4"]

#: Linux IP_PKTINFO (<linux/in.h>); the socket module of Python 3.11 does not export it.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
#: <asm-generic/socket.h> SO_TIMESTAMPNS (= SCM_TIMESTAMPNS); Python 3.11 does not export it.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("=qq")  # struct timespec on 64-bit Linux
_ALL_NODES_V6 = "ff02::1"
_BYTEORDER = sys.byteorder


@dataclass(frozen=True, slots=True, kw_only=True)
class Packet:
    """One received VRRP message.

    :param payload: the VRRP message (IP payload).
    :param source: IP source address.
    :param dst: IP destination address.
    :param ttl: IPv4 TTL / IPv6 hop limit (-1 when the kernel did not say).
    :param stamp: the kernel's receive timestamp (``struct timespec``, wall clock) or None.
    """

    payload: bytes
    source: str
    dst: str
    ttl: int
    stamp: bytes | None


def strip_ipv4(data: bytes) -> tuple[str, str, int, bytes] | None:
    """A raw IPv4 socket hands us the IP header: ``(source, dst, ttl, payload)``, or
    ``None`` for a header that does not hold together."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    total = int.from_bytes(data[2:4], "big")
    if ihl < 20 or len(data) < ihl or total < ihl:
        return None
    return (socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20]), data[8],
            data[ihl:min(total, len(data))])


def arrival(stamp: bytes | None, now: float, wall: float) -> float:
    """When a packet arrived, on the caller's monotonic clock.

    RFC 5798 §6.4.2 restarts the Master_Down_Timer when an advert is received; the
    kernel's receive timestamp (SO_TIMESTAMPNS, wall clock) says when that was, before
    the speaker got round to reading it. The wall-clock age of the packet is taken off
    ``now``; an age that is negative or over a second (the wall clock was stepped) is
    ignored.

    :param stamp: the ``SCM_TIMESTAMPNS`` control data, or ``None``.
    :param now: the monotonic now.
    :param wall: the wall-clock now (``time.time()``), read together with ``now``.
    """
    if stamp is None or len(stamp) < _TIMESPEC.size:
        return now
    sec, nsec = _TIMESPEC.unpack_from(stamp)
    age = wall - (sec + nsec * 1e-9)
    return now - age if 0 <= age < 1 else now


class VrrpSocket:
    """The raw VRRP socket of one (interface, family); non-blocking.

    :raises OSError: the socket cannot be opened (not root?).
    """

    def __init__(self, interface: str, family: str, ifindex: int) -> None:
        self.interface = interface
        self.family = family
        self.ifindex = ifindex
        self.sock = _open_v6(interface, ifindex) if family == "inet6" else _open_v4(
            interface, ifindex)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def read(self) -> Packet | str | None:
        """Read one packet: a :class:`Packet`, a drop reason (``bad_ip_header``), or
        ``None`` when nothing is waiting."""
        try:
            data, anc, _flags, addr = self.sock.recvmsg(65535, 256)
        except (BlockingIOError, InterruptedError):
            return None
        stamp = None
        if self.family == "inet":
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    stamp = value
            parsed = strip_ipv4(data)
            if parsed is None:
                return "bad_ip_header"
            src, dst, ttl, payload = parsed
            return Packet(payload=payload, source=src, dst=dst, ttl=ttl, stamp=stamp)
        src = addr[0].split("%", 1)[0]
        ttl, dst = -1, MULTICAST_V6
        for level, kind, value in anc:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT:
                ttl = int.from_bytes(value[:4], _BYTEORDER)
            elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                dst = str(ipaddress.IPv6Address(value[:16]))
            elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                stamp = value
        return Packet(payload=data, source=src, dst=dst, ttl=ttl, stamp=stamp)

    def send(self, data: bytes, dst: str, src: str) -> None:
        """Send one VRRP message from ``src`` (the primary address) to ``dst``.

        :raises OSError: a full send buffer, the link going down.
        """
        if self.family == "inet":
            pktinfo = struct.pack("i4s4s", self.ifindex, socket.inet_aton(src), b"\0" * 4)
            self.sock.sendmsg([data], [(socket.IPPROTO_IP, _IP_PKTINFO, pktinfo)], 0,
                              (dst, 0))
        else:
            pktinfo = struct.pack("16si", socket.inet_pton(socket.AF_INET6, src),
                                  self.ifindex)
            self.sock.sendmsg([data], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)],
                              0, (dst, 0, 0, self.ifindex))


def _open_v4(ifname: str, ifindex: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_VRRP)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        mreqn = struct.pack("4s4si", socket.inet_aton(MULTICAST_V4), b"\0" * 4, ifindex)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        # RFC 5798 §5.1.1.3: TTL 255, so receivers can tell the advert never crossed a router.
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, VRRP_TTL)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, VRRP_TTL)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xC0)  # network control, as keepalived
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # see arrival()
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def _open_v6(ifname: str, ifindex: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, IPPROTO_VRRP)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        mreq = struct.pack("16si", socket.inet_pton(socket.AF_INET6, MULTICAST_V6), ifindex)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        # RFC 5798 §5.1.2.3: hop limit 255.
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, VRRP_TTL)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, VRRP_TTL)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0xC0)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # see arrival()
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class Announcer:
    """Sends the takeover announcements; sockets and MACs are opened once per interface
    (:meth:`prepare` at start-up, not on the first takeover)."""

    def __init__(self) -> None:
        self._macs: dict[str, bytes] = {}
        self._garp: dict[str, socket.socket] = {}
        self._na: dict[str, tuple[socket.socket, int]] = {}

    def prepare(self, interface: str, family: str, ifindex: int, primary: str) -> None:
        """Open what :meth:`burst` needs for this interface and family.

        :raises OSError: a socket cannot be opened, the interface has no MAC.
        """
        self._mac(interface)
        if family == "inet":
            self._garp_sock(interface)
        else:
            self._na_sock(interface, ifindex, primary)

    def burst(self, interface: str, family: str, addrs: tuple[str, ...], count: int) -> int:
        """``count`` gratuitous ARPs / unsolicited NAs per address; returns frames sent.
        Each frame is built once per burst, not once per copy.

        :raises OSError: sending failed (the frames before the failure were sent).
        :raises KeyError: :meth:`prepare` was not called for this interface and family.
        """
        mac = self._mac(interface)
        sent = 0
        if family == "inet":
            sock = self._garp[interface]
            frames = [garp_frame(mac, ip) for ip in addrs]
            for _ in range(count):
                for frame in frames:
                    sock.send(frame)
                    sent += 1
        else:
            sock, ifindex = self._na[interface]
            dest = (_ALL_NODES_V6, 0, 0, ifindex)
            frames = [unsolicited_na(mac, ip) for ip in addrs]
            for _ in range(count):
                for frame in frames:
                    sock.sendto(frame, dest)
                    sent += 1
        return sent

    def close(self) -> None:
        for s in self._garp.values():
            s.close()
        for s, _ in self._na.values():
            s.close()
        self._garp.clear()
        self._na.clear()

    def _mac(self, ifname: str) -> bytes:
        mac = self._macs.get(ifname)
        if mac is None:
            with open(f"/sys/class/net/{ifname}/address") as f:
                mac = bytes.fromhex(f.read().strip().replace(":", ""))
            self._macs[ifname] = mac
        return mac

    def _garp_sock(self, ifname: str) -> socket.socket:
        s = self._garp.get(ifname)
        if s is None:
            # Protocol 0: send only. A socket opened for ETH_P_ARP hooks into receive, and
            # its bind() then waits for an RCU grace period (synchronize_net) to re-hook:
            # about 10 ms, measured, on the first takeover.
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                s.bind((ifname, 0))
                s.setblocking(False)
            except BaseException:
                s.close()
                raise
            self._garp[ifname] = s
        return s

    def _na_sock(self, ifname: str, ifindex: int, primary: str) -> socket.socket:
        entry = self._na.get(ifname)
        if entry is None:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
                # RFC 4861 §7.1.2: receivers drop ND messages whose hop limit is not 255.
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
                s.bind((primary, 0, 0, ifindex))
                s.setblocking(False)
            except BaseException:
                s.close()
                raise
            entry = self._na[ifname] = (s, ifindex)
        return entry[0]
