"""``clusterbus lab`` without booting anything: the directors' files validate (core and the
IPVS plugin's section), the requirement check names Debian packages, the timeline renders,
the CLI refuses clearly (exit 1) when it cannot run."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from clusterbus.cli import main
from clusterbus.config import parse_config
from clusterbus.lab import cli as labcli
from clusterbus.lab import runner, scenario
from clusterbus.plugins.connsync import parse as parse_connsync
from clusterbus.plugins.cvip import parse as parse_cvip
from clusterbus.plugins.cvip.policy import hrw
from clusterbus.plugins.ipvs.model import parse as parse_ipvs


@pytest.mark.parametrize("sync", [True, False])
@pytest.mark.parametrize("n", [1, 2])
def test_director_files_validate(n: int, sync: bool, tmp_path: Path) -> None:
    keys = scenario.make_keys(tmp_path / "keys")
    assert sorted(p.name for p in (keys / "authorized").iterdir()) == ["d1.key", "d2.key"]
    text = scenario.director_config(n, sync=sync, keys=keys)
    data = tomllib.loads(text)
    cfg = parse_config(data, file=f"d{n}.toml")
    assert cfg.node == n
    assert cfg["bus"]["certificate"].endswith(f"d{n}.key_secret")
    [peer] = data["cluster"]["peer"]
    assert peer["node"] == 3 - n
    ipvs = parse_ipvs(data["ipvs"], file=f"d{n}.toml")
    # never the kernel's own one-role sync daemon: conn-sync runs both daemons itself
    assert ipvs.sync_daemon is None
    assert [vs.service.scheduler for vs in ipvs.virtual_servers] == ["mh", "mh"]
    assert all(len(vs.real_servers) == 3 for vs in ipvs.virtual_servers)
    assert ("connsync" in data) is sync and ("connsync" in data["plugins"]["enable"]) is sync
    if sync:
        assert data["connsync"]["listen"] == f"tcp://{scenario.DIRECTORS[n]}:7670"
        assert data["connsync"]["interface"] == scenario.SYNC_IF
        assert peer["connsync"] == f"tcp://{scenario.DIRECTORS[3 - n]}:7670"
    else:
        assert "connsync" not in peer
    # the plugins' sections, as the daemon checks them (check-config would also want the
    # lab's addresses on this host)
    if sync:
        assert parse_connsync(cfg, data["connsync"]).interface == scenario.SYNC_IF
    cv = parse_cvip(data["cvip"], cfg)
    assert [v.directors for v in cv.vips] == [(1, 2), (1, 2)]


def test_cvip_weights_give_each_director_its_vip() -> None:
    """The lab's [cvip] weights make rendezvous hashing pick VIP1 -> 1 and VIP2 -> 2, and the
    other director when the owner is gone."""
    for v, vip in scenario.VIPS.items():
        weights = {v: float(scenario.WEIGHT)}
        assert hrw(vip, scenario.DIRECTORS, weights) == v
        assert hrw(vip, [3 - v], weights) == 3 - v
    # without the weights hashing alone would put VIP1 on director 2: they are needed
    assert hrw(scenario.VIPS[1], scenario.DIRECTORS) == 2


def test_director_files_without_cvip(tmp_path: Path) -> None:
    keys = scenario.make_keys(tmp_path / "keys")
    data = tomllib.loads(scenario.director_config(1, sync=True, keys=keys, cvip=False))
    assert "cvip" not in data
    prios = {i["name"]: i["priority"] for i in data["vrrp"]["instance"]}
    assert prios == {"VI_1": scenario.HIGH, "VI_2": scenario.LOW}
    drained = tomllib.loads(scenario.director_config(1, sync=True, keys=keys, cvip=False,
                                                     drained=True))
    assert drained["vrrp"]["instance"][0]["priority"] == scenario.DRAINED < scenario.LOW


def test_missing_names_debian_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "REQUIREMENTS", (
        runner.Requirement(program="no-such-program-xyz", package="some-package"),
        runner.Requirement(program="sh", package="dash")))
    assert [r.package for r in runner.missing()] == ["some-package"]
    with pytest.raises(runner.LabError, match="apt-get install some-package"):
        runner.check()
    result = CliRunner().invoke(main, ["lab", "failover"])
    assert result.exit_code == 1
    assert "apt-get install some-package" in result.output


def test_not_root_is_one_line_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "missing", lambda: [])
    monkeypatch.setattr(runner.os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(main, ["lab", "up"])
    assert result.exit_code == 1
    assert "needs root" in result.output


def test_status_without_a_lab(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(runner, "LAB_DIR", tmp_path / "lab")
    result = CliRunner().invoke(main, ["lab", "status", "--json"])
    assert result.exit_code == 1 and '"up": false' in result.output


def test_render_result() -> None:
    r = {"scenario": "failover", "sync": "off", "connsync": "off", "duration": 70,
         "timeline": [{"t": 0.0, "what": "director 1: daemon killed"}],
         "clients": 2, "resets": 1, "reset_events": 1, "server_changed": 0, "session_lost": 1,
         "per_client": [
             {"client": "c1", "source": "10.80.0.101", "vip": "VIP1", "server_before": "app2",
              "server_after": "app2", "session_before": "a", "session_after": "b",
              "kept": False, "resets": 1, "first_reset": 0.4,
              "reset_error": "ConnectionResetError", "max_stall": 0.0},
             {"client": "c5", "source": "10.80.0.105", "vip": "VIP2", "server_before": "app3",
              "server_after": "app3", "session_before": "c", "session_after": "c",
              "kept": True, "resets": 0, "first_reset": None, "reset_error": None,
              "max_stall": 0.0}]}
    text = labcli.render_result(r)
    assert "c1 10.80.0.101 -> VIP1  server app2: RESET at +0.400 s" in text
    assert "session lost" in text
    assert "c5 10.80.0.105 -> VIP2  server app3: connection kept" in text
    assert text.endswith("2 clients: 1 reset, 0 changed real server, 1 lost their session")


def test_render_status() -> None:
    st = {"up": True, "pid": 42, "directory": "/var/tmp/clusterbus-lab", "age": 0.4,
          "vips": {"VIP1": {"address": "10.80.0.201", "directors": [1]},
                   "VIP2": {"address": "10.80.0.202", "directors": []}},
          "daemons": {"d1": True, "d2": False}, "sync": "connsync",
          "connsync": "on",
          "clients": {"c1": {"vip": "VIP1", "server": "app2", "session": "ab", "resets": 0}}}
    text = labcli.render_status(st)
    assert "VIP1 10.80.0.201: director 1" in text
    assert "VIP2 10.80.0.202: nobody" in text
    assert "d1 running, d2 stopped" in text
    assert "client c1 -> VIP1: app2 session ab, 0 resets" in text
    assert labcli.render_status({"up": False}).startswith("no lab is up")
