"""The VRRP speaker: the thin I/O adapter around :class:`clusterbus.vrrp.machine.Router`.

One raw IP protocol 112 socket per (interface, family) carries every instance on that
interface; each instance is one sans-IO ``Router``. Everything is an fd or a timer on the
daemon's asyncio loop: ``loop.add_reader`` for the sockets, one ``loop.call_at`` handle per
router set from ``router.next_deadline()`` after every input (no polling). Time is
``loop.time()`` (monotonic), the same clock the timers run on.

Effects of the routers:

- ``Transmit`` -> ``sendmsg`` with the instance's primary address as source (IP_PKTINFO /
  IPV6_PKTINFO), TTL / hop limit 255 (RFC 5798 §5.1.1.3, §5.1.2.3);
- ``AddAddresses`` / ``RemoveAddresses`` -> one ``RTM_NEWADDR`` / ``RTM_DELADDR`` per VIP on
  the speaker's own NETLINK_ROUTE socket, sent synchronously from the effect (the kernel
  applies an address request inside ``sendmsg``, so the VIP is up before the callback
  returns); the requests are encoded with pyroute2's ``ifaddrmsg`` once at start-up and only
  their sequence number changes. The kernel's acks come back through ``loop.add_reader``
  and become ``vip.acquired`` / ``vip.released`` events (or counted, logged errors). This
  path replaced an ``AsyncIPRoute`` worker task: the queue hop and pyroute2's request
  machinery cost about a millisecond per takeover (see docs/vrrp.md);
- ``StateChanged`` -> a ``vrrp.transition`` event, published after the rest of the batch
  (advert, addresses, announcements), so a takeover is not delayed by logging and hooks;
  a change to MASTER first calls the ``clusterbus_vrrp_prepare_master`` hook, and a veto
  keeps the instance from taking the addresses (see :meth:`VrrpSpeaker._prepare_master`);
- ``Announce`` -> gratuitous ARP (IPv4, RFC 5798 §6.4.1 / §8.1.2: a burst of ``garp_count``
  ARP requests with sender IP = target IP = VIP to broadcast, as keepalived sends them, and
  a second burst ``garp_delay`` seconds later) or unsolicited neighbour advertisements (IPv6,
  RFC 4861 §7.2.6);
- ``Discarded`` -> a per-instance counter by reason, logged at DEBUG.

Beyond keepalived: at start the speaker removes the VIPs of its instances that a crash left
on the interface, before any router starts; on cancellation it sends priority 0
(RFC 5798 §6.4.3) and removes its VIPs.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELADDR, RTM_NEWADDR
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from ..config import Config
from ..engine import Engine
from ..errors import ConfigError
from ..events import VipAcquired, VipReleased, VrrpTransition
from . import machine
from .config import InstanceConfig, check_interfaces, instances
from .packet import IPPROTO_VRRP, MULTICAST_V4, MULTICAST_V6, VRRP_TTL

__all__ = ["VrrpSpeaker", "garp_frame", "unsolicited_na"]

log = logging.getLogger(__name__)

_ETH_P_ARP = 0x0806
#: Linux IP_PKTINFO (<linux/in.h>); the socket module of Python 3.11 does not export it.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IFA_F_NODAD = 0x02
_ALL_NODES_V6 = "ff02::1"
#: <asm-generic/socket.h> SO_TIMESTAMPNS (= SCM_TIMESTAMPNS); Python 3.11 does not export it.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("=qq")  # struct timespec on 64-bit Linux
_NLMSGHDR = struct.Struct("=IHHII")  # <linux/netlink.h> struct nlmsghdr
#: How early a timer is armed before its deadline. epoll waits in whole milliseconds and
#: CPython rounds the timeout up, so a timer armed at its deadline fires 0..1 ms late (0.7 ms
#: at the median, measured); armed half a millisecond early and handled as at its deadline,
#: it fires within +-0.5 ms of it. keepalived's timerfd is that close too.
_TIMER_LEAD = 0.0005


# -- announcements ---------------------------------------------------------------------------

def garp_frame(mac: bytes, vip: str) -> bytes:
    """A gratuitous ARP request for ``vip`` as keepalived sends it (RFC 5227 §3 "ARP
    Announcement": sender IP = target IP = the address, to broadcast; the target hardware
    address is ff:ff:ff:ff:ff:ff like keepalived's, see tests/vectors/vrrp).

    :param mac: the interface's 6-byte MAC.
    :param vip: an IPv4 address.
    """
    ip = ipaddress.IPv4Address(vip).packed
    eth = b"\xff" * 6 + mac + struct.pack("!H", _ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\xff" * 6 + ip
    return eth + arp


def unsolicited_na(mac: bytes, vip: str) -> bytes:
    """An unsolicited neighbour advertisement for ``vip`` (RFC 4861 §4.4, §7.2.6): Override
    set, Solicited clear, with the target link-layer address option. The kernel fills in the
    ICMPv6 checksum.
    """
    target = ipaddress.IPv6Address(vip).packed
    flags = 0x20000000  # O: override caches that hold the old master's MAC
    return struct.pack("!BBHI", 136, 0, 0, flags) + target + bytes([2, 1]) + mac


# -- per-link sockets --------------------------------------------------------------------------

@dataclass
class _Link:
    """One raw VRRP socket: an interface and a family."""

    interface: str
    family: str
    ifindex: int
    sock: socket.socket
    routers: dict[int, _Instance] = field(default_factory=dict)  # vrid -> instance


@dataclass
class _Instance:
    cfg: InstanceConfig
    router: Any
    link: _Link
    primary: str
    timer: asyncio.TimerHandle | None = None
    deadline: float | None = None  #: the router deadline ``timer`` stands for
    garp_later: asyncio.TimerHandle | None = None
    counters: Counter[str] = field(default_factory=Counter)
    vetoed: str | None = None
    holding: set[str] = field(default_factory=set)  #: VIPs we put on the interface
    #: keys a reload changed that only a restart applies (shown by status())
    restart_needed: tuple[str, ...] = ()


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
        s.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)  # see VrrpSpeaker._arrival
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
        s.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)  # see VrrpSpeaker._arrival
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class VrrpSpeaker:
    """Runs every ``[[vrrp.instance]]`` of the configuration.

    :param engine: events go to ``engine.publish``; the veto hook through ``engine.plugins``.
    :param config: the daemon configuration.
    """

    def __init__(self, engine: Engine, config: Config) -> None:
        self.engine = engine
        self.config = config
        self.instance_configs = instances(config)
        #: speaker-wide counters: received, sent, dropped_* before a router saw the packet
        self.counters: Counter[str] = Counter()
        self._links: dict[tuple[str, str], _Link] = {}
        self._instances: dict[str, _Instance] = {}
        self._ipr: AsyncIPRoute | None = None
        #: NETLINK_ROUTE socket for VIP changes (see _address_request)
        self._rtnl: socket.socket | None = None
        self._seq = 0
        #: sequence number -> ("add" | "remove", instance, configured address): awaiting ack
        self._pending: dict[int, tuple[str, _Instance, str]] = {}
        #: (add?, instance name, VIP as configured) -> request encoded at start-up, seq 0
        self._requests: dict[tuple[bool, str, str], bytes] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._macs: dict[str, bytes] = {}
        self._garp_socks: dict[str, socket.socket] = {}
        self._na_socks: dict[str, socket.socket] = {}
        #: the routers run (reload applies to them); before that a reload waits here
        self._ready = False
        self._pending_reload: Config | None = None
        #: instances a reload added or removed: a restart applies them
        self._restart_needed: dict[str, str] = {}

    # -- start-up -------------------------------------------------------------------------

    async def _addresses(self, ifindex: int, family: str) -> list[str]:
        assert self._ipr is not None
        fam = socket.AF_INET6 if family == "inet6" else socket.AF_INET
        out = []
        async for msg in await self._ipr.addr("dump", index=ifindex, family=fam):
            if msg.get("index") == ifindex and msg.get("address"):
                out.append(str(ipaddress.ip_address(msg.get("address"))))
        return out

    async def _primary(self, ifindex: int, inst: InstanceConfig) -> str:
        """The source address of the adverts: ``unicast_src_ip``, else the interface's
        first IPv4 address, or for IPv6 its link-local address (RFC 5798 §5.1.2.1)."""
        if inst.unicast_src_ip:
            return inst.unicast_src_ip
        vips = {ipaddress.ip_interface(v).ip for v in inst.virtual_ipaddress}
        for a in await self._addresses(ifindex, inst.family):
            addr = ipaddress.ip_address(a)
            if addr in vips:
                continue
            if inst.family == "inet6" and not addr.is_link_local:
                continue
            return str(addr)
        raise ConfigError(
            f"{inst.interface} has no {'link-local IPv6' if inst.family == 'inet6' else 'IPv4'} "
            "address to send adverts from; add one or set unicast_src_ip",
            file=self.config.file, key=f"{inst.key}.interface")

    async def _remove_present(self, cfg: InstanceConfig, ifindex: int) -> list[str]:
        """Remove the instance's VIPs that are on the interface; return those removed."""
        assert self._ipr is not None
        present = set(await self._addresses(ifindex, cfg.family))
        removed = []
        for vip in cfg.virtual_ipaddress:
            iface = ipaddress.ip_interface(vip)
            if str(iface.ip) in present:
                try:
                    await self._ipr.addr("del", index=ifindex, address=str(iface.ip),
                                         prefixlen=iface.network.prefixlen)
                except NetlinkError as exc:
                    if exc.code != errno.EADDRNOTAVAIL:
                        raise
                    continue
                removed.append(vip)
        return removed

    def _router_config(self, inst: InstanceConfig, primary: str) -> Any:
        return machine.RouterConfig(
            name=inst.name,
            vrid=inst.vrid,
            priority=inst.priority,
            version=inst.version,
            family=inst.family,
            advert_interval=inst.advert_interval,
            virtual_addresses=inst.virtual_ipaddress,
            preempt=inst.preempt,
            preempt_delay=inst.preempt_delay,
            accept_mode=inst.accept,
            primary_address=primary,
            unicast_peers=inst.unicast_peer,
            start_listen=True,  # RFC 5798 §6.4.1: listen before claiming MASTER
            interface=inst.interface,
        )

    async def _setup(self) -> None:
        assert self._loop is not None
        for cfg in self.instance_configs:
            ifindex = socket.if_nametoindex(cfg.interface)
            link = self._links.get((cfg.interface, cfg.family))
            if link is None:
                opener = _open_v6 if cfg.family == "inet6" else _open_v4
                link = _Link(cfg.interface, cfg.family, ifindex, opener(cfg.interface, ifindex))
                self._links[(cfg.interface, cfg.family)] = link
                self._loop.add_reader(link.sock.fileno(), self._on_readable, link)
            # Our VIPs still on the interface were left by a crash (keepalived keeps them until
            # it restarts, and meanwhile two hosts answer ARP for the address).
            for vip in await self._remove_present(cfg, ifindex):
                self.counters["stale_vips_removed"] += 1
                log.warning("%s: removed stale VIP %s from %s (left by a crash)", cfg.name, vip,
                            cfg.interface)
            primary = await self._primary(ifindex, cfg)
            router = machine.Router(self._router_config(cfg, primary), now=self._now())
            inst = _Instance(cfg, router, link, primary)
            link.routers[cfg.vrid] = inst
            self._instances[cfg.name] = inst
            # keyed as the router's Add/RemoveAddresses effects name them: as configured
            for full in cfg.virtual_ipaddress:
                iface = ipaddress.ip_interface(full)
                for add in (True, False):
                    self._requests[(add, cfg.name, full)] = _encode_addr(add, ifindex, iface)
        self._rtnl = _open_rtnl()
        self._loop.add_reader(self._rtnl.fileno(), self._on_acks)
        # Announcement sockets and MACs now, not on the first takeover.
        for inst in self._instances.values():
            self._mac(inst.cfg.interface)
            if inst.cfg.family == "inet":
                self._garp_sock(inst.cfg.interface)
            else:
                self._na_sock(inst)
        for inst in self._instances.values():
            inst.router.start(self._now())
            self._after(inst)
        self._ready = True
        if self._pending_reload is not None:  # a SIGHUP came while we were setting up
            pending, self._pending_reload = self._pending_reload, None
            self.reload(pending)

    # -- receiving ------------------------------------------------------------------------

    def _on_readable(self, link: _Link) -> None:
        # The supervisor boundary of the receive path: one bad packet never stops the loop.
        try:
            for _ in range(64):  # bounded so one busy link cannot starve the others
                if not self._receive(link):
                    break
        except Exception:
            self.counters["receive_errors"] += 1
            log.exception("VRRP receive on %s failed", link.interface)

    def _receive(self, link: _Link) -> bool:
        try:
            data, anc, _flags, addr = link.sock.recvmsg(65535, 256)
        except (BlockingIOError, InterruptedError):
            return False
        arrived = None
        if link.family == "inet":
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                    arrived = value
            parsed = self._strip_ipv4(data)
            if parsed is None:
                return True
            src, dst, ttl, payload = parsed
        else:
            payload = data
            src = addr[0].split("%", 1)[0]
            ttl, dst = -1, MULTICAST_V6
            for level, kind, value in anc:
                if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT:
                    ttl = int.from_bytes(value[:4], "little" if _LITTLE else "big")
                elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                    dst = str(ipaddress.IPv6Address(value[:16]))
                elif level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                    arrived = value
        self.counters["received"] += 1
        if len(payload) < 2:
            self._drop("too_short", src)
            return True
        inst = link.routers.get(payload[1])  # RFC 5798 §5.2.3: byte 1 is the VRID
        if inst is None:
            self._drop("unknown_vrid", src)
            return True
        now = self._arrival(arrived)
        inst.router.receive(payload, source=src, dst=dst, ttl=ttl, now=now)
        self._after(inst)
        return True

    def _arrival(self, stamp: bytes | None) -> float:
        """When the packet arrived, on the loop's clock.

        RFC 5798 §6.4.2 restarts the Master_Down_Timer when an advert is received; the
        kernel's receive timestamp (SO_TIMESTAMPNS, wall clock) says when that was, before
        the loop got round to reading it (0.1..0.5 ms on a busy host). The wall-clock age
        of the packet is taken off the loop's monotonic now; an age that is negative or
        over a second (the wall clock was stepped) is ignored.
        """
        now = self._now()
        if stamp is None or len(stamp) < _TIMESPEC.size:
            return now
        sec, nsec = _TIMESPEC.unpack_from(stamp)
        age = time.time() - (sec + nsec * 1e-9)
        return now - age if 0 <= age < 1 else now

    def _strip_ipv4(self, data: bytes) -> tuple[str, str, int, bytes] | None:
        """The raw IPv4 socket hands us the IP header: take TTL, addresses and payload."""
        if len(data) < 20 or data[0] >> 4 != 4:
            self._drop("bad_ip_header", "?")
            return None
        ihl = (data[0] & 0x0F) * 4
        total = int.from_bytes(data[2:4], "big")
        if ihl < 20 or len(data) < ihl or total < ihl:
            self._drop("bad_ip_header", "?")
            return None
        src = socket.inet_ntoa(data[12:16])
        dst = socket.inet_ntoa(data[16:20])
        return src, dst, data[8], data[ihl:min(total, len(data))]

    def _drop(self, reason: str, source: str) -> None:
        self.counters[f"dropped_{reason}"] += 1
        log.debug("VRRP: dropped packet from %s: %s", source, reason)

    # -- timers ---------------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _on_timer(self, inst: _Instance) -> None:
        deadline, inst.timer, inst.deadline = inst.deadline, None, None
        try:
            # Armed _TIMER_LEAD early (see there): up to that much early counts as on time.
            now = self._now()
            if deadline is not None and now < deadline:
                now = deadline
            inst.router.handle_timer(now)
            self._after(inst)
        except Exception:
            self.counters["timer_errors"] += 1
            log.exception("%s: VRRP timer failed", inst.cfg.name)
            self._schedule(inst)

    def _schedule(self, inst: _Instance) -> None:
        assert self._loop is not None
        deadline = inst.router.next_deadline()
        if inst.timer is not None:
            if deadline is not None and inst.deadline == deadline:
                return
            inst.timer.cancel()
            inst.timer = inst.deadline = None
        if deadline is not None:
            inst.deadline = deadline
            inst.timer = self._loop.call_at(deadline - _TIMER_LEAD, self._on_timer, inst)

    # -- effects --------------------------------------------------------------------------

    def _after(self, inst: _Instance) -> None:
        """Carry out what the router asked for, then re-arm its timer.

        State changes are logged and published after the rest of their batch: on a
        takeover the advert, the VIPs and the gratuitous ARPs go first (RFC 5798 §6.4.2
        lists them in that order), the ``vrrp.transition`` event and its hooks after.
        """
        changes = []
        for effect in inst.router.drain():
            if isinstance(effect, machine.StateChanged):
                if effect.new is machine.State.MASTER and self._vetoed(inst, effect):
                    break  # the router was reset: the rest of this batch is void
                changes.append(effect)
            else:
                self._apply(inst, effect)
        for change in changes:
            self._state_changed(inst, change)
        self._schedule(inst)

    def _vetoed(self, inst: _Instance, effect: Any) -> bool:
        """Ask the plugins before becoming MASTER; on a veto keep the instance BACKUP.

        The machine has already decided; a veto resets it (shutdown, then start): unless it
        was preempting a live master, it sends a priority-0 advert, so a peer takes over
        after its Skew_Time instead of waiting a whole Master_Down_Interval; it listens
        again; when nobody else takes over, it asks
        the plugins again one Master_Down_Interval later. Our MASTER advert and the
        addresses never go out. The address owner (priority 255) cannot be held back: it
        claims MASTER at start by definition (RFC 5798 §6.4.1), so its veto is only logged.
        """
        reason = self._prepare_master(inst)
        if reason is None:
            return False
        if inst.router.priority == 255:
            log.warning("%s: the address owner (priority 255) ignores the veto", inst.cfg.name)
            return False
        now = self._now()
        inst.router.shutdown(now)
        inst.router.start(now)
        # The priority-0 advert tells the other backups to elect a master after their
        # Skew_Time: right when the master went silent or stepped down. When we were about
        # to preempt a live master, it would only make them take over from that master
        # (they do not check who sent it), so it stays unsent.
        handover = effect.reason != "preempt"
        for after in inst.router.drain():
            if isinstance(after, machine.Transmit) and handover:
                self._send(inst, after.data, after.dst, after.src)  # the priority-0 advert
            # StateChanged (MASTER -> INITIALIZE -> BACKUP) and RemoveAddresses are internal:
            # the addresses never went up and, seen from outside, we stayed BACKUP.
        inst.vetoed = reason
        self.engine.publish(VrrpTransition, instance=inst.cfg.name, vrid=inst.cfg.vrid,
                            family=inst.cfg.family, interface=inst.cfg.interface,
                            old=_state_name(effect.old), new="BACKUP",
                            priority=effect.priority, reason="vetoed", source="speaker")
        return True

    def _apply(self, inst: _Instance, effect: Any) -> None:
        if isinstance(effect, machine.Transmit):
            self._send(inst, effect.data, effect.dst, effect.src)
        elif isinstance(effect, machine.StateChanged):
            self._state_changed(inst, effect)
        elif isinstance(effect, machine.AddAddresses):
            for addr in effect.addrs:
                self._address_request("add", inst, addr)
        elif isinstance(effect, machine.RemoveAddresses):
            for addr in effect.addrs:
                self._address_request("remove", inst, addr)
        elif isinstance(effect, machine.Announce):
            self._announce(inst, effect.addrs, first=True)
        elif isinstance(effect, machine.Discarded):
            # The router counts it too (status() shows router.counters).
            log.debug("%s: discarded advert from %s: %s", inst.cfg.name, effect.source,
                      effect.reason)
        else:
            log.warning("%s: unknown effect %r", inst.cfg.name, effect)

    def _send(self, inst: _Instance, data: bytes, dst: str, src: str) -> None:
        link = inst.link
        try:
            if link.family == "inet":
                pktinfo = struct.pack("i4s4s", link.ifindex, socket.inet_aton(src),
                                      b"\0" * 4)
                link.sock.sendmsg([data], [(socket.IPPROTO_IP, _IP_PKTINFO, pktinfo)], 0,
                                  (dst, 0))
            else:
                pktinfo = struct.pack("16si", socket.inet_pton(socket.AF_INET6, src),
                                      link.ifindex)
                link.sock.sendmsg([data], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)],
                                  0, (dst, 0, 0, link.ifindex))
            self.counters["sent"] += 1
        except OSError as exc:
            # A full send buffer or a link going down: the next advert retries.
            self.counters["send_errors"] += 1
            log.debug("%s: send to %s failed: %s", inst.cfg.name, dst, exc)

    def _state_changed(self, inst: _Instance, effect: Any) -> None:
        old, new = _state_name(effect.old), _state_name(effect.new)
        if new == "MASTER":
            inst.vetoed = None
        elif inst.garp_later is not None:
            inst.garp_later.cancel()
            inst.garp_later = None
        log.info("%s (vrid %d, %s): %s -> %s (%s, priority %d)", inst.cfg.name, inst.cfg.vrid,
                 inst.cfg.interface, old, new, effect.reason, effect.priority)
        self.engine.publish(VrrpTransition, instance=inst.cfg.name, vrid=inst.cfg.vrid,
                            family=inst.cfg.family, interface=inst.cfg.interface, old=old,
                            new=new, priority=effect.priority, reason=effect.reason,
                            source="speaker")

    def _prepare_master(self, inst: _Instance) -> str | None:
        """Call ``clusterbus_vrrp_prepare_master`` (every plugin, each isolated); return the
        first veto as ``"plugin: reason"``, or ``None`` when all agree. Logged and counted."""
        results = self.engine.plugins.call_each("clusterbus_vrrp_prepare_master",
                                                instance=inst.cfg.name, vrid=inst.cfg.vrid,
                                                cluster=self.engine.cluster)
        for plugin, reason in results:
            if reason is not None:
                inst.counters["vetoed"] += 1
                log.warning("%s: plugin %s vetoed MASTER: %s", inst.cfg.name, plugin, reason)
                return f"{plugin}: {reason}"
        return None

    def _address_request(self, kind: str, inst: _Instance, full: str) -> None:
        """Add or remove one VIP now: the kernel applies the request inside ``sendmsg``;
        its ack arrives in :meth:`_on_acks`.

        :param full: the VIP as configured (``10.77.0.100/24``), as the router's effects
            carry it.
        """
        request = self._requests.get((kind == "add", inst.cfg.name, full))
        if request is None or self._rtnl is None:
            self.counters["address_errors"] += 1
            log.error("%s: no address request for %s %s", inst.cfg.name, kind, full)
            return
        self._seq = self._seq % 0xFFFFFFFF + 1
        data = bytearray(request)
        struct.pack_into("=I", data, 8, self._seq)  # nlmsghdr.nlmsg_seq
        try:
            self._rtnl.send(data)
        except OSError as exc:
            self.counters["address_errors"] += 1
            log.error("%s: cannot %s %s on %s: %s", inst.cfg.name, kind, full,
                      inst.cfg.interface, exc)
            return
        self._pending[self._seq] = (kind, inst, full)

    def _on_acks(self) -> None:
        """Read the kernel's answers to :meth:`_address_request` (``NLMSG_ERROR`` with
        error 0 is the ack) and publish ``vip.acquired`` / ``vip.released``."""
        assert self._rtnl is not None
        for _ in range(64):  # bounded, like the receive path
            try:
                data = self._rtnl.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ENOBUFS: acks were lost; the addresses are still right
                self.counters["netlink_overruns"] += 1
                log.warning("VRRP address socket: %s", exc)
                self._pending.clear()
                return
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                if kind == NLMSG_ERROR and offset + _NLMSGHDR.size + 4 <= len(data):
                    (error,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                    self._acked(seq, -error)
                offset += (length + 3) & ~3

    def _acked(self, seq: int, error: int) -> None:
        pending = self._pending.pop(seq, None)
        if pending is None:
            return
        kind, inst, full = pending
        ip = str(ipaddress.ip_interface(full).ip)
        if kind == "add":
            if error and error != errno.EEXIST:
                self.counters["address_errors"] += 1
                log.error("%s: cannot add %s to %s: %s", inst.cfg.name, full,
                          inst.cfg.interface, os.strerror(error))
                return
            inst.holding.add(ip)
            self.engine.publish(VipAcquired, instance=inst.cfg.name, address=full,
                                interface=inst.cfg.interface)
        else:
            inst.holding.discard(ip)
            if error:
                if error != errno.EADDRNOTAVAIL:
                    self.counters["address_errors"] += 1
                    log.error("%s: cannot remove %s from %s: %s", inst.cfg.name, full,
                              inst.cfg.interface, os.strerror(error))
                return
            self.engine.publish(VipReleased, instance=inst.cfg.name, address=full,
                                interface=inst.cfg.interface)

    def _mac(self, ifname: str) -> bytes:
        mac = self._macs.get(ifname)
        if mac is None:
            with open(f"/sys/class/net/{ifname}/address") as f:
                mac = bytes.fromhex(f.read().strip().replace(":", ""))
            self._macs[ifname] = mac
        return mac

    def _announce(self, inst: _Instance, addrs: tuple[str, ...], *, first: bool) -> None:
        """One burst of gratuitous ARPs / unsolicited NAs; the first schedules the second.

        :param addrs: bare VIPs, as the router's ``Announce`` effect carries them.
        """
        assert self._loop is not None
        cfg = inst.cfg
        try:
            mac = self._mac(cfg.interface)
            # each frame is built once per burst, not once per copy sent
            if cfg.family == "inet":
                sock = self._garp_sock(cfg.interface)
                frames = [garp_frame(mac, ip) for ip in addrs]
                for _ in range(cfg.garp_count):
                    for frame in frames:
                        sock.send(frame)
                        self.counters["announcements"] += 1
            else:
                sock = self._na_sock(inst)
                dest = (_ALL_NODES_V6, 0, 0, inst.link.ifindex)
                frames = [unsolicited_na(mac, ip) for ip in addrs]
                for _ in range(cfg.garp_count):
                    for frame in frames:
                        sock.sendto(frame, dest)
                        self.counters["announcements"] += 1
        except OSError as exc:
            self.counters["announce_errors"] += 1
            log.warning("%s: gratuitous ARP/NA on %s failed: %s", cfg.name, cfg.interface, exc)
        if first and cfg.garp_delay > 0 and cfg.garp_count > 0:
            inst.garp_later = self._loop.call_later(cfg.garp_delay, self._announce_again, inst,
                                                    tuple(addrs))

    def _announce_again(self, inst: _Instance, addrs: tuple[str, ...]) -> None:
        inst.garp_later = None
        if inst.router.state is machine.State.MASTER:
            self._announce(inst, addrs, first=False)

    def _garp_sock(self, ifname: str) -> socket.socket:
        s = self._garp_socks.get(ifname)
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
            self._garp_socks[ifname] = s
        return s

    def _na_sock(self, inst: _Instance) -> socket.socket:
        s = self._na_socks.get(inst.cfg.interface)
        if s is None:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, inst.cfg.interface.encode())
            # RFC 4861 §7.1.2: receivers drop ND messages whose hop limit is not 255.
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, inst.link.ifindex)
            s.bind((inst.primary, 0, 0, inst.link.ifindex))
            s.setblocking(False)
            self._na_socks[inst.cfg.interface] = s
        return s

    # -- service --------------------------------------------------------------------------

    def set_priority(self, instance: str, priority: int) -> None:
        """Change an instance's priority at run time (a policy or track decision). When it
        drops below a peer's, the master gives up at once with a priority-0 advert.

        :param instance: the instance name.
        :param priority: 1..255.
        :raises KeyError: no such instance.
        :raises LocalProtocolError: priority out of range.
        """
        inst = self._instances[instance]
        inst.router.set_priority(priority, self._now())
        self._after(inst)

    def reload(self, config: Config) -> None:
        """Apply a re-read configuration (SIGHUP, ``clusterbus reload``) to the running
        instances, matched by name.

        Applied at once: ``priority`` (through :meth:`set_priority`: a master whose new
        priority is below a peer's steps down with a priority-0 advert, so the peer takes
        over after its Skew_Time), ``preempt``, ``preempt_delay``, ``accept``,
        ``garp_count`` and ``garp_delay``. Everything else (``vrid``, ``interface``,
        ``version``, ``advert_interval``, ``virtual_ipaddress``, ``unicast_peer``,
        ``unicast_src_ip``, added or removed instances) changes the sockets, the adverts
        or the addresses a peer expects: it is logged as needing a restart, shown in
        ``status()`` (``restart_needed``) and otherwise ignored, while the rest of the file
        still applies. We do not refuse the whole reload for it: a planned handoff (a
        priority drop) must not fail because the same edit also touched an address.

        :param config: the new, validated configuration.
        """
        if not self._ready:
            # Before the routers run, the new file replaces the old one, unless set-up is
            # under way: then it is applied as soon as set-up is done.
            if self._loop is None:
                self.config = config
                self.instance_configs = instances(config)
            else:
                self._pending_reload = config
            return
        new = {c.name: c for c in instances(config)}
        self._restart_needed = {}
        for name in sorted(set(new) - set(self._instances)):
            self._restart_needed[name] = "added"
        for name in sorted(set(self._instances) - set(new)):
            self._restart_needed[name] = "removed"
        for name, what in self._restart_needed.items():
            self.counters["reload_restart_needed"] += 1
            log.warning("reload: VRRP instance %s %s; restart the daemon to apply it", name,
                        what)
        for name, inst in self._instances.items():
            cfg = new.get(name)
            if cfg is not None:
                self._reload_instance(inst, cfg)
        self.counters["reloads"] += 1

    def _reload_instance(self, inst: _Instance, cfg: InstanceConfig) -> None:
        old = inst.cfg
        inst.restart_needed = tuple(k for k in _RESTART_KEYS if getattr(cfg, k) != getattr(old, k))
        if inst.restart_needed:
            self.counters["reload_restart_needed"] += 1
            log.warning("reload: %s: %s changed; restart the daemon to apply %s", old.name,
                        ", ".join(inst.restart_needed),
                        "it" if len(inst.restart_needed) == 1 else "them")
        live = {k: getattr(cfg, k) for k in _LIVE_KEYS}
        if any(live[k] != getattr(old, k) for k in ("preempt", "preempt_delay", "accept")):
            # The router reads these three at each use, so a new RouterConfig that differs
            # only in them is safe to swap in (the rest of it is what the router derived its
            # addresses and destinations from, unchanged).
            inst.router.config = replace(inst.router.config, preempt=cfg.preempt,
                                         preempt_delay=cfg.preempt_delay,
                                         accept_mode=cfg.accept)
        inst.cfg = replace(old, index=cfg.index, **live)
        if cfg.priority != inst.router.priority:
            log.info("reload: %s: priority %d -> %d", old.name, inst.router.priority,
                     cfg.priority)
            self.set_priority(old.name, cfg.priority)

    async def run(self) -> None:
        """Run every instance until cancelled; then step down (priority 0) and release VIPs.

        :raises ConfigError: an unknown interface, or one without a source address.
        :raises OSError: a socket cannot be opened (not root?).
        """
        self._loop = asyncio.get_running_loop()
        check_interfaces(self.config)
        try:
            async with AsyncIPRoute() as ipr:
                self._ipr = ipr
                try:
                    await self._setup()
                    log.info("VRRP speaker running %d instance(s): %s", len(self._instances),
                             ", ".join(self._instances))
                    # Everything happens in reader and timer callbacks until cancelled.
                    await asyncio.get_running_loop().create_future()
                finally:
                    await self._shutdown()
        finally:
            self._close()

    async def _shutdown(self) -> None:
        """RFC 5798 §6.4.3 Shutdown: a MASTER sends priority 0 so a backup takes over after
        its Skew_Time; then every VIP of ours leaves the interface, whatever was queued."""
        for inst in self._instances.values():
            if inst.timer is not None:
                inst.timer.cancel()
            if inst.garp_later is not None:
                inst.garp_later.cancel()
            try:
                inst.router.shutdown(self._now())
                for effect in inst.router.drain():
                    if isinstance(effect, (machine.Transmit, machine.StateChanged)):
                        self._apply(inst, effect)
            except Exception:
                log.exception("%s: shutdown failed", inst.cfg.name)
        for inst in self._instances.values():
            try:
                for vip in await self._remove_present(inst.cfg, inst.link.ifindex):
                    self.engine.publish(VipReleased, instance=inst.cfg.name, address=vip,
                                        interface=inst.cfg.interface)
            except (OSError, NetlinkError) as exc:
                log.error("%s: cannot remove VIPs at shutdown: %s", inst.cfg.name, exc)
            inst.holding.clear()

    def _close(self) -> None:
        for link in self._links.values():
            if self._loop is not None:
                self._loop.remove_reader(link.sock.fileno())
            link.sock.close()
        if self._rtnl is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._rtnl.fileno())
            self._rtnl.close()
            self._rtnl = None
        self._pending.clear()
        for s in (*self._garp_socks.values(), *self._na_socks.values()):
            s.close()
        self._links.clear()
        self._garp_socks.clear()
        self._na_socks.clear()
        self._ipr = None

    def status(self) -> dict[str, Any]:
        """Per instance: state, priority, master seen, advert interval, VIPs, drop counters."""
        out = []
        for name, inst in self._instances.items():
            r = inst.router
            out.append({
                "name": name,
                "interface": inst.cfg.interface,
                "vrid": inst.cfg.vrid,
                "family": inst.cfg.family,
                "version": inst.cfg.version,
                "state": _state_name(r.state),
                "priority": r.priority,
                "master_seen": r.master_seen,
                "advert_interval": inst.cfg.advert_interval,
                "vips": list(inst.cfg.virtual_ipaddress),
                "holding": sorted(inst.holding),
                "vetoed": inst.vetoed,
                # address_mismatch counts accepted adverts (RFC 5798 §7.1: log, not drop)
                "dropped": {k: v for k, v in r.counters.items() if k != "address_mismatch"},
                "address_mismatch": r.counters.get("address_mismatch", 0),
                "vetoes": inst.counters["vetoed"],
                "master_down_interval": round(r.master_down_interval, 6),
                "restart_needed": list(inst.restart_needed),
            })
        return {"instances": out, "counters": dict(self.counters),
                "restart_needed": dict(self._restart_needed)}


_LITTLE = struct.pack("=i", 1)[0] == 1


def _open_rtnl() -> socket.socket:
    """A NETLINK_ROUTE socket in no multicast group: it only receives our acks."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                      socket.NETLINK_ROUTE)
    try:
        s.bind((0, 0))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def _encode_addr(add: bool, ifindex: int,
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
    # As `ip addr add`: EEXIST when the address is already there, which _acked counts as
    # holding it.
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_EXCL if add else 0)
    msg.encode()
    return bytes(msg.data)

#: instance keys a reload applies to the running router (see VrrpSpeaker.reload)
_LIVE_KEYS = ("priority", "preempt", "preempt_delay", "accept", "garp_count", "garp_delay")
#: instance keys that only a restart applies: sockets, adverts, addresses
_RESTART_KEYS = ("interface", "vrid", "version", "family", "advert_interval",
                 "virtual_ipaddress", "unicast_peer", "unicast_src_ip")


def _state_name(state: Any) -> str:
    return str(getattr(state, "name", state)).upper()
