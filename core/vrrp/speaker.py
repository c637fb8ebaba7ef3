"""The VRRP speaker: the thin I/O adapter around :class:`clusterbus.vrrp.machine.Router`.

One raw IP protocol 112 socket per (interface, family) carries every instance on that
interface (:class:`~clusterbus.vrrp.sockets.VrrpSocket`); each instance is one sans-IO
``Router``. Everything is an fd or a timer on an asyncio loop: ``loop.add_reader`` for the
sockets, one ``loop.call_at`` handle per router set from ``router.next_deadline()`` after
every input (no polling). Time is ``loop.time()`` (monotonic), the clock the timers run on.

Effects of the routers:

- ``Transmit`` -> :meth:`VrrpSocket.send <clusterbus.vrrp.sockets.VrrpSocket.send>`;
- ``AddAddresses`` / ``RemoveAddresses`` -> one rtnetlink request per VIP, sent
  synchronously from the effect (:class:`~clusterbus.vrrp.addresses.AddressRequests`:
  the VIP is up when the call returns); the kernel's acks become ``vip.acquired`` /
  ``vip.released`` events (or counted, logged errors);
- ``Announce`` -> gratuitous ARP / unsolicited NA bursts
  (:class:`~clusterbus.vrrp.sockets.Announcer`), and a second burst ``garp_delay`` later;
- ``PrepareMaster`` (only when a plugin implements ``clusterbus_vrrp_prepare_master``) ->
  the plugins are asked; their answer goes back through ``Router.answer_prepare`` (a veto
  is the machine's ``vetoed`` transition);
- ``StateChanged`` -> a ``vrrp.transition`` event, published after the rest of the batch
  (advert, addresses, announcements), so a takeover is not delayed by logging and hooks;
- ``Discarded`` -> already counted by the router, logged at DEBUG.

``fast_takeover = "corosync"``: a sink on the daemon's loop (``engine.sinks``) takes every
``director.down`` whose reason says the peer's *process* left the Corosync group while its
host stayed up (:data:`FAST_REASONS`), looks the peer node's addresses up in the node map
and hands them to the speaker's loop (``call_soon_threadsafe``). There each fast instance
in BACKUP whose current master (the source address of its adverts) is one of them gets
``Router.master_gone``: it takes over after Skew_Time instead of Master_Down_Interval. A
node loss (``corosync.nodedown``) changes nothing: host failures follow the RFC timer.

Beyond keepalived: at start the speaker removes the VIPs of its instances that a crash left
on the interface, before any router starts; on cancellation it sends priority 0
(RFC 5798 §6.4.3) and removes its VIPs. The VIPs a run is configured with are written to
:data:`VIPS_FILE` in ``[daemon] state_dir`` at start (a reload cannot change them), so a
run after a crash also removes those the previous run may have left that its own
configuration no longer lists.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute

from ..config import Config
from ..engine import Engine
from ..errors import ConfigError, DecodeError, LocalProtocolError
from ..events import Event, VipAcquired, VipReleased, VrrpTransition
from ..ratelimit import LogLimiter
from . import addresses, machine
from .addresses import AddressRequests, NetlinkError, Overrun
from .announce import garp_frame, unsolicited_na
from .config import (
    InstanceConfig,
    check_fast_takeover,
    check_interfaces,
    instances,
    isolation,
)
from .ipc import Channel, SpeakerProcessError
from .process import SpeakerProcess, config_from_wire, config_to_wire
from .reload import InstanceChange, diff
from .sockets import Announcer, Packet, VrrpSocket, arrival
from .timing import raise_rt_priority, sleep_until, tune_thread

__all__ = ["VrrpSpeaker", "garp_frame", "unsolicited_na", "ISOLATION_ENV", "FAST_REASONS",
           "SpeakerProcessError"]

log = logging.getLogger(__name__)

#: How early a timer is armed before its deadline. epoll waits in whole milliseconds and
#: CPython rounds the timeout up, so a timer armed at its deadline fires 0..1 ms late (0.7 ms
#: at the median, measured). On the daemon's loop (isolation off) it is armed half a
#: millisecond early and handled as at its deadline: within +-0.5 ms of it. On the
#: speaker's own thread it is armed 1.5 ms early and sleeps the rest (``time.sleep`` is a
#: ``clock_nanosleep``, with the thread's timer slack at 1 ns): at the deadline, tens of
#: microseconds late, like keepalived's timerfd. Blocking its own loop that long costs the
#: speaker nothing: nothing else runs there.
_TIMER_LEAD = 0.0005
_TIMER_LEAD_OWN_THREAD = 0.0015
_PREPARE_HOOK = "clusterbus_vrrp_prepare_master"
#: Environment switch, for tests and comparisons only: ``CLUSTERBUS_VRRP_ISOLATION=0`` runs
#: the speaker on the daemon's loop (as before it had a thread or process of its own);
#: ``thread`` or ``process`` overrides ``[vrrp] isolation``.
ISOLATION_ENV = "CLUSTERBUS_VRRP_ISOLATION"
#: What the speaker's process may ask the daemon to run (``["call", name, args]``) ...
_DAEMON_CALLS = frozenset({"_call_prepare"})
#: ... and the daemon the speaker's process (through :meth:`VrrpSpeaker._to_speaker`). A
#: new crossing adds its method's name here.
_SPEAKER_CALLS = frozenset({"_answered", "_reload", "_set_priority", "_master_daemon_gone"})
#: the events the speaker's process publishes through the daemon, by class name
_EVENTS: dict[str, type[Event]] = {c.__name__: c for c in (VrrpTransition, VipAcquired,
                                                            VipReleased)}
#: seconds ``status()`` waits for the speaker's process to answer (it answers within
#: milliseconds; after that the last answer is shown, and ``status.timeouts`` counted)
_STATUS_TIMEOUT = 1.0
#: a timer that fires more than this after its deadline is counted (``timers.late``)
_LATE = 0.005
#: While the speaker thread runs, the interpreter's switch interval (how long a thread
#: that wants the GIL waits before it asks the holder to let go). The default, 5 ms, is
#: what a timer of the speaker would wait behind a busy daemon thread, on each wake-up and
#: after each blocking call. It only costs anything while a second thread waits.
_SWITCH_INTERVAL = 0.0005
#: seconds the daemon waits for the speaker thread to step down and remove its VIPs
_STOP_TIMEOUT = 10.0
#: ``director.down`` reasons that mean the peer daemon's process is gone while its host
#: (and its Corosync) stay up: the only ones fast_takeover acts on. ``corosync.nodedown``
#: (the host, its Corosync or its link died) and ``corosync.resync`` (seen by comparing
#: lists after our own reconnection: the cause is unknown) follow the RFC timer.
FAST_REASONS = frozenset({"corosync.procdown", "corosync.leave"})
#: In ``[daemon] state_dir``: the VIPs the last run was configured with, as
#: ``[[interface, family, vip], ...]`` (JSON).
VIPS_FILE = "vrrp-vips.json"


def _read_vips(path: Path) -> list[tuple[str, str, str]]:
    """The VIPs recorded in ``path`` (none when it is missing).

    :raises ValueError: the file is not a list of ``[interface, family, vip]``.
    :raises OSError: it cannot be read.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    if not isinstance(data, list) or not all(
            isinstance(x, list) and len(x) == 3 and all(isinstance(y, str) for y in x)
            and x[1] in ("inet", "inet6") for x in data):
        raise ValueError("not a list of [interface, family, vip]")
    out = []
    for iface, family, vip in data:
        ipaddress.ip_interface(vip)  # ValueError when it is not an address
        out.append((iface, family, vip))
    return out


def _write_vips(path: Path, vips: list[tuple[str, str, str]]) -> None:
    """Replace ``path`` with ``vips`` (atomically).

    :raises OSError: it cannot be written.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps([list(v) for v in vips]))
    os.replace(tmp, path)


@dataclass(eq=False)
class _Link:
    """One raw VRRP socket (an interface and a family) and the instances on it."""

    sock: VrrpSocket
    routers: dict[int, _Instance] = field(default_factory=dict)  # vrid -> instance


@dataclass(eq=False)
class _Instance:
    cfg: InstanceConfig
    router: machine.Router
    link: _Link
    primary: str
    timer: asyncio.TimerHandle | None = None
    deadline: float | None = None  #: the router deadline ``timer`` stands for
    garp_later: asyncio.TimerHandle | None = None
    vetoes: int = 0
    vetoed: str | None = None
    holding: set[str] = field(default_factory=set)  #: VIPs we put on the interface
    #: keys a reload changed that only a restart applies (shown by status())
    restart_needed: tuple[str, ...] = ()
    #: the PrepareMaster question outstanding (its number), or None
    asking: int | None = None


def router_live(inst: InstanceConfig) -> dict[str, Any]:
    """The :class:`~machine.RouterConfig` fields the router reads at each use, from an
    instance's configuration (:data:`~.reload.ROUTER_KEYS`): the same for the router
    built at start and for the config a reload swaps in."""
    return {"preempt": inst.preempt, "preempt_delay": inst.preempt_delay,
            "accept_mode": inst.accept, "prepare_timeout": inst.prepare_timeout or None}


def _state_name(state: machine.State) -> str:
    return state.value


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class VrrpSpeaker:
    """Runs every ``[[vrrp.instance]]`` of the configuration.

    :param engine: events go to ``engine.publish``; the veto hook through ``engine.plugins``.
    :param config: the daemon configuration.
    """

    def __init__(self, engine: Engine, config: Config) -> None:
        self.engine = engine
        self.config = config
        self.instance_configs = instances(config)
        #: speaker-wide counters, dotted: received, sent, dropped.<reason> before a router
        #: saw the packet, errors.<where>, ...
        self.counters: Counter[str] = Counter()
        self._links: dict[tuple[str, str], _Link] = {}
        self._instances: dict[str, _Instance] = {}
        self._ipr: AsyncIPRoute | None = None
        self._addr: AddressRequests | None = None
        self._announcer = Announcer()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the routers run (reload applies to them); before that a reload waits here
        self._ready = False
        self._pending_reload: Config | None = None
        #: instances a reload added or removed: a restart applies them
        self._restart_needed: dict[str, str] = {}
        self._questions = 0
        #: takeover barriers awaited on the daemon's loop (PrepareMaster answers pending)
        self._barriers: set[asyncio.Task[None]] = set()
        #: set_priority() calls that came before the instance's router existed
        self._wanted_priority: dict[str, int] = {}
        #: per-packet and per-failure lines, one per key per interval
        self._limited = LogLimiter(log, interval=10.0)
        #: where the speaker runs (see docs/architecture.md, "Concurrency model"):
        #: ``"process"`` (its own child process and loop), ``"thread"`` (a thread of the
        #: daemon with its own loop), ``"loop"`` (the daemon's loop: CLUSTERBUS_VRRP_ISOLATION=0)
        env = os.environ.get(ISOLATION_ENV, "")
        self.isolation = ("loop" if env == "0" else env if env in ("thread", "process")
                          else isolation(config))
        self._isolation_configured = isolation(config)
        self.isolated = self.isolation != "loop"
        #: the daemon's side of a speaker process
        self._process: SpeakerProcess | None = None
        #: in the speaker's process: its link to the daemon, and the daemon's word on
        #: whether a plugin implements the veto hook
        self._daemon_link: Channel | None = None
        self._ask_plugins: bool | None = None
        #: how the speaker's process or thread is scheduled (status()["scheduling"])
        self.scheduling: str | None = None
        #: what a reload changed that the daemon itself applies only at a restart
        self._restart_here: dict[str, str] = {}
        #: the latest a timer fired after its deadline (seconds; status: timer_late_max_ms)
        self._late_max = 0.0
        if engine is not None:  # the daemon side (the speaker's process has no engine)
            engine.vrrp_priority = self.set_priority  # Cluster.set_vrrp_priority goes here
        #: the daemon's loop (events and plugin calls go there); the speaker's is _loop
        self._main: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Future[None] | None = None
        self._stop_lock = threading.Lock()
        self._stop_requested = False

    # -- the daemon side ------------------------------------------------------------------

    def _publish(self, event_class: type[Event], **fields: Any) -> None:
        """Publish an event on the daemon's loop (its hooks run there, never here)."""
        if self._daemon_link is not None:  # in the speaker's process
            self._daemon_link.send(["event", event_class.__name__, fields])
            return
        self._to_main(self._publish_now, event_class, fields)

    def _publish_now(self, event_class: type[Event], fields: dict[str, Any]) -> None:
        try:
            self.engine.publish(event_class, **fields)
        except Exception:
            log.exception("VRRP: cannot publish %s", event_class.__name__)

    def _to_main(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the daemon's loop, later (never inside the caller)."""
        if self._daemon_link is not None:  # in the speaker's process: ``_DAEMON_CALLS``
            self._daemon_link.send(["call", fn.__name__, list(args)])
            return
        main = self._main or self._loop
        assert main is not None
        if main is self._loop:
            main.call_soon(fn, *args)
            return
        try:
            main.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the daemon's loop is closed: we are stopping
            self.counters["errors.daemon_gone"] += 1

    def _to_speaker(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the speaker's loop (from the daemon's side)."""
        if self._process is not None:  # to the speaker's process: ``_SPEAKER_CALLS``
            self._process.call(fn.__name__, [config_to_wire(a) if isinstance(a, Config) else a
                                             for a in args])
            return
        loop = self._loop
        if loop is None:
            return
        if loop is self._main:
            loop.call_soon(fn, *args)
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the speaker's loop is closed: it stopped
            pass

    # -- fast_takeover: the master's daemon left the Corosync group ----------------------

    def _on_event(self, event: Event) -> None:
        """A sink on the daemon's loop: forward a peer daemon's process leaving the
        Corosync group, with the node's addresses from the node map, to the speaker."""
        if event.topic != "director.down":
            return
        reason = getattr(event, "reason", "")
        node = getattr(event, "node", 0)
        if reason not in FAST_REASONS:
            self.counters["fast_takeover.ignored"] += 1
            log.debug("fast_takeover: director %d down (%s): not a process exit; the RFC "
                      "timer decides", node, reason)
            return
        addrs = self.engine.nodemap.addrs(node)
        self._to_speaker(self._master_daemon_gone, node, addrs, reason)

    def _master_daemon_gone(self, node: int, addrs: tuple[str, ...], reason: str) -> None:
        """On the speaker's loop: every fast instance following a master at one of
        ``addrs`` takes over after Skew_Time (``Router.master_gone``)."""
        wanted = set()
        for a in addrs:
            try:
                wanted.add(ipaddress.ip_address(a))
            except ValueError:
                continue
        used = 0
        for inst in self._instances.values():
            r = inst.router
            if inst.cfg.fast_takeover != "corosync" or r.master_seen is None:
                continue
            try:
                master = ipaddress.ip_address(r.master_seen)
            except ValueError:
                continue
            if master not in wanted or master == ipaddress.ip_address(inst.primary):
                continue
            if r.master_gone(r.master_seen, self._now()):
                used += 1
                self.counters["fast_takeover.triggered"] += 1
                log.warning("%s: the master %s (node %d) lost its daemon (%s): taking over "
                            "after Skew_Time %.3f s, not Master_Down_Interval %.3f s",
                            inst.cfg.name, master, node, reason, r.skew_time,
                            r.master_down_interval)
                self._after(inst)
        if not used:
            self.counters["fast_takeover.not_master"] += 1
            log.debug("fast_takeover: director %d down (%s; addresses %s): no instance "
                      "follows a master there", node, reason, ", ".join(addrs) or "none known")

    # -- start-up -------------------------------------------------------------------------

    async def _primary(self, ifindex: int, inst: InstanceConfig) -> str:
        """The source address of the adverts: ``unicast_src_ip``, else the interface's
        first IPv4 address, or for IPv6 its link-local address (RFC 5798 §5.1.2.1)."""
        assert self._ipr is not None
        if inst.unicast_src_ip:
            return inst.unicast_src_ip
        vips = {ipaddress.ip_interface(v).ip for v in inst.virtual_ipaddress}
        for a in await addresses.dump(self._ipr, ifindex, inst.family):
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

    def _router_config(self, inst: InstanceConfig, primary: str,
                       ask: bool) -> machine.RouterConfig:
        return machine.RouterConfig(
            name=inst.name,
            vrid=inst.vrid,
            priority=inst.priority,
            version=inst.version,
            family=inst.family,
            advert_interval=inst.advert_interval,
            virtual_addresses=inst.virtual_ipaddress,
            primary_address=primary,
            unicast_peers=inst.unicast_peer,
            start_listen=True,  # RFC 5798 §6.4.1: listen before claiming MASTER
            interface=inst.interface,
            ask_prepare=ask,
            **router_live(inst),
        )

    def _asks_plugins(self) -> bool:
        """Whether any plugin implements the veto hook (else no PrepareMaster at all)."""
        if self._ask_plugins is not None:  # in the speaker's process: the daemon said
            return self._ask_plugins
        caller = getattr(self.engine.plugins.pm.hook, _PREPARE_HOOK, None)
        return bool(caller is not None and caller.get_hookimpls())

    async def _remove_unconfigured(self) -> None:
        """Remove the VIPs the previous run was configured with that this run is not (a
        crash may have left them: no instance of this run would ever remove them), then
        record this run's. A file that cannot be used is logged and counted
        (``errors.vips_file``), never fatal."""
        state_dir = self.config["daemon"]["state_dir"]
        if not state_dir:
            return
        assert self._ipr is not None
        path = Path(state_dir) / VIPS_FILE
        try:
            previous = _read_vips(path)
        except (OSError, ValueError) as exc:
            self.counters["errors.vips_file"] += 1
            log.warning("cannot use %s (%s): VIPs of an earlier configuration left by a "
                        "crash are not removed", path, exc)
            previous = []
        configured = {(c.interface, str(ipaddress.ip_interface(v).ip))
                      for c in self.instance_configs for v in c.virtual_ipaddress}
        for iface, family, vip in previous:
            if (iface, str(ipaddress.ip_interface(vip).ip)) in configured:
                continue  # as every configured VIP: removed by _setup if present
            try:
                ifindex = socket.if_nametoindex(iface)
            except OSError:
                continue  # the interface is gone, and its addresses with it
            for gone in await addresses.remove_present(self._ipr, [vip], ifindex, family):
                self.counters["stale_vips_removed"] += 1
                log.warning("removed stale VIP %s from %s (left by a crash, no longer "
                            "configured)", gone, iface)
        try:
            _write_vips(path, [(c.interface, c.family, v) for c in self.instance_configs
                               for v in c.virtual_ipaddress])
        except OSError as exc:
            self.counters["errors.vips_file"] += 1
            log.warning("cannot write %s (%s): after a crash, the next run will not know "
                        "these VIPs if its configuration drops them", path, exc)

    async def _setup(self) -> None:
        assert self._loop is not None and self._ipr is not None
        ask = self._asks_plugins()
        await self._remove_unconfigured()
        self._addr = AddressRequests()
        for cfg in self.instance_configs:
            ifindex = socket.if_nametoindex(cfg.interface)
            link = self._links.get((cfg.interface, cfg.family))
            if link is None:
                link = _Link(VrrpSocket(cfg.interface, cfg.family, ifindex))
                self._links[(cfg.interface, cfg.family)] = link
                self._loop.add_reader(link.sock.fileno(), self._on_readable, link)
            # Our VIPs still on the interface were left by a crash (keepalived keeps them until
            # it restarts, and meanwhile two hosts answer ARP for the address).
            for vip in await addresses.remove_present(self._ipr, cfg.virtual_ipaddress,
                                                      ifindex, cfg.family):
                self.counters["stale_vips_removed"] += 1
                log.warning("%s: removed stale VIP %s from %s (left by a crash)", cfg.name, vip,
                            cfg.interface)
            primary = await self._primary(ifindex, cfg)
            router = machine.Router(self._router_config(cfg, primary, ask), now=self._now())
            wanted = self._wanted_priority.pop(cfg.name, None)
            if wanted is not None:  # set_priority() before the instance ran
                router.set_priority(wanted, self._now())
            inst = _Instance(cfg, router, link, primary)
            link.routers[cfg.vrid] = inst
            self._instances[cfg.name] = inst
            # keyed as the router's Add/RemoveAddresses effects name them: as configured
            self._addr.prepare(cfg.name, ifindex, cfg.virtual_ipaddress)
            # Announcement sockets and MACs now, not on the first takeover.
            self._announcer.prepare(cfg.interface, cfg.family, ifindex, primary)
        self._loop.add_reader(self._addr.fileno(), self._on_acks)
        for inst in self._instances.values():
            inst.router.start(self._now())
            self._after(inst)
        self._ready = True
        if self._pending_reload is not None:  # a SIGHUP came while we were setting up
            pending, self._pending_reload = self._pending_reload, None
            self._reload(pending)

    # -- receiving ------------------------------------------------------------------------

    def _on_readable(self, link: _Link) -> None:
        # The supervisor boundary of the receive path: one bad packet never stops the loop.
        try:
            for _ in range(64):  # bounded so one busy link cannot starve the others
                got = link.sock.read()
                if got is None:
                    break
                self.counters["received"] += 1
                if isinstance(got, str):
                    self._drop(got, "?")
                else:
                    self._receive(link, got)
        except Exception:
            self.counters["errors.receive"] += 1
            self._limited.error(("receive", link.sock.interface), "VRRP receive on %s failed",
                                link.sock.interface, exc_info=True)

    def _receive(self, link: _Link, pkt: Packet) -> None:
        if len(pkt.payload) < 2:
            self._drop("too_short", pkt.source)
            return
        inst = link.routers.get(pkt.payload[1])  # RFC 5798 §5.2.3: byte 1 is the VRID
        if inst is None:
            self._drop("unknown_vrid", pkt.source)
            return
        now = arrival(pkt.stamp, self._now(), time.time())
        inst.router.receive(pkt.payload, source=pkt.source, dst=pkt.dst, ttl=pkt.ttl, now=now)
        self._after(inst)

    def _drop(self, reason: str, source: str) -> None:
        self.counters[f"dropped.{reason}"] += 1
        log.debug("VRRP: dropped packet from %s: %s", source, reason)

    # -- timers ---------------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _on_timer(self, inst: _Instance) -> None:
        deadline, inst.timer, inst.deadline = inst.deadline, None, None
        try:
            # Armed early (see _TIMER_LEAD): on our own thread sleep to the deadline; on
            # the daemon's loop up to that much early counts as on time.
            now = self._now()
            if deadline is not None and now < deadline:
                if self._loop is not self._main:
                    sleep_until(deadline)
                    now = max(self._now(), deadline)
                else:
                    now = deadline
            elif deadline is not None:
                self._woke_late(now - deadline)
            inst.router.handle_timer(now)
            self._after(inst)
        except Exception:
            self.counters["errors.timer"] += 1
            self._limited.error(("timer", inst.cfg.name), "%s: VRRP timer failed",
                                inst.cfg.name, exc_info=True)
            self._schedule(inst)

    def _woke_late(self, late: float) -> None:
        """A timer that fired ``late`` seconds after its deadline (not inside its lead):
        counted as ``timers.late`` beyond :data:`_LATE`, the worst kept for ``status()``
        (``timer_late_max_ms``): how late the speaker itself woke, whatever the cause."""
        if late > self._late_max:
            self._late_max = late
        if late > _LATE:
            self.counters["timers.late"] += 1

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
            lead = _TIMER_LEAD if self._loop is self._main else _TIMER_LEAD_OWN_THREAD
            inst.timer = self._loop.call_at(deadline - lead, self._on_timer, inst)

    # -- effects --------------------------------------------------------------------------

    def _after(self, inst: _Instance) -> None:
        """Carry out what the router asked for, then re-arm its timer.

        State changes are logged and published after the rest of their batch: on a
        takeover the advert, the VIPs and the gratuitous ARPs go first (RFC 5798 §6.4.2
        lists them in that order), the ``vrrp.transition`` event and its hooks after.
        """
        changes: list[machine.StateChanged] = []
        # An answer to PrepareMaster given at once produces a second batch: bounded.
        for _ in range(4):
            effects = inst.router.drain()
            if not effects:
                break
            for effect in effects:
                if isinstance(effect, machine.StateChanged):
                    changes.append(effect)
                else:
                    self._apply(inst, effect)
        for change in changes:
            self._state_changed(inst, change)
        self._schedule(inst)

    def _apply(self, inst: _Instance, effect: machine.Effect) -> None:
        if isinstance(effect, machine.Transmit):
            self._send(inst, effect)
        elif isinstance(effect, machine.StateChanged):
            self._state_changed(inst, effect)
        elif isinstance(effect, machine.AddAddresses):
            for addr in effect.addrs:
                self._address_request(True, inst, addr)
        elif isinstance(effect, machine.RemoveAddresses):
            for addr in effect.addrs:
                self._address_request(False, inst, addr)
        elif isinstance(effect, machine.Announce):
            self._announce(inst, effect.addrs, first=True)
        elif isinstance(effect, machine.PrepareMaster):
            self._ask(inst, effect)
        elif isinstance(effect, machine.Discarded):
            # The router counts it too (status() shows router.counters).
            log.debug("%s: discarded advert from %s: %s", inst.cfg.name, effect.source,
                      effect.reason)
        else:
            log.warning("%s: unknown effect %r", inst.cfg.name, effect)

    def _send(self, inst: _Instance, tx: machine.Transmit) -> None:
        try:
            inst.link.sock.send(tx.data, tx.dst, tx.src)
            self.counters["sent"] += 1
        except OSError as exc:
            # A full send buffer or a link going down: the next advert retries.
            self.counters["errors.send"] += 1
            self._limited.warning(("send", inst.cfg.name), "%s: send to %s failed: %s",
                                  inst.cfg.name, tx.dst, exc)

    def _state_changed(self, inst: _Instance, effect: machine.StateChanged) -> None:
        old, new = _state_name(effect.old), _state_name(effect.new)
        if effect.new is machine.State.MASTER:
            inst.vetoed = None
            if inst.asking is not None:
                # PrepareMaster's deadline passed without an answer: the takeover went ahead
                inst.asking = None
                self.counters["prepare_master.timeouts"] += 1
                self._limited.warning(("prepare_timeout", inst.cfg.name),
                                      "%s: no answer from clusterbus_vrrp_prepare_master in "
                                      "time; taking over", inst.cfg.name)
        elif inst.garp_later is not None:
            inst.garp_later.cancel()
            inst.garp_later = None
        log.info("%s (vrid %d, %s): %s -> %s (%s, priority %d)", inst.cfg.name, inst.cfg.vrid,
                 inst.cfg.interface, old, new, effect.reason, effect.priority)
        self._publish(VrrpTransition, instance=inst.cfg.name, vrid=inst.cfg.vrid,
                      family=inst.cfg.family, interface=inst.cfg.interface, old=old,
                      new=new, priority=effect.priority, reason=effect.reason,
                      source="speaker")

    # -- the veto -------------------------------------------------------------------------

    def _ask(self, inst: _Instance, effect: machine.PrepareMaster) -> None:
        """The router waits for the plugins before a takeover (``PrepareMaster``): ask
        them on the daemon's side; the answer comes back in :meth:`_answered`."""
        self._questions += 1
        inst.asking = self._questions
        self._to_main(self._call_prepare, inst.cfg.name, inst.cfg.vrid, self._questions,
                      max(0.0, effect.deadline - self._now()))

    def _call_prepare(self, name: str, vrid: int, question: int,
                      timeout: float = 1.0) -> None:
        """On the daemon's side: call ``clusterbus_vrrp_prepare_master`` (every plugin, each
        isolated); the first veto, as ``"plugin: reason"``, or ``None`` goes back.

        Implementations that return an awaitable (a takeover barrier) are awaited together
        on the daemon's loop, for at most ``timeout`` seconds (what is left of the router's
        wait, less a margin so the answer crosses back in time); one not done by then
        answers ``None`` (PluginHost.settle). The answer goes back once, in every case.
        """
        def first_veto(answers: list[tuple[str, Any]]) -> str | None:
            for plugin, reason in answers:
                if reason is not None:
                    log.warning("%s: plugin %s vetoed MASTER: %s", name, plugin, reason)
                    return f"{plugin}: {reason}"
            return None

        try:
            answers = self.engine.plugins.call_each(
                _PREPARE_HOOK, instance=name, vrid=vrid, cluster=self.engine.cluster)
        except BaseException:
            self._to_speaker(self._answered, name, question, None)
            raise
        if not any(inspect.isawaitable(a) for _, a in answers):
            self._to_speaker(self._answered, name, question, first_veto(answers))
            return

        async def barrier() -> None:
            veto = None
            try:
                veto = first_veto(await self.engine.plugins.settle(
                    _PREPARE_HOOK, answers, max(0.0, timeout - min(0.02, timeout / 10))))
            finally:
                self._to_speaker(self._answered, name, question, veto)

        task = asyncio.get_running_loop().create_task(barrier(), name=f"prepare-{name}")
        self._barriers.add(task)
        task.add_done_callback(self._barriers.discard)

    def _answered(self, name: str, question: int, veto: str | None) -> None:
        inst = self._instances.get(name)
        if inst is None or inst.asking != question:
            self.counters["prepare_master.late"] += 1
            return
        inst.asking = None
        if veto is not None:
            inst.vetoes += 1
            inst.vetoed = veto
        if not inst.router.answer_prepare(veto, self._now()):
            self.counters["prepare_master.late"] += 1
        self._after(inst)

    # -- addresses ------------------------------------------------------------------------

    def _address_request(self, add: bool, inst: _Instance, full: str) -> None:
        """Add or remove one VIP now: the kernel applies the request inside ``sendmsg``;
        its ack arrives in :meth:`_on_acks`.

        :param full: the VIP as configured (``10.77.0.100/24``), as the router's effects
            carry it.
        """
        verb = "add" if add else "remove"
        if self._addr is None:
            self.counters["errors.address"] += 1
            log.error("%s: no address socket to %s %s", inst.cfg.name, verb, full)
            return
        try:
            self._addr.send(add, inst.cfg.name, full, inst.cfg.name)
        except KeyError:
            self.counters["errors.address"] += 1
            log.error("%s: no address request to %s %s", inst.cfg.name, verb, full)
        except OSError as exc:
            self.counters["errors.address"] += 1
            log.error("%s: cannot %s %s on %s: %s", inst.cfg.name, verb, full,
                      inst.cfg.interface, exc)

    def _on_acks(self) -> None:
        """The kernel's answers to :meth:`_address_request`: ``vip.acquired`` /
        ``vip.released``."""
        assert self._addr is not None
        try:
            acks = self._addr.read_acks()
        except Overrun as exc:
            self.counters["netlink.overruns"] += 1
            log.warning("VRRP address socket: %s", exc)
            return
        for ack in acks:
            inst = self._instances.get(str(ack.token))
            if inst is not None:
                self._acked(inst, ack)

    def _acked(self, inst: _Instance, ack: addresses.Ack) -> None:
        full, error = ack.full, ack.error
        ip = str(ipaddress.ip_interface(full).ip)
        if ack.add:
            if error and error != errno.EEXIST:
                self.counters["errors.address"] += 1
                log.error("%s: cannot add %s to %s: %s", inst.cfg.name, full,
                          inst.cfg.interface, os.strerror(error))
                return
            inst.holding.add(ip)
            self._publish(VipAcquired, instance=inst.cfg.name, address=full,
                          interface=inst.cfg.interface)
        else:
            inst.holding.discard(ip)
            if error:
                if error != errno.EADDRNOTAVAIL:
                    self.counters["errors.address"] += 1
                    log.error("%s: cannot remove %s from %s: %s", inst.cfg.name, full,
                              inst.cfg.interface, os.strerror(error))
                return
            self._publish(VipReleased, instance=inst.cfg.name, address=full,
                          interface=inst.cfg.interface)

    # -- announcements --------------------------------------------------------------------

    def _announce(self, inst: _Instance, addrs: tuple[str, ...], *, first: bool) -> None:
        """One burst of gratuitous ARPs / unsolicited NAs; the first schedules the second.

        :param addrs: bare VIPs, as the router's ``Announce`` effect carries them.
        """
        assert self._loop is not None
        cfg = inst.cfg
        try:
            self.counters["announcements"] += self._announcer.burst(
                cfg.interface, cfg.family, addrs, cfg.garp_count)
        except (OSError, KeyError) as exc:
            self.counters["errors.announce"] += 1
            self._limited.warning(("announce", cfg.name),
                                  "%s: gratuitous ARP/NA on %s failed: %s", cfg.name,
                                  cfg.interface, exc)
        if first and cfg.garp_delay > 0 and cfg.garp_count > 0:
            inst.garp_later = self._loop.call_later(cfg.garp_delay, self._announce_again, inst,
                                                    tuple(addrs))

    def _announce_again(self, inst: _Instance, addrs: tuple[str, ...]) -> None:
        inst.garp_later = None
        if inst.router.state is machine.State.MASTER:
            self._announce(inst, addrs, first=False)

    # -- service --------------------------------------------------------------------------

    def set_priority(self, instance: str, priority: int, *, release: bool = False) -> None:
        """Change an instance's priority at run time (a policy or track decision). When it
        drops below a peer's, or with ``release``, the master gives up at once with a
        priority-0 advert (the planned handoff). Callable from the daemon's loop at any
        time: before the instance runs, the priority is kept and it starts with it.

        :param instance: the instance name.
        :param priority: 1..255.
        :param release: a MASTER steps down whatever it heard (see
            :meth:`Router.set_priority <clusterbus.vrrp.machine.Router.set_priority>`).
        :raises KeyError: no such instance.
        :raises LocalProtocolError: priority out of range.
        """
        if instance not in {c.name for c in self.instance_configs}:
            raise KeyError(instance)
        if not isinstance(priority, int) or not 1 <= priority <= 255:
            raise LocalProtocolError(f"priority must be 1..255, got {priority!r}")
        if self._loop is None and self._process is None:
            self._wanted_priority[instance] = priority
            if self._loop is None and self._process is None:  # else it started meanwhile
                return
        self._to_speaker(self._set_priority, instance, priority, release)

    def _set_priority(self, instance: str, priority: int, release: bool = False) -> None:
        inst = self._instances.get(instance)
        if inst is None:  # set-up is under way: applied when the router is built
            self._wanted_priority[instance] = priority
            return
        inst.router.set_priority(priority, self._now(), release=release)
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

        The speaker applies it on its own loop, a moment after this returns.

        :param config: the new, validated configuration.
        """
        if isolation(config) != self._isolation_configured:
            self._restart_here["isolation"] = "changed"
            self.counters["reload.restart_needed"] += 1
            log.warning("reload: [vrrp] isolation changed; restart the daemon to apply it")
        else:
            self._restart_here.pop("isolation", None)
        if self._loop is None and self._process is None:  # not running yet
            self.config = config
            self.instance_configs = instances(config)
            return
        self._to_speaker(self._reload, config)

    def _reload(self, config: Config) -> None:
        if not self._ready:
            # Before the routers run, the new file replaces the old one, unless set-up is
            # under way: then it is applied as soon as set-up is done.
            if self._loop is None:
                self.config = config
                self.instance_configs = instances(config)
            else:
                self._pending_reload = config
            return
        plan = diff({n: i.cfg for n, i in self._instances.items()}, instances(config))
        self._restart_needed = plan.restart_needed
        for name, what in self._restart_needed.items():
            self.counters["reload.restart_needed"] += 1
            log.warning("reload: VRRP instance %s %s; restart the daemon to apply it", name,
                        what)
        new = {c.name: c for c in instances(config)}
        for change in plan.changes:
            self._reload_instance(self._instances[change.name], new[change.name], change)
        self.counters["reloads"] += 1

    def _reload_instance(self, inst: _Instance, cfg: InstanceConfig,
                         change: InstanceChange) -> None:
        old = inst.cfg
        inst.restart_needed = change.restart_needed
        if inst.restart_needed:
            self.counters["reload.restart_needed"] += 1
            log.warning("reload: %s: %s changed; restart the daemon to apply %s", old.name,
                        ", ".join(inst.restart_needed),
                        "it" if len(inst.restart_needed) == 1 else "them")
        if change.router_changed:
            # The router reads these at each use, so a new RouterConfig that differs only
            # in them is safe to swap in (the rest of it is what the router derived its
            # addresses and destinations from, unchanged).
            inst.router.config = replace(inst.router.config, **router_live(cfg))
        inst.cfg = replace(old, index=cfg.index, **change.live)  # type: ignore[arg-type]
        if cfg.priority != inst.router.priority:
            log.info("reload: %s: priority %d -> %d", old.name, inst.router.priority,
                     cfg.priority)
            inst.router.set_priority(cfg.priority, self._now())
            self._after(inst)

    async def run(self) -> None:
        """Run every instance until cancelled; then step down (priority 0) and release VIPs.

        The speaker runs in its own process (``[vrrp] isolation = "process"``, the
        default) or on its own thread, with its own asyncio loop (unless
        ``CLUSTERBUS_VRRP_ISOLATION=0``): nothing the daemon's loop does (a flood of
        reports, a plugin that blocks) delays an advert or a takeover. Events and plugin
        calls cross to the daemon's loop; see docs/architecture.md, "Concurrency model".

        :raises ConfigError: an unknown interface, or one without a source address.
        :raises OSError: a socket cannot be opened (not root?).
        :raises SpeakerProcessError: the speaker's process died, or exited unasked.
        """
        self._main = asyncio.get_running_loop()
        check_interfaces(self.config)
        check_fast_takeover(self.config)
        fast = any(i.fast_takeover for i in self.instance_configs)
        if fast:
            self.engine.sinks.append(self._on_event)
        try:
            await self._run_speaker()
        finally:
            if fast and self._on_event in self.engine.sinks:
                self.engine.sinks.remove(self._on_event)

    async def _run_speaker(self) -> None:
        assert self._main is not None
        if not self.isolated:
            log.warning("VRRP speaker on the daemon's loop (%s=0): a busy daemon delays "
                        "its adverts", ISOLATION_ENV)
            await self._run()
            return
        if self.isolation == "process":
            await self._run_process()
            return
        done: asyncio.Future[None] = self._main.create_future()
        self._thread = threading.Thread(target=self._thread_main, args=(done,),
                                        name="clusterbus-vrrp", daemon=True)
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, _SWITCH_INTERVAL))
        self._thread.start()
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            self._request_stop()
            try:
                await asyncio.wait_for(asyncio.shield(done), _STOP_TIMEOUT)
            except TimeoutError:
                log.error("VRRP speaker did not stop within %.0f s", _STOP_TIMEOUT)
            except Exception:
                pass  # logged by the daemon when it was the reason we stopped
            raise
        finally:
            sys.setswitchinterval(interval)

    def _thread_main(self, done: asyncio.Future[None]) -> None:
        """The speaker thread: its own loop until stopped; the outcome goes to ``done``."""
        main = self._main
        assert main is not None
        self.scheduling = tune_thread()  # precise sleeps, nice -10
        error: BaseException | None = None
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # handed to the daemon's loop, raised there
            error = exc

        def settle() -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
        try:
            main.call_soon_threadsafe(settle)
        except RuntimeError:
            pass  # the daemon's loop is gone

    def _request_stop(self) -> None:
        """From the daemon's side: stop the speaker's loop (it steps down first)."""
        with self._stop_lock:
            self._stop_requested = True
            stop, loop = self._stop, self._loop
        if stop is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(_settle, stop)
            except RuntimeError:
                pass

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        with self._stop_lock:
            self._stop = self._loop.create_future()
            if self._stop_requested:
                self._stop.set_result(None)
        try:
            async with AsyncIPRoute() as ipr:
                self._ipr = ipr
                try:
                    await self._setup()
                    self._running()
                    log.info("VRRP speaker running %d instance(s) %s: %s",
                             len(self._instances), self._where(), ", ".join(self._instances))
                    # Everything happens in reader and timer callbacks until stopped
                    # (isolated) or cancelled (on the daemon's loop).
                    await self._stop
                finally:
                    await self._shutdown()
        finally:
            self._close()

    async def _shutdown(self) -> None:
        """RFC 5798 §6.4.3 Shutdown: a MASTER sends priority 0 so a backup takes over after
        its Skew_Time; then every VIP of ours leaves the interface, whatever was queued."""
        assert self._ipr is not None
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
                for vip in await addresses.remove_present(
                        self._ipr, inst.cfg.virtual_ipaddress, inst.link.sock.ifindex,
                        inst.cfg.family):
                    self._publish(VipReleased, instance=inst.cfg.name, address=vip,
                                  interface=inst.cfg.interface)
            except (OSError, NetlinkError) as exc:
                log.error("%s: cannot remove VIPs at shutdown: %s", inst.cfg.name, exc)
            inst.holding.clear()

    def _close(self) -> None:
        for link in self._links.values():
            if self._loop is not None:
                self._loop.remove_reader(link.sock.fileno())
            link.sock.close()
        if self._addr is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._addr.fileno())
            self._addr.close()
            self._addr = None
        self._announcer.close()
        self._links.clear()
        self._ipr = None

    # -- the speaker in its own process: the daemon's side ---------------------------------

    def _where(self) -> str:
        if self._daemon_link is not None:
            return f"in its own process (pid {os.getpid()}, {self.scheduling})"
        return "on its own thread" if self._loop is not self._main else "on the daemon's loop"

    async def _run_process(self) -> None:
        """Start the speaker's process (``python -m clusterbus.vrrp.worker``) and serve its
        link until it exits; on cancellation ask it to stop (priority 0, VIPs removed) and
        wait up to :data:`_STOP_TIMEOUT` seconds before killing it.

        A process that dies or exits unasked is a failed service: the daemon stops with
        exit code 1 (or 2 for a ``ConfigError`` it reported) and its supervisor restarts
        the whole daemon; it is never restarted behind the daemon's back (peers running
        ``fast_takeover`` learn of a daemon leaving the Corosync group, not of a speaker
        restarting inside it).
        """
        assert self._main is not None
        proc = SpeakerProcess(self._from_process)
        self._process = proc
        proc.start(self._main, {
            "config": config_to_wire(self.config),
            "ask": self._asks_plugins(),
            "log_level": logging.getLogger(__name__).getEffectiveLevel(),
        })
        # priorities set before the process existed (a policy decided early): in order,
        # ahead of anything else the daemon sends it
        for instance, priority in list(self._wanted_priority.items()):
            proc.call("_set_priority", [instance, priority, False])
        self._wanted_priority.clear()
        try:
            await proc.wait()
        except asyncio.CancelledError:
            await proc.stop(_STOP_TIMEOUT)
            raise
        finally:
            self._ready = False
            proc.close()

    def _from_process(self, msg: list[Any]) -> None:
        """On the daemon's loop: one message of the speaker's process, in order."""
        kind = msg[0]
        if kind == "event" and len(msg) == 3 and isinstance(msg[2], dict):
            cls = _EVENTS.get(msg[1])
            if cls is None:
                self.counters["ipc.dropped.unknown_event"] += 1
                return
            self._publish_now(cls, msg[2])
        elif kind == "call" and len(msg) == 3 and msg[1] in _DAEMON_CALLS:
            try:
                result = getattr(self, msg[1])(*msg[2])
                if inspect.isawaitable(result):  # a crossing that became async
                    asyncio.ensure_future(result)
            except Exception:
                self.counters["errors.daemon_call"] += 1
                log.exception("VRRP: %s from the speaker's process failed", msg[1])
        elif kind == "ready" and len(msg) == 2 and isinstance(msg[1], dict):
            self.scheduling = msg[1].get("scheduling")
            self._ready = True
        else:
            self.counters["ipc.dropped.unknown_message"] += 1
            self._limited.warning(("ipc", kind), "VRRP: unexpected message from the "
                                  "speaker's process: %.80r", msg)

    def _process_status(self) -> dict[str, Any]:
        assert self._process is not None
        got = self._process.status(_STATUS_TIMEOUT)
        st = dict(got) if got else {"instances": [], "counters": {}, "restart_needed": {}}
        counters = Counter(st.get("counters") or {})
        counters.update(self.counters)
        counters.update(self._process.counters)
        st["counters"] = dict(counters)
        st["restart_needed"] = {**(st.get("restart_needed") or {}), **self._restart_here}
        st["isolation"] = "process"
        st["scheduling"] = self.scheduling
        st["pid"] = self._process.pid
        return st

    # -- the speaker in its own process: the speaker's side ------------------------------

    @classmethod
    def in_process(cls, config: Config, link: Channel, *, ask: bool,
                   scheduling: str) -> VrrpSpeaker:
        """The speaker as the speaker's process runs it (:mod:`clusterbus.vrrp.worker`):
        no engine; events, log lines and the veto question go to the daemon over ``link``.

        :param ask: whether a plugin of the daemon implements the veto hook.
        """
        self = cls(None, config)  # type: ignore[arg-type]
        self.isolation = "process"
        self._daemon_link = link
        self._ask_plugins = ask
        self.scheduling = scheduling
        return self

    async def serve(self, early: Sequence[list[Any]] = ()) -> None:
        """In the speaker's process: run the instances and the daemon's link until the
        daemon says stop (or closes the link); then step down and release the VIPs.

        :param early: messages the daemon sent right behind ``init`` (read with it): they
            are handled first, in order, as if just read.
        """
        link = self._daemon_link
        assert link is not None
        loop = asyncio.get_running_loop()
        link.attach(loop)
        for msg in early:
            loop.call_soon(self._from_daemon, msg)
        loop.add_reader(link.fileno(), self._on_daemon_readable)
        try:
            await self._run()
        finally:
            if not link.closed:
                loop.remove_reader(link.fileno())

    def _on_daemon_readable(self) -> None:
        link = self._daemon_link
        assert link is not None
        try:
            msgs, closed = link.receive()
        except DecodeError as exc:
            log.error("VRRP process: %s; stopping", exc)
            msgs, closed = [], True
        for msg in msgs:
            self._from_daemon(msg)
        if closed and not self._stop_requested:
            # The daemon is gone, or going (its files close before the kernel sends us
            # PR_SET_PDEATHSIG): a crash of the daemon is a crash of the speaker. Exit
            # now, as the signal would make us, without stepping down or removing VIPs.
            os.write(2, b"clusterbus.vrrp.worker: the daemon is gone; exiting at once\n")
            os._exit(1)
        if closed and self._loop is not None and not link.closed:
            self._loop.remove_reader(link.fileno())

    def _from_daemon(self, msg: list[Any]) -> None:
        assert self._daemon_link is not None
        kind = msg[0]
        try:
            if kind == "call" and len(msg) == 3 and msg[1] in _SPEAKER_CALLS:
                args = list(msg[2])
                if msg[1] == "_reload":
                    args[0] = config_from_wire(args[0])
                getattr(self, msg[1])(*args)
            elif kind == "status" and len(msg) == 2:
                self._daemon_link.send(["status", msg[1], self.status()])
            elif kind == "stop":
                self._request_stop()
            else:
                self.counters["ipc.dropped.unknown_message"] += 1
                self._limited.warning(("ipc", kind), "VRRP process: unexpected message from "
                                      "the daemon: %.80r", msg)
        except Exception:  # the supervisor boundary of the daemon's requests
            self.counters["errors.daemon_request"] += 1
            self._limited.error(("daemon_request", kind), "VRRP process: %s from the daemon "
                                "failed", kind, exc_info=True)

    def _running(self) -> None:
        """Set-up is done (the routers run, no timer fired yet): in the speaker's process
        raise its real-time priority from the start one, and tell the daemon (READY=1
        waits for it)."""
        if self._daemon_link is not None:
            self.scheduling = raise_rt_priority() or self.scheduling
            self._daemon_link.send(["ready", {"pid": os.getpid(),
                                              "scheduling": self.scheduling}])

    def status(self) -> dict[str, Any]:
        """Per instance: state, priority, master seen, advert interval, VIPs, drop counters;
        where the speaker runs (``isolation``, ``scheduling``, and ``pid`` for a process).
        With a process it is the process's answer (read on the daemon's loop: a round trip
        of a millisecond or so), with the daemon side's counters added."""
        if self._process is not None:
            return self._process_status()
        out = []
        for name, inst in list(self._instances.items()):
            r = inst.router
            counters = dict(r.counters)
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
                "dropped": {k: v for k, v in counters.items() if k != "address_mismatch"},
                "address_mismatch": counters.get("address_mismatch", 0),
                "vetoes": inst.vetoes,
                "master_down_interval": round(r.master_down_interval, 6),
                "restart_needed": list(inst.restart_needed),
                "fast_takeover": inst.cfg.fast_takeover or None,
            })
        return {"instances": out, "counters": dict(self.counters),
                "restart_needed": {**self._restart_needed, **self._restart_here},
                "isolation": self.isolation, "scheduling": self.scheduling,
                "timer_late_max_ms": round(self._late_max * 1000, 3)}
