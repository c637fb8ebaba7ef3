"""The membership view: which nodes exist and in which state, with a view id.

Sources report what they heard (:class:`NodeReport`); :meth:`MembershipView.apply` decides
whether that is a real change. A real change bumps the view id and returns a
:class:`ViewChange`; a duplicate (node-down for a node already down) returns ``None``: no new
view, no hook call, no event. Standard library only.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import InvalidEvent
from .events import (
    MAX_NODE,
    MembershipEvent,
    NodeComingUp,
    NodeDown,
    NodeGoingDown,
    NodeUp,
    canonical_addrs,
)

__all__ = ["NodeState", "NodeReport", "NodeInfo", "ViewChange", "MembershipView"]


class NodeState(enum.Enum):
    """State of a node in the view (the OpenSSI CLMS transitions)."""

    UP = "up"  #: full member
    DOWN = "down"  #: not a member (left or died)
    COMING_UP = "coming_up"  #: joining, not a full member yet
    GOING_DOWN = "going_down"  #: announced that it is leaving

    @property
    def event_class(self) -> type[MembershipEvent]:
        """The event class announcing a move into this state."""
        return _EVENT_FOR_STATE[self]

    @classmethod
    def from_topic(cls, topic: str) -> NodeState:
        """``node.up`` -> UP, ... :raises ValueError: not a membership topic."""
        for state, klass in _EVENT_FOR_STATE.items():
            if klass.TOPIC == topic:
                return state
        raise ValueError(f"{topic!r} is not a membership topic")


_EVENT_FOR_STATE: dict[NodeState, type[MembershipEvent]] = {
    NodeState.UP: NodeUp,
    NodeState.DOWN: NodeDown,
    NodeState.COMING_UP: NodeComingUp,
    NodeState.GOING_DOWN: NodeGoingDown,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeReport:
    """What a membership source heard about one node (before the view judges it).

    :param state: the state the source says the node is in.
    :param node: node number.
    :param addrs: addresses the source gave (canonicalised; may be empty).
    :param incarnation: the node's boot/incarnation number, 0 when unknown.
    :param reason: the source (``netlink``, ``sigcluster``, ``zmq``, ``vrrp``, ...).
    """

    state: NodeState
    node: int
    addrs: tuple[str, ...] = ()
    incarnation: int = 0
    reason: str

    def __post_init__(self) -> None:
        if type(self.state) is not NodeState:
            raise InvalidEvent(f"NodeReport.state: expected NodeState, got {self.state!r}")
        if type(self.node) is not int or not 0 <= self.node <= MAX_NODE:
            raise InvalidEvent(f"NodeReport.node: {self.node!r} is not a node number")
        if type(self.incarnation) is not int or not 0 <= self.incarnation <= MAX_NODE:
            raise InvalidEvent(f"NodeReport.incarnation: {self.incarnation!r} out of range")
        if isinstance(self.addrs, str):
            raise InvalidEvent("NodeReport.addrs: expected a sequence of addresses, got a string")
        addrs = self.addrs if type(self.addrs) in (tuple, list) else tuple(self.addrs)
        canon = canonical_addrs(addrs, "NodeReport.addrs")
        if canon is not self.addrs:
            object.__setattr__(self, "addrs", canon)
        if not isinstance(self.reason, str) or not 0 < len(self.reason) <= 64:
            # checked here, before the view changes, with the events' limit
            raise InvalidEvent("NodeReport.reason: must be a string of 1..64 characters")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node as the view knows it."""

    node: int
    state: NodeState
    addrs: tuple[str, ...]
    incarnation: int
    view: int  #: the view id at which the node entered this state


@dataclass(frozen=True, slots=True)
class ViewChange:
    """A real change of the view, as returned by :meth:`MembershipView.apply`."""

    view: int
    info: NodeInfo
    previous: NodeInfo | None
    joined: tuple[int, ...]
    left: tuple[int, ...]


#: What :meth:`MembershipView._change` returns: (info, previous, joined, left).
Change = tuple[NodeInfo, NodeInfo | None, tuple[int, ...], tuple[int, ...]]


class MembershipView:
    """The current membership view. Only :meth:`apply` changes it."""

    def __init__(self) -> None:
        self._view = 0
        self._nodes: dict[int, NodeInfo] = {}
        #: reports that changed nothing, by kind: ``duplicate``, ``stale_incarnation``.
        self.ignored: dict[str, int] = {"duplicate": 0, "stale_incarnation": 0}

    @property
    def view_id(self) -> int:
        """The current view id (0 before the first change)."""
        return self._view

    @property
    def nodes(self) -> Mapping[int, NodeInfo]:
        """Read-only mapping node number -> :class:`NodeInfo`."""
        return types.MappingProxyType(self._nodes)

    def state(self, node: int) -> NodeState | None:
        """The node's state, ``None`` when the view never heard of it."""
        info = self._nodes.get(node)
        return info.state if info else None

    def up_nodes(self) -> tuple[int, ...]:
        """Sorted numbers of the nodes that are UP."""
        return tuple(sorted(n for n, i in self._nodes.items() if i.state is NodeState.UP))

    def apply(self, report: NodeReport) -> ViewChange | None:
        """Apply a report; return the change, or ``None`` when it changes nothing.

        Rules: a move to another state is a change. The same state is a duplicate, unless
        the report carries a newer incarnation (the node restarted and we missed its down)
        or new addresses. A report with an incarnation older than the known one is stale.
        Incarnation 0 means "unknown" and is never stale.
        """
        change = self._change(report.state, report.node, report.addrs, report.incarnation)
        if change is None:
            return None
        info, prev, joined, left = change
        return ViewChange(info.view, info, prev, joined, left)

    def _change(self, state: NodeState, node: int, addrs: tuple[str, ...],
                incarnation: int) -> Change | None:
        """:meth:`apply` for the engine, without building a report or a ViewChange.

        The arguments must be what a :class:`NodeReport` holds after its checks (the
        engine passes a report's fields, or the netlink decoder's, which makes the same
        guarantees): they are stored as they are.

        :returns: ``(info, previous info, joined, left)``, or ``None`` for no change.
        """
        prev = self._nodes.get(node)
        newer = False
        if prev is not None:
            if incarnation and prev.incarnation and incarnation < prev.incarnation:
                self.ignored["stale_incarnation"] += 1
                return None
            newer = incarnation > prev.incarnation
            if prev.state is state and not newer and (not addrs or addrs == prev.addrs):
                self.ignored["duplicate"] += 1
                return None
            # a report without addresses or incarnation keeps what the view knew
            addrs = addrs or prev.addrs
            incarnation = incarnation or prev.incarnation
        self._view += 1
        info = self._nodes[node] = NodeInfo(node, state, addrs, incarnation, self._view)
        was = prev.state if prev is not None else None
        joined: tuple[int, ...] = ()
        left: tuple[int, ...] = ()
        if state is NodeState.UP:
            if was is not NodeState.UP or newer:
                joined = (node,)
        elif state is NodeState.DOWN and was is not None and was is not NodeState.DOWN:
            left = (node,)
        return info, prev, joined, left

    def snapshot(self) -> dict[str, object]:
        """A plain-data copy of the view (for snapshot replies and ``--json``)."""
        return {
            "view": self._view,
            "nodes": [
                {
                    "node": i.node,
                    "state": i.state.value,
                    "addrs": list(i.addrs),
                    "incarnation": i.incarnation,
                    "view": i.view,
                }
                for i in sorted(self._nodes.values(), key=lambda i: i.node)
            ],
        }
