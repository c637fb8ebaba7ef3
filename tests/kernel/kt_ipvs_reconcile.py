"""The applier service on a real kernel (inside UML): periodic drift checks per ``drift``,
event-driven reconciles against the cache, and cache repair after a refused operation.

Drift is made by hand with ``ipvsadm``, as an operator would; every outcome is read back
with ``ipvsadm -Ln``. The applier runs through the real plugin host and engine.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from ipvsadm_view import ipvsadm, kernel_view

from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.events import Event, IpvsApplied
from clusterbus.pluginhost import PluginHost
from clusterbus.plugins import ipvs
from clusterbus.plugins.ipvs.applier import Applier
from clusterbus.view import NodeReport, NodeState

VIP = "10.78.0.100"
NODES = {1: "10.78.0.11", 2: "10.78.0.12"}


def config(**top: Any) -> dict[str, Any]:
    return {
        "nodemap": {"nodes": {str(n): [a] for n, a in NODES.items()}},
        "ipvs": {
            **top,
            "virtual_server": [
                {"address": f"{VIP}:80", "scheduler": "rr",
                 "real_server": [{"node": 1, "port": 80}, {"node": 2, "port": 80}]},
                {"address": f"{VIP}:443", "scheduler": "wlc",
                 "real_server": [{"node": 2, "port": 443, "weight": 3}]},
                {"address": f"{VIP}:53", "protocol": "udp", "scheduler": "rr",
                 "real_server": [{"address": "10.78.0.21:53"}]},
            ],
        },
    }


IN_SYNC = {
    f"TCP {VIP}:80 rr": {f"{NODES[1]}:80": "Masq 1 0 0", f"{NODES[2]}:80": "Masq 1 0 0"},
    f"TCP {VIP}:443 wlc": {f"{NODES[2]}:443": "Masq 3 0 0"},
    f"UDP {VIP}:53 rr": {"10.78.0.21:53": "Masq 1 0 0"},
}


@pytest.fixture(autouse=True)
def own_netns() -> None:
    # IPVS tables are per network namespace: each test starts with an empty one.
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.unshare(0x40000000) == 0  # CLONE_NEWNET
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    assert ipvsadm("-Sn") == ""


class Harness:
    """A real engine + plugin host (nodemap, ipvs) whose applier runs on this loop."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.host = PluginHost(enable=["nodemap", "ipvs"])
        self.host.load_entrypoints()
        self.engine = Engine(origin=1, plugins=self.host)
        self.host.configure(parse_config(data, file="kt.toml"), self.engine.cluster)
        self.events: list[Event] = []
        self.engine.sinks.append(self.events.append)
        self.host.call_historic("clusterbus_startup", cluster=self.engine.cluster)
        [services] = [s for _, s in self.host.call_each("clusterbus_services",
                                                         cluster=self.engine.cluster) if s]
        self.service = services[0]
        applier = ipvs.plugin.applier(self.engine.cluster)
        assert applier is not None
        self.applier: Applier = applier

    async def applied(self, reason: str, timeout: float = 30) -> IpvsApplied:
        """The next ``ipvs.applied`` with this reason (bounded wait)."""
        async with asyncio.timeout(timeout):
            while True:
                for e in self.events:
                    if isinstance(e, IpvsApplied) and e.reason == reason:
                        self.events.remove(e)
                        return e
                await asyncio.sleep(0.05)

    def run(self, scenario: Callable[[Harness], Awaitable[None]]) -> None:
        async def main() -> None:
            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(self.service())
                try:
                    first = await self.applied("startup")
                    assert (first.added, first.removed, first.changed) == (7, 0, 0)
                    assert kernel_view() == IN_SYNC
                    await scenario(self)
                finally:
                    task.cancel()

        asyncio.run(main())


async def until(pred: Callable[[], bool], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.05)


def test_periodic_reconcile_corrects_hand_made_drift() -> None:
    async def scenario(h: Harness) -> None:
        ipvsadm("-e", "-t", f"{VIP}:80", "-r", f"{NODES[1]}:80", "-m", "-w", "7")
        ipvsadm("-d", "-u", f"{VIP}:53", "-r", "10.78.0.21:53")
        ipvsadm("-A", "-t", "10.78.0.200:22", "-s", "rr")  # not configured: pruned
        # A check may fall between two of the ipvsadm commands: add up the corrections.
        total = [0, 0, 0]
        while total != [1, 1, 1]:
            ev = await h.applied("reconcile")
            total = [total[0] + ev.added, total[1] + ev.removed, total[2] + ev.changed]
            assert total[0] <= 1 and total[1] <= 1 and total[2] <= 1, total
        assert kernel_view() == IN_SYNC
        assert h.applier.counters["drift_reported"] == 0
        # the next periodic check finds nothing to do: no event, same table
        n = h.applier.counters["reconciles"]
        await until(lambda: h.applier.counters["reconciles"] >= n + 1)
        assert h.applier.last["differences"] == [] and kernel_view() == IN_SYNC

    Harness(config(reconcile_interval=0.5, drift="correct")).run(scenario)


def test_drift_report_logs_and_counts_but_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="clusterbus.plugins.ipvs")

    async def scenario(h: Harness) -> None:
        ipvsadm("-e", "-t", f"{VIP}:80", "-r", f"{NODES[1]}:80", "-m", "-w", "7")
        await until(lambda: h.applier.counters["drift_reported"] >= 1)
        last = h.applier.last
        assert last["reason"] == "reconcile" and last["corrected"] is False
        assert last["differences"] == [f"set-dest tcp {VIP}:80 -> {NODES[1]}:80 nat weight 1"]
        assert any("drift" in r.getMessage() and "not corrected" in r.getMessage()
                   and f"{NODES[1]}:80" in r.getMessage() for r in caplog.records)
        # a second check reports again and still changes nothing
        await until(lambda: h.applier.counters["drift_reported"] >= 2)
        assert kernel_view()[f"TCP {VIP}:80 rr"][f"{NODES[1]}:80"] == "Masq 7 0 0"
        assert not [e for e in h.events if isinstance(e, IpvsApplied)]
        assert h.applier.status()["counters"]["drift_reported"] >= 2

    Harness(config(reconcile_interval=0.5, drift="report")).run(scenario)


def test_node_events_touch_only_their_services() -> None:
    async def scenario(h: Harness) -> None:
        h.engine.report(NodeReport(state=NodeState.UP, node=2, addrs=(NODES[2],), reason="t"))
        h.engine.report(NodeReport(state=NodeState.DOWN, node=2, reason="t"))
        ev = await h.applied("node.down")
        assert (ev.added, ev.removed, ev.changed) == (0, 0, 2)  # :80 and :443 quiesced
        view = kernel_view()
        assert view[f"TCP {VIP}:80 rr"][f"{NODES[2]}:80"] == "Masq 0 0 0"
        assert view[f"TCP {VIP}:443 wlc"][f"{NODES[2]}:443"] == "Masq 0 0 0"
        assert view[f"TCP {VIP}:80 rr"][f"{NODES[1]}:80"] == "Masq 1 0 0"
        # no dump for the event: only the start-up reconcile read the whole table
        assert h.applier.counters["reconciles"] == 1 and h.applier.counters["targeted"] >= 1
        h.engine.report(NodeReport(state=NodeState.UP, node=2, addrs=(NODES[2],), reason="t"))
        ev = await h.applied("node.up")
        assert ev.changed == 2 and kernel_view() == IN_SYNC

    Harness(config(reconcile_interval=0)).run(scenario)


def test_refused_operation_invalidates_the_cache_and_the_next_reconcile_repairs() -> None:
    async def scenario(h: Harness) -> None:
        # Behind the applier's back the :443 service goes: its cache entry is now wrong.
        ipvsadm("-D", "-t", f"{VIP}:443")
        h.engine.report(NodeReport(state=NodeState.DOWN, node=2, reason="t"))
        await h.applied("node.down")
        # set-dest on :443 was refused (no such service): counted, marked stale
        assert h.applier.counters["kernel_errors"] == 1
        assert any("443" in e and "No such process" in e for e in h.applier.last["errors"])
        assert [str(k) for k in h.applier.stale] == [f"tcp {VIP}:443"]
        assert kernel_view()[f"TCP {VIP}:80 rr"][f"{NODES[2]}:80"] == "Masq 0 0 0"
        # the next event touching it reads :443 back from the kernel and re-creates it
        h.engine.report(NodeReport(state=NodeState.UP, node=2, addrs=(NODES[2],), reason="t"))
        ev = await h.applied("node.up")
        assert (ev.added, ev.changed) == (2, 1)  # :443 + its real server; :80 weight back
        assert h.applier.stale == set() and h.applier.counters["kernel_errors"] == 1
        assert kernel_view() == IN_SYNC
        assert h.applier.counters["reconciles"] == 1  # repaired without a full dump

    Harness(config(reconcile_interval=0)).run(scenario)


def test_unknown_outcome_drops_the_cache_and_next_event_dumps() -> None:
    async def scenario(h: Harness) -> None:
        kernel = h.applier._kernel
        assert kernel is not None and h.applier.known is not None
        kernel.sock.close()  # every later send fails: the outcome of an apply is unknown
        h.engine.report(NodeReport(state=NodeState.DOWN, node=1, reason="t"))
        await until(lambda: h.applier.counters["kernel_failures"] == 1)
        assert h.applier.known is None  # nothing trusted any more: next time, a full dump

    Harness(config(reconcile_interval=0)).run(scenario)
