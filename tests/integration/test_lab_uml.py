"""``clusterbus lab`` end to end: each case boots the lab's own UML kernel (two directors
running the real daemon, three app nodes, six persistent clients) through the CLI, as a
user would, and reads the JSON object on the last line.

* failover with conn-sync: director 1 is killed and cut off, VIP1 moves, and no client is
  reset, changes real server or loses its session;
* the same with ``--no-sync``: director 2 has never heard of VIP1's connections and its
  stack resets them (this is what makes the first case able to fail);
* handoff (``clusterbus cvip drain 1``) with conn-sync: no client is reset;
* up / status / down: a lab left running in the background, then stopped by its PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from clusterbus.lab import runner, scenario

pytestmark = [pytest.mark.root, pytest.mark.uml, pytest.mark.timeout(1500)]

CLI = [sys.executable, "-c", "from clusterbus.cli import main; main()"]
VIP1_CLIENTS = sum(1 for _, _, v in scenario.CLIENTS if v == 1)


@pytest.fixture(autouse=True)
def _needs_lab() -> None:
    gone = runner.missing()
    if gone:
        pytest.skip(f"the lab needs {', '.join(r.package for r in gone)}")


def lab(*args: str) -> dict[str, Any]:
    p = subprocess.run([*CLI, "lab", *args, "--json"], capture_output=True, text=True,
                       timeout=runner.TIMEOUT + 120)
    assert p.returncode == 0, f"clusterbus lab {' '.join(args)} -> {p.returncode}:\n{p.stderr[-3000:]}"
    last = p.stdout.strip().splitlines()[-1]
    result: dict[str, Any] = json.loads(last)
    print(json.dumps(result, indent=1))
    return result


def _check_sync_mode(r: dict[str, Any]) -> None:
    # conn-sync ran (not the kernel's own sync daemon, not nothing), with the CVIP policy
    assert r["sync"] == "connsync" and r["connsync"] == "on", (r["sync"], r["connsync"])
    assert r["cvip"] == "on"
    # director 2 holds every VIP1 connection in its conn-sync table, relayed by director 1
    assert r["connsync_entries"] >= VIP1_CLIENTS, r["connsync_entries"]


def test_failover_with_sync_keeps_every_connection_and_server() -> None:
    r = lab("failover")
    _check_sync_mode(r)
    assert r["clients"] == len(scenario.CLIENTS)
    assert any("director 2: VI_1" in e["what"] and "-> MASTER" in e["what"]
               for e in r["timeline"]), r["timeline"]
    assert r["resets"] == 0, [c for c in r["per_client"] if c["resets"]]
    assert r["server_changed"] == 0
    assert r["session_lost"] == 0


def test_failover_without_sync_resets_the_moved_vips_clients() -> None:
    r = lab("--no-sync", "failover")
    assert r["sync"] == "off" and r["connsync"] == "off"
    assert r["clients"] == len(scenario.CLIENTS)
    assert r["resets"] > 0
    reset = {c["client"] for c in r["per_client"] if c["resets"]}
    vip1 = {name for name, _, v in scenario.CLIENTS if v == 1}
    assert reset == vip1, "exactly the clients of the VIP that moved are reset"
    assert r["session_lost"] == VIP1_CLIENTS


def test_handoff_with_sync_keeps_every_connection() -> None:
    r = lab("handoff")
    _check_sync_mode(r)
    # the CVIP policy moved VIP1 (director 2 claims it), then director 1 stepped down
    assert any(f"director 2: cvip {scenario.VIPS[1]}: owner 1 -> 2 (drain)" in e["what"]
               for e in r["timeline"]), r["timeline"]
    assert any("director 1: VI_1" in e["what"] and "-> BACKUP" in e["what"]
               for e in r["timeline"]), r["timeline"]
    assert r["resets"] == 0, [c for c in r["per_client"] if c["resets"]]
    assert r["server_changed"] == 0


def test_up_status_down() -> None:
    if runner.status()["up"]:
        pytest.skip("a lab is already up on this machine")
    try:
        st = lab("up")
        assert st["up"] is True and isinstance(st["pid"], int)
        assert st["vips"]["VIP1"]["directors"] == [1]
        assert st["vips"]["VIP2"]["directors"] == [2]
        assert all(c["server"] in scenario.APPS for c in st["clients"].values())
        again = lab("status")
        assert again["pid"] == st["pid"] and again["daemons"] == {"d1": True, "d2": True}
    finally:
        down = subprocess.run([*CLI, "lab", "down"], capture_output=True, text=True,
                              timeout=120)
    assert down.returncode == 0 and "lab stopped" in down.stdout, down.stdout + down.stderr
    assert not runner.uml.pid_alive(st["pid"])
    assert not os.path.exists(runner.LAB_DIR)
