"""Reactions and real traffic inside UML: client ns -> VIP (nat) -> two real-server ns.

The test process is the director (its own network namespace); the applier runs through the
real plugin host and engine, and membership reports drive it exactly as in the daemon.
"""

from __future__ import annotations

import asyncio
import ctypes
import subprocess
import sys
from collections.abc import Iterator

import pytest
from ipvsadm_view import ipvsadm, kernel_view

from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.events import Event, VrrpTransition
from clusterbus.pluginhost import PluginHost
from clusterbus.plugins import ipvs
from clusterbus.view import NodeReport, NodeState

VIP = "10.78.1.100"
CLIENTS = ("10.78.1.2", "10.78.1.3", "10.78.1.4")
RS = {1: "10.78.2.2", 2: "10.78.3.2"}

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()
"""


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def topology() -> Iterator[dict[int, str]]:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.unshare(0x40000000) == 0  # CLONE_NEWNET: this process is the director
    sh("ip", "link", "set", "lo", "up")
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
    made, procs = [], []
    try:
        sh("ip", "netns", "add", "cl"); made.append("cl")
        sh("ip", "link", "add", "dcl", "type", "veth", "peer", "name", "eth0", "netns", "cl")
        sh("ip", "addr", "add", f"{VIP}/24", "dev", "dcl"); sh("ip", "link", "set", "dcl", "up")
        for a in CLIENTS:
            sh("ip", "netns", "exec", "cl", "ip", "addr", "add", f"{a}/24", "dev", "eth0")
        sh("ip", "netns", "exec", "cl", "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", "cl", "ip", "link", "set", "lo", "up")
        for node, addr in RS.items():
            ns = f"rs{node}"
            sh("ip", "netns", "add", ns); made.append(ns)
            gw = addr.rsplit(".", 1)[0] + ".1"
            sh("ip", "link", "add", f"d{ns}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "addr", "add", f"{gw}/24", "dev", f"d{ns}")
            sh("ip", "link", "set", f"d{ns}", "up")
            for c in (["ip", "addr", "add", f"{addr}/24", "dev", "eth0"],
                      ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"],
                      ["ip", "route", "add", "default", "via", gw]):
                sh("ip", "netns", "exec", ns, *c)
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, ns],
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield RS
    finally:
        for p in procs:
            p.kill(); p.wait(timeout=10)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def fetch(source: str) -> str:
    code = ("import socket,sys; s=socket.socket(); s.settimeout(10); s.bind((sys.argv[1],0));"
            f"s.connect(('{VIP}',80)); print(s.recv(64).decode())")
    return sh("ip", "netns", "exec", "cl", sys.executable, "-c", code, source).strip()


CONFIG = {
    "nodemap": {"nodes": {str(n): [a] for n, a in RS.items()}},
    "ipvs": {
        "reconcile_interval": 0,
        "virtual_server": [{
            "address": f"{VIP}:80", "scheduler": "rr", "persistence_timeout": 300,
            "on_node_down": "quiesce",
            "real_server": [{"node": 1, "port": 80}, {"node": 2, "port": 80}],
        }],
        "sync_daemon": {"interface": "lo", "syncid": 9, "instance": "VI_1"},
    },
}


class Harness:
    """A real engine + plugin host with the nodemap and ipvs plugins, on one loop."""

    def __init__(self) -> None:
        self.host = PluginHost(enable=["nodemap", "ipvs"])
        self.host.load_entrypoints()
        self.engine = Engine(origin=1, plugins=self.host)
        self.host.configure(parse_config(CONFIG, file="kt.toml"), self.engine.cluster)
        self.events: list[Event] = []
        self.engine.sinks.append(self.events.append)

    async def applied(self, reason: str, timeout: float = 20) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                for e in self.events:
                    if e.topic == "ipvs.applied" and e.reason == reason:  # type: ignore[attr-defined]
                        self.events.remove(e)
                        return e
                await asyncio.sleep(0.05)


def test_node_down_quiesces_and_traffic_follows(topology: dict[int, str]) -> None:
    async def scenario() -> None:
        h = Harness()
        h.host.call_historic("clusterbus_startup", cluster=h.engine.cluster)
        [(_, services)] = [(p, s) for p, s in h.host.call_each("clusterbus_services",
                                                               cluster=h.engine.cluster) if s]
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(services[0]())
            first = await h.applied("startup")
            assert first.added == 3  # type: ignore[attr-defined]
            for n, a in RS.items():
                h.engine.report(NodeReport(state=NodeState.UP, node=n, addrs=(a,), reason="test"))
            view = kernel_view()[f"TCP {VIP}:80 rr persistent 300"]
            assert view == {f"{a}:80": "Masq 1 0 0" for a in RS.values()}

            first_server = await asyncio.to_thread(fetch, CLIENTS[0])
            assert first_server in ("rs1", "rs2")
            node = int(first_server[2:])
            other = f"rs{3 - node}"
            h.engine.report(NodeReport(state=NodeState.DOWN, node=node, reason="test"))
            ev = await h.applied("node.down")
            assert (ev.changed, ev.added, ev.removed) == (1, 0, 0)  # type: ignore[attr-defined]
            view = kernel_view()[f"TCP {VIP}:80 rr persistent 300"]
            assert view[f"{RS[node]}:80"] == "Masq 0 0 0"
            # the persistent client keeps its server; new clients go to the other one
            assert await asyncio.to_thread(fetch, CLIENTS[0]) == first_server
            assert await asyncio.to_thread(fetch, CLIENTS[1]) == other
            assert await asyncio.to_thread(fetch, CLIENTS[2]) == other

            h.engine.report(NodeReport(state=NodeState.UP, node=node, addrs=(RS[node],),
                                       reason="test"))
            await h.applied("node.up")
            view = kernel_view()[f"TCP {VIP}:80 rr persistent 300"]
            assert view[f"{RS[node]}:80"] == "Masq 1 0 0"

            # VRRP drives the sync daemon (keepalived's lvs_sync_daemon)
            h.engine.publish(VrrpTransition, instance="VI_1", old="BACKUP", new="MASTER",
                             reason="test")
            await _until(lambda: "master sync daemon (mcast=lo, syncid=9" in ipvsadm("-L", "--daemon"))
            h.engine.publish(VrrpTransition, instance="VI_1", old="MASTER", new="BACKUP",
                             reason="test")
            await _until(lambda: "backup sync daemon (mcast=lo, syncid=9" in ipvsadm("-L", "--daemon")
                         and "master" not in ipvsadm("-L", "--daemon"))
            h.engine.publish(VrrpTransition, instance="VI_2", old="BACKUP", new="MASTER",
                             reason="test")  # another instance: ignored
            # the hook decides on the spot: nothing was asked of the applier
            applier = ipvs.plugin.applier(h.engine.cluster)
            assert applier is not None
            assert applier._sync_state == "backup" and not applier._sync_dirty
            assert "master" not in ipvsadm("-L", "--daemon")
            task.cancel()

    asyncio.run(scenario())  # the cancelled applier task ends the TaskGroup cleanly


async def _until(pred, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(pred):
            await asyncio.sleep(0.1)
