"""Consistent scheduling: two directors whose IPVS uses ``mh`` (Maglev hashing) with the
same real-server list send the same client (address:port) to the same real server.

Topology inside UML, one bridge: a client namespace with several addresses, two director
namespaces (each programmed by ``clusterbus ipvs apply`` from its own file, the real
servers listed in a different order on each), three real servers in direct-routing mode
(the VIP on their loopback, replies straight to the client), each answering with its
name. The client reaches the VIP through director 1 or director 2 by its route; a
connection the other director never saw still lands on the same real server.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

VIP = "10.79.0.100"
DIRECTORS = {"d1": "10.79.0.1", "d2": "10.79.0.2"}
SERVERS = {"rs1": "10.79.0.11", "rs2": "10.79.0.12", "rs3": "10.79.0.13"}
CLIENTS = tuple(f"10.79.0.{i}" for i in range(101, 109))
PORTS = (40001, 40002, 40003)

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80)); s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()
"""

FETCH = """
import socket, struct, sys
out = []
for pair in sys.argv[1:]:
    addr, port = pair.split(":")
    s = socket.socket(); s.settimeout(10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # close with RST: no TIME_WAIT, so the same address:port can connect again at once
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.bind((addr, int(port))); s.connect(("%s", 80))
    out.append(pair + "=" + s.recv(64).decode()); s.close()
print(" ".join(out))
""" % VIP


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def nsx(ns: str, *cmd: str) -> str:
    return sh("ip", "netns", "exec", ns, *cmd)


def ipvs_config(order: tuple[str, ...]) -> str:
    rs = "".join(f'  [[ipvs.virtual_server.real_server]]\n  address = "{SERVERS[n]}:80"\n'
                 '  forward = "dr"\n' for n in order)
    return ("[daemon]\nnode = 1\n[bus]\nenabled = false\n[netlink]\nenabled = false\n"
            "[ipvs]\nreconcile_interval = 0\n[[ipvs.virtual_server]]\n"
            f'address = "{VIP}:80"\nscheduler = "mh"\nscheduler_flags = ["mh-port"]\n{rs}')


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[None]:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.unshare(0x40000000) == 0  # CLONE_NEWNET: this process holds the bridge
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "br0", "type", "bridge")
    sh("ip", "link", "set", "br0", "up")
    made: list[str] = []
    procs: list[subprocess.Popen[str]] = []

    def node(ns: str, addrs: tuple[str, ...]) -> None:
        sh("ip", "netns", "add", ns)
        made.append(ns)
        sh("ip", "link", "add", f"v{ns}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", f"v{ns}", "master", "br0", "up")
        for a in addrs:
            nsx(ns, "ip", "addr", "add", f"{a}/24", "dev", "eth0")
        nsx(ns, "ip", "link", "set", "eth0", "up")
        nsx(ns, "ip", "link", "set", "lo", "up")

    try:
        node("cl", CLIENTS)
        for ns, addr in DIRECTORS.items():
            node(ns, (addr,))
            nsx(ns, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
            nsx(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for ns, addr in SERVERS.items():
            node(ns, (addr,))
            # direct routing: the VIP on loopback, never answered for in ARP
            nsx(ns, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
            for key in ("arp_ignore=1", "arp_announce=2"):
                nsx(ns, "sysctl", "-qw", f"net.ipv4.conf.all.{key}")
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, ns],
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        # the same list on both directors, in a different order
        orders = {"d1": ("rs1", "rs2", "rs3"), "d2": ("rs3", "rs1", "rs2")}
        for ns, order in orders.items():
            conf = tmp_path / f"{ns}.toml"
            conf.write_text(ipvs_config(order))
            nsx(ns, sys.executable, "-c", "from clusterbus.cli import main; main()",
                "ipvs", "apply", "-c", str(conf))
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def fetch_via(director: str, pairs: list[str]) -> dict[str, str]:
    nsx("cl", "ip", "route", "replace", f"{VIP}/32", "via", DIRECTORS[director])
    out = nsx("cl", sys.executable, "-c", FETCH, *pairs).split()
    return dict(item.split("=", 1) for item in out)


def test_mh_same_client_same_real_server_on_both_directors(topology: None) -> None:
    table = sh("ip", "netns", "exec", "d1", "ipvsadm", "-Ln")
    assert "mh (mh-port)" in table, table
    pairs = [f"{a}:{p}" for a in CLIENTS for p in PORTS]
    via1 = fetch_via("d1", pairs)
    via2 = fetch_via("d2", pairs)
    assert set(via1) == set(pairs) and set(via2) == set(pairs)
    assert set(via1.values()) <= set(SERVERS)
    # the hash spreads clients (so agreement is not "everyone goes to one server") ...
    assert len(set(via1.values())) >= 2, via1
    # ... and both directors pick the same real server for every client address:port
    differ = {p: (via1[p], via2[p]) for p in pairs if via1[p] != via2[p]}
    assert not differ, f"director 1 vs 2 disagree: {differ}"
    # each director scheduled these connections itself (neither saw the other's)
    for ns in DIRECTORS:
        conns = nsx(ns, "ipvsadm", "-Lnc")
        assert conns.count(f"{VIP}:80") >= len(pairs), conns
