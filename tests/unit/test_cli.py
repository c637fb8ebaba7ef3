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


# -- the configuration every command reads (-c, $CLUSTERBUS_CONFIG, /etc, embedded) --------

def _nobody_home(tmp_path, name):
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(f'[bus]\nsnapshot = "ipc://{tmp_path}/{name}"\n')
    return cfg


def test_config_resolution_c_then_env_then_system_then_embedded(runner, tmp_path, monkeypatch):
    from clusterbus import cli

    env, system, given = (_nobody_home(tmp_path, n) for n in ("env", "system", "given"))
    monkeypatch.delenv("CLUSTERBUS_CONFIG", raising=False)
    monkeypatch.setattr(cli, "SYSTEM_CONFIG", str(tmp_path / "absent.toml"))
    assert cli.resolve_config(None) == (None, "default")
    monkeypatch.setattr(cli, "SYSTEM_CONFIG", str(system))
    assert cli.resolve_config(None) == (str(system), "system")
    monkeypatch.setenv("CLUSTERBUS_CONFIG", str(env))
    assert cli.resolve_config(None) == (str(env), "$CLUSTERBUS_CONFIG")
    assert cli.resolve_config(str(given)) == (str(given), "-c")
    # the clients use it: the endpoint they try comes from the resolved file
    r = runner.invoke(main, ["status", "--timeout", "0.2"])
    assert r.exit_code == 1 and f"{tmp_path}/env" in r.output, r.output
    r = runner.invoke(main, ["status", "--timeout", "0.2", "-c", str(given)])
    assert r.exit_code == 1 and f"{tmp_path}/given" in r.output, r.output
    monkeypatch.delenv("CLUSTERBUS_CONFIG")
    r = runner.invoke(main, ["status", "--timeout", "0.2"])
    assert r.exit_code == 1 and f"{tmp_path}/system" in r.output, r.output
    # a variable naming a missing file is a configuration error that says where it came from
    monkeypatch.setenv("CLUSTERBUS_CONFIG", str(tmp_path / "missing.toml"))
    r = runner.invoke(main, ["check-config"])
    assert r.exit_code == 2 and "cannot read" in r.output and "$CLUSTERBUS_CONFIG" in r.output


def test_the_daemon_honours_clusterbus_config(tmp_path):
    import os

    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nnode = -1\n")
    p = subprocess.run([CLUSTERBUS, "run"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "CLUSTERBUS_CONFIG": str(bad)})
    assert p.returncode == 2 and str(bad) in p.stderr and "daemon.node" in p.stderr


@pytest.mark.parametrize("cmd", [["run"], ["events"], ["emit"], ["nodemap", "lookup"],
                                 ["check-config"], ["status"], ["plugins"], ["reload"]])
def test_help_says_where_the_configuration_comes_from(runner, cmd):
    r = runner.invoke(main, [*cmd, "--help"], terminal_width=200)
    assert "$CLUSTERBUS_CONFIG" in r.output and "/etc/clusterbus/clusterbus.toml" in r.output


def test_nodemap_lookup_without_daemon_says_it_answered_from_the_file(runner, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[bus]\nsnapshot = "ipc://{tmp_path}/nobody-home"\n'
                   '[nodemap.nodes]\n4 = ["10.0.0.4"]\n')
    r = runner.invoke(main, ["nodemap", "lookup", "10.0.0.4", "-c", str(cfg)])
    assert r.exit_code == 0 and r.stdout.strip() == "4"
    assert "no daemon answered" in r.stderr and f"answering from {cfg}" in r.stderr
    r = runner.invoke(main, ["nodemap", "lookup", "10.0.0.5", "-c", str(cfg)])
    assert r.exit_code == 1 and f"according to {cfg}" in r.stderr


def test_status_keeps_nested_values_in_shape_and_the_epoch_in_hex():
    from rich.console import Console

    from clusterbus.statusview import render_status

    st = {"node": 1, "pid": 9, "uptime": 1.0, "view": 0, "seq": 0, "ignored": {},
          "config": "/etc/clusterbus/clusterbus.toml",
          "reload": {"generation": 2, "result": "applied", "file": "x.toml",
                     "restart_needed": ("bus",), "failed": {}},
          "services": {
              "bus": {"epoch": 0x5F0C_0000_0000_0001,
                      "endpoints": {"publish": "tcp://127.0.0.1:7661"},
                      "counters": {"ingest.dropped.bad_frame": 3, "requests": 12}},
              "netlink": {"allowed_uids": (0, 1000), "last_error": None}}}
    console = Console(record=True, width=60)
    render_status(st, console)
    text = console.export_text()
    lines = [line.strip("│├└─ ") for line in text.splitlines()]
    assert "epoch: 5f0c000000000001" in lines  # as the logs print it
    assert "ingest.dropped.bad_frame: 3" in lines and "requests: 12" in lines
    assert "publish: tcp://127.0.0.1:7661" in lines
    assert "allowed_uids: 0, 1000" in lines and "last_error: -" in lines
    assert "last reload #2: applied" in text and "restart_needed: bus" in lines
    for flattened in ("=", "(", "{", "None"):
        assert flattened not in text.replace("7661", ""), text


def test_events_text_lines_print_no_python_tuples():
    from clusterbus.cli import _event_line
    from clusterbus.events import NodemapChanged, NodeUp

    up = NodeUp(seq=3, origin=1, time=1.0, node=4, addrs=("10.0.0.4", "fd00::4"), view=2,
                joined=(4,), reason="zmq")
    changed = NodemapChanged(seq=4, origin=1, time=1.0, node=4, addrs=("10.0.0.4", "fd00::4"),
                             reason="node.up")
    for event in (up, changed):
        line = _event_line(event)
        assert "addrs=10.0.0.4,fd00::4" in line, line
        assert "(" not in line and "'" not in line, line


def test_plugins_without_daemon_says_it_listed_the_local_ones(runner, tmp_path):
    cfg = _nobody_home(tmp_path, "plugins")
    r = runner.invoke(main, ["plugins", "--json", "-c", str(cfg)])
    assert r.exit_code == 0 and '"nodemap"' in r.stdout
    assert "no daemon answered" in r.stderr and "installed here" in r.stderr
    r = runner.invoke(main, ["plugins", "--json", "--local", "-c", str(cfg)])
    assert r.exit_code == 0 and r.stderr == ""
