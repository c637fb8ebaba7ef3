"""The Corosync membership core, sans-IO: callback records in, decisions out.

Inputs are plain records, as the ctypes callbacks copy them (:mod:`.binding`):

- :class:`TotemConfchg`: the node-level membership (CPG's totem confchg callback, with the
  initial one delivered on connect). Node ids are clusterbus node numbers.
- :class:`GroupConfchg`: the processes in the clusterbus CPG group, one per running daemon,
  with the ``left`` / ``joined`` lists and their reasons.
- :class:`QuorumNotify`: libquorum's quorate flag.

Outputs are decisions the source turns into events:

- :class:`NodeChange` -> ``node.up`` / ``node.down`` (reason ``corosync``): every totem
  member list is compared with the previous one.
- :class:`DirectorChange` -> ``director.up`` / ``director.down``: a node's director is up
  while at least one process of that node other than this daemon is in the group. The
  reason is ``corosync.<cpg reason>`` (``join``, ``leave``, ``nodedown``, ``nodeup``,
  ``procdown``), or ``corosync.resync`` when the change is only seen by comparing member
  lists (after a reconnection).
- :class:`QuorumChange` -> ``cluster.quorum``: only when the flag changes. Losing the local
  Corosync (:meth:`Membership.disconnected`) counts as losing quorum: a director that cannot
  hear Corosync cannot claim a majority.

Node and director state survive a lost connection: the first lists after the reconnection
are compared with them, so only real changes come out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

__all__ = [
    "CpgAddress",
    "TotemConfchg",
    "GroupConfchg",
    "QuorumNotify",
    "BadCallback",
    "Record",
    "NodeChange",
    "DirectorChange",
    "QuorumChange",
    "Decision",
    "Membership",
    "CPG_REASONS",
]

#: ``enum cpg_reason`` (cpg.h).
CPG_REASONS = {1: "join", 2: "leave", 3: "nodedown", 4: "nodeup", 5: "procdown"}


@dataclass(frozen=True, slots=True, kw_only=True)
class CpgAddress:
    """``struct cpg_address``: one process in a CPG group."""

    nodeid: int
    pid: int
    reason: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TotemConfchg:
    """The totem (node-level) membership: every node in this node's ring."""

    ring_seq: int
    members: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupConfchg:
    """A CPG group configuration change."""

    group: str
    members: tuple[CpgAddress, ...]
    left: tuple[CpgAddress, ...] = ()
    joined: tuple[CpgAddress, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumNotify:
    """libquorum's notification: the flag and the nodes of this partition."""

    quorate: bool
    members: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BadCallback:
    """A callback whose arguments could not be believed (counted, nothing decided)."""

    what: str


Record = TotemConfchg | GroupConfchg | QuorumNotify | BadCallback


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeChange:
    """A node entered (``up``) or left the totem membership."""

    node: int
    up: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectorChange:
    """A peer director's daemon joined (``up``) or left the CPG group."""

    node: int
    up: bool
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumChange:
    """The quorate flag changed."""

    quorate: bool
    members: tuple[int, ...]


Decision = NodeChange | DirectorChange | QuorumChange


class Membership:
    """What Corosync says, remembered between callbacks.

    :param group: the CPG group the daemon joined (other groups' changes are ignored).
    :param local_pid: this daemon's pid: its own process in the group is not a peer.

    ``counters``: ``records.totem``, ``records.group``, ``records.quorum``,
    ``dropped.other_group``, ``dropped.<what>`` for a :class:`BadCallback`,
    ``quorum.unchanged``, ``disconnects``.
    """

    def __init__(self, *, group: str, local_pid: int) -> None:
        self.group = group
        self.local_pid = local_pid
        self.local_nodeid = 0
        #: node ids in the totem membership (empty until the first TotemConfchg)
        self.nodes: frozenset[int] = frozenset()
        #: (nodeid, pid) of every process in the group, this daemon's included
        self.processes: frozenset[tuple[int, int]] = frozenset()
        #: None until libquorum first said
        self.quorate: bool | None = None
        self.quorum_members: tuple[int, ...] = ()
        self.ring_seq = 0
        self.counters: Counter[str] = Counter()

    # -- connection -------------------------------------------------------------------

    def connected(self, local_nodeid: int) -> list[Decision]:
        """A (new) connection to the local Corosync is up."""
        self.local_nodeid = local_nodeid
        return []

    def disconnected(self) -> list[Decision]:
        """The local Corosync is gone: quorum is lost (when it was held); node and
        director state is kept until the next connection's lists are compared with it."""
        self.counters["disconnects"] += 1
        if self.quorate:
            self.quorate = False
            self.quorum_members = ()
            return [QuorumChange(quorate=False, members=())]
        return []

    # -- records ----------------------------------------------------------------------

    def feed(self, record: Record) -> list[Decision]:
        """Apply one callback record; return what changed."""
        if isinstance(record, TotemConfchg):
            return self._totem(record)
        if isinstance(record, GroupConfchg):
            return self._group(record)
        if isinstance(record, QuorumNotify):
            return self._quorum(record)
        self.counters[f"dropped.{record.what}"] += 1
        return []

    def _totem(self, rec: TotemConfchg) -> list[Decision]:
        self.counters["records.totem"] += 1
        self.ring_seq = rec.ring_seq
        new = frozenset(rec.members)
        old, self.nodes = self.nodes, new
        out: list[Decision] = [NodeChange(node=n, up=False) for n in sorted(old - new)]
        out += [NodeChange(node=n, up=True) for n in sorted(new - old)]
        return out

    def _peers(self, processes: frozenset[tuple[int, int]]) -> set[int]:
        me = (self.local_nodeid, self.local_pid)
        return {node for node, pid in processes if (node, pid) != me}

    def _group(self, rec: GroupConfchg) -> list[Decision]:
        if rec.group != self.group:
            self.counters["dropped.other_group"] += 1
            return []
        self.counters["records.group"] += 1
        new = frozenset((a.nodeid, a.pid) for a in rec.members)
        old, self.processes = self.processes, new
        before, after = self._peers(old), self._peers(new)
        why: dict[int, str] = {}
        for a in (*rec.left, *rec.joined):
            why.setdefault(a.nodeid, CPG_REASONS.get(a.reason, f"reason{a.reason}"))
        out: list[Decision] = [
            DirectorChange(node=n, up=False, reason=f"corosync.{why.get(n, 'resync')}")
            for n in sorted(before - after)]
        out += [DirectorChange(node=n, up=True, reason=f"corosync.{why.get(n, 'resync')}")
                for n in sorted(after - before)]
        return out

    def _quorum(self, rec: QuorumNotify) -> list[Decision]:
        self.counters["records.quorum"] += 1
        members = tuple(sorted(set(rec.members)))
        if rec.quorate == self.quorate:
            self.quorum_members = members
            self.counters["quorum.unchanged"] += 1
            return []
        self.quorate = rec.quorate
        self.quorum_members = members
        return [QuorumChange(quorate=rec.quorate, members=members)]

    # -- introspection ----------------------------------------------------------------

    def directors(self) -> list[dict[str, int]]:
        """The processes in the group as ``{"node", "pid"}``, sorted."""
        return [{"node": n, "pid": p} for n, p in sorted(self.processes)]
