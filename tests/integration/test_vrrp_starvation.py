"""The speaker is never starved by the rest of the daemon (issue: split brain from a flood,
split brain from a slow plugin).

Two speakers on one link, A at priority 150 (the master) and B at 100, adverts every
0.2 s. A's daemon is then made busy in two ways, one per test:

- a flood: 200,000 membership reports pushed into A's ingest socket as fast as ZeroMQ
  takes them (what ``clusterbus emit --via zmq`` sends, pre-encoded);
- a plugin on A that blocks 3 s in each hook it implements (events, node hooks,
  ``vrrp.transition``, the ``prepare_master`` veto), with a few reports to call them.

Protocol facts checked, not speeds: B never holds the VIP (``ip monitor`` on B, from
before B starts to the end), and seen from B the adverts from A never leave a gap of
more than 3 advert intervals (what B's Master_Down_Interval allows, less its Skew_Time),
measured with kernel receive timestamps.

With ``CLUSTERBUS_VRRP_ISOLATION=0`` (the speaker on the daemon's loop, as before it had
its own thread) both tests fail: B takes the VIP while A still holds it.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path

import pytest
from keepalived import VrrpInstance, ns_has_addr, wait_for
from netns import Topology
from speaker import AddrMonitor, AdvertSniffer, Speaker, advert_gaps, held_intervals, ingest_flood

pytestmark = [pytest.mark.root]

VIP = "10.77.0.100"
A_ADDR = "10.77.0.1"
INTERVAL = 0.2
FLOOD = 200_000

SLOW_PLUGIN = '''
import os, time
import clusterbus

BLOCK = 3.0


def block(hook):
    with open(os.environ["SLOW_PLUGIN_LOG"], "a") as f:
        f.write(f"{time.time():.6f} {hook}\\n")
    time.sleep(BLOCK)


class Slow:
    @clusterbus.hookimpl
    def clusterbus_event(self, event, cluster):
        block("event")

    @clusterbus.hookimpl
    def clusterbus_node_down(self, event, cluster):
        block("node_down")

    @clusterbus.hookimpl
    def clusterbus_node_up(self, event, cluster):
        block("node_up")

    @clusterbus.hookimpl
    def clusterbus_vrrp_transition(self, event, cluster):
        block("vrrp_transition")

    @clusterbus.hookimpl
    def clusterbus_vrrp_prepare_master(self, instance, vrid, cluster):
        block("vrrp_prepare_master")
        return None


plugin = Slow()
'''


def install_plugin(site: Path) -> str:
    site.mkdir()
    (site / "slow_plugin.py").write_text(SLOW_PLUGIN)
    info = site / "slow_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slow-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clusterbus]\nslow = slow_plugin:plugin\n")
    return os.pathsep.join(filter(None, (str(site), os.environ.get("PYTHONPATH"))))


class Pair:
    """A (150, the master, bus on) and B (100) with B's observers, started in that order:
    A holds the VIP before B exists, so B never has a reason to hold it."""

    def __init__(self, topo: Topology, tmp: Path, env: dict[str, str] | None = None,
                 log_level: str = "info") -> None:
        self.a = topo.host("a", f"{A_ADDR}/24")
        self.b = topo.host("b", "10.77.0.2/24")
        common = dict(vrid=77, advert_int=INTERVAL, version=3, vips=(f"{VIP}/24",))
        self.sa = Speaker(self.a, tmp, [VrrpInstance(priority=150, **common)], node=1,
                          bus=True, env=env, log_level=log_level)
        self.sb = Speaker(self.b, tmp, [VrrpInstance(priority=100, **common)], node=2)
        self.sniffer = AdvertSniffer(self.b, tmp / "adverts-b.txt")
        self.monitor = AddrMonitor(topo, self.b, tmp / "mon-b.txt", VIP)

    def start(self) -> None:
        self.sa.start()
        def master() -> bool:
            if not self.sa.running():
                raise RuntimeError(f"A exited: {self.sa.log_tail()}")
            return ns_has_addr(self.a, VIP)
        wait_for(master, 30, what="A as MASTER")
        self.sb.start()
        self.sb.wait_running()

    def check(self, start: float, end: float) -> None:
        """B never held the VIP; A's adverts, seen from B, never paused for more than
        3 advert intervals over [start, end] (wall clock)."""
        held = held_intervals(self.monitor.stop(), datetime.now())
        assert held == [], f"B held {VIP}: {held}"
        assert not ns_has_addr(self.b, VIP)
        times = [t for t, _, prio in self.sniffer.adverts(A_ADDR) if prio > 0]
        gaps = advert_gaps(times, start, end)
        assert len(times) > (end - start) / INTERVAL / 2, "A's adverts were heard"
        assert max(gaps) <= 3 * INTERVAL, (
            f"A's adverts paused {max(gaps):.3f} s (> 3 x {INTERVAL} s); "
            f"{sum(g > 1.5 * INTERVAL for g in gaps)} gaps over 1.5 intervals")

    def close(self) -> None:
        self.sa.crash()
        self.sb.crash()
        self.sniffer.close()
        self.monitor.stop()

    def logs(self) -> str:
        return f"--- A ---\n{self.sa.log_tail()}\n--- B ---\n{self.sb.log_tail()}"


@pytest.mark.timeout(900)
def test_ingest_flood_never_delays_adverts(tmp_path: Path) -> None:
    with Topology() as topo:
        # A logs at WARNING: an INFO line per report would make the flood last minutes
        # (the flood is about the loop being busy, not about the log)
        pair = Pair(topo, tmp_path, log_level="warning")
        try:
            pair.start()
            start = time.time()
            flood = ingest_flood(pair.sa, FLOOD, background=True)
            out, err = flood.communicate(timeout=600)
            print(f"flood: {out.strip()} (reports, seconds)")
            assert flood.returncode == 0, err
            # The daemon works through its backlog (STATUS is served by the same loop as
            # ingest, so it may not answer meanwhile) until its ingest count stops moving.
            # (Not == FLOOD: about 500 of 200,000 reports never show in ingest_received,
            # a bus matter outside this test.)
            seen: list[int] = []
            def settled() -> dict | None:
                p = pair.sa.cli("status", "--json", check=False)
                if p.returncode != 0:
                    return None
                st = json.loads(p.stdout)
                bus = st["services"]["bus"]["counters"]
                seen.append(max(bus.get("ingest_received", 0), bus.get("ingest.received", 0)))
                return st if len(seen) > 2 and seen[-1] == seen[-3] else None
            st = wait_for(settled, 600, interval=1, what="A's daemon to read the flood")
            assert seen[-1] >= 0.99 * FLOOD, seen
            end = time.time()
            vrrp = st["services"]["vrrp"]["instances"][0]
            assert vrrp["state"] == "MASTER" and vrrp["holding"] == [VIP]
            assert end - start > 10 * INTERVAL  # the flood did keep the daemon busy
            pair.check(start, end)
        except BaseException:
            print(pair.logs())
            raise
        finally:
            pair.close()


def test_plugin_blocking_in_hooks_never_delays_adverts(tmp_path: Path) -> None:
    calls = tmp_path / "slow-calls.txt"
    env = {"PYTHONPATH": install_plugin(tmp_path / "site"), "SLOW_PLUGIN_LOG": str(calls)}
    with Topology() as topo:
        pair = Pair(topo, tmp_path, env=env)
        try:
            pair.start()
            start = time.time()
            # Each report calls two blocking hooks (node_down and event): 6 s each, after
            # A's own vrrp.transition and vip.acquired events (9 s).
            for node in range(1, 4):
                pair.sa.cli("emit", "node-down", str(node), "--via", "zmq")
            end = start + 20
            time.sleep(max(0.0, end - time.time()))
            assert ns_has_addr(pair.a, VIP)
            blocked = [float(line.split()[0]) for line in calls.read_text().splitlines()]
            # the daemon's loop really was held: a 3-s hook started every 3 s or so
            assert sum(start <= t <= end for t in blocked) >= 5, blocked
            pair.check(start, end)
        except BaseException:
            print(pair.logs())
            raise
        finally:
            pair.close()
