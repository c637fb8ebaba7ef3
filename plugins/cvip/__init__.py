"""cvip: which director owns each cluster virtual IP (built-in plugin; docs/cvip.md).

A CVIP that may roam between LVS directors must stick to one of them, or IPVS scheduling
and persistence break. Every director runs this plugin with the same ``[cvip]`` section;
each computes the owner of every CVIP from the same facts (:mod:`.policy`: weighted
rendezvous hashing, sticky claims) and drives its VRRP priority from the decision:

* built-in speaker (the default): the ``[[vrrp.instance]]`` with the CVIP's interface and
  VRID gets ``priority_owner`` on the owner, ``priority_backup - PRIORITY_STEP * rank``
  elsewhere (``rank``:
  the director's place in the next election), through :meth:`Cluster.set_vrrp_priority`;
  a planned move is a priority-0 handoff (the old owner steps down once the new one has
  raised its priority), so the new owner takes over after its Skew_Time through its normal
  takeover path (``clusterbus_vrrp_prepare_master``). VRRP stays the guard on the wire.
* keepalived (``track_file``): the decision is written to a file keepalived's
  ``track_file`` reads (``1`` on the owner, ``0`` elsewhere); keepalived adds its
  ``weight`` to the owner's priority.

Facts come from events: ``director.up`` / ``director.down`` (peer links or Corosync),
``cluster.quorum`` (Corosync, when ``[corosync] quorum`` is on: without quorum this
director gives its CVIPs up), the peers' ``cvip.owner`` events (each director's claims),
and ``cvip.command`` (planned moves and drains, from ``clusterbus cvip`` through any
daemon's control socket). The plugin publishes ``cvip.owner`` (cvip, old, new, gen,
reason) whenever the owner changes in its view. Inert without a ``[cvip]`` section.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import struct
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from clusterbus import (
    Cluster,
    Config,
    ConfigError,
    Event,
    InvalidEvent,
    Key,
    between,
    hookimpl,
    register_event,
    validate_table,
)
from clusterbus.schema import REQUIRED

from .policy import CvipSpec, Decision, Policy, choose, hrw, ranking, score

__all__ = ["CvipOwner", "CvipCommand", "CvipPlugin", "CvipConfig", "VipConfig", "parse",
           "plugin", "Policy", "CvipSpec", "Decision", "choose", "hrw", "ranking", "score",
           "DEFAULT_CONTROL"]

log = logging.getLogger(__name__)

#: where ``clusterbus cvip move|drain|rebalance`` reach the daemon (root only)
DEFAULT_CONTROL = "/run/clusterbus/cvip.sock"
#: largest request line on the control socket
_MAX_REQUEST = 4096
_MAX_NODE = 2**32 - 1


# -- events --------------------------------------------------------------------------------


def _node_or_none(owner: str, name: str, v: object) -> None:
    if v is None or (type(v) is int and 0 <= v <= _MAX_NODE):
        return
    raise InvalidEvent(f"{owner}.{name}: expected a node number or none, got {v!r:.40}")


def _short_str(owner: str, name: str, v: object, *, empty: bool = False) -> None:
    if type(v) is str and (empty or v) and len(v) <= 64:
        return
    raise InvalidEvent(f"{owner}.{name}: expected a string of {0 if empty else 1}..64 "
                       f"characters, got {v!r:.40}")


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class CvipOwner(Event):
    """The owner of a CVIP changed in the view of the director that publishes it.

    An event whose ``new`` is its ``origin`` is that director's claim (it holds the CVIP,
    generation ``gen``); any other withdraws the origin's claim.

    :param cvip: the CVIP (canonical address, no prefix).
    :param old: the previous owner, or ``None``.
    :param new: the new owner, or ``None`` (nobody may own it).
    :param gen: the claim's generation (0 when this is no claim).
    :param reason: ``hrw``, ``owner_down``, ``move``, ``drain``, ``quorum_lost``,
        ``conflict``, ``announce`` (a re-announced claim), ...
    """

    TOPIC: ClassVar[str] = "cvip.owner"

    cvip: str
    old: int | None
    new: int | None
    gen: int = 0
    reason: str = "hrw"

    def _validate(self) -> None:
        _short_str("CvipOwner", "cvip", self.cvip)
        _node_or_none("CvipOwner", "old", self.old)
        _node_or_none("CvipOwner", "new", self.new)
        if type(self.gen) is not int or not 0 <= self.gen < 2**63:
            raise InvalidEvent(f"CvipOwner.gen: expected an int >= 0, got {self.gen!r:.40}")
        _short_str("CvipOwner", "reason", self.reason)


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class CvipCommand(Event):
    """A planned change every director applies (``clusterbus cvip ...``).

    :param op: ``move`` (``cvip`` to ``node``, generation ``gen``), ``drain`` or
        ``undrain`` (``node``).
    :param cvip: the CVIP (``""`` for drains).
    :param node: the target director.
    :param gen: the move's generation (0 for drains).
    """

    TOPIC: ClassVar[str] = "cvip.command"

    op: str
    node: int
    cvip: str = ""
    gen: int = 0

    def _validate(self) -> None:
        if self.op not in ("move", "drain", "undrain"):
            raise InvalidEvent(f"CvipCommand.op: expected move, drain or undrain, got "
                               f"{self.op!r:.40}")
        _node_or_none("CvipCommand", "node", self.node)
        _short_str("CvipCommand", "cvip", self.cvip, empty=True)
        if type(self.gen) is not int or not 0 <= self.gen < 2**63:
            raise InvalidEvent(f"CvipCommand.gen: expected an int >= 0, got {self.gen!r:.40}")


# -- configuration -------------------------------------------------------------------------


def _node_list(v: list[Any]) -> str | None:
    if v and all(type(n) is int and 0 <= n <= _MAX_NODE for n in v) and len(set(v)) == len(v):
        return None
    return "expected a non-empty array of distinct node numbers"


def _weights(v: Mapping[str, Any]) -> str | None:
    for k, w in v.items():
        if not str(k).isdigit():
            return f"{k!r} is not a node number (write weight = {{ 2 = 3.0 }})"
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1e6:
            return f"weight of node {k} must be a number > 0 (up to 1e6), got {w!r}"
    return None


VIP_SCHEMA: dict[str, Key] = {
    "address": Key(str, REQUIRED, None, 'the CVIP with its prefix, e.g. "10.77.0.100/24"'),
    "interface": Key(str, REQUIRED, None, "the interface the CVIP lives on"),
    "vrid": Key(int, REQUIRED, between(1, 255), "the VRRP virtual router id guarding it"),
    "directors": Key(list, REQUIRED, _node_list, "the node numbers that may own it"),
    "weight": Key(dict, {}, _weights, "node -> weight (default 1): a share of the CVIPs"),
    "instance": Key(str, "", None, "the [[vrrp.instance]] name (default: the one with this "
                                   "interface and vrid)"),
    "track_file": Key(str, "", None, "keepalived mode: write 1 (owner) or 0 to this file "
                                     "for keepalived's track_file; no built-in speaker"),
}

#: priority difference between consecutive backups: their Skew_Times then differ by
#: 10/256 of an advert interval (39 ms at 1 s), so after an owner's crash the next in line
#: wins the race for MASTER even on a loaded host (one apart, 4 ms, both timers could expire
#: before either heard the other: two holders for a moment)
PRIORITY_STEP = 10

SCHEMA: dict[str, Key] = {
    "vip": Key(list, REQUIRED, None, "[[cvip.vip]] tables, one per CVIP"),
    "priority_owner": Key(int, 200, between(2, 254), "VRRP priority of the owner"),
    # 0 (the default, never accepted from a file): priority_owner - PRIORITY_STEP
    "priority_backup": Key(int, 0, between(1, 253),
                           "VRRP priority of the next in line (default: priority_owner - 10); "
                           "the others get less"),
    "settle_time": Key(float, 3.0, between(0, 600),
                       "seconds after start before claiming a CVIP nobody announced"),
    "handoff_timeout": Key(float, 3.0, between(0.1, 600),
                           "seconds the owner waits for the new owner's claim in a move"),
    "control": Key(str, DEFAULT_CONTROL, None,
                   "unix socket for clusterbus cvip move|drain|rebalance (root only)"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class VipConfig:
    """One validated ``[[cvip.vip]]``."""

    address: str  #: canonical, no prefix: the CVIP's key
    interface: str
    prefix: str  #: as configured, with its prefix
    vrid: int
    directors: tuple[int, ...]
    weights: Mapping[int, float]
    instance: str  #: the VRRP instance (built-in mode), or ""
    track_file: str  #: keepalived mode, or ""
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CvipConfig:
    """The validated ``[cvip]`` section."""

    vips: tuple[VipConfig, ...]
    priority_owner: int
    priority_backup: int
    settle_time: float
    handoff_timeout: float
    control: str
    quorum: bool  #: Corosync quorum is configured: without it, no CVIP here


def parse(section: Mapping[str, Any], config: Config) -> CvipConfig:
    """Validate ``[cvip]`` against the rest of the configuration.

    :raises ConfigError: one line naming the file and the key.
    """
    file = config.file
    v = validate_table(section, SCHEMA, file=file, prefix="cvip")
    # The next in line just below the owner: after a crash its Master_Down_Interval is
    # 3 * Master_Adver_Interval + Skew_Time, and Skew_Time = (256 - Priority) / 256 of an
    # interval, so at 190 it waits 26 % of an interval beyond the three, at 100 61 %.
    if not v["priority_backup"]:
        v["priority_backup"] = max(1, v["priority_owner"] - PRIORITY_STEP)
    if v["priority_backup"] >= v["priority_owner"]:
        raise ConfigError("must be below priority_owner", file=file, key="cvip.priority_backup")
    if not v["control"].startswith("/"):
        raise ConfigError("expected an absolute path", file=file, key="cvip.control")
    instances = {}
    for inst in (config.core.get("vrrp") or {}).get("instance", ()):
        instances[inst["name"]] = inst
    vips: list[VipConfig] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(v["vip"]):
        prefix = f"cvip.vip[{i}]"
        t = validate_table(raw, VIP_SCHEMA, file=file, prefix=prefix)

        def err(msg: str, key: str, prefix: str = prefix) -> ConfigError:
            return ConfigError(msg, file=file, key=f"{prefix}.{key}")

        try:
            iface = ipaddress.ip_interface(t["address"])
        except ValueError as exc:
            raise err(str(exc), "address") from None
        if "/" not in t["address"]:
            raise err("expected ADDR/PREFIX, e.g. 10.77.0.100/24", "address")
        addr = str(iface.ip)
        if addr in seen:
            raise err(f"{addr} is already cvip.vip[{seen[addr]}]", "address")
        seen[addr] = i
        weights = {int(k): float(w) for k, w in t["weight"].items()}
        for n in weights:
            if n not in t["directors"]:
                raise err(f"node {n} is not in directors", "weight")
        if config.node not in t["directors"]:
            log.info("cvip: %s: this director (node %d) is not a candidate", addr, config.node)
        name = t["instance"]
        if not t["track_file"]:
            match = [n for n, inst in instances.items()
                     if inst["interface"] == t["interface"] and inst["vrid"] == t["vrid"]]
            if name and name not in instances:
                raise err(f"no [[vrrp.instance]] named {name!r}", "instance")
            if not name:
                if not match:
                    raise err(f"no [[vrrp.instance]] with interface {t['interface']!r} and vrid "
                              f"{t['vrid']} (add one, or set track_file for keepalived)", "vrid")
                name = match[0]
            inst = instances[name]
            vips_of = {str(ipaddress.ip_interface(a).ip) for a in inst["virtual_ipaddress"]}
            if addr not in vips_of:
                raise err(f"{addr} is not in the virtual_ipaddress of [[vrrp.instance]] {name}",
                          "address")
            if v["priority_backup"] - PRIORITY_STEP * (len(t["directors"]) - 1) < 1:
                raise err(f"too many directors for priority_backup (each backup gets "
                          f"{PRIORITY_STEP} less)", "directors")
        elif not t["track_file"].startswith("/"):
            raise err("expected an absolute path", "track_file")
        vips.append(VipConfig(address=addr, interface=t["interface"], prefix=t["address"],
                              vrid=t["vrid"], directors=tuple(t["directors"]),
                              weights=weights, instance=name, track_file=t["track_file"],
                              index=i))
    if not vips:
        raise ConfigError("expected at least one [[cvip.vip]]", file=file, key="cvip.vip")
    coro = config.core.get("corosync") or {}
    return CvipConfig(vips=tuple(vips), priority_owner=v["priority_owner"],
                      priority_backup=v["priority_backup"], settle_time=v["settle_time"],
                      handoff_timeout=v["handoff_timeout"], control=v["control"],
                      quorum=bool(coro.get("enabled") and coro.get("quorum")))


# -- the plugin's state per cluster ----------------------------------------------------------


@dataclass(eq=False)
class _State:
    config: CvipConfig
    cluster: Cluster
    policy: Policy
    started: float = field(default_factory=time.monotonic)
    #: instance/track file -> what was last applied
    applied: dict[str, int] = field(default_factory=dict)
    #: cvip -> the VRRP state of its instance here (from vrrp.transition)
    vrrp: dict[str, str] = field(default_factory=dict)
    #: cvip -> monotonic time a handoff started waiting for the new owner's claim
    waiting: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: what a reload changed that only a restart applies (status ``restart_needed``)
    restart_needed: dict[str, str] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def vip(self, cvip: str) -> VipConfig:
        for v in self.config.vips:
            if v.address == cvip:
                return v
        raise KeyError(cvip)


class CvipPlugin:
    """The plugin object registered through the entry point (state kept per cluster)."""

    def __init__(self) -> None:
        self._states: weakref.WeakKeyDictionary[Cluster, _State] = weakref.WeakKeyDictionary()
        self._configs: weakref.WeakKeyDictionary[Cluster, CvipConfig] = \
            weakref.WeakKeyDictionary()

    def state(self, cluster: Cluster) -> _State | None:
        """The cluster's policy state (``None`` without ``[cvip]`` or before start-up)."""
        return self._states.get(cluster)

    # -- start-up ---------------------------------------------------------------------------

    @hookimpl
    def clusterbus_configure(self, config: Config, section: Mapping[str, Any] | None,
                             cluster: Cluster) -> None:
        """Validate ``[cvip]``; without one the plugin stays inert."""
        self._configs.pop(cluster, None)
        if section is not None:
            self._configs[cluster] = parse(section, config)

    @hookimpl
    def clusterbus_startup(self, cluster: Cluster) -> None:
        """Build the policy; it claims nothing before ``settle_time``."""
        cfg = self._configs.get(cluster)
        if cfg is None:
            return
        local = cluster.local_node
        specs = [CvipSpec(address=v.address, directors=v.directors, weights=v.weights)
                 for v in cfg.vips]
        policy = Policy(local=local, specs=specs, settled=cfg.settle_time == 0,
                        override=lambda cvip, cands: cluster.cvip_owner(cvip, cands))
        st = self._states[cluster] = _State(config=cfg, cluster=cluster, policy=policy)
        for node in cluster.directors():
            policy.director_up(node)
        self._apply(st, policy.decide_all("startup"))

    @hookimpl
    def clusterbus_reload(self, config: Config, section: Mapping[str, Any] | None,
                          cluster: Cluster) -> None:
        """Apply a changed ``[cvip]`` (SIGHUP, ``clusterbus reload``).

        Weights, candidates, priorities, timeouts and the CVIPs themselves change at run
        time; owners stay sticky (a CVIP whose owner is still an eligible candidate does
        not move; use ``clusterbus cvip rebalance``). A removed CVIP's claim is withdrawn.
        The control socket's path and adding or removing the whole section need a restart
        (the path named in status ``restart_needed``, the section by the daemon: both in
        the reload's verdict).
        Whatever the verdict, every CVIP's VRRP priority is set again: the speaker's own
        reload, which runs first, resets each instance to its configured priority.

        :raises ConfigError: the new section is invalid: the running one stays.
        """
        st = self._states.get(cluster)
        if st is None:
            if section is not None:
                parse(section, config)  # a bad new section still gets its one-line error
                log.warning("cvip: adding a [cvip] section needs a restart")
            return
        try:
            if section is None:
                log.warning("cvip: removing the [cvip] section needs a restart; keeping the "
                            "running configuration")
                return
            new = parse(section, config)
            st.restart_needed = {}
            if new.control != st.config.control:
                st.restart_needed = {"control": f"{st.config.control!r} -> {new.control!r}"}
                log.warning("cvip: control changed to %s; restart the daemon to apply it "
                            "(still %s)", new.control, st.config.control)
                new = replace(new, control=st.config.control)
            if new != st.config:
                self._reconfigure(st, new)
                self._configs[cluster] = new
        finally:
            # the speaker applied the [vrrp] priorities of the file: set ours again
            for v in st.config.vips:
                st.applied.pop(v.instance, None)
            self._drive(st, set())

    def _reconfigure(self, st: _State, new: CvipConfig) -> None:
        old, local = st.config, st.cluster.local_node
        keep = {v.address for v in new.vips}
        removed = [v for v in old.vips if v.address not in keep]
        held = set(st.policy.reconfigure(
            CvipSpec(address=v.address, directors=v.directors, weights=v.weights)
            for v in new.vips))
        st.config = new
        st.count("reloads")
        for v in removed:
            st.waiting.pop(v.address, None)
            st.vrrp.pop(v.address, None)
            st.last.pop(v.address, None)
            if v.address in held:
                st.cluster.emit(CvipOwner, cvip=v.address, old=local, new=None,
                                reason="removed")
            if v.track_file:
                _write_track(v.track_file, 0)
            st.applied.pop(v.track_file or v.instance, None)
        log.info("cvip: configuration reloaded: %d CVIP(s)%s", len(new.vips),
                 f", {len(removed)} removed ({', '.join(v.address for v in removed)})"
                 if removed else "")
        self._apply(st, st.policy.decide_all("reload"))

    @hookimpl
    def clusterbus_services(self, cluster: Cluster) -> list[Callable[[], Awaitable[None]]] | None:
        """The timers (settle, handoff timeout) and the control socket."""
        st = self._states.get(cluster)
        if st is None:
            return None
        return [lambda: self._timers(st), lambda: self._control(st)]

    @hookimpl
    def clusterbus_shutdown(self, cluster: Cluster) -> None:
        """Remove the control socket; in keepalived mode, stop claiming (file 0)."""
        st = self._states.get(cluster)
        if st is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(st.config.control)
        for v in st.config.vips:
            if v.track_file:
                _write_track(v.track_file, 0)

    @hookimpl
    def clusterbus_status(self, cluster: Cluster) -> dict[str, Any] | None:
        """Per CVIP: owner, candidates, claims, this director's priority; the facts."""
        st = self._states.get(cluster)
        return None if st is None else {**self.show(st),
                                        "restart_needed": dict(st.restart_needed)}

    # -- facts in ---------------------------------------------------------------------------

    @hookimpl
    def clusterbus_event(self, event: Event, cluster: Cluster) -> None:
        """Feed the policy: directors, quorum, peers' claims, planned moves."""
        st = self._states.get(cluster)
        if st is None:
            return
        pol = st.policy
        local = cluster.local_node
        topic = event.topic
        mine = event.origin == local
        out: list[Decision] = []
        if topic == "director.up":
            node = int(getattr(event, "node", -1))
            if mine:
                out = self._sync_live(st, topic, node)
                self._announce(st)
            elif node == local:  # a peer saw us come up: it hears us now
                self._announce(st)
        elif topic == "director.down" and mine:
            out = self._sync_live(st, topic, int(getattr(event, "node", -1)))
        elif topic == "cluster.quorum" and mine and st.config.quorum:
            out = pol.set_quorum(bool(getattr(event, "quorate", True)))
        elif isinstance(event, CvipOwner):
            if not mine:
                out = pol.observe(event.cvip, origin=event.origin, new=event.new,
                                  gen=event.gen if event.new == event.origin else 0)
        elif isinstance(event, CvipCommand):
            st.count(f"commands.{event.op}")
            if event.op == "move":
                out = pol.move(event.cvip, event.node, event.gen)
            else:
                out = pol.set_draining(event.node, event.op == "drain")
        elif topic == "vrrp.transition" and mine:
            for v in st.config.vips:
                if v.instance and v.instance == getattr(event, "instance", None):
                    st.vrrp[v.address] = str(getattr(event, "new", "?"))
            return
        else:
            return
        self._apply(st, out)

    def _sync_live(self, st: _State, topic: str, node: int) -> list[Decision]:
        """Make the policy's live directors the cluster's (:meth:`Cluster.directors`).

        A director counts while any director source (peer links, Corosync) reports it up,
        and each source updates that set before the hooks get its event: so one source's
        ``director.down`` changes nothing while another still has the director up, and
        whatever the event, the decision follows the set every source agrees on.
        """
        pol = st.policy
        live = set(st.cluster.directors())
        if topic == "director.down" and node in live:
            st.count("facts.down_still_live")
            log.info("cvip: director %d is down for one source but still up for another "
                     "(Cluster.directors()); it keeps its CVIPs", node)
        out: list[Decision] = []
        for gone in sorted(pol.live - live - {pol.local}):
            out += pol.director_down(gone)
        for came in sorted(live - pol.live):
            out += pol.director_up(came)
        return out

    def _announce(self, st: _State) -> None:
        """Re-announce our claims (and our drain) so a director that just came learns them."""
        cluster = st.cluster
        for cvip, gen in st.policy.announcements():
            st.count("announcements")
            cluster.emit(CvipOwner, cvip=cvip, old=cluster.local_node, new=cluster.local_node,
                         gen=gen, reason="announce")
        if cluster.local_node in st.policy.draining:
            cluster.emit(CvipCommand, op="drain", node=cluster.local_node)

    # -- decisions out ----------------------------------------------------------------------

    def _apply(self, st: _State, decisions: list[Decision]) -> None:
        cluster = st.cluster
        for d in decisions:
            st.count(f"decisions.{d.reason}")
            (log.warning if d.release or d.claim else log.info)(
                "cvip %s: owner %s -> %s (%s)%s", d.cvip, _n(d.old), _n(d.new), d.reason,
                " : taking it" if d.claim else " : handing it over" if d.release else "")
            st.last[d.cvip] = {"old": d.old, "new": d.new, "reason": d.reason,
                               "time": time.time()}
            cluster.emit(CvipOwner, cvip=d.cvip, old=d.old, new=d.new,
                         gen=d.gen if d.claim else 0, reason=d.reason)
        released = {d.cvip for d in decisions if d.release}
        now = time.monotonic()
        for cvip in st.policy.handing_over():
            st.waiting.setdefault(cvip, now)
        for cvip in list(st.waiting):
            if cvip not in st.policy.handing_over():
                del st.waiting[cvip]
        if st.waiting:
            st.wake.set()
        self._drive(st, released)

    def _drive(self, st: _State, released: set[str]) -> None:
        """Set every CVIP's VRRP priority (or track file) from the policy."""
        pol = st.policy
        cfg = st.config
        for v in cfg.vips:
            if v.track_file:
                want = 1 if pol.holding(v.address) else 0
                if st.applied.get(v.track_file) != want:
                    if _write_track(v.track_file, want):
                        st.applied[v.track_file] = want
                    else:
                        st.count("errors.track_file")
                continue
            if pol.holding(v.address):
                prio = cfg.priority_owner
            else:
                prio = max(1, cfg.priority_backup - PRIORITY_STEP * pol.rank(v.address))
            release = v.address in released
            if st.applied.get(v.instance) == prio and not release:
                continue
            try:
                st.cluster.set_vrrp_priority(v.instance, prio, release=release)
            except (LookupError, ValueError) as exc:
                st.count("errors.vrrp")
                log.error("cvip %s: cannot set the priority of VRRP instance %s: %s",
                          v.address, v.instance, exc)
                continue
            st.applied[v.instance] = prio

    # -- services ---------------------------------------------------------------------------

    async def _timers(self, st: _State) -> None:
        """Settle after ``settle_time``; release a handoff whose new owner never claimed."""
        cfg = st.config
        while True:
            now = time.monotonic()
            waits = []
            if not st.policy.settled:
                left = st.started + cfg.settle_time - now
                if left <= 0:
                    self._apply(st, st.policy.settle())
                else:
                    waits.append(left)
            for cvip, since in list(st.waiting.items()):
                left = since + cfg.handoff_timeout - now
                if left <= 0:
                    st.count("handoff.timeouts")
                    log.warning("cvip %s: the new owner did not claim it within %.1f s; "
                                "releasing it anyway", cvip, cfg.handoff_timeout)
                    st.waiting.pop(cvip, None)
                    self._apply(st, st.policy.release_now(cvip))
                else:
                    waits.append(left)
            st.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(st.wake.wait(), min(waits) if waits else None)

    async def _control(self, st: _State) -> None:
        """Serve ``clusterbus cvip`` requests on the root-only unix socket."""
        path = st.config.control
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = await asyncio.start_unix_server(lambda r, w: self._client(st, r, w), path)
        os.chmod(path, 0o600)
        log.info("cvip: control socket %s", path)
        try:
            async with server:
                await server.serve_forever()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _client(self, st: _State, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            uid = _peer_uid(writer)
            if uid not in (0, os.getuid()):
                st.count("control.denied")
                reply: dict[str, Any] = {"ok": False, "error": f"uid {uid} may not change "
                                         "CVIP owners (run as root)"}
            else:
                try:
                    line = await asyncio.wait_for(reader.readline(), 5.0)
                    if len(line) > _MAX_REQUEST:
                        raise ValueError("request too long")
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("expected a JSON object")
                    reply = self.request(st, request)
                except (ValueError, TimeoutError) as exc:
                    st.count("control.dropped.bad_request")
                    reply = {"ok": False, "error": f"bad request: {exc}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            st.count("control.dropped.io")
        finally:
            writer.close()

    # -- requests ---------------------------------------------------------------------------

    def request(self, st: _State, req: Mapping[str, Any]) -> dict[str, Any]:
        """One control request: ``{"op": "move", "cvip": ADDR, "node": N}``, ``drain``
        (``node``, ``undo``), ``rebalance``, ``show``. A change is published as
        ``cvip.command`` events every director applies (this one too)."""
        pol = st.policy
        op = req.get("op")
        cluster = st.cluster
        st.count(f"control.{op}" if op in ("move", "drain", "rebalance", "show")
                 else "control.dropped.unknown_op")
        if op == "show":
            return {"ok": True, "show": self.show(st)}
        if op == "move":
            try:
                cvip = str(ipaddress.ip_address(str(req.get("cvip"))))
            except ValueError:
                return {"ok": False, "error": f"{req.get('cvip')!r} is not an IP address"}
            node = req.get("node")
            if cvip not in pol.cvips:
                return {"ok": False, "error": f"{cvip} is not a configured CVIP"}
            if type(node) is not int or node not in pol.cvips[cvip].spec.directors:
                return {"ok": False, "error": f"node {node} is not a candidate for {cvip}"}
            if node not in pol.eligible(cvip):
                return {"ok": False, "error": f"node {node} is not up (or is draining)"}
            cluster.emit(CvipCommand, op="move", cvip=cvip, node=node,
                         gen=pol.next_gen(cvip))
            return {"ok": True, "cvip": cvip, "from": pol.owner(cvip), "to": node}
        if op == "drain":
            node = req.get("node")
            undo = bool(req.get("undo"))
            if type(node) is not int or (not undo and node not in pol.live):
                return {"ok": False, "error": f"node {node} is not a live director"}
            cluster.emit(CvipCommand, op="undrain" if undo else "drain", node=node)
            return {"ok": True, "node": node, "draining": not undo}
        if op == "rebalance":
            moves = {}
            for cvip, cs in pol.cvips.items():
                best = hrw(cvip, pol.eligible(cvip), cs.spec.weights)
                if best is not None and best != pol.owner(cvip):
                    moves[cvip] = best
                    cluster.emit(CvipCommand, op="move", cvip=cvip, node=best,
                                 gen=pol.next_gen(cvip))
            return {"ok": True, "moves": moves}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def show(self, st: _State) -> dict[str, Any]:
        """Plain data: per CVIP and the facts (``clusterbus cvip show``, ``status``)."""
        pol = st.policy
        cvips = []
        for v in st.config.vips:
            a = v.address
            cvips.append({
                "cvip": v.prefix,
                "owner": pol.owner(a),
                "holding": pol.holding(a),
                "candidates": list(v.directors),
                "eligible": list(pol.eligible(a)),
                "claims": {str(n): g for n, g in sorted(pol.claims(a).items())},
                "target": list(t) if (t := pol.target(a)) else None,
                "handing_to": pol.handing_over().get(a),
                "instance": v.instance or None,
                "track_file": v.track_file or None,
                "priority": st.applied.get(v.track_file or v.instance),
                "vrrp": st.vrrp.get(a),
                "last": st.last.get(a),
            })
        return {"node": st.cluster.local_node, "settled": pol.settled,
                "live": sorted(pol.live), "draining": sorted(pol.draining),
                "quorate": pol.quorate, "quorum_used": st.config.quorum,
                "control": st.config.control, "cvips": cvips,
                "counters": dict(st.counters)}


def _n(node: int | None) -> str:
    return "none" if node is None else str(node)


def _peer_uid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _write_track(path: str, value: int) -> bool:
    """Write keepalived's track_file atomically (a rename: keepalived never reads half)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(f"{value}\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.error("cvip: cannot write track_file %s: %s", path, exc)
        return False
    return True


#: The entry point (``clusterbus.plugins.cvip:plugin``).
plugin = CvipPlugin()
