"""The membership view: which nodes exist and in which state, with a view id.

Sources report what they heard (:class:`NodeReport`, the one typed value every membership
source builds: netlink, signals, the ingest socket, tests); :meth:`MembershipView.apply`
decides whether that is a real change. A real change bumps the view id and returns a
:class:`ViewChange`; a duplicate (node-down for a node already down) returns ``None``: no
new view, no hook call, no event.

The view survives restarts through :class:`ViewStore` (an atomically replaced JSON file):
a restored node is marked unconfirmed (``NodeInfo.confirmed`` false) until a source
reports it again. Standard library only.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .addresses import node_address_or_none
from .errors import InvalidEvent
from .events import (
    MAX_NODE,
    MAX_REASON,
    MIN_NODE,
    NodeState,
    check_incarnation,
    check_node,
    check_reason,
    node_addrs,
)

__all__ = ["NodeState", "NodeReport", "node_report", "NodeInfo", "ViewChange", "MembershipView",
           "ViewStore", "STATE_FILE", "STATE_VERSION"]

log = logging.getLogger(__name__)


class _ReportFields(NamedTuple):
    state: NodeState
    node: int
    addrs: tuple[str, ...]
    incarnation: int
    reason: str


class NodeReport(_ReportFields):
    """What a membership source heard about one node (before the view judges it).

    Validated at construction (an invalid report cannot exist), immutable, keyword-only:

    :param state: the state the source says the node is in.
    :param node: node number, 1 .. 2**32-1.
    :param addrs: the node's addresses (any sequence; kept canonical, repeats dropped):
        at most :data:`~clusterbus.events.MAX_NODE_ADDRS` node addresses (see
        :func:`~clusterbus.events.node_addr`).
    :param incarnation: the node's boot/incarnation number, 0 when unknown.
    :param reason: the source (``netlink``, ``sigcluster``, ``zmq``, ``vrrp``, ...), 1..64
        characters.
    :raises InvalidEvent: a field is invalid.

    A named tuple rather than a frozen dataclass because one is built per membership
    message on the daemon's hot path: the frozen dataclass's ``__init__`` (one
    ``object.__setattr__`` per field) costs about three times this ``__new__``.
    """

    __slots__ = ()

    def __new__(cls, *, state: NodeState, node: int, addrs: Iterable[str] = (),
                incarnation: int = 0, reason: str) -> NodeReport:
        return node_report(state, node, addrs, incarnation, reason)

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> NodeReport:  # type: ignore[override]
        return cls(**dict(zip(cls._fields, iterable, strict=True)))

    def _replace(self, **changes: Any) -> NodeReport:
        return type(self)(**{**self._asdict(), **changes})

    def __reduce__(self) -> tuple[Any, ...]:
        return (_report_from_fields, tuple(self))


_new_report = tuple.__new__


def node_report(state: NodeState, node: int, addrs: Iterable[str], incarnation: int,
                reason: str) -> NodeReport:
    """``NodeReport(state=..., node=..., ...)`` with positional arguments: the same checks
    (this is what the constructor runs), without the keyword handling, for the decoders'
    per-message paths.

    :raises InvalidEvent: a field is invalid.
    """
    # the usual report, checked inline; anything else is checked (and canonicalised, or
    # refused with the reason) by the helpers
    if type(state) is not NodeState or type(node) is not int \
            or not MIN_NODE <= node <= MAX_NODE \
            or type(incarnation) is not int or not 0 <= incarnation <= MAX_NODE \
            or type(reason) is not str or not 0 < len(reason) <= MAX_REASON \
            or type(addrs) is not tuple or len(addrs) > 1 \
            or (addrs and (type(addrs[0]) is not str
                           or node_address_or_none(addrs[0]) != addrs[0])):
        if type(state) is not NodeState:
            raise InvalidEvent(f"NodeReport.state: expected NodeState, got {state!r}")
        check_node("NodeReport", node)
        check_incarnation("NodeReport", incarnation)
        check_reason("NodeReport", reason)
        if isinstance(addrs, (str, bytes)):
            raise InvalidEvent("NodeReport.addrs: expected a sequence of addresses, "
                               "got a string")
        if not isinstance(addrs, (tuple, list)):
            try:
                addrs = tuple(addrs)
            except TypeError:
                raise InvalidEvent("NodeReport.addrs: expected a sequence of addresses, "
                                   f"got {type(addrs).__name__}") from None
        addrs = node_addrs(addrs, "NodeReport.addrs")
    report: NodeReport = _new_report(NodeReport, (state, node, addrs, incarnation, reason))
    return report


def _report_from_fields(state: NodeState, node: int, addrs: tuple[str, ...],
                        incarnation: int, reason: str) -> NodeReport:
    return node_report(state, node, addrs, incarnation, reason)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node as the view knows it.

    ``confirmed`` is false for a node restored from the state file of an earlier run
    until a source reports it again (snapshots list it with the mark).
    """

    node: int
    state: NodeState
    addrs: tuple[str, ...]
    incarnation: int
    view: int  #: the view id at which the node entered this state
    confirmed: bool = True


class ViewChange(NamedTuple):
    """A real change of the view, as returned by :meth:`MembershipView.apply`.

    A named tuple: one is built per membership event on the daemon's hot path.
    """

    view: int
    info: NodeInfo
    previous: NodeInfo | None
    joined: tuple[int, ...]
    left: tuple[int, ...]


class MembershipView:
    """The current membership view. Only :meth:`apply` (and :meth:`restore`, once, at
    start) change it."""

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

    def unconfirmed(self) -> tuple[int, ...]:
        """Sorted numbers of the restored nodes no source has confirmed yet."""
        return tuple(sorted(n for n, i in self._nodes.items() if not i.confirmed))

    def apply(self, report: NodeReport) -> ViewChange | None:
        """Apply a report; return the change, or ``None`` when it changes nothing.

        Rules: a move to another state is a change. The same state is a duplicate, unless
        the report carries a newer incarnation (the node restarted and we missed its down)
        or new addresses, or the node was restored unconfirmed (the report confirms it). A
        report with an incarnation older than the known one is stale. Incarnation 0 means
        "unknown" and is never stale.
        """
        state, node, addrs, incarnation, _reason = report
        prev = self._nodes.get(node)
        newer = False
        if prev is not None:
            if incarnation and prev.incarnation and incarnation < prev.incarnation:
                self.ignored["stale_incarnation"] += 1
                return None
            newer = incarnation > prev.incarnation
            if prev.state is state and not newer and prev.confirmed \
                    and (not addrs or addrs == prev.addrs):
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
        return ViewChange(self._view, info, prev, joined, left)

    def restore(self, view_id: int, nodes: Iterable[NodeInfo]) -> None:
        """Load what an earlier run knew (:meth:`ViewStore.load`), every node marked
        unconfirmed. Only into an empty view (at start).

        :raises LocalProtocolError: the view already changed.
        """
        from .errors import LocalProtocolError

        if self._nodes or self._view:
            raise LocalProtocolError("restore() is for an empty view, at start")
        self._nodes = {i.node: NodeInfo(i.node, i.state, i.addrs, i.incarnation, i.view,
                                        False) for i in nodes}
        self._view = max([view_id, *(i.view for i in self._nodes.values())])

    def snapshot(self) -> dict[str, object]:
        """A plain-data copy of the view (for snapshot replies, ``--json`` and the state
        file): ``view`` and ``nodes``, each with ``node``, ``state`` (the label),
        ``addrs``, ``incarnation``, ``view`` and ``confirmed``."""
        return {
            "view": self._view,
            "nodes": [
                {
                    "node": i.node,
                    "state": i.state.label,
                    "addrs": list(i.addrs),
                    "incarnation": i.incarnation,
                    "view": i.view,
                    "confirmed": i.confirmed,
                }
                for i in sorted(self._nodes.values(), key=lambda i: i.node)
            ],
        }


#: Name of the state file in ``[daemon] state_dir``.
STATE_FILE = "membership.json"
#: Format version of the state file.
STATE_VERSION = 1
_STATES_BY_LABEL = {s.label: s for s in NodeState}


class ViewStore:
    """The membership view's state file: ``STATE_DIR/membership.json``.

    :meth:`save` replaces it atomically (a temporary file in the same directory, fsync,
    rename over the old one, fsync of the directory), so a crash at any moment leaves
    either the old or the new file, whole. :meth:`load` reads it back strictly; a file
    that does not parse, or any bad value in it, is refused as a whole
    (:class:`~clusterbus.errors.InvalidEvent`), never half-applied.

    :param state_dir: the directory (created, mode 0700, when missing).
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE
        #: successful saves
        self.saves = 0

    def save(self, origin: int, view: MembershipView) -> None:
        """Write ``view`` atomically: ``{"version": 1, "origin", "view", "nodes": [[node,
        state label, [addrs], incarnation, view id], ...]}`` (rows, not objects: written
        every :data:`~clusterbus.engine.SAVE_DELAY` seconds under load, so kept cheap).

        :raises OSError: the directory cannot be created or written.
        """
        rows = [[i.node, i.state.label, i.addrs, i.incarnation, i.view]
                for i in view.nodes.values()]
        data = json.dumps({"version": STATE_VERSION, "origin": origin, "view": view.view_id,
                           "nodes": rows}, separators=(",", ":")).encode()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".membership.", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.saves += 1

    def load(self) -> tuple[int, list[NodeInfo]] | None:
        """Read the file back: ``(view id, nodes)``, or ``None`` when there is none.

        :raises InvalidEvent: the file is not a state file this version wrote, or holds
            an invalid value (named in the message).
        :raises OSError: the file exists but cannot be read.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise InvalidEvent(f"{self.path}: not JSON: {exc}") from None
        if type(doc) is not dict or doc.get("version") != STATE_VERSION:
            raise InvalidEvent(f"{self.path}: not a version {STATE_VERSION} state file")
        view_id = doc.get("view")
        nodes = doc.get("nodes")
        if type(view_id) is not int or not 0 <= view_id < 2**64 or type(nodes) is not list:
            raise InvalidEvent(f"{self.path}: 'view' or 'nodes' missing or invalid")
        out: list[NodeInfo] = []
        seen: set[int] = set()
        for i, item in enumerate(nodes):
            where = f"{self.path}: nodes[{i}]"
            if type(item) is not list or len(item) != 5:
                raise InvalidEvent(f"{where}: expected [node, state, addrs, incarnation, view]")
            node, label, addrs, incarnation, view = item
            try:
                state = _STATES_BY_LABEL[label]
                report = NodeReport(state=state, node=node, addrs=addrs,
                                    incarnation=incarnation, reason="restored")
            except (KeyError, TypeError) as exc:
                raise InvalidEvent(f"{where}: bad state {exc}") from None
            except InvalidEvent as exc:
                raise InvalidEvent(f"{where}: {exc}") from None
            if type(view) is not int or not 0 <= view <= view_id:
                raise InvalidEvent(f"{where}: bad view {view!r}")
            if report.node in seen:
                raise InvalidEvent(f"{where}: node {report.node} listed twice")
            seen.add(report.node)
            out.append(NodeInfo(report.node, state, report.addrs, report.incarnation, view,
                                False))
        return view_id, out
