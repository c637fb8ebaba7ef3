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


def test_mapped_ipv6_cannot_dodge_the_conflict_check():
    engine, seen = daemon_with({"nodes": {"3": ["10.0.0.3"]}})
    engine.report(NodeReport(state=NodeState.UP, node=4, addrs=("::ffff:10.0.0.3",),
                             reason="t"))
    conflicts = [e for e in seen if e.topic == "nodemap.conflict"]
    assert [(c.addr, c.owner, c.claimant) for c in conflicts] == [("10.0.0.3", 3, 4)]
    assert engine.nodemap.node_num("::ffff:10.0.0.3") == 3


@pytest.mark.parametrize("addr", ["127.0.0.1", "0.0.0.0", "224.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_config_refuses_addresses_a_node_cannot_have(addr):
    with pytest.raises(ConfigError) as info:
        daemon_with({"nodes": {"3": [addr]}})
    assert info.value.key == "nodemap.nodes.3[0]"
    with pytest.raises(ConfigError):
        daemon_with({"nodes": {"0": ["10.0.0.1"]}})


def test_a_node_keeps_at_most_16_addresses_and_nodemap_changed_stays_small():
    engine, seen = daemon_with({"nodes": {"3": ["10.0.0.3"]}})
    for i in range(40):  # a node that keeps announcing new addresses
        engine.report(NodeReport(state=NodeState.UP, node=3, addrs=(f"10.3.0.{i + 1}",),
                                 incarnation=i + 1, reason="t"))
    held = engine.nodemap.addrs(3)
    assert len(held) == 16 and "10.0.0.3" in held  # the configured one is pinned
    assert held[-1] == "10.3.0.40" and engine.nodemap.counters["nodemap.evicted"] == 25
    changed = [e for e in seen if e.topic == "nodemap.changed"]
    assert changed and max(len(e.addrs) for e in changed) == 16


def test_learned_addresses_of_a_down_node_expire_config_ones_never():
    now = [1000.0]
    host = PluginHost()
    host.register(nm.NodemapPlugin(), "nodemap")
    engine = Engine(origin=1, plugins=host, clock=lambda: now[0])
    host.configure(parse_config({"nodemap": {"forget_after": 60,
                                             "nodes": {"2": ["10.0.0.2"]}}}, file="n.toml"),
                   engine.cluster)
    seen: list = []
    engine.sinks.append(seen.append)
    for node in (2, 5, 6):
        engine.report(NodeReport(state=NodeState.UP, node=node, addrs=(f"10.1.0.{node}",),
                                 reason="t"))
    for node in (2, 5, 6):
        engine.report(NodeReport(state=NodeState.DOWN, node=node, reason="t"))
    now[0] += 30
    assert engine.expire() == 0  # too soon after the last sweep: nothing happens
    now[0] += 31
    assert engine.expire() == 0  # the sweep notes the DOWN nodes
    now[0] += 30
    engine.report(NodeReport(state=NodeState.UP, node=6, reason="t"))  # back in time
    now[0] += 31  # 122 s after the downs, 61 s after the sweep that noted them
    assert engine.expire() == 2
    assert engine.nodemap.addrs(2) == ("10.0.0.2",) and engine.nodemap.addrs(5) == ()
    assert engine.nodemap.addrs(6) == ("10.1.0.6",)  # came back: not forgotten
    assert engine.nodemap.node_num("10.1.0.5") is None
    expired = [(e.node, e.addrs) for e in seen if e.topic == "nodemap.changed"
               and e.reason == "expired"]
    assert expired == [(2, ("10.0.0.2",)), (5, ())]
    # the sweep also runs by itself with membership changes, forget_after apart
    engine.report(NodeReport(state=NodeState.DOWN, node=6, reason="t"))
    for _ in range(3):
        now[0] += 61
        engine.report(NodeReport(state=NodeState.UP, node=9, incarnation=int(now[0]),
                                 reason="t"))
    assert engine.nodemap.addrs(6) == () and engine.nodemap.counters["nodemap.expired"] == 3


RSS_SCRIPT = r"""
import sys
from clusterbus import Engine, NodeReport, NodeState, PluginHost
from clusterbus.plugins import nodemap as nm

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

host = PluginHost()
host.register(nm.NodemapPlugin(), "nodemap")
now = [1.0]
engine = Engine(origin=1, plugins=host, clock=lambda: now[0])
host.call_historic("clusterbus_startup", cluster=engine.cluster)
kept = []  # like the replay ring: every event stays referenced
engine.sinks.append(kept.append)
before = rss()
for i in range(8000):  # 8000 distinct small reports: one new address each
    node = 2 + i % 4
    now[0] += 1.0
    engine.report(NodeReport(state=NodeState.UP, node=node,
                             addrs=(f"10.{(i >> 8) & 255}.{i & 255}.7",),
                             incarnation=i + 1, reason="t"))
print(rss() - before, len(kept), max(len(e.addrs) for e in kept if e.topic == "nodemap.changed"))
"""


def test_8000_distinct_reports_keep_memory_bounded(tmp_path):
    # Before the per-node cap, node 2..5 each collected 2000 addresses and every
    # nodemap.changed carried all of them: about 8000**2 / 2 references held by the
    # kept events, 250 MB and more. Now a node holds 16 and an event carries 16 at most.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT], capture_output=True, text=True,
                         check=True, timeout=300).stdout.split()
    grown, events, widest = int(out[0]), int(out[1]), int(out[2])
    assert events >= 16000 and widest == 16
    assert grown < 64 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"


def test_a_peer_directors_node_up_does_not_teach_the_local_node_map():
    """Peer events reach the local hooks with the peer's origin: the node map learns only
    from this director's own sources, and publishes nothing for a peer's event."""
    from clusterbus.events import NodeUp

    host = PluginHost()
    host.register(nm.NodemapPlugin(), "nodemap")
    engine = Engine(origin=1, plugins=host)
    host.configure(parse_config({}, file="n.toml"), engine.cluster)
    seen: list = []
    engine.sinks.append(seen.append)
    peer = NodeUp(origin=2, seq=1, time=1.0, node=7, addrs=("10.1.0.7",), view=1,
                  reason="netlink")
    host.notify_event(peer, engine.cluster)  # as core.peers delivers a peer's event
    assert engine.nodemap.addrs(7) == () and seen == []
    engine.report(NodeReport(state=NodeState.UP, node=7, addrs=("10.1.0.7",), reason="t"))
    assert engine.nodemap.addrs(7) == ("10.1.0.7",)
    assert [e.topic for e in seen] == ["node.up", "nodemap.changed"]
