"""ipvs: program the kernel's IPVS table from cluster events (built-in plugin).

What keepalived's ``virtual_server`` blocks do, driven by node and VRRP events instead of
health-check scripts: a node-down quiesces (weight 0) or removes the real servers of that
node, a node-up restores them, a VRRP MASTER/BACKUP transition starts the kernel's
connection sync daemon as master/backup, and a periodic reconcile finds hand-made drift
and corrects or reports it. Every apply is a diff of the kernel's table against the
desired one: nothing is flushed, and only the differences are sent.

Inert when the configuration has no ``[ipvs]`` section: no service, no kernel access.
See docs/ipvs.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from clusterbus import hookimpl
from clusterbus.config import Config
from clusterbus.engine import Cluster
from clusterbus.errors import ConfigError
from clusterbus.events import Event, NodeDown, NodeUp, VrrpTransition

from .applier import Applier
from .model import IpvsConfig, parse
from .table import Dest, Entry, Op, OpKind, Plan, Service, ServiceKey, Table, diff

__all__ = ["Applier", "IpvsConfig", "parse", "config_node_addrs", "Dest", "Entry", "Op",
           "OpKind", "Plan", "Service", "ServiceKey", "Table", "diff"]

log = logging.getLogger(__name__)

#: The applier, when [ipvs] is configured (one daemon per process).
applier: Applier | None = None
_config: IpvsConfig | None = None
_extra: dict[int, tuple[str, ...]] = {}


def config_node_addrs(config: Config) -> dict[int, tuple[str, ...]]:
    """Node addresses from the file's ``[nodemap.nodes]`` (the node map plugin may not have
    loaded them yet when ``[ipvs]`` is validated).

    :raises ConfigError: ``[nodemap.nodes]`` is malformed.
    """
    nodes = (config.plugin_sections.get("nodemap") or {}).get("nodes") or {}
    if not nodes:
        return {}
    from clusterbus.plugins.nodemap import parse_nodes

    return parse_nodes(nodes, file=config.file)


@hookimpl
def clusterbus_configure(config: Config, section: Mapping[str, Any] | None, cluster: Cluster) -> None:
    """Validate ``[ipvs]``; without one the plugin stays inert."""
    global _config, _extra, applier
    applier = None
    if section is None:
        _config = None
        return
    _extra = config_node_addrs(config)

    def addrs(node: int) -> tuple[str, ...]:
        return cluster.nodemap.addrs(node) or _extra.get(node, ())

    try:
        _config = parse(section, file=config.file, node_addrs=addrs)
    except ConfigError as exc:
        raise exc.with_file(config.file) from None


@hookimpl
def clusterbus_services(cluster: Cluster) -> list[Callable[[], Awaitable[None]]] | None:
    """The applier service, when ``[ipvs]`` is configured."""
    global applier
    if _config is None:
        return None
    applier = Applier(_config, cluster, _extra)
    return [applier.run]


@hookimpl
def clusterbus_node_down(event: NodeDown, cluster: Cluster) -> None:
    if applier is not None:
        applier.trigger(event.topic)


@hookimpl
def clusterbus_node_up(event: NodeUp, cluster: Cluster) -> None:
    if applier is not None:
        applier.trigger(event.topic)


@hookimpl
def clusterbus_vrrp_transition(event: VrrpTransition, cluster: Cluster) -> None:
    if applier is None or applier.config.sync_daemon is None:
        return
    wanted = applier.config.sync_daemon.instance
    if wanted and event.instance != wanted:
        return
    if event.new == "MASTER":
        applier.vrrp_state("master")
    elif event.new in ("BACKUP", "FAULT"):
        applier.vrrp_state("backup")


@hookimpl
def clusterbus_event(event: Event, cluster: Cluster) -> None:
    # A node's addresses changed: real servers given by node number may move.
    if applier is not None and event.topic == "nodemap.changed":
        applier.trigger(event.topic)
