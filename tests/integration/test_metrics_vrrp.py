"""Metrics and readiness of two real clusterbus VRRP speakers in network namespaces.

Each daemon serves its metrics on 127.0.0.1 inside its own namespace, scraped from inside
it; director a (priority 150) must show MASTER with the VIP, b (100) BACKUP without it.
Director a also talks to a stand-in systemd: READY=1 comes once its speaker runs.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from keepalived import VrrpInstance, holders, wait_for
from netns import Topology
from prometheus_client.parser import text_string_to_metric_families
from speaker import Speaker

pytestmark = pytest.mark.root

VIP = "10.77.0.100"
FETCH = ("import sys, urllib.request; "
         "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")


def scrape(ns: str, bound: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = subprocess.run([*Topology.prefix(ns), sys.executable, "-c", FETCH,
                           f"http://{bound}/metrics"], capture_output=True, text=True,
                          timeout=30, check=True).stdout
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def L(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_vrrp_state_transitions_and_vips_are_scraped(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))  # a path: reachable from any network namespace
    notify.settimeout(60)
    metrics = '[metrics]\nlisten = "127.0.0.1:0"\n'
    with Topology() as topo:
        a = topo.host("a", "10.77.0.1/24")
        b = topo.host("b", "10.77.0.2/24")
        common = dict(vrid=77, advert_int=0.1, version=3, vips=(f"{VIP}/24",))
        sa = Speaker(a, tmp_path, [VrrpInstance(priority=150, **common)], bus=True,
                     extra=metrics, env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        sb = Speaker(b, tmp_path, [VrrpInstance(priority=100, **common)], bus=True,
                     node=2, extra=metrics)
        try:
            sa.start()
            while True:  # bounded by the socket timeout
                msg = notify.recv(4096).decode()
                if "READY=1" in msg:
                    break
            # READY=1 only once the speaker runs its instance (and every endpoint answers)
            assert [i["name"] for i in sa.status()["services"]["vrrp"]["instances"]] == ["VI_1"]
            sb.start()
            sb.wait_running()
            wait_for(lambda: holders([a, b], VIP) == [a], 30, what="a (150) as MASTER")
            wait_for(lambda: sb.instance_status()["state"] == "BACKUP", 30, what="b BACKUP")

            ma = scrape(a, sa.status()["services"]["metrics"]["bound"])
            mb = scrape(b, sb.status()["services"]["metrics"]["bound"])
            inst = dict(vrrp_instance="VI_1", source="speaker")
            assert ma[("clusterbus_vrrp_state", L(**inst, state="MASTER"))] == 1
            assert ma[("clusterbus_vrrp_state", L(**inst, state="BACKUP"))] == 0
            assert mb[("clusterbus_vrrp_state", L(**inst, state="BACKUP"))] == 1
            assert ma[("clusterbus_vrrp_priority", L(**inst))] == 150
            assert ma[("clusterbus_vrrp_vips_held", L(vrrp_instance="VI_1"))] == 1
            assert mb[("clusterbus_vrrp_vips_held", L(vrrp_instance="VI_1"))] == 0
            assert ma[("clusterbus_vrrp_transitions_total", L(**inst, state="MASTER"))] >= 1
            assert ("clusterbus_vrrp_transitions_total", L(**inst, state="MASTER")) not in mb
            assert ma[("clusterbus_events_total", L(topic="vip.acquired"))] >= 1
            assert ma[("clusterbus_vrrp_sent_total", ())] > 0
            assert mb[("clusterbus_vrrp_received_total", ())] > 0
            assert ma[("clusterbus_vrrp_advert_interval_seconds", L(vrrp_instance="VI_1"))] == 0.1
        except BaseException:
            print(f"--- a ---\n{sa.log_tail()}\n--- b ---\n{sb.log_tail()}")
            raise
        finally:
            sa.crash()
            sb.crash()
            notify.close()
