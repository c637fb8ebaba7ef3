"""Every bad configuration is refused the same way by ``check-config`` and ``run``: exit
code 2 and exactly one line on stderr naming the file and the key, never a traceback.

The CLI runs as a subprocess (the venv's ``clusterbus``), so what is asserted is what an
operator sees. Every case's file disables netlink and puts the bus on ``ipc://`` sockets in
the test's directory (except the key under test), so a case that were wrongly accepted
would start a daemon that touches nothing outside the test: the subprocess timeout then
fails the test.
"""

from __future__ import annotations

import errno
import socket
import subprocess
from pathlib import Path

import pytest
from cbdaemon import CLUSTERBUS

ROOT = Path(__file__).resolve().parents[2]

#: TEST-NET-2 (RFC 5737): never assigned to a real host.
NOT_HERE = "198.51.100.77"


def _base(tmp: Path, bus: dict[str, str] | None = None) -> str:
    eps = {"publish": f"ipc://{tmp}/pub", "ingest": f"ipc://{tmp}/ingest",
           "snapshot": f"ipc://{tmp}/snap", **(bus or {})}
    lines = "".join(f'{k} = "{v}"\n' for k, v in eps.items())
    return f"[daemon]\nnode = 1\n[netlink]\nenabled = false\n[bus]\n{lines}"


VRRP = """
[[vrrp.instance]]
name = "VI_1"
interface = "lo"
vrid = 77
virtual_ipaddress = [{vip}]
unicast_peer = [{peer}]
"""

# name -> (file contents from the test's directory, the key the error must name)
CASES = {
    "not_utf8": (lambda t: _base(t).encode() + b'[plugins]\ndisable = ["\xff"]\n',
                 "plugins.disable"),
    "array_nested_5000_deep": (
        lambda t: _base(t).replace("node = 1", "node = " + "[" * 5000 + "]" * 5000),
        "daemon.node"),
    "bind_address_not_on_this_host": (lambda t: _base(t, {"ingest": f"tcp://{NOT_HERE}:7662"}),
                                      "bus.ingest"),
    "same_endpoint_twice": (lambda t: _base(t, {"snapshot": f"ipc://{t}/pub"}), "bus.snapshot"),
    "same_tcp_port_under_a_wildcard": (
        lambda t: _base(t, {"publish": "tcp://*:17661", "snapshot": "tcp://127.0.0.1:17661"}),
        "bus.snapshot"),
    "ipc_directory_missing": (lambda t: _base(t, {"publish": f"ipc://{t}/missing/deeper/pub"}),
                              "bus.publish"),
    "port_99999": (lambda t: _base(t, {"ingest": "tcp://127.0.0.1:99999"}), "bus.ingest"),
    "port_not_a_number": (lambda t: _base(t, {"publish": "tcp://127.0.0.1:notaport"}),
                          "bus.publish"),
    "host_name_not_an_address": (lambda t: _base(t, {"publish": "tcp://localhost:17661"}),
                                 "bus.publish"),
    "integer_as_address": (lambda t: _base(t) + "[nodemap.nodes]\n1 = [167772161]\n",
                           "nodemap.nodes.1[0]"),
    # an IPv4-mapped node address is the IPv4 address (the membership rule): it cannot
    # dodge the check that one address belongs to one node
    "ipv4_mapped_node_address": (lambda t: _base(t) + '[nodemap.nodes]\n1 = ["10.0.0.2"]\n'
                                 '2 = ["::ffff:10.0.0.2"]\n', "nodemap.nodes.2[0]"),
    "loopback_node_address": (lambda t: _base(t) + '[nodemap.nodes]\n2 = ["127.0.0.2"]\n',
                              "nodemap.nodes.2[0]"),
    "unspecified_vip": (lambda t: _base(t) + VRRP.format(vip='"0.0.0.0"', peer=""),
                        "vrrp.instance[0].virtual_ipaddress[0]"),
    "ipv4_mapped_vrrp_peer": (lambda t: _base(t) + VRRP.format(vip='"10.77.0.100/24"',
                                                               peer='"10.77.0.2", "::ffff:10.77.0.2"'),
                              "vrrp.instance[0].unicast_peer"),
    "notify_fifo_directory_missing": (
        lambda t: _base(t) + f'[keepalived]\nnotify_fifo = "{t}/missing/notify.fifo"\n',
        "keepalived.notify_fifo"),
    "slow_call_ms_zero": (lambda t: _base(t) + "[plugins]\nslow_call_ms = 0\n",
                          "plugins.slow_call_ms"),
    "toml_syntax_error": (lambda t: _base(t) + "[plugins]\ndisable = [\n", "plugins.disable"),
}


def _not_here_is_not_local() -> bool:
    with socket.socket() as s:
        try:
            s.bind((NOT_HERE, 0))
        except OSError as exc:
            return exc.errno == errno.EADDRNOTAVAIL
    return False


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_configuration_is_one_line_and_exit_2(tmp_path: Path, command: str, case: str) -> None:
    make, key = CASES[case]
    if case == "bind_address_not_on_this_host" and not _not_here_is_not_local():
        pytest.skip(f"{NOT_HERE} is assigned to this host")
    content = make(tmp_path)
    cfg = tmp_path / f"{case}.toml"
    cfg.write_bytes(content if isinstance(content, bytes) else content.encode())
    p = subprocess.run([CLUSTERBUS, command, "-c", str(cfg)], capture_output=True, text=True,
                       errors="replace", timeout=60)
    lines = p.stderr.splitlines()
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1, p.stderr
    assert str(cfg) in lines[0] and f"key '{key}'" in lines[0], lines[0]
    assert "Traceback" not in p.stderr and "OK" not in p.stdout
    assert not (tmp_path / "missing").exists()  # nothing was created on the way


def test_the_bad_cases_are_accepted_once_fixed(tmp_path: Path) -> None:
    # The check can fail: the same base file, every case's key set right, is valid.
    good = (_base(tmp_path) + "[plugins]\nslow_call_ms = 200\n[nodemap.nodes]\n"
            '1 = ["10.0.0.1", "FD00::1"]\n' + VRRP.format(vip='"10.77.0.100/24"',
                                                          peer='"10.77.0.2"')
            + f'[keepalived]\nnotify_fifo = "{tmp_path}/notify.fifo"\n')
    cfg = tmp_path / "good.toml"
    cfg.write_text(good)
    p = subprocess.run([CLUSTERBUS, "check-config", "-c", str(cfg)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "OK" in p.stdout and p.stderr == "", p.stderr


@pytest.mark.parametrize("args", [[], ["-c", str(ROOT / "core" / "default.toml")]])
def test_the_default_configuration_passes_check_config(args: list[str]) -> None:
    p = subprocess.run([CLUSTERBUS, "check-config", *args], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr
