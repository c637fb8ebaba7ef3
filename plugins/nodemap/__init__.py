"""nodemap: node number <-> several IPv4/IPv6 addresses (built-in plugin).

Addresses come from configuration and from the addresses that node-up events carry. An
address claimed by a second node is refused, logged and reported as a
``nodemap.conflict`` event: the map is never silently overwritten. ``cluster_node_num``
is libcluster's call, in Python; ``clusterbus_resolve_node`` answers the same question for
other plugins.

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

from clusterbus import hookimpl
from clusterbus.config import Config, Key, between, validate_table
from clusterbus.engine import Cluster
from clusterbus.errors import ConfigError, InvalidEvent
from clusterbus.events import MAX_NODE_ADDRS, AddressConflict, NodemapChanged, NodeUp, node_addr
from clusterbus.nodemap import FORGET_AFTER, Conflict

__all__ = ["cluster_node_num", "config_nodes", "parse_nodes", "read_section"]

log = logging.getLogger(__name__)

SCHEMA = {
    "learn": Key(bool, True, None, "learn node addresses from node-up events"),
    "nodes": Key(dict, {}, None, "table: node number -> array of addresses"),
    "forget_after": Key(float, FORGET_AFTER, between(1, 10 * 365 * 86400),
                        "seconds a DOWN node keeps its learned addresses"),
}

_live: Cluster | None = None


def parse_nodes(nodes: Mapping[str, Any], *, file: str) -> dict[int, tuple[str, ...]]:
    """Validate ``[nodemap.nodes]``: keys are node numbers, values arrays of addresses.

    :raises ConfigError: a key that is not a node number, a value that is not an array of
        IP addresses, or one address given to two nodes.
    """
    out: dict[int, tuple[str, ...]] = {}
    owner: dict[str, int] = {}
    for key, addrs in nodes.items():
        path = f"nodemap.nodes.{key}"
        if not key.isdigit() or not 0 < int(key) < 2**32:
            raise ConfigError("expected a node number (1 .. 4294967295) as the key", file=file, key=path)
        node = int(key)
        if isinstance(addrs, str) or not isinstance(addrs, list):
            raise ConfigError(f"expected an array of IP addresses, got {addrs!r}", file=file, key=path)
        if len(addrs) > MAX_NODE_ADDRS:
            raise ConfigError(f"{len(addrs)} addresses, at most {MAX_NODE_ADDRS} per node",
                              file=file, key=path)
        canon = []
        for i, addr in enumerate(addrs):
            try:
                a = node_addr(addr, "address")  # the membership boundary's one rule
            except InvalidEvent as exc:
                raise ConfigError(str(exc), file=file, key=f"{path}[{i}]") from None
            if a in owner and owner[a] != node:
                raise ConfigError(f"address {a} is already given to node {owner[a]}",
                                  file=file, key=f"{path}[{i}]")
            owner[a] = node
            canon.append(a)
        out[node] = tuple(dict.fromkeys(canon))
    return out


def read_section(section: Mapping[str, Any] | None, *,
                 file: str) -> tuple[bool, dict[int, tuple[str, ...]]]:
    """Validate the ``[nodemap]`` table (``None``: the file has none, defaults apply).

    :returns: ``learn`` and the configured nodes (node number -> canonical addresses).
    :raises ConfigError: naming ``file`` and the key.
    """
    table = validate_table(section or {}, SCHEMA, file=file, prefix="nodemap")
    return table["learn"], parse_nodes(table["nodes"], file=file)


def config_nodes(config: Config) -> dict[int, tuple[str, ...]]:
    """The nodes of a configuration's ``[nodemap.nodes]``, for readers that cannot wait for
    the plugin to load them into the live map (the CLI, the IPVS plugin's validation).

    :raises ConfigError: ``[nodemap]`` is malformed (naming ``config.file`` and the key).
    """
    return read_section(config.plugin_sections.get("nodemap"), file=config.file)[1]


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
        self.learn, nodes = read_section(section, file=config.file)
        # validated by read_section (SCHEMA); configured addresses are pinned: never aged
        cluster.nodemap.forget_after = float((section or {}).get("forget_after", FORGET_AFTER))
        for node, addrs in nodes.items():
            cluster.nodemap.add(node, addrs, pinned=True)  # parse_nodes refused conflicts

    @hookimpl
    def clusterbus_startup(self, cluster: Cluster) -> None:
        global _live
        _live = cluster

    @hookimpl(tryfirst=True)
    def clusterbus_node_up(self, event: NodeUp, cluster: Cluster) -> None:
        if not self.learn or not event.addrs:
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
