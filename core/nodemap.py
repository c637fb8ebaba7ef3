"""The node map: node number <-> several IPv4/IPv6 addresses. Standard library only.

An address belongs to at most one node. A claim on an address another node holds is
refused and reported (:class:`Conflict`), never silently overwritten.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["NodeMap", "Conflict"]


@dataclass(frozen=True, slots=True)
class Conflict:
    """A refused claim: ``claimant`` wanted ``addr``, which ``owner`` holds."""

    addr: str
    owner: int
    claimant: int


class NodeMap:
    """Bidirectional map between node numbers and addresses."""

    def __init__(self) -> None:
        self._addrs: dict[int, list[str]] = {}
        self._owner: dict[str, int] = {}

    def node_num(self, addr: str) -> int | None:
        """The node that holds ``addr`` (libcluster's ``cluster_node_num``), else ``None``.

        :raises ValueError: ``addr`` is not an IP address.
        """
        return self._owner.get(str(ipaddress.ip_address(addr)))

    def addrs(self, node: int) -> tuple[str, ...]:
        """The addresses of ``node``, first-claimed first (empty when unknown)."""
        return tuple(self._addrs.get(node, ()))

    def nodes(self) -> tuple[int, ...]:
        """Sorted node numbers that have at least one address."""
        return tuple(sorted(n for n, a in self._addrs.items() if a))

    def add(self, node: int, addrs: Iterable[str]) -> tuple[tuple[str, ...], list[Conflict]]:
        """Give ``node`` these addresses in addition to the ones it has.

        :returns: (the addresses actually added, the refused claims).
        :raises ValueError: an address is not an IP address.
        """
        added: list[str] = []
        conflicts: list[Conflict] = []
        for raw in addrs:
            addr = str(ipaddress.ip_address(raw))
            owner = self._owner.get(addr)
            if owner == node:
                continue
            if owner is not None:
                conflicts.append(Conflict(addr, owner, node))
                continue
            self._owner[addr] = node
            self._addrs.setdefault(node, []).append(addr)
            added.append(addr)
        return tuple(added), conflicts

    def remove(self, node: int) -> tuple[str, ...]:
        """Forget every address of ``node``; returns what it had."""
        gone = tuple(self._addrs.pop(node, ()))
        for addr in gone:
            del self._owner[addr]
        return gone

    def snapshot(self) -> dict[str, list[str]]:
        """Plain data: ``{"3": ["10.0.0.3", ...]}`` (string keys, as in TOML and msgpack maps)."""
        return {str(n): list(a) for n, a in sorted(self._addrs.items()) if a}
