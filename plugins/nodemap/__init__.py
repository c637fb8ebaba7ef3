"""nodemap: node number <-> several IPv4/IPv6 addresses (built-in plugin).

Addresses come from configuration (``[nodemap.nodes]``, read by
:class:`clusterbus.NodemapConfig`) and from the addresses that node-up events carry. An
address claimed by a second node is refused, logged and reported as a
``nodemap.conflict`` event: the map is never silently overwritten. ``cluster_node_num``
is libcluster's call, in Python; ``clusterbus_resolve_node`` answers the same question for
other plugins, and :attr:`clusterbus.Cluster.nodemap` holds the map itself.

Like every plugin, it uses only the public API (``clusterbus``).

Configuration::

    [nodemap]
    learn = true                 # take addresses from node-up events (default true)
    forget_after = 3600          # seconds a DOWN node keeps its learned addresses

    [nodemap.nodes]
    1 = ["10.0.0.1", "fd00::1"]
    2 = ["10.0.0.2"]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from clusterbus import (
    AddressConflict,
    Cluster,
    Config,
    Conflict,
    NodemapChanged,
    NodemapConfig,
    NodeUp,
    hookimpl,
)

__all__ = ["NodemapPlugin", "cluster_node_num", "plugin"]

log = logging.getLogger(__name__)

_live: Cluster | None = None


def _report(cluster: Cluster, conflicts: list[Conflict], reason: str) -> None:
    for c in conflicts:
        log.warning("address %s claimed by node %d is held by node %d: claim refused (%s)",
                    c.addr, c.claimant, c.owner, reason)
        cluster.emit(AddressConflict, addr=c.addr, owner=c.owner, claimant=c.claimant, reason=reason)


class NodemapPlugin:
    """The plugin object registered through the entry point."""

    def __init__(self) -> None:
        self.learn = True

    @hookimpl
    def clusterbus_configure(self, config: Config, section: Mapping[str, Any] | None,
                             cluster: Cluster) -> None:
        conf = NodemapConfig.from_section(section, file=config.file)
        self.learn = conf.learn
        cluster.nodemap.forget_after = conf.forget_after
        for node, addrs in conf.nodes.items():
            # NodemapConfig refused conflicts; configured addresses are pinned: never aged
            cluster.nodemap.add(node, addrs, pinned=True)

    @hookimpl
    def clusterbus_startup(self, cluster: Cluster) -> None:
        global _live
        _live = cluster

    @hookimpl(tryfirst=True)
    def clusterbus_node_up(self, event: NodeUp, cluster: Cluster) -> None:
        if not self.learn or not event.addrs:
            return
        if event.origin != cluster.local_node:
            # a peer director's membership event: the local view (and its node map) stays
            # the local sources' own, and nothing of a peer's is published again from here
            return
        added, conflicts = cluster.nodemap.add(event.node, event.addrs)
        _report(cluster, conflicts, event.topic)
        if added:
            cluster.emit(NodemapChanged, node=event.node, addrs=cluster.nodemap.addrs(event.node),
                         reason=event.topic)

    @hookimpl
    def clusterbus_resolve_node(self, addr: str, cluster: Cluster) -> int | None:
        try:
            return cluster.nodemap.node_num(addr)
        except ValueError:
            return None


plugin = NodemapPlugin()


def cluster_node_num(addr: str) -> int | None:
    """libcluster's ``cluster_node_num``: the node number that holds ``addr``.

    Uses the node map of the daemon running in this process.

    :returns: the node number, or ``None`` when no node holds the address.
    :raises RuntimeError: no daemon has started in this process.
    :raises ValueError: ``addr`` is not an IP address.
    """
    if _live is None:
        raise RuntimeError("no clusterbus daemon is running in this process")
    return _live.nodemap.node_num(addr)
