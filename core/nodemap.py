"""The node map: node number <-> several IPv4/IPv6 addresses. Standard library only.

An address belongs to at most one node. A claim on an address another node holds is
refused and reported (:class:`Conflict`), never silently overwritten. Addresses are node
addresses in canonical form (:func:`clusterbus.events.node_addr`: an IPv4-mapped IPv6
address is its IPv4 address, so it cannot dodge the conflict check).

Bounded memory (the rule, documented in docs/netlink.md "Node map"):

* a node has at most :data:`~clusterbus.events.MAX_NODE_ADDRS` addresses; a learned
  address beyond that replaces the node's oldest learned one (configured addresses are
  never replaced);
* the learned addresses of a node that went DOWN are forgotten between ``forget_after``
  and twice that many seconds later (default :data:`FORGET_AFTER`, ``[nodemap]
  forget_after``) unless it came back first: a sweep every ``forget_after`` seconds
  forgets the nodes that were already DOWN, in the same view, at the previous sweep (no
  bookkeeping per membership change); configured (pinned) addresses never expire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .events import MAX_NODE_ADDRS, canonical_addr, node_addr

__all__ = ["NodeMap", "Conflict", "FORGET_AFTER"]

#: Default seconds after which a DOWN node's learned addresses are forgotten.
FORGET_AFTER = 3600.0
_INF = float("inf")


@dataclass(frozen=True, slots=True)
class Conflict:
    """A refused claim: ``claimant`` wanted ``addr``, which ``owner`` holds."""

    addr: str
    owner: int
    claimant: int


class NodeMap:
    """Bidirectional map between node numbers and addresses.

    :param forget_after: seconds a DOWN node keeps its learned addresses.
    """

    def __init__(self, forget_after: float = FORGET_AFTER) -> None:
        self.forget_after = forget_after
        self._addrs: dict[int, list[str]] = {}
        self._owner: dict[str, int] = {}
        self._pinned: set[str] = set()
        #: DOWN nodes with learned addresses at the last sweep: node -> view id
        self._candidates: dict[int, int] = {}
        self._swept_at = -_INF
        #: ``nodemap.evicted`` (a learned address replaced by a newer one, the node being
        #: full) and ``nodemap.expired`` (nodes whose learned addresses were forgotten)
        self.counters: dict[str, int] = {"nodemap.evicted": 0, "nodemap.expired": 0}

    def node_num(self, addr: str) -> int | None:
        """The node that holds ``addr`` (libcluster's ``cluster_node_num``), else ``None``.

        :raises ValueError: ``addr`` is not an IP address.
        """
        return self._owner.get(canonical_addr(addr))

    def addrs(self, node: int) -> tuple[str, ...]:
        """The addresses of ``node``, first-claimed first (empty when unknown)."""
        return tuple(self._addrs.get(node, ()))

    def nodes(self) -> tuple[int, ...]:
        """Sorted node numbers that have at least one address."""
        return tuple(sorted(n for n, a in self._addrs.items() if a))

    def __len__(self) -> int:
        """Number of addresses held."""
        return len(self._owner)

    def add(self, node: int, addrs: Iterable[str], *,
            pinned: bool = False) -> tuple[tuple[str, ...], list[Conflict]]:
        """Give ``node`` these addresses in addition to the ones it has.

        :param pinned: configured addresses: never expire, never replaced.
        :returns: (the addresses actually added, the refused claims).
        :raises ValueError: an address is not a node address (see
            :func:`~clusterbus.events.node_addr`).
        """
        canon = [node_addr(raw) for raw in addrs]  # all checked before any is added
        added: list[str] = []
        conflicts: list[Conflict] = []
        for addr in canon:
            owner = self._owner.get(addr)
            if owner == node:
                if pinned:
                    self._pinned.add(addr)
                continue
            if owner is not None:
                conflicts.append(Conflict(addr, owner, node))
                continue
            held = self._addrs.setdefault(node, [])
            if len(held) >= MAX_NODE_ADDRS:
                oldest = next((a for a in held if a not in self._pinned), None)
                if oldest is None or (not pinned and oldest in added):
                    continue  # full of pinned ones, or of this very call's addresses
                held.remove(oldest)
                del self._owner[oldest]
                self.counters["nodemap.evicted"] += 1
                if oldest in added:
                    added.remove(oldest)
            self._owner[addr] = node
            held.append(addr)
            if pinned:
                self._pinned.add(addr)
            added.append(addr)
        return tuple(added), conflicts

    def remove(self, node: int) -> tuple[str, ...]:
        """Forget every address of ``node`` (pinned ones too); returns what it had."""
        gone = tuple(self._addrs.pop(node, ()))
        for addr in gone:
            del self._owner[addr]
            self._pinned.discard(addr)
        self._candidates.pop(node, None)
        return gone

    # -- ageing -------------------------------------------------------------------------

    def age(self, down: Mapping[int, int], now: float) -> list[tuple[int, tuple[str, ...]]]:
        """One ageing sweep; does nothing when the last one was less than
        ``forget_after`` seconds ago (so a node's addresses are forgotten between
        ``forget_after`` and twice that after it went down, and a change costs nothing).

        A node's learned addresses are forgotten when it was DOWN at the previous sweep
        and still is, in the same view (``down``: node -> the view id at which it went
        DOWN, from the membership view). Pinned addresses stay.

        :returns: ``(node, the addresses it keeps)`` per node that lost some.
        """
        if now - self._swept_at < self.forget_after:
            return []
        out: list[tuple[int, tuple[str, ...]]] = []
        before = self._candidates
        candidates: dict[int, int] = {}
        for node, since in down.items():
            held = self._addrs.get(node)
            if not held or all(a in self._pinned for a in held):
                continue
            if before.get(node) != since:
                candidates[node] = since  # forgotten at the next sweep if still so
                continue
            keep = [a for a in held if a in self._pinned]
            for addr in held:
                if addr not in self._pinned:
                    del self._owner[addr]
            if keep:
                self._addrs[node] = keep
            else:
                del self._addrs[node]
            self.counters["nodemap.expired"] += 1
            out.append((node, tuple(keep)))
        self._candidates = candidates
        self._swept_at = now
        return out

    def snapshot(self) -> dict[str, list[str]]:
        """Plain data: ``{"3": ["10.0.0.3", ...]}`` (string keys, as in TOML and msgpack maps)."""
        return {str(n): list(a) for n, a in sorted(self._addrs.items()) if a}
