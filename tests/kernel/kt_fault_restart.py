"""Issue 12 fault test, the kernel part (inside UML): a whole ``clusterbus run`` daemon,
VRRP master of a VIP and applying ``[ipvs]``, is killed with SIGKILL; its configuration
changes (a VIP and a virtual service are gone); the restarted daemon removes the stale
VIPs and brings the IPVS table back to the configuration.

The daemon runs in this test's own network namespace (``ip netns``) on one end of a veth
pair; its bus endpoints and state live under UML's private ``/run`` tmpfs. Every outcome
is read back from the kernel (``ip -o addr``, ``ipvsadm -Ln``); waits are bounded, no
timing is asserted.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cbdaemon import Daemon
from ipvsadm_view import ipvsadm, kernel_view
from keepalived import wait_for

KEPT, GONE = "10.78.0.100", "10.78.0.101"  # VIPs: GONE leaves the configuration
NODES = {1: "10.78.0.11", 2: "10.78.0.12"}
LIMIT = 30.0
NS = "cbfault"


def daemon_config(vips: tuple[str, ...], advert: float) -> str:
    """VRRP instance VI_1 on eth0 holding ``vips``, and one IPVS service per VIP."""
    services = "".join(f"""
[[ipvs.virtual_server]]
address = "{vip}:80"
scheduler = "rr"
  [[ipvs.virtual_server.real_server]]
  node = 1
  port = 80
  [[ipvs.virtual_server.real_server]]
  node = 2
  port = 80
""" for vip in vips)
    listed = ", ".join(f'"{v}/24"' for v in vips)
    return f"""
[netlink]
enabled = false

[nodemap.nodes]
1 = ["{NODES[1]}"]
2 = ["{NODES[2]}"]

[[vrrp.instance]]
name = "VI_1"
interface = "eth0"
vrid = 51
priority = 100
advert_interval = {advert}
virtual_ipaddress = [{listed}]
garp_delay = 0.0

[ipvs]
reconcile_interval = 0
{services}"""


def table(vips: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``kernel_view()`` of :func:`daemon_config`'s services."""
    return {f"TCP {vip}:80 rr": {f"{NODES[1]}:80": "Masq 1 0 0",
                                 f"{NODES[2]}:80": "Masq 1 0 0"} for vip in vips}


def vips_on_eth0() -> set[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    return {line.split()[3].split("/")[0] for line in out.splitlines()}


def until(pred: Callable[[], Any], what: str, daemon: Daemon) -> Any:
    try:
        return wait_for(pred, LIMIT, interval=0.05, what=what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{daemon.log.read_text()[-4000:]}") from None


def vrrp(daemon: Daemon) -> dict[str, Any]:
    st: dict[str, Any] = daemon.status()["services"]["vrrp"]
    return st


@pytest.fixture
def workdir() -> Iterator[Path]:
    # IPVS tables and addresses are per network namespace: this test has its own, named
    # (UML's /run is private), so that ``ip netns exec`` runs the daemon with a /sys of
    # that namespace (the speaker reads the interface's MAC there); this process joins it.
    subprocess.run(["ip", "netns", "add", NS], check=True)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{NS}", os.O_RDONLY)
    try:
        assert libc.setns(fd, 0x40000000) == 0  # CLONE_NEWNET
    finally:
        os.close(fd)
    for cmd in (["ip", "link", "set", "lo", "up"],
                ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                ["ip", "addr", "add", f"{NODES[1]}/24", "dev", "eth0"],
                ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "eth1", "up"]):
        subprocess.run(cmd, check=True)
    assert ipvsadm("-Sn") == ""
    d = Path(tempfile.mkdtemp(dir="/run", prefix="cb-fault-"))  # unix sockets on tmpfs
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", NS], check=False)


def test_restart_after_kill9_removes_stale_vips_and_reconciles_ipvs(workdir: Path) -> None:
    both = (KEPT, GONE)
    d = Daemon(workdir, NS, node=1, extra=daemon_config(both, advert=0.2))
    try:
        d.start()
        until(lambda: vrrp(d)["instances"][0]["state"] == "MASTER", "MASTER", d)
        until(lambda: set(both) <= vips_on_eth0(), "both VIPs on eth0", d)
        until(lambda: kernel_view() == table(both), "IPVS as configured", d)
        assert d.proc is not None
        d.proc.kill()  # SIGKILL: no priority 0, no VIP removal, no IPVS cleanup
        d.proc.wait(10)
    finally:
        d.stop()
    assert set(both) <= vips_on_eth0(), "a killed daemon leaves its VIPs behind"
    assert kernel_view() == table(both)

    # GONE leaves the configuration, with its service; KEPT stays, with adverts so slow
    # (Master_Down_Interval > 15 s) that the restarted daemon stays BACKUP a while. The
    # same directory: the same state_dir and bus endpoints, a new configuration file.
    d = Daemon(workdir, NS, node=1, extra=daemon_config((KEPT,), advert=5.0))
    try:
        d.start()
        until(lambda: vrrp(d)["instances"] and vrrp(d)["instances"][0]["state"] == "BACKUP",
              "BACKUP after the restart", d)
        # both VIPs the crash left are gone: KEPT until this daemon takes over again,
        # GONE for good (it is no longer configured)
        until(lambda: not vips_on_eth0() & set(both), "the stale VIPs removed", d)
        assert vrrp(d)["instances"][0]["state"] == "BACKUP"  # not removed by a takeover
        assert vrrp(d)["counters"]["stale_vips_removed"] == 2, vrrp(d)["counters"]
        until(lambda: kernel_view() == table((KEPT,)), "IPVS reconciled to the new config", d)
        # KEPT comes back when this daemon takes over, and only KEPT
        until(lambda: vrrp(d)["instances"][0]["state"] == "MASTER", "MASTER again", d)
        until(lambda: KEPT in vips_on_eth0(), "KEPT back on eth0", d)
        assert GONE not in vips_on_eth0()
        assert kernel_view() == table((KEPT,))
    finally:
        assert d.stop() == 0
    # a clean stop removes the VIP it holds
    assert not vips_on_eth0() & set(both)
