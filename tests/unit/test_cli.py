"""The command line: help, validation, clear errors and exit codes (no daemon needed)."""

from __future__ import annotations

import subprocess

import pytest
from cbdaemon import CLUSTERBUS
from click.testing import CliRunner

from clusterbus.cli import main


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_help_lists_every_command(runner):
    r = runner.invoke(main, ["--help"])
    assert r.exit_code == 0
    for cmd in ("run", "events", "emit", "plugins", "nodemap", "check-config", "status"):
        assert cmd in r.output


@pytest.mark.parametrize("cmd", [["run"], ["events"], ["emit"], ["nodemap", "lookup"],
                                 ["check-config"], ["status"], ["plugins"]])
def test_every_command_has_help(runner, cmd):
    r = runner.invoke(main, [*cmd, "--help"])
    assert r.exit_code == 0 and "Usage:" in r.output and len(r.output) > 200


def test_check_config_ok_and_bad(runner, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[daemon]\nnode = 3\n[nodemap.nodes]\n3 = ["10.0.0.3"]\n')
    r = runner.invoke(main, ["check-config", "-c", str(good)])
    assert r.exit_code == 0 and "OK" in r.output and "nodemap" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[nodemap.nodes]\n3 = ["10.0.0.300"]\n')
    r = runner.invoke(main, ["check-config", "-c", str(bad)])
    assert r.exit_code == 2
    assert str(bad) in r.output and "nodemap.nodes.3[0]" in r.output
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[nodmap]\nlearn = true\n")
    r = runner.invoke(main, ["check-config", "-c", str(unknown)])
    assert r.exit_code == 2 and "nodmap" in r.output and "unknown section" in r.output


def test_run_with_bad_nodemap_stops_at_startup_naming_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[netlink]\nenabled = false\n[bus]\nenabled = false\n'
                   '[nodemap.nodes]\n1 = ["10.0.0.1"]\n2 = ["10.0.0.1"]\n')
    p = subprocess.run([CLUSTERBUS, "run", "-c", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2
    assert str(bad) in p.stderr and "nodemap.nodes.2[0]" in p.stderr
    assert "already given to node 1" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("args,words", [
    (["emit", "node-up", "3", "--addr", "10.0.0.999"], "not an IPv4 or IPv6 address"),
    (["emit", "node-up", "4294967296"], "Invalid value"),
    (["emit", "node-sideways", "3"], "Invalid value"),
    (["emit", "node-up", "3", "--via", "pigeon"], "Invalid value"),
    (["events", "--count", "0"], "Invalid value"),
    (["nodemap", "lookup", "not-an-ip"], "not an IPv4 or IPv6 address"),
    (["run", "-c", "/nonexistent/cb.toml"], "cannot read"),
])
def test_bad_arguments_are_clear_errors(runner, args, words):
    r = runner.invoke(main, args)
    assert r.exit_code in (1, 2), r.output
    assert words in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_status_without_daemon_is_a_clear_error(runner, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[bus]\nsnapshot = "ipc://{tmp_path}/nobody-home"\n')
    r = runner.invoke(main, ["status", "-c", str(cfg), "--timeout", "0.3"])
    assert r.exit_code == 1 and "no daemon answered" in r.output


def test_nodemap_lookup_from_config_only(runner, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[nodemap.nodes]\n4 = ["10.0.0.4", "fd00::4"]\n')
    r = runner.invoke(main, ["nodemap", "lookup", "FD00::4", "--local", "-c", str(cfg)])
    assert r.exit_code == 0 and r.output.strip() == "4"
    r = runner.invoke(main, ["nodemap", "lookup", "10.0.0.5", "--local", "-c", str(cfg)])
    assert r.exit_code == 1


def test_plugins_local_lists_builtin_and_hooks(runner):
    r = runner.invoke(main, ["plugins", "--local", "--json"])
    assert r.exit_code == 0
    assert '"nodemap"' in r.output and "clusterbus_resolve_node" in r.output


def test_events_without_daemon_exits_instead_of_hanging(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[bus]\npublish = "ipc://{tmp_path}/p"\nsnapshot = "ipc://{tmp_path}/s"\n')
    p = subprocess.run([CLUSTERBUS, "events", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1 and "Error:" in p.stderr and "Traceback" not in p.stderr


def test_status_view_renders_vrrp_instances_from_a_msgpack_reply():
    from rich.console import Console

    from clusterbus.statusview import render_status

    inst = {"name": "VI_1", "interface": "eth0", "vrid": 77, "state": "MASTER", "priority": 150,
            "master_seen": "10.77.0.1", "advert_interval": 0.05, "vips": ("10.77.0.100/24",),
            "holding": ("10.77.0.100/24",), "dropped": {"ttl": 2}, "vetoed": None,
            "restart_needed": (), "family": "inet"}
    st = {"node": 1, "pid": 9, "uptime": 1.0, "view": 0, "seq": 0, "ignored": {},
          "services": {"vrrp": {"instances": (inst,), "counters": {"sent": 5}}},
          "plugins": ({"name": "nodemap", "failures": 0, "hooks": ("clusterbus_node_up",)},)}
    console = Console(record=True, width=200)
    render_status(st, console)
    text = console.export_text()
    assert "vrrp instances" in text and "VI_1" in text and "MASTER" in text
    assert "ttl=2" in text and "family" not in text  # only the chosen columns


@pytest.mark.parametrize("cmd", [["ipvs", "show"], ["ipvs", "apply"],
                                 ["nodemap", "lookup", "10.0.0.3", "--local"]])
def test_malformed_nodemap_section_is_a_config_error_everywhere(runner, tmp_path, cmd):
    # every reader of [nodemap.nodes] validates it the same way (the plugin's read_section)
    bad = tmp_path / "bad.toml"
    bad.write_text("[nodemap]\nnodes = 3\n[ipvs]\n")
    r = runner.invoke(main, [*cmd, "-c", str(bad)])
    assert isinstance(r.exception, SystemExit), r.exception  # a message, not a traceback
    assert r.exit_code == 2  # README: 2 for bad arguments or configuration
    assert f"{bad}: key 'nodemap.nodes': expected a table" in r.output
