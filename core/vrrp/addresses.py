"""The speaker's VIPs on the interface: rtnetlink address requests.

Two paths, on purpose:

- the takeover path, :class:`AddressRequests`: one ``RTM_NEWADDR`` / ``RTM_DELADDR`` per
  VIP on the speaker's own NETLINK_ROUTE socket, encoded with pyroute2's ``ifaddrmsg`` once
  at start-up (only the sequence number changes per send), sent synchronously from the
  router's effect. The kernel applies an address request inside ``sendmsg``, so the VIP is
  up before the call returns. The acks come back on the same socket (:meth:`read_acks`).
  This replaced pyroute2's ``AsyncIPRoute.addr("add")``, which cost about 0.6 ms per
  takeover (docs/vrrp.md);
- the slow path, with pyroute2's ``AsyncIPRoute``: the address dump, the source address
  of the adverts and the removal of VIPs at start (stale) and stop.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELADDR, RTM_NEWADDR
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

__all__ = ["AddressRequests", "Ack", "Overrun", "encode_addr", "dump", "remove_present",
           "NetlinkError"]

_IFA_F_NODAD = 0x02
_NLMSGHDR = struct.Struct("=IHHII")  # <linux/netlink.h> struct nlmsghdr


class Overrun(Exception):
    """The ack socket overflowed (ENOBUFS): acks were lost; the addresses are still right."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """The kernel's answer to one request.

    :param token: what the caller passed to :meth:`AddressRequests.send`.
    :param add: an add (``True``) or a removal.
    :param full: the VIP as configured (``10.77.0.100/24``).
    :param error: 0, or the positive errno.
    """

    token: Hashable
    add: bool
    full: str
    error: int


def encode_addr(add: bool, ifindex: int,
                iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> bytes:
    """``RTM_NEWADDR`` / ``RTM_DELADDR`` for one VIP, as ``ip addr add|del`` sends it
    (IFA_LOCAL = IFA_ADDRESS = the address), sequence number 0 (set per send).

    IPv6 VIPs skip duplicate address detection (IFA_F_NODAD): the address must answer at
    once, and the peer that held it before is gone or going.
    """
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
    msg["prefixlen"] = iface.network.prefixlen
    msg["flags"] = _IFA_F_NODAD if iface.version == 6 else 0
    msg["scope"] = 0
    msg["index"] = ifindex
    msg["attrs"] = [("IFA_LOCAL", str(iface.ip)), ("IFA_ADDRESS", str(iface.ip))]
    msg["header"]["type"] = RTM_NEWADDR if add else RTM_DELADDR
    # As `ip addr add`: EEXIST when the address is already there, which counts as holding it.
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_EXCL if add else 0)
    msg.encode()
    return bytes(msg.data)


class AddressRequests:
    """A NETLINK_ROUTE socket in no multicast group (it only receives our acks) and the
    requests encoded for it.

    :raises OSError: the socket cannot be opened.
    """

    def __init__(self) -> None:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                          socket.NETLINK_ROUTE)
        try:
            s.bind((0, 0))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self.sock = s
        self._seq = 0
        #: (add?, key, VIP as configured) -> request encoded with sequence number 0
        self._requests: dict[tuple[bool, Hashable, str], bytes] = {}
        #: sequence number -> the request's ack, error still 0: awaiting the kernel
        self._pending: dict[int, Ack] = {}

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
        self._pending.clear()

    def prepare(self, key: Hashable, ifindex: int, vips: Sequence[str]) -> None:
        """Encode the add and remove requests of ``vips`` (as configured) under ``key``."""
        for full in vips:
            iface = ipaddress.ip_interface(full)
            for add in (True, False):
                self._requests[(add, key, full)] = encode_addr(add, ifindex, iface)

    def send(self, add: bool, key: Hashable, full: str, token: Hashable) -> None:
        """Add or remove one VIP now; its :class:`Ack` (with ``token``) comes from
        :meth:`read_acks`.

        :raises KeyError: not prepared.
        :raises OSError: the kernel refused the send.
        """
        request = self._requests[(add, key, full)]
        self._seq = self._seq % 0xFFFFFFFF + 1
        data = bytearray(request)
        struct.pack_into("=I", data, 8, self._seq)  # nlmsghdr.nlmsg_seq
        self.sock.send(data)
        self._pending[self._seq] = Ack(token=token, add=add, full=full, error=0)

    def read_acks(self, limit: int = 64) -> list[Ack]:
        """The acks waiting on the socket (``NLMSG_ERROR``; error 0 is success), at most
        ``limit`` reads.

        :raises Overrun: ENOBUFS; the pending requests are forgotten.
        """
        out: list[Ack] = []
        for _ in range(limit):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._pending.clear()
                raise Overrun(str(exc)) from exc
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                if kind == NLMSG_ERROR and offset + _NLMSGHDR.size + 4 <= len(data):
                    (error,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                    pending = self._pending.pop(seq, None)
                    if pending is not None:
                        out.append(Ack(token=pending.token, add=pending.add,
                                       full=pending.full, error=-error))
                offset += (length + 3) & ~3
        return out


async def dump(ipr: AsyncIPRoute, ifindex: int, family: str) -> list[str]:
    """The addresses of one family on an interface."""
    fam = socket.AF_INET6 if family == "inet6" else socket.AF_INET
    out = []
    async for msg in await ipr.addr("dump", index=ifindex, family=fam):
        if msg.get("index") == ifindex and msg.get("address"):
            out.append(str(ipaddress.ip_address(msg.get("address"))))
    return out


async def remove_present(ipr: AsyncIPRoute, vips: Sequence[str], ifindex: int,
                         family: str) -> list[str]:
    """Remove those of ``vips`` (as configured) that are on the interface; return them.

    :raises NetlinkError: the kernel refused a removal (other than "not there").
    """
    present = set(await dump(ipr, ifindex, family))
    removed = []
    for vip in vips:
        iface = ipaddress.ip_interface(vip)
        if str(iface.ip) in present:
            try:
                await ipr.addr("del", index=ifindex, address=str(iface.ip),
                               prefixlen=iface.network.prefixlen)
            except NetlinkError as exc:
                if exc.code != errno.EADDRNOTAVAIL:
                    raise
                continue
            removed.append(vip)
    return removed
