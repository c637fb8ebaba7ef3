"""Planned handoff through a configuration reload: clusterbus (150) is MASTER against a real
keepalived (100); ``clusterbus reload`` with priority 50 makes it step down at once with a
priority-0 advert, keepalived takes the VIP, and exactly one namespace holds it. A reload
that also changes what only a restart can apply (the VRID) applies the priority and reports
the rest in ``clusterbus status``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from keepalived import Keepalived, VrrpInstance, holders, wait_for
from netns import Topology
from speaker import Speaker

pytestmark = [pytest.mark.root, pytest.mark.keepalived]

VIP = "10.77.0.100"
INTERVAL = 0.1


def test_reload_priority_drop_hands_over_to_keepalived(tmp_path: Path) -> None:
    with Topology() as topo:
        a = topo.host("a", "10.77.0.1/24")
        b = topo.host("b", "10.77.0.2/24")
        common = dict(vrid=77, advert_int=INTERVAL, version=3, vips=(f"{VIP}/24",))
        cb = Speaker(a, tmp_path, [VrrpInstance(priority=150, **common)], bus=True)
        ka = Keepalived(b, tmp_path, [VrrpInstance(priority=100, **common)])
        try:
            # keepalived first: clusterbus hears its adverts (priority 100) while listening,
            # then preempts it.
            ka.start()
            ka.wait_vrrp_child()
            wait_for(lambda: holders([a, b], VIP) == [b], 30, what="keepalived as MASTER")
            cb.start()
            cb.wait_running()
            wait_for(lambda: holders([a, b], VIP) == [a], 30, what="clusterbus (150) as MASTER")
            assert cb.instance_status()["state"] == "MASTER"

            cb.reload(priority=50)
            wait_for(lambda: holders([a, b], VIP) == [b], 10, what="keepalived to take the VIP")
            wait_for(lambda: "MASTER -> BACKUP (priority_changed" in cb.log_text(), 5,
                     what="the step-down in the log")
            st = cb.instance_status()
            assert st["state"] == "BACKUP" and st["priority"] == 50
            assert st["master_seen"] == "10.77.0.2" and st["restart_needed"] == []
            # Converged: exactly one holder for several advert intervals.
            for _ in range(5):
                assert holders([a, b], VIP) == [b]
                subprocess.run(["sleep", str(INTERVAL * 2)], check=True)

            # Back to 150 with a new VRID in the same edit: the priority applies (clusterbus
            # preempts keepalived again), the VRID waits for a restart and says so.
            cb.reload(priority=150, vrid=78)
            wait_for(lambda: holders([a, b], VIP) == [a], 10, what="clusterbus to preempt back")
            st = cb.instance_status()
            assert st["state"] == "MASTER" and st["priority"] == 150 and st["vrid"] == 77
            assert st["restart_needed"] == ["vrid"]
            assert "restart the daemon to apply it" in cb.log_text()
            assert cb.status()["services"]["vrrp"]["counters"]["reloads"] == 2
        except BaseException:
            print(f"--- clusterbus ---\n{cb.log_tail()}\n--- keepalived ---\n{ka.log_tail()}")
            raise
        finally:
            cb.crash()
            ka.crash()
