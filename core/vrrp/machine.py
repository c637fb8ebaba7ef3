"""The VRRP router state machine, sans-IO: RFC 5798 §6 (VRRPv3) with RFC 3768 (VRRPv2) timers.

A :class:`Router` takes received VRRP messages, the current time and API calls, and
returns typed effects through :meth:`Router.drain`: bytes to send, addresses to add,
remove or announce, state changes and discarded packets. It owns no socket and no clock:
the adapter (``clusterbus.vrrp.speaker``) calls :meth:`Router.handle_timer` at
:meth:`Router.next_deadline`. Standard library only.

Deviations from the RFC, each deliberate:

- ``start_listen=False`` lets a non-owner claim MASTER at start-up (keepalived's
  ``state MASTER``); the default (``True``) is RFC 5798 §6.4.1: listen for
  Master_Down_Interval first, which avoids two masters at start-up.
- ``preempt_delay``: a preempting backup that sees a lower-priority master keeps following
  it for ``preempt_delay`` seconds, then takes over at once (keepalived's ``preempt_delay``).
- :meth:`Router.set_priority` below a peer's last seen priority makes the master give up
  at once with a priority-0 advert (planned handoff), instead of waiting for the peer's
  Master_Down_Interval.
- :meth:`Router.master_gone`: the caller learned out of band (Corosync's CPG: the master's
  daemon process left the group while its host stayed up) that the current master's
  speaker is gone, so no advert will ever come from it again. The backup treats it exactly
  as a priority-0 advert from that master (RFC 5798 §6.4.2: Master_Down_Timer =
  Skew_Time, transition ``master_gone``) instead of waiting Master_Down_Interval. Safe
  because the speaker died with its process (it cannot advertise any more), and the
  Skew_Time wait keeps the RFC's own tie-break between several backups: the
  highest-priority one takes over first and the others hear its advert.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..errors import ConfigError, DecodeError, LocalProtocolError
from ..ratelimit import LogLimiter
from .packet import (
    VRRP_TTL,
    Advertisement,
    ChecksumError,
    multicast_group,
)

__all__ = [
    "State",
    "RouterConfig",
    "Router",
    "TRANSITIONS",
    "Effect",
    "Transmit",
    "StateChanged",
    "AddAddresses",
    "RemoveAddresses",
    "Announce",
    "Discarded",
    "PrepareMaster",
]

log = logging.getLogger(__name__)

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class State(enum.Enum):
    """VRRP router states, named as in RFC 5798 §6.4 (the values are those names)."""

    #: Waiting for the Startup event (RFC 5798 §6.4.1): sends nothing, owns no address.
    INITIALIZE = "INITIALIZE"
    #: Monitors the master (§6.4.2); takes over when the Master_Down_Timer fires.
    BACKUP = "BACKUP"
    #: Owns the virtual addresses and advertises every Advertisement_Interval (§6.4.3).
    MASTER = "MASTER"


_I, _B, _M = State.INITIALIZE, State.BACKUP, State.MASTER

#: Every legal transition: ``(state, reason) -> new state``. The reason is what
#: :class:`StateChanged` and the ``VrrpTransition`` event report.
TRANSITIONS: Mapping[tuple[State, str], State] = MappingProxyType({
    (_I, "startup"): _B,                 # §6.4.1: not the owner: listen first
    (_I, "address_owner"): _M,           # §6.4.1: priority 255 claims MASTER at once
    (_I, "startup_master"): _M,          # start_listen=False (keepalived "state MASTER")
    (_B, "master_down_timer"): _M,       # §6.4.2: the master went silent
    (_B, "priority_zero"): _M,           # §6.4.2: the master stepped down (timer = Skew_Time)
    (_B, "preempt"): _M,                 # §6.4.2: a lower-priority master was preempted
    # Not in the RFC: master_gone(): the master's daemon left the Corosync group (process
    # gone, host up), so its speaker can send no more adverts; handled like a priority-0
    # advert (§6.4.2: Master_Down_Timer = Skew_Time), the takeover asked like the others.
    (_B, "master_gone"): _M,
    (_B, "shutdown"): _I,                # §6.4.2
    (_M, "higher_priority_seen"): _B,    # §6.4.3: higher priority (or equal, higher address)
    (_M, "priority_changed"): _B,        # set_priority below a peer: planned handoff
    (_M, "shutdown"): _I,                # §6.4.3: send priority 0, release the addresses
    # Not in the RFC: the adapter was asked before a takeover from BACKUP (PrepareMaster,
    # the clusterbus_vrrp_prepare_master hook) and a plugin vetoed it. The one transition
    # that keeps its state: it is reported (``vrrp.transition`` with reason "vetoed") so
    # the veto is visible; the router listens again for a Master_Down_Interval.
    (_B, "vetoed"): _B,
})


#: takeovers from BACKUP that ``RouterConfig.ask_prepare`` asks about (PrepareMaster)
_ASKED = frozenset({"master_down_timer", "priority_zero", "preempt", "master_gone"})


# -- effects -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Effect:
    """Base of everything :meth:`Router.drain` returns."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Transmit(Effect):
    """Send one VRRP message with IP TTL/hop limit 255 and protocol 112.

    :param data: the VRRP message (IP payload only); its v3 checksum was computed for
        ``src`` and ``dst``, so the packet must leave with exactly that source address.
    :param dst: destination: the multicast group or a unicast peer.
    :param src: source address (the configured primary address).
    """

    data: bytes
    dst: str
    src: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChanged(Effect):
    """The router changed state; comes before the effects of the new state.

    :param old: previous state.
    :param new: new state.
    :param reason: the key of :data:`TRANSITIONS` that allowed it (``startup``,
        ``master_down_timer``, ``higher_priority_seen``, ``priority_zero``, ``preempt``,
        ``shutdown``, ``priority_changed``, ...).
    :param priority: our priority at the time.
    """

    old: State
    new: State
    reason: str
    priority: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AddAddresses(Effect):
    """Add the virtual addresses to the interface (we became MASTER).

    :param addrs: the configured strings, with their prefix length when one was configured
        (``10.77.0.100/24``).
    """

    addrs: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveAddresses(Effect):
    """Remove the virtual addresses from the interface (we left MASTER).

    :param addrs: as in :class:`AddAddresses`.
    """

    addrs: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Announce(Effect):
    """Send gratuitous ARP (IPv4) / unsolicited Neighbor Advertisements (IPv6) for the
    addresses (RFC 5798 §6.4.1 / §6.4.2 "broadcast a gratuitous ARP request").

    :param addrs: bare addresses, no prefix length.
    """

    addrs: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Discarded(Effect):
    """A received packet was dropped (also counted in :attr:`Router.counters`).

    :param reason: short stable key: ``ttl``, ``malformed``, ``checksum``,
        ``version_mismatch``, ``vrid_mismatch``, ``family_mismatch``, ``auth_mismatch``,
        ``interval_mismatch``, ``unknown_peer``, ``own_advert``, ``not_running``,
        ``bad_address``.
    :param source: the packet's IP source as given.
    :param detail: human-readable detail (the decode error, the mismatching value).
    """

    reason: str
    source: str
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareMaster(Effect):
    """The router would become MASTER (``reason``) and waits for
    :meth:`Router.answer_prepare` (only with ``RouterConfig.ask_prepare``). Nothing of the
    takeover has happened yet: no advert, no address. If no answer comes by ``deadline``,
    :meth:`Router.handle_timer` takes over as if it had been agreed.

    :param reason: the reason the takeover would have (``master_down_timer``,
        ``priority_zero``, ``preempt``).
    :param deadline: when the router stops waiting, on the caller's clock.
    """

    reason: str
    deadline: float


# -- configuration -------------------------------------------------------------------------


def advert_interval_problem(version: int, seconds: float) -> str | None:
    """Why ``seconds`` cannot be advertised by this VRRP version, or ``None`` when it can.

    RFC 3768 §5.3.7: v2 Adver Int is an 8-bit count of whole seconds. RFC 5798 §5.2.7:
    v3 Max Adver Int is a 12-bit count of centiseconds.
    """
    if version == 2:
        if seconds != int(seconds) or not 1 <= seconds <= 255:
            return (f"VRRPv2 advertises whole seconds 1..255, got {seconds!r}; use "
                    "version = 3 for sub-second intervals")
        return None
    cs = round(seconds * 100)
    if abs(cs - seconds * 100) > 1e-6 or not 1 <= cs <= 4095:
        return (f"VRRPv3 advertises centiseconds: expected a multiple of 0.01 from 0.01 "
                f"to 40.95, got {seconds!r}")
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterConfig:
    """One virtual router.

    :param name: instance name (``VI_1``), for logs and events.
    :param vrid: virtual router id 1..255.
    :param priority: 1..255; 255 means we own the addresses (RFC 5798 §6.1).
    :param primary_address: our address on the interface: the source of our adverts
        (link-local for IPv6, RFC 5798 §5.1.2.1) and the tie-break on equal priority.
    :param virtual_addresses: the addresses to protect; a ``/prefix`` suffix is allowed and
        passed on in :class:`AddAddresses`.
    :param version: 3 (RFC 5798) or 2 (RFC 3768, IPv4 only).
    :param family: ``inet`` or ``inet6``.
    :param advert_interval: seconds; v3: a multiple of 0.01 in 0.01..40.95; v2: whole
        seconds 1..255.
    :param preempt: a higher-priority backup takes over from a lower-priority master.
    :param preempt_delay: seconds a preempting backup follows a lower master before taking
        over (0: RFC behaviour, take over when the Master_Down_Timer fires).
    :param accept_mode: RFC 5798 §6.1 Accept_Mode; the adapter applies it, the machine
        only carries it.
    :param unicast_peers: send adverts to these addresses instead of the multicast group;
        only their adverts are accepted, and without the TTL check (they may be routed).
    :param start_listen: listen for Master_Down_Interval before claiming MASTER at
        start-up (RFC 5798 §6.4.1); ``False`` claims MASTER at once. Ignored for the owner.
    :param interface: interface name, for logs and events.
    :param ask_prepare: before a takeover from BACKUP, emit :class:`PrepareMaster` and wait
        for :meth:`Router.answer_prepare` (a veto keeps the router BACKUP). The address
        owner never asks.
    :param prepare_timeout: seconds to wait for that answer; then the router takes over
        anyway. ``None``: one Advertisement_Interval.
    :raises ConfigError: a value out of range (``key`` names the field).
    """

    name: str
    vrid: int
    priority: int
    primary_address: str
    virtual_addresses: tuple[str, ...]
    version: int = 3
    family: str = "inet"
    advert_interval: float = 1.0
    preempt: bool = True
    preempt_delay: float = 0.0
    accept_mode: bool = False
    unicast_peers: tuple[str, ...] = ()
    start_listen: bool = True
    interface: str = ""
    ask_prepare: bool = False
    prepare_timeout: float | None = None

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"VRRP instance {self.name!r}: {msg}", key=key)

        if not isinstance(self.vrid, int) or not 1 <= self.vrid <= 255:
            raise bad("vrid", f"expected 1..255, got {self.vrid!r}")
        if not isinstance(self.priority, int) or not 1 <= self.priority <= 255:
            raise bad("priority", f"expected 1..255, got {self.priority!r}")
        if self.version not in (2, 3):
            raise bad("version", f"expected 2 or 3, got {self.version!r}")
        if self.family not in ("inet", "inet6"):
            raise bad("family", f"expected inet or inet6, got {self.family!r}")
        if self.version == 2 and self.family != "inet":
            raise bad("version", "VRRPv2 (RFC 3768) is IPv4 only; use version 3 for IPv6")
        want = 6 if self.family == "inet6" else 4
        if not _is_ip(self.primary_address, want):
            raise bad("primary_address", f"expected an {self.family} address, "
                      f"got {self.primary_address!r}")
        if not isinstance(self.virtual_addresses, tuple) or not 1 <= len(
            self.virtual_addresses) <= 255:
            raise bad("virtual_addresses", "expected a tuple of 1..255 addresses")
        for a in self.virtual_addresses:
            try:
                iface = ipaddress.ip_interface(a)
            except (ValueError, TypeError):
                raise bad("virtual_addresses", f"{a!r} is not an address") from None
            if iface.version != want:
                raise bad("virtual_addresses", f"{a} is not an {self.family} address")
        if not isinstance(self.unicast_peers, tuple) or not all(
            _is_ip(p, want) for p in self.unicast_peers
        ):
            raise bad("unicast_peers", f"expected a tuple of {self.family} addresses")
        iv = self.advert_interval
        if not isinstance(iv, (int, float)) or not math.isfinite(iv):
            raise bad("advert_interval", f"expected seconds, got {iv!r}")
        problem = advert_interval_problem(self.version, iv)
        if problem:
            raise bad("advert_interval", problem)
        if not isinstance(self.preempt_delay, (int, float)) or not (
            math.isfinite(self.preempt_delay) and self.preempt_delay >= 0
        ):
            raise bad("preempt_delay", f"expected seconds >= 0, got {self.preempt_delay!r}")
        pt = self.prepare_timeout
        if pt is not None and not (isinstance(pt, (int, float)) and math.isfinite(pt)
                                   and pt >= 0):
            raise bad("prepare_timeout", f"expected seconds >= 0, got {pt!r}")


def _is_ip(value: object, version: int) -> bool:
    try:
        return ipaddress.ip_address(value).version == version  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False


# -- the router ----------------------------------------------------------------------------


class _Discard(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class _Timers:
    adver: float | None = None  # MASTER: next advert (RFC 5798 §6.2 Adver_Timer)
    master_down: float | None = None  # BACKUP: §6.2 Master_Down_Timer
    preempt: float | None = None  # BACKUP: end of preempt_delay
    prepare: float | None = None  # BACKUP: end of the wait for answer_prepare


class Router:
    """One VRRP virtual router (RFC 5798 §6), driven by the caller's clock.

    :param config: the virtual router's configuration.
    :param now: the current time in seconds on the caller's monotonic clock. The router
        starts in INITIALIZE with no timer running, so nothing depends on it yet; every
        method that can start a timer takes its own ``now``.
    """

    def __init__(self, config: RouterConfig, *, now: float) -> None:
        self.config = config
        self.state = State.INITIALIZE
        #: Address of the current master (ours when MASTER), ``None`` when unknown.
        self.master_seen: str | None = None
        #: RFC 5798 §6.1 Master_Adver_Interval, in seconds (learned from the master, v3).
        self.master_adver_interval: float = self.advert_interval
        #: Discarded packets by reason, plus ``address_mismatch``: adverts accepted although
        #: their address list differs from ours (RFC 5798 §7.1 says log, not drop).
        self.counters: dict[str, int] = {}
        self._priority = config.priority
        self._primary = ipaddress.ip_address(config.primary_address)
        self._vips = tuple(str(ipaddress.ip_interface(a).ip) for a in config.virtual_addresses)
        self._vip_set = frozenset(ipaddress.ip_address(a) for a in self._vips)
        self._peers = frozenset(ipaddress.ip_address(p) for p in config.unicast_peers)
        self._dsts = config.unicast_peers or (multicast_group(config.family),)
        self._timers = _Timers()
        self._down_reason = "master_down_timer"
        self._master_priority = 0
        #: last non-zero priority seen from each other router (for set_priority)
        self._peer_priority: dict[_IP, int] = {}
        self._effects: list[Effect] = []
        #: one line per source per minute, at most 64 sources remembered: spoofed adverts
        #: from ever-new sources cost neither a line each nor memory
        self._mismatch_log = LogLimiter(log, interval=60.0, max_keys=64)
        #: the reason of the takeover waiting for answer_prepare (PrepareMaster), or None
        self.preparing: str | None = None

    # -- derived values (RFC 5798 §6.1, RFC 3768 §6.1) ----------------------------------

    @property
    def priority(self) -> int:
        """Our current priority (the configured one until :meth:`set_priority`)."""
        return self._priority

    @property
    def advert_interval(self) -> float:
        """Advertisement_Interval in seconds (what we send as MASTER)."""
        return float(self.config.advert_interval)

    @property
    def skew_time(self) -> float:
        """Skew_Time: v3 ``((256 - Priority) * Master_Adver_Interval) / 256`` (RFC 5798
        §6.1); v2 ``(256 - Priority) / 256`` seconds (RFC 3768 §6.1)."""
        if self.config.version == 2:
            return (256 - self._priority) / 256
        return ((256 - self._priority) * self.master_adver_interval) / 256

    @property
    def master_down_interval(self) -> float:
        """Master_Down_Interval: ``3 * Master_Adver_Interval + Skew_Time`` (v3), or
        ``3 * Advertisement_Interval + Skew_Time`` (v2)."""
        if self.config.version == 2:
            return 3 * self.advert_interval + self.skew_time
        return 3 * self.master_adver_interval + self.skew_time

    # -- API ------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The Startup event (RFC 5798 §6.4.1).

        :param now: current time.
        :raises LocalProtocolError: not in INITIALIZE.
        """
        if self._priority == 255:
            self._become_master(now, "address_owner")
        elif not self.config.start_listen:
            self._become_master(now, "startup_master")
        else:
            self._transition("startup")
            self.master_adver_interval = self.advert_interval
            self._set_master_down(now + self.master_down_interval, "master_down_timer")

    def shutdown(self, now: float) -> None:
        """The Shutdown event (RFC 5798 §6.4.2, §6.4.3). A MASTER sends a priority-0 advert
        and releases the addresses. A no-op in INITIALIZE, so it is safe in ``finally``.

        :param now: current time.
        """
        if self.state is State.INITIALIZE:
            return
        was_master = self.state is State.MASTER
        self._transition("shutdown")
        self._timers = _Timers()
        self.preparing = None
        self.master_seen = None
        if was_master:
            self._send(0)
            self._effects.append(RemoveAddresses(addrs=self.config.virtual_addresses))

    def set_priority(self, priority: int, now: float, *, release: bool = False) -> None:
        """Change our priority (configuration reload, tracking, a CVIP policy).

        A MASTER whose new priority is below the last priority seen from another router
        gives up at once: it sends a priority-0 advert so that router takes over after its
        Skew_Time, and becomes BACKUP (reason ``priority_changed``). Otherwise the new
        priority applies from the next advert (BACKUP: from the next timer computation).

        :param priority: 1..255.
        :param now: current time.
        :param release: a MASTER gives up the same way whatever it heard from the others
            (a planned handoff to a backup that raised its priority: backups send no
            adverts, so the master may not know it).
        :raises LocalProtocolError: priority out of range.
        """
        if not isinstance(priority, int) or not 1 <= priority <= 255:
            raise LocalProtocolError(f"priority must be 1..255, got {priority!r}")
        old, self._priority = self._priority, priority
        if old != priority:
            log.info("VRRP %s (vrid %d): priority %d -> %d", self.config.name,
                     self.config.vrid, old, priority)
        if self.state is State.MASTER:
            best = max(self._peer_priority.values(), default=0)
            if priority < best or release:
                self._transition("priority_changed")
                self._send(0)
                self._effects.append(RemoveAddresses(addrs=self.config.virtual_addresses))
                self._timers = _Timers()
                self.master_seen = None
                self.master_adver_interval = self.advert_interval
                self._set_master_down(now + self.master_down_interval, "master_down_timer")
        elif self.state is State.BACKUP and self._timers.preempt is not None:
            if self._master_priority >= priority:
                self._timers.preempt = None  # nothing left to preempt

    def receive(self, data: bytes, *, source: str, dst: str, ttl: int, now: float) -> None:
        """A VRRP message arrived. Never raises: bad input becomes a :class:`Discarded`
        effect and a counter.

        :param data: the VRRP message (IP payload).
        :param source: IP source address.
        :param dst: IP destination address (needed for the v3 checksum).
        :param ttl: IPv4 TTL / IPv6 hop limit.
        :param now: current time.
        """
        try:
            adv = self._check(data, source, dst, ttl)
        except _Discard as d:
            self.counters[d.reason] = self.counters.get(d.reason, 0) + 1
            self._effects.append(Discarded(reason=d.reason, source=str(source), detail=d.detail))
            log.debug("VRRP %s (vrid %d): discarded advert from %s: %s %s", self.config.name,
                      self.config.vrid, source, d.reason, d.detail)
            return
        src_ip = ipaddress.ip_address(source)
        if adv.priority:
            self._peer_priority[src_ip] = adv.priority
        else:
            self._peer_priority.pop(src_ip, None)  # it is leaving: do not defer to it
        if self.state is State.BACKUP:
            self._receive_backup(adv, src_ip, now)
        else:
            self._receive_master(adv, src_ip, now)

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``. Call it at :meth:`next_deadline` (calling it
        early is harmless).

        :param now: current time.
        """
        t = self._timers
        # Each round either changes state or moves a timer past `now`: 3 rounds suffice.
        for _ in range(3):
            if self.state is State.MASTER and t.adver is not None and t.adver <= now:
                # RFC 5798 §6.4.3: send an advert, reset the Adver_Timer.
                self._send(self._priority)
                t.adver = now + self.advert_interval
            elif self.preparing is not None and t.prepare is not None and t.prepare <= now:
                # Nobody answered PrepareMaster in time: the takeover goes ahead.
                self._take_over(now, self.preparing)
            elif self.state is State.BACKUP and t.preempt is not None and t.preempt <= now and (
                t.master_down is None or t.preempt <= t.master_down
            ):
                self._become_master(now, "preempt")
            elif self.state is State.BACKUP and t.master_down is not None and (
                t.master_down <= now
            ):
                self._become_master(now, self._down_reason)  # RFC 5798 §6.4.2
            else:
                break
            t = self._timers

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called next, or ``None`` (INITIALIZE)."""
        pending = [x for x in (self._timers.adver, self._timers.master_down,
                               self._timers.preempt, self._timers.prepare) if x is not None]
        return min(pending) if pending else None

    def answer_prepare(self, veto: str | None, now: float) -> bool:
        """The answer to :class:`PrepareMaster`: ``None`` takes over now; a reason keeps
        the router BACKUP (transition ``vetoed``). A vetoed takeover that was not a
        preemption sends a priority-0 advert, so another backup takes over after its
        Skew_Time (as if we had been master and stepped down); a vetoed preemption sends
        nothing (the other backups would take it as the live master leaving). Either way
        the router listens again and asks again one Master_Down_Interval later if nobody
        else takes over.

        :param veto: ``None`` to agree, or the reason of the veto.
        :param now: current time.
        :returns: whether the answer was used: ``False`` when nothing is waiting (the
            deadline passed, a better master was heard meanwhile, or shutdown).
        """
        reason = self.preparing
        if reason is None or self.state is not State.BACKUP:
            return False
        if veto is None:
            self._take_over(now, reason)
            return True
        self.preparing = None
        self._timers.prepare = None
        self._transition("vetoed")
        if reason != "preempt":
            self._send(0)
        self.master_seen = None
        self.master_adver_interval = self.advert_interval
        self._set_master_down(now + self.master_down_interval, "master_down_timer")
        return True

    def master_gone(self, source: str, now: float) -> bool:
        """The master whose adverts come from ``source`` is known to be gone for good (its
        daemon's process left the Corosync group while its host stayed up): behave as on a
        priority-0 advert from it (RFC 5798 §6.4.2): take over after Skew_Time (reason
        ``master_gone``, asked through :class:`PrepareMaster` like any takeover) instead of
        after Master_Down_Interval. Outside RFC 5798; see the module docstring.

        Ignored (returns ``False``) unless BACKUP, following ``source`` as the current
        master and not already waiting for :meth:`answer_prepare`: a stale or wrong hint
        changes nothing, and the RFC timer still runs.

        :param source: the master's advert source address, as :attr:`master_seen` has it.
        :param now: current time.
        :returns: whether the hint was used.
        """
        if (self.state is not State.BACKUP or self.preparing is not None
                or self.master_seen is None):
            return False
        try:
            same = ipaddress.ip_address(source) == ipaddress.ip_address(self.master_seen)
        except (ValueError, TypeError):
            return False
        if not same:
            return False
        self._peer_priority.pop(ipaddress.ip_address(source), None)
        self.master_seen = None
        self._timers.preempt = None
        at = now + self.skew_time
        current = self._timers.master_down
        if current is None or at < current:
            self._set_master_down(at, "master_gone")
        return True

    def drain(self) -> list[Effect]:
        """Return and forget the effects produced since the last call, in order."""
        out, self._effects = self._effects, []
        return out

    def __repr__(self) -> str:
        return (f"<vrrp.Router {self.config.name} vrid={self.config.vrid} "
                f"prio={self._priority} {self.state.name}>")

    # -- internals ------------------------------------------------------------------------

    def _transition(self, reason: str) -> None:
        new = TRANSITIONS.get((self.state, reason))
        if new is None:
            raise LocalProtocolError(
                f"VRRP {self.config.name}: no transition from {self.state.name} on {reason!r}"
            )
        old, self.state = self.state, new
        log.info("VRRP %s (vrid %d): %s -> %s (%s)", self.config.name, self.config.vrid,
                 old.name, new.name, reason)
        self._effects.append(StateChanged(old=old, new=new, reason=reason,
                                          priority=self._priority))

    def _become_master(self, now: float, reason: str) -> None:
        if (self.config.ask_prepare and self.state is State.BACKUP
                and reason in _ASKED and self._priority != 255):
            # Ask first (PrepareMaster); answer_prepare or the deadline takes over.
            if self.preparing is None:
                timeout = self.config.prepare_timeout
                deadline = now + (self.advert_interval if timeout is None else timeout)
                self.preparing = reason
                self._timers = _Timers(prepare=deadline)
                self._effects.append(PrepareMaster(reason=reason, deadline=deadline))
            return
        self._take_over(now, reason)

    def _take_over(self, now: float, reason: str) -> None:
        # RFC 5798 §6.4.1 / §6.4.2: send an advert, announce the addresses, start the
        # Adver_Timer. The transition goes first: it raises before any effect if illegal.
        self.preparing = None
        self._transition(reason)
        self._timers = _Timers(adver=now + self.advert_interval)
        self.master_seen = str(self._primary)
        self.master_adver_interval = self.advert_interval
        self._send(self._priority)
        self._effects.append(AddAddresses(addrs=self.config.virtual_addresses))
        self._effects.append(Announce(addrs=self._vips))

    def _set_master_down(self, at: float, reason: str) -> None:
        self._timers.master_down = at
        self._down_reason = reason

    def _send(self, priority: int) -> None:
        src = str(self._primary)
        if self.config.version == 3:
            adv = Advertisement(version=3, vrid=self.config.vrid, priority=priority,
                                addresses=self._vips, family=self.config.family,
                                max_adver_int_cs=round(self.advert_interval * 100))
        else:
            adv = Advertisement(version=2, vrid=self.config.vrid, priority=priority,
                                addresses=self._vips, advert_int_s=int(self.advert_interval))
        for dst in self._dsts:
            self._effects.append(Transmit(data=adv.to_bytes(src=src, dst=dst), dst=dst, src=src))

    def _check(self, data: bytes, source: str, dst: str, ttl: int) -> Advertisement:
        """RFC 5798 §7.1 / RFC 3768 §7.1 receive checks; raises _Discard."""
        cfg = self.config
        if self.state is State.INITIALIZE:
            raise _Discard("not_running")
        want = 6 if cfg.family == "inet6" else 4
        try:
            src_ip = ipaddress.ip_address(source)
            dst_ip = ipaddress.ip_address(dst)
        except (ValueError, TypeError):
            raise _Discard("bad_address", f"source {source!r} / dst {dst!r}") from None
        if src_ip.version != want or dst_ip.version != want:
            raise _Discard("family_mismatch", f"{source} -> {dst}")
        if self._peers:
            if src_ip not in self._peers:
                raise _Discard("unknown_peer")
        elif ttl != VRRP_TTL:
            # §7.1: "MUST verify that the IP TTL is 255": a routed packet is not from our link.
            raise _Discard("ttl", f"TTL {ttl}")
        if src_ip == self._primary:
            raise _Discard("own_advert")  # multicast loopback
        try:
            adv = Advertisement.from_bytes(bytes(data), src=str(src_ip), dst=str(dst_ip))
        except ChecksumError as e:
            raise _Discard("checksum", str(e)) from None
        except DecodeError as e:
            raise _Discard("malformed", str(e)) from None
        except (TypeError, ValueError) as e:  # not bytes at all
            raise _Discard("malformed", str(e)) from None
        if adv.version != cfg.version:
            raise _Discard("version_mismatch", f"version {adv.version}")
        if adv.vrid != cfg.vrid:
            raise _Discard("vrid_mismatch", f"vrid {adv.vrid}")
        if cfg.version == 2:
            # RFC 3768 §7.1: the Auth Type must match ours (none), and the Adver Interval
            # must equal ours (v2 has no Master_Adver_Interval to learn).
            if adv.auth_type != 0:
                raise _Discard("auth_mismatch", f"auth type {adv.auth_type}")
            if adv.advert_int_s != int(self.advert_interval):
                raise _Discard("interval_mismatch", f"{adv.advert_int_s} s")
        if frozenset(ipaddress.ip_address(a) for a in adv.addresses) != self._vip_set:
            # RFC 5798 §7.1: a mismatching address list is a misconfiguration to log; we keep
            # the packet (the brief's choice, and keepalived's for adverts from the owner).
            self.counters["address_mismatch"] = self.counters.get("address_mismatch", 0) + 1
            self._mismatch_log.warning(source, "VRRP %s (vrid %d): %s advertises %s, we "
                                       "protect %s", cfg.name, cfg.vrid, source,
                                       ", ".join(adv.addresses), ", ".join(self._vips))
        return adv

    def _preempts(self) -> bool:
        # RFC 5798 §6.1 Preempt_Mode: the address owner always preempts.
        return self.config.preempt or self._priority == 255

    def _receive_backup(self, adv: Advertisement, src_ip: _IP, now: float) -> None:
        # RFC 5798 §6.4.2 "If an ADVERTISEMENT is received"
        if self.preparing is not None:
            if adv.priority == 0 or (self._preempts() and adv.priority < self._priority):
                return  # the takeover waiting for answer_prepare still stands
            # A master we must follow after all: the takeover is off.
            self.preparing = None
            self._timers.prepare = None
        if adv.priority == 0:
            # The master is stepping down: take over after Skew_Time only.
            self._set_master_down(now + self.skew_time, "priority_zero")
            self._timers.preempt = None
            if self.master_seen == str(src_ip):
                self.master_seen = None
            return
        if not self._preempts() or adv.priority >= self._priority:
            self._follow(adv, src_ip, now)
            self._timers.preempt = None
        elif self.config.preempt_delay > 0:
            # Follow the lower master until the delay is over, then take over at once.
            if self._timers.preempt is None:
                self._timers.preempt = now + self.config.preempt_delay
            self._follow(adv, src_ip, now)
        else:
            # Discard: the Master_Down_Timer keeps running and we preempt when it fires.
            self._down_reason = "preempt"

    def _follow(self, adv: Advertisement, src_ip: _IP, now: float) -> None:
        if self.config.version == 3:
            self.master_adver_interval = adv.interval  # §6.4.2: learn Master_Adver_Interval
        self.master_seen = str(src_ip)
        self._master_priority = adv.priority
        self._set_master_down(now + self.master_down_interval, "master_down_timer")

    def _receive_master(self, adv: Advertisement, src_ip: _IP, now: float) -> None:
        # RFC 5798 §6.4.3 "If an ADVERTISEMENT is received"
        if adv.priority == 0:
            # Another master is leaving: tell the backups at once who is master.
            self._send(self._priority)
            self._timers.adver = now + self.advert_interval
        elif adv.priority > self._priority or (
            # §6.4.3: equal priority, "the primary IPvX address of the sender is greater
            # than the local primary IPvX address" (same family: _check made sure).
            adv.priority == self._priority and src_ip.packed > self._primary.packed
        ):
            self._transition("higher_priority_seen")
            self._effects.append(RemoveAddresses(addrs=self.config.virtual_addresses))
            self._timers = _Timers()
            self.master_adver_interval = self.advert_interval
            self._follow(adv, src_ip, now)
        else:
            # §6.4.3 says discard: the other master steps down when it hears us. But it
            # took over (it missed our adverts) and announced the addresses: the hosts it
            # reached now send to its MAC, and it stops answering for them. Advertise and
            # announce them again at once, as keepalived does on a lower-priority advert.
            self._send(self._priority)
            self._timers.adver = now + self.advert_interval
            self._effects.append(Announce(addrs=self._vips))
