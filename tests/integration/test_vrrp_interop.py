"""clusterbus's VRRP speaker against a real keepalived 2.2.7, in namespaces on one bridge.

Each case: one side at priority 150, the other at 100. The higher becomes MASTER and is
the only namespace holding the VIP; SIGKILL of the master (keepalived: SIGSTOP of parent and
VRRP child, then SIGKILL) moves the VIP to the backup and a client's ARP cache follows;
restarting the old master removes the VIP the crash left behind and preempts back.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from keepalived import Keepalived, VrrpInstance, holders, ns_has_addr, wait_for
from netns import Topology
from speaker import Speaker

pytestmark = [pytest.mark.root, pytest.mark.keepalived]

V4 = ("10.77.0.100/24", "10.77.0.100")
V6 = ("fd00:77::100/64", "fd00:77::100")


def mac_of(topo: Topology, ns: str) -> str:
    out = topo.exec(ns, ["cat", "/sys/class/net/eth0/address"]).stdout
    return out.strip()


def neigh_mac(topo: Topology, ns: str, ip: str) -> str | None:
    out = topo.exec(ns, ["ip", "neigh", "show", ip, "dev", "eth0"]).stdout
    m = re.search(r"lladdr ([0-9a-f:]{17})", out)
    return m.group(1) if m else None


_REACH = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(1)
try:
    s.connect((sys.argv[1], 9))
except ConnectionRefusedError:
    sys.exit(0)  # a RST: the host holding the address answered
except OSError:
    sys.exit(1)
sys.exit(0)
"""


def reaches(topo: Topology, ns: str, ip: str) -> bool:
    """The client connects to ``ip`` (port 9): any answer, even a RST, means it is reachable
    (no ping binary here)."""
    return topo.exec(ns, [sys.executable, "-c", _REACH, ip], check=False).returncode == 0


def wait_ll_ready(topo: Topology, ns: str) -> None:
    """Wait until eth0's IPv6 link-local address finished DAD (it is the advert source)."""
    def ready() -> bool:
        out = topo.exec(ns, ["ip", "-6", "addr", "show", "dev", "eth0"]).stdout
        return "fe80::" in out and "tentative" not in out
    wait_for(ready, 10, what=f"link-local address in {ns}")


class Side:
    """One VRRP speaker of a case: clusterbus or keepalived, same interface."""

    def __init__(self, kind: str, ns: str, workdir: Path, inst: VrrpInstance) -> None:
        self.kind = kind
        self.ns = ns
        if kind == "clusterbus":
            self.proc: Speaker | Keepalived = Speaker(ns, workdir, [inst])
        else:
            self.proc = Keepalived(ns, workdir, [inst])

    def start(self) -> None:
        self.proc.start()
        if isinstance(self.proc, Speaker):
            self.proc.wait_running()
        else:
            self.proc.wait_vrrp_child()

    def crash(self) -> None:
        self.proc.crash()

    def log(self) -> str:
        return self.proc.log_tail(40)


CASES = [
    # (master kind, backup kind, version, advert_int, family)
    ("clusterbus", "keepalived", 3, 0.1, "inet"),
    ("keepalived", "clusterbus", 3, 0.1, "inet"),
    ("clusterbus", "keepalived", 2, 1, "inet"),
    ("keepalived", "clusterbus", 2, 1, "inet"),
    ("clusterbus", "keepalived", 3, 0.1, "inet6"),
]


@pytest.mark.parametrize("master,backup,version,interval,family", CASES,
                         ids=[f"{m}150-vs-{b}100-v{v}-{f}" for m, b, v, _, f in CASES])
def test_interop_failover_and_preemption(tmp_path: Path, master: str, backup: str,
                                         version: int, interval: float, family: str) -> None:
    vip_cidr, vip = V6 if family == "inet6" else V4
    with Topology() as topo:
        a = topo.host("a", "10.77.0.1/24", "fd00:77::1/64")
        b = topo.host("b", "10.77.0.2/24", "fd00:77::2/64")
        client = topo.host("c", "10.77.0.3/24", "fd00:77::3/64")
        if family == "inet6":
            for ns in (a, b):
                wait_ll_ready(topo, ns)
        common = dict(vrid=77, advert_int=interval, version=version, vips=(vip_cidr,))
        hi = Side(master, a, tmp_path, VrrpInstance(priority=150, **common))
        lo = Side(backup, b, tmp_path, VrrpInstance(priority=100, **common))
        down = 3 * interval + (256 - 100) / 256 * interval  # the backup's Master_Down_Interval
        settle = 10 * down + 10
        try:
            lo.start()
            hi.start()
            wait_for(lambda: holders([a, b], vip) == [a], settle, what="the 150 side as MASTER")

            # A client learns the VIP's MAC from the master.
            wait_for(lambda: reaches(topo, client, vip), 10, what="the client to reach the VIP")
            if family == "inet":
                assert neigh_mac(topo, client, vip) == mac_of(topo, a)

            hi.crash()
            wait_for(lambda: ns_has_addr(b, vip), settle, what="the backup to take the VIP")
            if family == "inet":
                # Gratuitous ARP moved the client's cache to the new master.
                wait_for(lambda: neigh_mac(topo, client, vip) == mac_of(topo, b), 10,
                         what="the client's ARP entry to follow the takeover")
            else:
                wait_for(lambda: reaches(topo, client, vip), 10,
                         what="the client to reach the VIP on the backup")
            # Nothing released the VIP on the crashed side (both kinds leave it behind).
            assert ns_has_addr(a, vip)

            hi.start()  # removes the stale VIP at start, then preempts back
            wait_for(lambda: holders([a, b], vip) == [a], settle,
                     what="preemption back to the restarted 150 side")
            if family == "inet":
                wait_for(lambda: neigh_mac(topo, client, vip) == mac_of(topo, a), 10,
                         what="the client's ARP entry to come back")
            # Converged: stays that way for a few advert intervals.
            for _ in range(5):
                assert holders([a, b], vip) == [a]
                subprocess.run(["sleep", str(interval)], check=True)
        except BaseException:
            print(f"--- {hi.kind} (150) log ---\n{hi.log()}\n--- {lo.kind} (100) log ---\n{lo.log()}")
            raise
        finally:
            hi.crash()
            lo.crash()
