"""A reload (SIGHUP) hands the IPVS applier a new [ipvs]: applied as a diff, on a real kernel.

Uses the reconcile tests' harness: a real engine and plugin host whose applier runs on
the loop; outcomes are read back with ``ipvsadm -Ln``.
"""

from __future__ import annotations

import copy
import subprocess

from ipvsadm_view import ipvsadm, kernel_view
from kt_ipvs_reconcile import IN_SYNC, NODES, VIP, Harness, config, own_netns, until  # noqa: F401

from clusterbus.config import parse_config
from clusterbus.events import VrrpTransition


def test_reload_applies_the_new_table_as_a_diff() -> None:
    new = copy.deepcopy(config(reconcile_interval=0))
    vs80, vs443, _vs53 = new["ipvs"]["virtual_server"]
    vs80["scheduler"] = "wlc"
    vs80["real_server"][0]["weight"] = 5
    new["ipvs"]["virtual_server"] = [vs80, vs443]  # :53 goes

    async def scenario(h: Harness) -> None:
        result = h.host.reload(parse_config(new, file="kt.toml"), h.engine.cluster)
        assert result["ipvs"] is None
        ev = await h.applied("reload")
        # :53 removed (its real server goes with it); :80's scheduler and one weight changed
        assert (ev.added, ev.removed, ev.changed) == (0, 1, 2)
        assert kernel_view() == {
            f"TCP {VIP}:80 wlc": {f"{NODES[1]}:80": "Masq 5 0 0", f"{NODES[2]}:80": "Masq 1 0 0"},
            f"TCP {VIP}:443 wlc": {f"{NODES[2]}:443": "Masq 3 0 0"},
        }
        assert h.applier.counters["reloads"] == 1

    Harness(config(reconcile_interval=0)).run(scenario)


def test_a_bad_reload_is_refused_and_changes_nothing() -> None:
    bad = copy.deepcopy(config(reconcile_interval=0))
    bad["ipvs"]["virtual_server"][0]["scheduler"] = "nosuch"

    async def scenario(h: Harness) -> None:
        result = h.host.reload(parse_config(bad, file="kt.toml"), h.engine.cluster)
        assert result["ipvs"] is not None and "ipvs.virtual_server[0].scheduler" in result["ipvs"]
        assert h.applier.counters["reloads"] == 0
        assert kernel_view() == IN_SYNC

    Harness(config(reconcile_interval=0)).run(scenario)


def test_reload_restarts_the_sync_daemon_with_new_settings_and_stops_it_when_removed() -> None:
    for cmd in (["ip", "link", "add", "sync0", "type", "dummy"],
                ["ip", "addr", "add", "10.78.9.1/24", "dev", "sync0"],
                ["ip", "link", "set", "sync0", "up"]):
        subprocess.run(cmd, check=True)
    start = config(reconcile_interval=0, sync_daemon={"interface": "sync0", "syncid": 7})
    changed = copy.deepcopy(start)
    changed["ipvs"]["sync_daemon"]["syncid"] = 8
    removed = copy.deepcopy(start)
    del removed["ipvs"]["sync_daemon"]

    def daemons() -> str:
        return ipvsadm("-L", "--daemon")

    async def scenario(h: Harness) -> None:
        h.engine.publish(VrrpTransition, instance="VI_1", new="MASTER", reason="test")
        await until(lambda: "master sync daemon (mcast=sync0, syncid=7" in daemons())
        assert h.host.reload(parse_config(changed, file="kt.toml"), h.engine.cluster)["ipvs"] is None
        await until(lambda: "master sync daemon (mcast=sync0, syncid=8" in daemons())
        assert "syncid=7" not in daemons() and "backup" not in daemons()
        assert h.host.reload(parse_config(removed, file="kt.toml"), h.engine.cluster)["ipvs"] is None
        await until(lambda: daemons().strip() == "")
        assert h.applier.status()["sync_daemon"] == ""
        assert h.applier.counters["sync_daemon_failures"] == 0

    Harness(start).run(scenario)
