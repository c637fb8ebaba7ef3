"""contrib/systemd: the unit passes systemd-analyze verify, is hardened as documented, and
the example configuration is valid."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "systemd" / "clusterbus.service"
EXAMPLE = ROOT / "contrib" / "systemd" / "clusterbus.toml"
CLUSTERBUS = str(Path(sys.executable).with_name("clusterbus"))


def _directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_is_type_notify_with_watchdog_reload_and_restart():
    d = _directives()
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] and d["Restart"] == ["on-failure"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["ExecStart"][0].endswith("clusterbus run -c /etc/clusterbus/clusterbus.toml")
    assert d["RuntimeDirectory"] == ["clusterbus"] and d["StateDirectory"] == ["clusterbus"]


def test_unit_is_hardened_to_the_capabilities_the_daemon_uses():
    d = _directives()
    caps = {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(d["CapabilityBoundingSet"][0].split()) == caps
    assert set(d["AmbientCapabilities"][0].split()) == caps
    assert d["ProtectSystem"] == ["strict"] and d["ProtectHome"] == ["yes"]
    assert d["PrivateTmp"] == ["yes"] and d["NoNewPrivileges"] == ["yes"]
    assert {"/run/clusterbus", "/var/lib/clusterbus"} <= set(d["ReadWritePaths"][0].split())
    assert set(d["RestrictAddressFamilies"][0].split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}


def test_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    if not Path(CLUSTERBUS).exists():
        pytest.skip(f"{CLUSTERBUS} is not installed (pip install -e .)")
    # verify checks that ExecStart's binary exists: point it at this venv's
    unit = tmp_path / "clusterbus.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/clusterbus", CLUSTERBUS))
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    # unknown or misspelt keys are only warnings: none is allowed
    assert str(unit) not in p.stdout + p.stderr, p.stdout + p.stderr


def test_example_configuration_is_valid():
    # check-config also checks this host, and /run/clusterbus (the unit's RuntimeDirectory,
    # where the example puts keepalived's FIFO) exists only while the unit runs: the file
    # itself is checked here, the host by the daemon when systemd starts it
    from clusterbus.config import load_config

    cfg = load_config(str(EXAMPLE))
    assert cfg["keepalived"]["notify_fifo"] == "/run/clusterbus/keepalived.fifo"
    assert cfg["bus"]["ingest"].startswith("ipc:///run/clusterbus/")
