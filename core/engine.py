"""The event engine: stamps events, keeps the membership view, dispatches hooks, feeds sinks.

Synchronous and I/O-free: the daemon's sources call :meth:`Engine.report` or
:meth:`Engine.publish` from the asyncio loop; sinks (the ZeroMQ publisher) are plain
callables. An event a plugin emits while a hook is running is queued and dispatched after
the current one, so hooks always see events in sequence order.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .errors import LocalProtocolError
from .events import Event, MembershipEvent, _membership_event
from .nodemap import NodeMap
from .pluginhost import PluginHost
from .view import MembershipView, NodeInfo, NodeReport, NodeState

__all__ = ["Engine", "Cluster"]

log = logging.getLogger(__name__)

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

    def resolve_node(self, addr: str) -> int | None:
        """Address -> node number through ``clusterbus_resolve_node`` (None: unknown)."""
        # the hookspec promises int | None; pluggy's results are untyped
        node: int | None = self._engine.plugins.call_first(
            "clusterbus_resolve_node", addr=addr, cluster=self)
        return node

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
        self.nodemap = NodeMap()
        self.cluster = Cluster(self)
        self.sinks: list[Sink] = []
        self.seq = 0
        self._queue: deque[Event] = deque()
        self._dispatching = False

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
        return self._report(report.state, report.node, report.addrs, report.incarnation,
                            report.reason)

    def _report(self, state: NodeState, node: int, addrs: tuple[str, ...], incarnation: int,
                reason: str) -> MembershipEvent | None:
        """:meth:`report` without the :class:`NodeReport` (package-internal).

        The arguments must hold what :class:`NodeReport` checks: ``state`` a NodeState,
        ``node`` and ``incarnation`` ints in 0..2**32-1, ``addrs`` a tuple of distinct
        canonical address strings, ``reason`` a string of 1..64 characters. Callers:
        :meth:`report`, and the netlink source with what
        :func:`~clusterbus.netlink.message.decode_fields` returned (which guarantees the
        same; tests/unit/test_hot_path.py checks it).
        """
        change = self.view._change(state, node, addrs, incarnation)
        if change is None:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("ignored %s node %d (%s): no change", state.value, node, reason)
            return None
        info, _prev, joined, left = change
        # Every field is valid by construction: the view stored the report's node,
        # addresses and incarnation (or kept its own), its view id counts from 1, and
        # joined/left are () or (node,); _membership_event checks origin, seq and time
        # itself. seq moves only once the event exists.
        event = _membership_event(
            state.event_class, self.origin, self.seq + 1, self.clock(), node,
            info.addrs, info.view, joined, left, reason, info.incarnation)
        self.seq += 1
        if log.isEnabledFor(logging.INFO):  # spares evaluating the arguments per event
            log.info("view %d: node %d %s (%s)", info.view, node, state.value, reason)
        self._enqueue(event)
        return event

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
