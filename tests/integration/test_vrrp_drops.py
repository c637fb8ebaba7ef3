"""Bad adverts injected from another namespace only change the speaker's drop counters.

A raw protocol-112 socket in a third namespace sends, to 224.0.0.18, adverts for the
speaker's VRID at priority 254 (above the speaker's 100, so one that got through would make
the MASTER step down), each broken in one way: TTL 64, a wrong VRID, a bad checksum,
version 2 against a v3 instance, and truncated. ``clusterbus status --json`` must show each
reason's counter rise by what was sent, and the instance still MASTER holding the VIP.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from keepalived import VrrpInstance, ns_has_addr, wait_for
from netns import Topology
from speaker import Speaker

pytestmark = [pytest.mark.root]

VIP = "10.77.0.100"
SENDS = 3

# Runs in the injector's namespace: argv = source address, then JSON list of [kind, ...].
INJECT = r"""
import json, socket, struct, sys
from clusterbus.vrrp.packet import Advertisement, MULTICAST_V4

src = sys.argv[1]
good = dict(version=3, vrid=77, priority=254, addresses=("10.77.0.100",), family="inet",
            max_adver_int_cs=10)

def v3(**kw):
    return Advertisement(**{**good, **kw}).to_bytes(src=src, dst=MULTICAST_V4)

packets = {
    "ttl": (v3(), 64),
    "vrid": (v3(vrid=78), 255),
    "checksum": (v3()[:6] + bytes([v3()[6] ^ 0xFF]) + v3()[7:], 255),
    "version": (Advertisement(version=2, vrid=77, priority=254, addresses=("10.77.0.100",),
                              advert_int_s=1).to_bytes(src=src, dst=MULTICAST_V4), 255),
    "truncated": (v3()[:6], 255),
}
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
ifindex = socket.if_nametoindex("eth0")
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
             struct.pack("4s4si", socket.inet_aton(MULTICAST_V4), socket.inet_aton(src), ifindex))
for kind, n in json.loads(sys.argv[2]):
    data, ttl = packets[kind]
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    for _ in range(n):
        s.sendto(data, (MULTICAST_V4, 0))
"""

#: injected kind -> where the speaker counts it: ("router", reason) or ("speaker", counter)
WHERE = {
    "ttl": ("router", "ttl"),
    "vrid": ("speaker", "dropped.unknown_vrid"),
    "checksum": ("router", "checksum"),
    "version": ("router", "version_mismatch"),
    "truncated": ("router", "malformed"),
}


def counts(sp: Speaker) -> dict[str, int]:
    st = sp.status()["services"]["vrrp"]
    inst = st["instances"][0]
    return {kind: (inst["dropped"] if where == "router" else st["counters"]).get(key, 0)
            for kind, (where, key) in WHERE.items()}


def test_bad_adverts_change_only_counters(tmp_path: Path) -> None:
    with Topology() as topo:
        a = topo.host("a", "10.77.0.1/24")
        x = topo.host("x", "10.77.0.9/24")
        sp = Speaker(a, tmp_path, [VrrpInstance(priority=100, advert_int=0.1, version=3,
                                                vips=(f"{VIP}/24",))], bus=True)
        try:
            sp.start()
            sp.wait_running()
            wait_for(lambda: ns_has_addr(a, VIP), 15, what="the speaker as MASTER")
            before = counts(sp)
            assert sp.instance_status()["state"] == "MASTER"

            plan = [[kind, SENDS] for kind in WHERE]
            topo.exec(x, [sys.executable, "-c", INJECT, "10.77.0.9", json.dumps(plan)])

            want = {kind: before[kind] + SENDS for kind in WHERE}
            wait_for(lambda: counts(sp) == want, 10, interval=0.1,
                     what=f"drop counters {want}")
            st = sp.instance_status()
            assert st["state"] == "MASTER" and st["master_seen"] == "10.77.0.1"
            assert st["holding"] == [VIP] and ns_has_addr(a, VIP)
            assert "higher_priority_seen" not in sp.log_text()
            # The terminal view shows the instance and its drops by reason.
            text = sp.cli("status").stdout
            assert "VI_1" in text and "MASTER" in text
            assert f"ttl={want['ttl']}" in text and f"checksum={want['checksum']}" in text
        except BaseException:
            print(f"--- clusterbus ---\n{sp.log_tail()}")
            raise
        finally:
            sp.crash()
