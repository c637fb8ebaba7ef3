from __future__ import annotations

import pytest

from clusterbus import Engine, NodeReport, NodeState, PluginHost
from clusterbus.config import parse_config
from clusterbus.errors import ConfigError
from clusterbus.nodemap import NodeMap
from clusterbus.plugins import nodemap as nm


def daemon_with(section, file="n.toml"):
    host = PluginHost()
    plugin = nm.NodemapPlugin()
    host.register(plugin, "nodemap")
    engine = Engine(origin=1, plugins=host)
    cfg = parse_config({"nodemap": section}, file=file)
    host.configure(cfg, engine.cluster)
    host.call_historic("clusterbus_startup", cluster=engine.cluster)
    seen = []
    engine.sinks.append(seen.append)
    return engine, seen


def test_nodemap_both_directions_ipv4_ipv6():
    m = NodeMap()
    added, conflicts = m.add(3, ["10.0.0.3", "FD00::3"])
    assert added == ("10.0.0.3", "fd00::3") and not conflicts
    assert m.node_num("fd00:0::3") == 3 and m.addrs(3) == ("10.0.0.3", "fd00::3")
    assert m.node_num("10.0.0.4") is None
    _, conflicts = m.add(4, ["10.0.0.3"])
    assert conflicts and conflicts[0].owner == 3 and m.node_num("10.0.0.3") == 3
    assert m.remove(3) == ("10.0.0.3", "fd00::3") and m.node_num("10.0.0.3") is None


def test_config_and_node_up_addresses_and_resolve_hook():
    engine, seen = daemon_with({"nodes": {"1": ["10.0.0.1"], "2": ["10.0.0.2", "fd00::2"]}})
    assert engine.cluster.resolve_node("fd00::2") == 2
    assert nm.cluster_node_num("10.0.0.1") == 1
    engine.report(NodeReport(state=NodeState.UP, node=3, addrs=("10.0.0.3",), reason="t"))
    assert nm.cluster_node_num("10.0.0.3") == 3
    assert [e.topic for e in seen] == ["node.up", "nodemap.changed"]
    assert seen[1].addrs == ("10.0.0.3",)


def test_conflicting_claim_is_reported_not_overwritten():
    engine, seen = daemon_with({"nodes": {"1": ["10.0.0.1"]}})
    engine.report(NodeReport(state=NodeState.UP, node=5, addrs=("10.0.0.1", "10.0.0.5"),
                             reason="netlink"))
    topics = [e.topic for e in seen]
    assert topics == ["node.up", "nodemap.conflict", "nodemap.changed"]
    conflict = seen[1]
    assert (conflict.addr, conflict.owner, conflict.claimant) == ("10.0.0.1", 1, 5)
    assert engine.cluster.resolve_node("10.0.0.1") == 1
    assert engine.cluster.resolve_node("10.0.0.5") == 5


@pytest.mark.parametrize("section,key", [
    ({"nodes": {"x": ["10.0.0.1"]}}, "nodemap.nodes.x"),
    ({"nodes": {"1": "10.0.0.1"}}, "nodemap.nodes.1"),
    ({"nodes": {"1": ["10.0.0.999"]}}, "nodemap.nodes.1[0]"),
    ({"nodes": {"1": ["10.0.0.1"], "2": ["10.0.0.1"]}}, "nodemap.nodes.2[0]"),
    ({"learn": "yes"}, "nodemap.learn"),
    ({"colour": 1}, "nodemap.colour"),
])
def test_bad_config_names_file_and_key(section, key):
    with pytest.raises(ConfigError) as info:
        daemon_with(section, file="/etc/clusterbus.toml")
    assert info.value.key == key and info.value.file == "/etc/clusterbus.toml"


def test_no_daemon_in_process_is_an_error(monkeypatch):
    monkeypatch.setattr(nm, "_live", None)
    with pytest.raises(RuntimeError):
        nm.cluster_node_num("10.0.0.1")
