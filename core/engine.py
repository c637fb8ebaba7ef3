"""The event engine: stamps events, keeps the membership view, dispatches hooks, feeds sinks.

Synchronous and I/O-free: the daemon's sources call :meth:`Engine.report` or
:meth:`Engine.publish` from the asyncio loop; sinks (the ZeroMQ publisher) are plain
callables. An event a plugin emits while a hook is running is queued and dispatched after
the current one, so hooks always see events in sequence order.

The one membership path: every source builds a :class:`~clusterbus.view.NodeReport`
(validated at construction), :meth:`Engine.report` applies it to the view and builds the
event with :func:`~clusterbus.events.membership_event`. The only I/O the engine starts is
the view's state file (:meth:`Engine.attach_store`), written at most every
:data:`SAVE_DELAY` seconds from the running loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from .errors import InvalidEvent, LocalProtocolError
from .events import Event, MembershipEvent, MembershipResync, NodemapChanged, membership_event
from .nodemap import NodeMap
from .pluginhost import PluginHost
from .ratelimit import LogLimiter
from .view import MembershipView, NodeInfo, NodeReport, NodeState, ViewStore

__all__ = ["Engine", "Cluster", "SAVE_DELAY"]

#: Seconds between a view change and the state-file write that records it (changes in
#: between share the write): a kill -9 loses at most this much, and restored nodes are
#: marked unconfirmed anyway.
SAVE_DELAY = 1.0

log = logging.getLogger(__name__)

#: Membership-change INFO lines written per second at most; the rest are counted and
#: summed up in the next line (a flood of reports must not flood the log).
CHANGE_LOG_BURST = 20

E = TypeVar("E", bound=Event)
Sink = Callable[[Event], None]


class Cluster:
    """What plugins see: read access to the view and the node map, and ``emit``.

    One object for the daemon's whole life: it is live, never a copy.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def local_node(self) -> int:
        """This director's node number (the ``origin`` of the events it produces)."""
        return self._engine.origin

    @property
    def view_id(self) -> int:
        """The current membership view id."""
        return self._engine.view.view_id

    @property
    def nodes(self) -> Mapping[int, NodeInfo]:
        """Read-only mapping node number -> :class:`~clusterbus.view.NodeInfo`."""
        return self._engine.view.nodes

    def state(self, node: int) -> NodeState | None:
        """A node's state, ``None`` when never heard of."""
        return self._engine.view.state(node)

    def up_nodes(self) -> tuple[int, ...]:
        """Sorted numbers of the UP nodes."""
        return self._engine.view.up_nodes()

    @property
    def nodemap(self) -> NodeMap:
        """The node map (node number <-> addresses)."""
        return self._engine.nodemap

    def directors(self) -> tuple[int, ...]:
        """Sorted node numbers of the live directors: this one and every peer director a
        director source reports up (:attr:`Engine.director_sources`: the ``[[cluster.peer]]``
        links, :mod:`clusterbus.peers`, and the Corosync CPG group,
        :mod:`clusterbus.sources.corosync`). A director counts while any source reports
        it up; each source updates it before the hooks get its ``director.up`` /
        ``director.down``."""
        live = {self._engine.origin}
        for provider in self._engine.director_sources.values():
            live.update(provider())
        return tuple(sorted(live))

    def set_vrrp_priority(self, instance: str, priority: int, *, release: bool = False) -> None:
        """Change a ``[[vrrp.instance]]``'s priority at run time (the built-in speaker).

        The one way a plugin (the CVIP policy) drives the speaker. A MASTER whose priority
        drops below a peer's, or that is told to ``release``, steps down at once with a
        priority-0 advert, so the backup with the highest priority takes over after its
        Skew_Time through its normal takeover path (``clusterbus_vrrp_prepare_master``).
        Applied on the speaker's own loop a moment later; before the instance runs, it
        starts with this priority.

        :param instance: the instance name.
        :param priority: 1..255.
        :param release: step down even when no higher priority was heard.
        :raises LookupError: no VRRP speaker runs, or it has no such instance.
        :raises LocalProtocolError: priority out of range.
        """
        setter = self._engine.vrrp_priority
        if setter is None:
            raise LookupError("no VRRP speaker runs in this daemon ([[vrrp.instance]])")
        setter(instance, priority, release=release)

    def cvip_owner(self, cvip: str, candidates: tuple[int, ...]) -> int | None:
        """A plugin's choice of a CVIP's owner through ``clusterbus_cvip_owner`` (``None``:
        no plugin has an opinion, or it named no candidate); the CVIP policy asks it first."""
        node = self._engine.plugins.call_first("clusterbus_cvip_owner", cvip=cvip,
                                               candidates=tuple(candidates), cluster=self)
        return node if node in candidates else None

    def resolve_node(self, addr: str) -> int | None:
        """Address -> node number through ``clusterbus_resolve_node`` (None: unknown)."""
        # the hookspec promises int | None; pluggy's results are untyped
        node: int | None = self._engine.plugins.call_first(
            "clusterbus_resolve_node", addr=addr, cluster=self)
        return node

    def register_hooks(self, plugin: object, name: str) -> None:
        """Register ``plugin``'s hook implementations under ``name``, replacing what was
        registered under that name before: for a hook a plugin implements only while it
        is configured (conn-sync's takeover barrier: with no implementation of
        ``clusterbus_vrrp_prepare_master`` the speaker does not ask before a takeover).
        Call it from ``clusterbus_configure``: the speaker looks when it starts.

        :raises PluginError: as :meth:`PluginHost.register`.
        """
        self._engine.plugins.unregister(name)
        self._engine.plugins.register(plugin, name)

    def unregister_hooks(self, name: str) -> None:
        """Forget what :meth:`register_hooks` registered under ``name`` (none: no-op)."""
        self._engine.plugins.unregister(name)

    def emit(self, event_class: type[E], **fields: Any) -> None:
        """Produce an event from a plugin: stamped with origin, seq and time, then
        dispatched after the event being handled now.

        :raises InvalidEvent: the fields are invalid (a bug in the caller).
        """
        self._engine.publish(event_class, **fields)


class Engine:
    """The core of the daemon, without I/O.

    :param origin: this director's node number.
    :param plugins: the plugin host.
    :param clock: returns UNIX time (injectable for tests).
    """

    def __init__(
        self,
        *,
        origin: int,
        plugins: PluginHost,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.origin = origin
        self.plugins = plugins
        self.clock = clock
        self.view = MembershipView()
        self._change_log = LogLimiter(log, interval=1.0, burst=CHANGE_LOG_BURST)
        self.nodemap = NodeMap()
        self.cluster = Cluster(self)
        self.sinks: list[Sink] = []
        #: name -> callable giving the peer directors a service knows to be up
        #: (:meth:`Cluster.directors`): ``peers`` (:class:`~clusterbus.peers.PeersService`),
        #: ``corosync`` (:class:`~clusterbus.sources.corosync.CorosyncSource`)
        self.director_sources: dict[str, Callable[[], Iterable[int]]] = {}
        #: the VRRP speaker's ``set_priority(instance, priority, *, release)`` when one
        #: runs (see :meth:`Cluster.set_vrrp_priority`)
        self.vrrp_priority: Callable[..., None] | None = None
        self.seq = 0
        self._queue: deque[Event] = deque()
        self._dispatching = False
        #: the view's state file (:meth:`attach_store`), None: not persisted
        self.store: ViewStore | None = None
        self._save_pending = False
        self._next_sweep = 0.0  # the first change sweeps (and starts the ageing clock)
        #: ``state.saves``, ``state.save_failed``, ``state.load_failed``, ``state.restored``
        self.counters: dict[str, int] = {"state.saves": 0, "state.save_failed": 0,
                                         "state.load_failed": 0, "state.restored": 0}

    # -- producing ----------------------------------------------------------------------

    def _stamp(self, event_class: type[E], fields: dict[str, Any]) -> E:
        for reserved in ("origin", "seq", "time"):
            if reserved in fields:
                raise LocalProtocolError(f"{reserved!r} is stamped by the engine, do not pass it")
        event = event_class(origin=self.origin, seq=self.seq + 1, time=self.clock(), **fields)
        self.seq += 1  # only once the event is valid: seq stays continuous
        return event

    def publish(self, event_class: type[E], **fields: Any) -> E:
        """Stamp and dispatch a (non-membership) event.

        :raises InvalidEvent: bad fields; nothing is published and seq does not move.
        """
        if issubclass(event_class, MembershipEvent):
            raise LocalProtocolError("membership events come from Engine.report(), not publish()")
        event = self._stamp(event_class, dict(fields))
        self._enqueue(event)
        return event

    def report(self, report: NodeReport) -> MembershipEvent | None:
        """Apply a membership report to the view; dispatch the event on a real change.

        :returns: the event, or ``None`` for a duplicate or stale report.
        :raises LocalProtocolError: ``report`` is not a :class:`NodeReport` (whose checks
            the event relies on).
        """
        if type(report) is not NodeReport:
            raise LocalProtocolError(f"expected a NodeReport, got {type(report).__name__}")
        change = self.view.apply(report)
        state = report.state
        if change is None:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("ignored %s node %d (%s): no change", state.label, report.node,
                          report.reason)
            return None
        view, info, _prev, joined, left = change
        now = self.clock()
        event = membership_event(state.event_class, self.origin, self.seq + 1, now,
                                 info.node, info.addrs, view, joined, left, report.reason,
                                 info.incarnation)
        self.seq += 1  # only once the event exists: seq stays continuous
        if log.isEnabledFor(logging.INFO):  # spares evaluating the arguments per event
            # a flood of reports must not become a flood of log lines: up to
            # CHANGE_LOG_BURST lines a second, then one line saying how many were not written
            self._change_log.info("change", "view %d: node %d %s (%s)", view, info.node,
                                  state.label, report.reason)
        if self.store is not None and not self._save_pending:
            self._schedule_save()
        self._enqueue(event)
        if now >= self._next_sweep:
            self.expire(event.time)
        return event

    def resync(self, reports: Iterable[NodeReport], *, source: str,
               owned: Callable[[NodeInfo], bool]) -> MembershipResync:
        """Reconcile the view with a source's full table (after it lost messages).

        Every report is applied as by :meth:`report` (events for the real changes); then
        each node the source is responsible for (``owned(info)``) that is in the view, not
        DOWN, and absent from the table is reported DOWN (``reason`` ``source``): the
        source no longer knows it. Finally a ``membership.resync`` event says what was
        done.

        :param reports: the table, one report per node (later ones win).
        :param source: the source's name (``netlink``), the events' ``reason``.
        :param owned: which view entries the table is authoritative for.
        :returns: the published :class:`~clusterbus.events.MembershipResync`.
        """
        listed: set[int] = set()
        changed = 0
        for report in reports:
            listed.add(report.node)
            if self.report(report) is not None:
                changed += 1
        missing = [i.node for i in list(self.view.nodes.values())
                   if i.node not in listed and i.state is not NodeState.DOWN and owned(i)]
        for node in missing:
            if self.report(NodeReport(state=NodeState.DOWN, node=node, reason=source)):
                changed += 1
        return self.publish(MembershipResync, source=source, reported=len(listed),
                            changed=changed, down=len(missing), view=max(self.view.view_id, 1))

    def expire(self, now: float | None = None) -> int:
        """Age the node map (:meth:`~clusterbus.nodemap.NodeMap.age`: the learned
        addresses of nodes DOWN for ``forget_after`` seconds or more are forgotten), each
        with a ``nodemap.changed`` (``reason`` ``expired``). Runs by itself after a
        membership change once ``forget_after`` seconds passed since the last sweep; the
        daemon may call it on a timer too.

        :returns: the number of nodes that lost addresses.
        """
        now = self.clock() if now is None else now
        nodemap = self.nodemap
        self._next_sweep = now + nodemap.forget_after
        down = {n: i.view for n, i in self.view.nodes.items() if i.state is NodeState.DOWN}
        gone = nodemap.age(down, now)
        for node, keep in gone:
            self.publish(NodemapChanged, node=node, addrs=keep, reason="expired")
        return len(gone)

    # -- the state file -------------------------------------------------------------------

    def attach_store(self, store: ViewStore) -> int:
        """Restore the view from ``store`` (each node unconfirmed) and keep the file up
        to date from now on. Call once, at start, before any source runs.

        A file that cannot be read or is invalid is logged, renamed ``*.bad`` and
        ignored: the daemon starts with an empty view rather than not at all.

        :returns: the number of nodes restored.
        """
        self.store = store
        try:
            loaded = store.load()
        except (InvalidEvent, OSError) as exc:
            self.counters["state.load_failed"] += 1
            log.error("state file ignored, starting with an empty view: %s", exc)
            try:
                store.path.rename(store.path.with_name(store.path.name + ".bad"))
            except OSError:
                pass
            return 0
        if loaded is None:
            log.info("no state file at %s: starting with an empty view", store.path)
            return 0
        view_id, nodes = loaded
        self.view.restore(view_id, nodes)
        self.counters["state.restored"] = len(nodes)
        log.info("restored %d node(s) from %s (view %d), unconfirmed until a source reports "
                 "them", len(nodes), store.path, self.view.view_id)
        return len(nodes)

    def _schedule_save(self) -> None:
        self._save_pending = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, a tool): write now
            self.save_state()
            return
        loop.call_later(SAVE_DELAY, self.save_state)

    def save_state(self) -> bool:
        """Write the state file now (the daemon calls it at shutdown too).

        :returns: whether it was written; a failure is counted (``state.save_failed``)
            and logged, never raised: the daemon keeps running without it.
        """
        self._save_pending = False
        if self.store is None:
            return False
        try:
            self.store.save(self.origin, self.view)
        except OSError as exc:
            self.counters["state.save_failed"] += 1
            level = logging.WARNING if self.counters["state.save_failed"] == 1 else logging.DEBUG
            log.log(level, "cannot write the state file %s: %s (counted as "
                    "state.save_failed)", self.store.path, exc)
            return False
        self.counters["state.saves"] += 1
        return True

    # -- dispatching --------------------------------------------------------------------

    def _enqueue(self, event: Event) -> None:
        if self._dispatching:  # a hook emitted it: dispatched after the current one
            self._queue.append(event)
            return
        self._dispatching = True
        try:
            self._dispatch(event)
            while self._queue:
                self._dispatch(self._queue.popleft())
        finally:
            self._dispatching = False

    def _dispatch(self, event: Event) -> None:
        self.plugins.notify_event(event, self.cluster)
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:
                log.exception("event sink %r failed on %s seq %d", sink, event.topic, event.seq)

    def snapshot(self) -> dict[str, Any]:
        """The view and node map as plain data, with the last seq and origin."""
        snap = self.view.snapshot()
        snap.update(origin=self.origin, seq=self.seq, nodemap=self.nodemap.snapshot())
        return snap

    def status(self) -> dict[str, Any]:
        """Counters of the engine, the node map and the state file, for ``status``."""
        return {**self.counters, **self.nodemap.counters,
                "state.file": str(self.store.path) if self.store else None,
                "unconfirmed": len(self.view.unconfirmed())}
