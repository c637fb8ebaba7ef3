"""The kernel sync daemon follows this director's VRRP instance, never a peer director's
(whose ``vrrp.transition`` events reach the local hooks over ``[[cluster.peer]]`` links);
and a peer's membership events do not make the applier re-check real servers (the local
node map, which the applier follows, did not move)."""

from __future__ import annotations

import time

from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.events import NodeDown, NodemapChanged, NodeUp, VrrpTransition
from clusterbus.pluginhost import PluginHost
from clusterbus.plugins import ipvs

CONFIG = {
    "ipvs": {"reconcile_interval": 0,
             "sync_daemon": {"interface": "lo", "syncid": 9, "instance": "VI_1"}},
}


def _transition(origin: int, new: str) -> VrrpTransition:
    return VrrpTransition(origin=origin, seq=1, time=time.time(), instance="VI_1", vrid=51,
                          family="inet", interface="eth0", old="BACKUP", new=new,
                          reason="test")


def test_a_peers_transition_does_not_move_the_local_sync_daemon() -> None:
    host = PluginHost(enable=["ipvs"])
    host.load_entrypoints()
    engine = Engine(origin=1, plugins=host)
    host.configure(parse_config(CONFIG, file="t.toml"), engine.cluster)
    ipvs.plugin.clusterbus_services(cluster=engine.cluster)  # creates the applier (not run)
    applier = ipvs.plugin.applier(engine.cluster)
    assert applier is not None
    ipvs.plugin.clusterbus_vrrp_transition(event=_transition(1, "MASTER"), cluster=engine.cluster)
    assert applier._sync_state == "master"
    # director 2 (a peer) going BACKUP / MASTER for its own VI_1 changes nothing here
    ipvs.plugin.clusterbus_vrrp_transition(event=_transition(2, "BACKUP"), cluster=engine.cluster)
    assert applier._sync_state == "master"
    ipvs.plugin.clusterbus_vrrp_transition(event=_transition(1, "BACKUP"), cluster=engine.cluster)
    assert applier._sync_state == "backup"


def test_a_peers_membership_events_do_not_wake_the_applier() -> None:
    host = PluginHost(enable=["ipvs"])
    host.load_entrypoints()
    engine = Engine(origin=1, plugins=host)
    host.configure(parse_config(CONFIG, file="t.toml"), engine.cluster)
    ipvs.plugin.clusterbus_services(cluster=engine.cluster)
    applier = ipvs.plugin.applier(engine.cluster)
    assert applier is not None
    stamp = {"seq": 1, "time": time.time(), "node": 7, "view": 1}
    cluster = engine.cluster
    ipvs.plugin.clusterbus_node_down(event=NodeDown(origin=2, reason="peer", **stamp),
                                     cluster=cluster)
    ipvs.plugin.clusterbus_node_up(event=NodeUp(origin=2, reason="peer", **stamp),
                                   cluster=cluster)
    ipvs.plugin.clusterbus_event(event=NodemapChanged(origin=2, seq=1, time=time.time(), node=7,
                                                      addrs=("10.0.0.7",), reason="peer"),
                                 cluster=cluster)
    assert applier._nodes == {} and not applier._wake.is_set()
    ipvs.plugin.clusterbus_node_down(event=NodeDown(origin=1, reason="local", **stamp),
                                     cluster=cluster)
    assert applier._nodes == {7: "node.down"} and applier._wake.is_set()
