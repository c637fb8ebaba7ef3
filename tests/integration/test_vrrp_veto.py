"""``clusterbus_vrrp_prepare_master`` through a real plugin: a third-party distribution on
PYTHONPATH (a dist-info with a ``clusterbus`` entry point, loaded like any installed plugin)
vetoes MASTER. clusterbus (150) faces two keepalived (100 and 50): keepalived 100 keeps the
VIP, clusterbus stays BACKUP and publishes each veto as a ``vrrp.transition`` with
``reason="vetoed"``, and no VIP event. The vetoes preempt a live master, so the vetoing node
must not send priority 0 (it never was master): keepalived 50 never takes over.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from keepalived import Keepalived, VrrpInstance, ns_has_addr, wait_for
from netns import Topology
from speaker import CLUSTERBUS, Speaker

pytestmark = [pytest.mark.root, pytest.mark.keepalived]

VIP = "10.77.0.100"
INTERVAL = 0.1

PLUGIN = '''
import clusterbus


class Maintenance:
    @clusterbus.hookimpl
    def clusterbus_vrrp_prepare_master(self, instance, vrid, cluster):
        return f"{instance}/{vrid} in maintenance"


plugin = Maintenance()
'''


def install_plugin(site: Path, module: str = "maintenance_plugin", source: str = PLUGIN,
                   entry: str = "maintenance") -> dict[str, str]:
    """``source`` as module ``module`` of a distribution in ``site`` whose ``clusterbus``
    entry point ``entry`` is its ``plugin``; :returns: the environment that finds it."""
    site.mkdir()
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    dist = module.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[clusterbus]\n{entry} = {module}:plugin\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, (str(site),
                                                        os.environ.get("PYTHONPATH"))))}


def test_prepare_master_veto_keeps_backup(tmp_path: Path) -> None:
    env = install_plugin(tmp_path / "site")
    with Topology() as topo:
        a = topo.host("a", "10.77.0.1/24")
        b = topo.host("b", "10.77.0.2/24")
        c = topo.host("c", "10.77.0.3/24")
        common = dict(vrid=77, advert_int=INTERVAL, version=3, vips=(f"{VIP}/24",))
        cb = Speaker(a, tmp_path, [VrrpInstance(priority=150, **common)], bus=True, env=env)
        k100 = Keepalived(b, tmp_path, [VrrpInstance(priority=100, **common)])
        k50 = Keepalived(c, tmp_path, [VrrpInstance(priority=50, **common)])
        events = None
        try:
            k100.start()
            k100.wait_vrrp_child()
            wait_for(lambda: ns_has_addr(b, VIP), 30, what="keepalived 100 as MASTER")
            k50.start()
            k50.wait_vrrp_child()
            cb.start()
            cb.wait_running()
            names = [p["name"] for p in cb.status()["plugins"]]
            assert "maintenance" in names, names
            # Every veto is published: three in a row, and nothing about VIPs.
            events = subprocess.run(
                [CLUSTERBUS, "events", "--json", "--filter", "vrrp.", "--filter", "vip.",
                 "--count", "3", "--timeout", "20", "-c", str(cb.conf)],
                capture_output=True, text=True, timeout=30)
            assert events.returncode == 0, events.stderr
            got = [json.loads(line) for line in events.stdout.splitlines()]
            assert len(got) == 3
            for e in got:
                assert e["topic"] == "vrrp.transition", e
                assert (e["reason"], e["new"], e["instance"]) == ("vetoed", "BACKUP", "VI_1"), e

            st = cb.instance_status()
            assert st["state"] == "BACKUP" and st["holding"] == []
            assert st["vetoed"] == "maintenance: VI_1/77 in maintenance"
            assert st["vetoes"] >= 3
            assert [ns for ns in (a, b, c) if ns_has_addr(ns, VIP)] == [b]
            time.sleep(5 * INTERVAL)
            assert [ns for ns in (a, b, c) if ns_has_addr(ns, VIP)] == [b]
            # The vetoing node never sent priority 0 (keepalived logs each one it receives),
            # so keepalived 50 never took over from keepalived 100.
            for k in (k100, k50):
                assert "received priority 0" not in k.logfile.read_text(errors="replace")
            assert "Entering MASTER STATE" not in k50.logfile.read_text(errors="replace")
        except BaseException:
            print(f"--- clusterbus ---\n{cb.log_tail()}\n--- keepalived 100 ---\n"
                  f"{k100.log_tail()}\n--- keepalived 50 ---\n{k50.log_tail()}")
            if events is not None:
                print(f"--- events ---\n{events.stdout}\n{events.stderr}")
            raise
        finally:
            cb.crash()
            k100.crash()
            k50.crash()


SLOW_PLUGIN = '''
import asyncio

import clusterbus


class SlowVeto:
    """A barrier that answers a veto after 0.5 s: four advert intervals of 0.1 s."""

    @clusterbus.hookimpl
    def clusterbus_vrrp_prepare_master(self, instance, vrid, cluster):
        async def barrier():
            await asyncio.sleep(0.5)
            return "still syncing"
        return barrier()


plugin = SlowVeto()
'''


@pytest.mark.parametrize("prepare_timeout", [2.0, 0.0], ids=["waits", "default"])
def test_prepare_timeout_lets_a_slow_barrier_veto(tmp_path: Path,
                                                  prepare_timeout: float) -> None:
    """``prepare_timeout`` is how long a takeover waits for the plugins' answer. A barrier
    that vetoes after 0.5 s keeps clusterbus (150) BACKUP behind keepalived (100) when the
    instance waits 2 s; with the default (one advert interval, 0.1 s) the deadline passes
    first: clusterbus takes the VIP, and the missed answer is logged and counted."""
    env = install_plugin(tmp_path / "site", "slow_veto", SLOW_PLUGIN, "slow")
    with Topology() as topo:
        a = topo.host("a", "10.77.0.1/24")
        b = topo.host("b", "10.77.0.2/24")
        common = dict(vrid=77, advert_int=INTERVAL, version=3, vips=(f"{VIP}/24",))
        cb = Speaker(a, tmp_path, [VrrpInstance(priority=150, **common)], bus=True,
                     prepare_timeout=prepare_timeout, env=env)
        k100 = Keepalived(b, tmp_path, [VrrpInstance(priority=100, **common)])
        try:
            k100.start()
            k100.wait_vrrp_child()
            wait_for(lambda: ns_has_addr(b, VIP), 30, what="keepalived 100 as MASTER")
            cb.start()
            cb.wait_running()
            if prepare_timeout:
                wait_for(lambda: cb.instance_status()["vetoes"] >= 2, 30,
                         what="two vetoes answered within prepare_timeout")
                st = cb.instance_status()
                assert st["state"] == "BACKUP" and st["holding"] == [], st
                assert st["vetoed"] == "slow: still syncing", st
                assert [ns for ns in (a, b) if ns_has_addr(ns, VIP)] == [b]
            else:
                wait_for(lambda: ns_has_addr(a, VIP), 30, what="clusterbus as MASTER")
                st = cb.instance_status()
                assert st["state"] == "MASTER", st
                # the daemon gave up on the barrier at the router's deadline (0.1 s)
                log = cb.logfile.read_text(errors="replace")
                assert "plugin slow: clusterbus_vrrp_prepare_master did not finish" in log
                late = {p["name"]: p["late"] for p in cb.status()["plugins"]}
                assert late["slow"] >= 1, late
        except BaseException:
            print(f"--- clusterbus ---\n{cb.log_tail()}\n--- keepalived 100 ---\n"
                  f"{k100.log_tail()}")
            raise
        finally:
            cb.crash()
            k100.crash()
