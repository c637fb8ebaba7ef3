"""ipvs: program the kernel's IPVS table from cluster events (built-in plugin).

What keepalived's ``virtual_server`` blocks do, driven by node and VRRP events instead of
health-check scripts: a node-down quiesces (weight 0) or removes the real servers of that
node, a node-up restores them, a VRRP MASTER/BACKUP transition starts the kernel's
connection sync daemon as master/backup, and a periodic reconcile finds hand-made drift
and corrects or reports it. Every apply is a diff of the kernel's table against the
desired one: nothing is flushed, and only the differences are sent.

Inert when the configuration has no ``[ipvs]`` section: no service, no kernel access.
The entry point is :data:`plugin`, one object whose state is kept per cluster, so two
engines in one process (tests) each get their own applier. See docs/ipvs.md.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clusterbus import (
    Cluster,
    Config,
    Event,
    NodeDown,
    NodemapChanged,
    NodemapConfig,
    NodeUp,
    VrrpTransition,
    hookimpl,
)

from .applier import Applier
from .model import IpvsConfig, parse
from .table import Dest, Entry, Op, OpKind, Plan, Service, ServiceKey, Table, diff

__all__ = ["Applier", "IpvsConfig", "IpvsPlugin", "plugin", "parse",
           "Dest", "Entry", "Op", "OpKind", "Plan", "Service", "ServiceKey", "Table", "diff"]

log = logging.getLogger(__name__)


def _parse(config: Config, section: Mapping[str, Any],
           cluster: Cluster) -> tuple[IpvsConfig, dict[int, tuple[str, ...]]]:
    """Validate ``section``; node-addressed real servers must resolve through the live node
    map or the file's ``[nodemap.nodes]``.

    :returns: the validated section and the file's node addresses.
    :raises ConfigError: naming ``config.file`` and the key.
    """
    # the node map plugin may not have loaded [nodemap.nodes] yet when [ipvs] is validated
    extra = dict(NodemapConfig.from_config(config).nodes)

    def addrs(node: int) -> tuple[str, ...]:
        return cluster.nodemap.addrs(node) or extra.get(node, ())

    return parse(section, file=config.file, node_addrs=addrs), extra


@dataclass(slots=True)
class _State:
    """What the plugin knows about one cluster (one engine)."""

    config: IpvsConfig | None = None
    extra: dict[int, tuple[str, ...]] = field(default_factory=dict)
    applier: Applier | None = None


class IpvsPlugin:
    """The plugin object registered through the entry point.

    Every hook receives the cluster, so state lives in a per-cluster table (weakly keyed:
    a finished engine's applier goes with it) instead of module globals.
    """

    def __init__(self) -> None:
        self._states: weakref.WeakKeyDictionary[Cluster, _State] = weakref.WeakKeyDictionary()

    def applier(self, cluster: Cluster) -> Applier | None:
        """The cluster's applier (``None`` without ``[ipvs]`` or before the services hook)."""
        state = self._states.get(cluster)
        return None if state is None else state.applier

    @hookimpl
    def clusterbus_configure(self, config: Config, section: Mapping[str, Any] | None,
                             cluster: Cluster) -> None:
        """Validate ``[ipvs]``; without one the plugin stays inert."""
        state = self._states[cluster] = _State()
        if section is not None:
            state.config, state.extra = _parse(config, section, cluster)

    @hookimpl
    def clusterbus_reload(self, config: Config, section: Mapping[str, Any] | None,
                          cluster: Cluster) -> None:
        """Apply a changed ``[ipvs]`` as a diff (a full reconcile against the new table).

        :raises ConfigError: the new section is invalid (the running one stays).
        """
        state = self._states.get(cluster)
        if state is None:
            return
        if (section is None) != (state.config is None):
            log.warning("ipvs: adding or removing the whole [ipvs] section needs a restart; "
                        "keeping the running configuration")
            return
        if section is None or state.applier is None:
            return
        new, extra = _parse(config, section, cluster)
        if new == state.config:
            return
        state.config, state.extra = new, extra
        state.applier.reconfigure(new, extra)
        log.info("ipvs: configuration reloaded; reconciling the kernel table against it")

    @hookimpl
    def clusterbus_status(self, cluster: Cluster) -> dict[str, Any] | None:
        """The applier's counters and last apply, for ``clusterbus status``."""
        applier = self.applier(cluster)
        return None if applier is None else applier.status()

    @hookimpl
    def clusterbus_services(self, cluster: Cluster) -> list[Callable[[], Awaitable[None]]] | None:
        """The applier service, when ``[ipvs]`` is configured."""
        state = self._states.get(cluster)
        if state is None or state.config is None:
            return None
        state.applier = Applier(state.config, cluster, state.extra)
        return [state.applier.run]

    @hookimpl
    def clusterbus_node_down(self, event: NodeDown, cluster: Cluster) -> None:
        """Quiesce or remove the node's real servers (only the services it serves)."""
        if event.origin != cluster.local_node:
            return  # a peer director's view: the local one (the node map) did not move
        applier = self.applier(cluster)
        if applier is not None:
            applier.touch_node(event.node, event.topic)

    @hookimpl
    def clusterbus_node_up(self, event: NodeUp, cluster: Cluster) -> None:
        """Restore the node's real servers."""
        if event.origin != cluster.local_node:
            return
        applier = self.applier(cluster)
        if applier is not None:
            applier.touch_node(event.node, event.topic)

    @hookimpl
    def clusterbus_vrrp_transition(self, event: VrrpTransition, cluster: Cluster) -> None:
        """MASTER starts the kernel sync daemon as master, BACKUP/FAULT as backup."""
        applier = self.applier(cluster)
        if applier is None or applier.config.sync_daemon is None:
            return
        if event.origin != cluster.local_node:
            return  # a peer director's instance (its events reach our hooks over peer links)
        wanted = applier.config.sync_daemon.instance
        if wanted and event.instance != wanted:
            return
        if event.new == "MASTER":
            applier.vrrp_state("master")
        elif event.new in ("BACKUP", "FAULT"):
            applier.vrrp_state("backup")

    @hookimpl
    def clusterbus_event(self, event: Event, cluster: Cluster) -> None:
        """A node's addresses changed: real servers given by node number may move."""
        if not isinstance(event, NodemapChanged):
            return  # every event comes here: the cheap test first
        if event.origin != cluster.local_node:
            return  # a peer's node map
        applier = self.applier(cluster)
        if applier is not None:
            applier.touch_node(event.node, event.topic)


#: The entry point (``clusterbus.plugins.ipvs:plugin``).
plugin = IpvsPlugin()
