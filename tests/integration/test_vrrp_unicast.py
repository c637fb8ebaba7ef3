"""keepalived-style ``unicast_peer`` against a real keepalived that uses unicast_peer too.

clusterbus (150, unicast_peer = keepalived's address) and keepalived (100, unicast_src_ip and
unicast_peer = clusterbus's address), VRRPv3: the 150 side wins; a third host on the bridge
that joined 224.0.0.18 hears no advert (they are unicast); SIGKILL of clusterbus moves the
VIP to keepalived; the restart removes the stale VIP and preempts back; exactly one holder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from keepalived import Keepalived, VrrpInstance, holders, ns_has_addr, wait_for
from netns import Topology
from speaker import Speaker

pytestmark = [pytest.mark.root, pytest.mark.keepalived]

VIP = "10.77.0.100"
INTERVAL = 0.1

# Counts VRRP packets a host receives in argv[1] seconds (joined to the VRRP group).
LISTEN = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack(
    "4s4si", socket.inet_aton("224.0.0.18"), b"\0" * 4, socket.if_nametoindex("eth0")))
s.settimeout(0.05)
n, end = 0, time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        s.recv(2048)
        n += 1
    except TimeoutError:
        pass
print(n)
"""


def test_unicast_peer_interop(tmp_path: Path) -> None:
    with Topology() as topo:
        a = topo.host("a", "10.77.0.1/24")
        b = topo.host("b", "10.77.0.2/24")
        c = topo.host("c", "10.77.0.3/24")
        common = dict(vrid=77, advert_int=INTERVAL, version=3, vips=(f"{VIP}/24",))
        cb = Speaker(a, tmp_path, [VrrpInstance(priority=150, unicast_peers=("10.77.0.2",),
                                                unicast_src="10.77.0.1", **common)], bus=True)
        ka = Keepalived(b, tmp_path, [VrrpInstance(priority=100, unicast_peers=("10.77.0.1",),
                                                   unicast_src="10.77.0.2", **common)])
        try:
            ka.start()
            ka.wait_vrrp_child()
            wait_for(lambda: holders([a, b], VIP) == [b], 30, what="keepalived as MASTER")
            cb.start()
            cb.wait_running()
            wait_for(lambda: holders([a, b], VIP) == [a], 30, what="clusterbus (150) as MASTER")
            st = cb.instance_status()
            assert st["state"] == "MASTER"
            # It heard keepalived's unicast adverts before preempting, and dropped none.
            assert st["dropped"] == {}, st["dropped"]
            # Unicast: a bystander in the VRRP group hears nothing in 10 advert intervals.
            heard = topo.exec(c, [sys.executable, "-c", LISTEN, str(10 * INTERVAL)]).stdout
            assert int(heard) == 0

            cb.crash()
            wait_for(lambda: ns_has_addr(b, VIP), 10, what="keepalived to take the VIP")
            assert ns_has_addr(a, VIP)  # the crash left it behind

            cb.start()
            cb.wait_running()
            wait_for(lambda: holders([a, b], VIP) == [a], 30, what="preemption back to clusterbus")
            assert "removed stale VIP" in cb.log_text()
            for _ in range(5):
                assert holders([a, b], VIP) == [a]
                subprocess.run(["sleep", str(2 * INTERVAL)], check=True)
        except BaseException:
            print(f"--- clusterbus ---\n{cb.log_tail()}\n--- keepalived ---\n{ka.log_tail()}")
            raise
        finally:
            cb.crash()
            ka.crash()
