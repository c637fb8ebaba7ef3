"""``clusterbus ipvs apply`` / ``show`` on a real kernel (inside UML)."""

from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path

from click.testing import CliRunner
from ipvsadm_view import ipvsadm

from clusterbus.plugins.ipvs.cli import ipvs

CONFIG = """
[nodemap.nodes]
3 = ["10.78.0.13"]

[[ipvs.virtual_server]]
address = "10.78.0.100:80"
scheduler = "rr"
  [[ipvs.virtual_server.real_server]]
  node = 3
  port = 80
"""


def test_apply_then_show(tmp_path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.unshare(0x40000000) == 0
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    cfg = tmp_path / "cb.toml"
    cfg.write_text(CONFIG)
    runner = CliRunner()
    r = runner.invoke(ipvs, ["apply", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "2 added, 0 removed, 0 changed" in r.output
    assert "-a -t 10.78.0.100:80 -r 10.78.0.13:80 -m -w 1" in ipvsadm("-Sn")
    r = runner.invoke(ipvs, ["apply", "-c", str(cfg)])
    assert "0 operation(s)" in r.output  # a diff, not a reload
    ipvsadm("-e", "-t", "10.78.0.100:80", "-r", "10.78.0.13:80", "-m", "-w", "4")
    r = runner.invoke(ipvs, ["show", "-c", str(cfg), "--json"])
    data = json.loads(r.output)
    assert data["in_sync"] is False and data["services"][0]["mark"] == "~"
    r = runner.invoke(ipvs, ["show", "-c", str(cfg)])
    assert "~ -> 10.78.0.13:80 nat weight 1 (kernel weight 4)" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.replace('scheduler = "rr"', 'scheduler = "bogus"'))
    r = runner.invoke(ipvs, ["apply", "-c", str(bad)])
    assert r.exit_code != 0 and "ipvs.virtual_server[0].scheduler" in r.output
    assert "-w 4" in ipvsadm("-Sn")
