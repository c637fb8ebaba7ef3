"""The IPVS kernel backend on a real kernel (inside UML), cross-checked with ipvsadm."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from ipvsadm_view import expected_view, ipvsadm, kernel_view

from clusterbus.plugins.ipvs import model
from clusterbus.plugins.ipvs.kernel import IpvsKernelError, Kernel
from clusterbus.plugins.ipvs.table import (
    AF_INET,
    Dest,
    Entry,
    Op,
    OpKind,
    Service,
    ServiceKey,
    Table,
    diff,
)

CONFIG = """
[[ipvs.virtual_server]]
address = "10.78.0.100:80"
scheduler = "mh"
scheduler_flags = ["mh-fallback", "mh-port"]
persistence_timeout = 300
  [[ipvs.virtual_server.real_server]]
  address = "10.78.0.11:8080"
  weight = 2
  upper_threshold = 100
  lower_threshold = 10
  [[ipvs.virtual_server.real_server]]
  address = "10.78.0.12"
  forward = "dr"
  [[ipvs.virtual_server.real_server]]
  address = "10.78.0.13"
  forward = "tunnel"
  weight = 0

[[ipvs.virtual_server]]
address = "10.78.0.100:53"
protocol = "udp"
scheduler = "sh"
scheduler_flags = ["sh-port"]
persistence_timeout = 60
persistence_netmask = "255.255.255.0"
one_packet = true
  [[ipvs.virtual_server.real_server]]
  address = "10.78.0.11:53"

[[ipvs.virtual_server]]
address = "10.78.0.100:9"
protocol = "sctp"
scheduler = "rr"
  [[ipvs.virtual_server.real_server]]
  node = 3
  port = 9

[[ipvs.virtual_server]]
fwmark = 10
scheduler = "wrr"
  [[ipvs.virtual_server.real_server]]
  address = "10.78.0.11:80"
  weight = 3

[[ipvs.virtual_server]]
fwmark = 11
family = "inet6"
scheduler = "wlc"
persistence_timeout = 10
persistence_netmask = 64
  [[ipvs.virtual_server.real_server]]
  address = "[fd00:77::11]:80"

[[ipvs.virtual_server]]
address = "[fd00:77::100]:443"
scheduler = "lblcr"
  [[ipvs.virtual_server.real_server]]
  address = "[fd00:77::11]:443"
  weight = 5
  [[ipvs.virtual_server.real_server]]
  address = "[fd00:77::12]"
  forward = "dr"
"""

NODES = {3: ("10.78.0.13",)}


def _unshare_net() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    # IPVS tables are per network namespace: each test starts with an empty one.
    _unshare_net()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with Kernel() as k:
        assert k.dump() == {}
        yield k


def desired(text: str = CONFIG, down: set[int] = frozenset()) -> Table:  # type: ignore[assignment]
    cfg = model.parse(tomllib.loads(text)["ipvs"], file="kt.toml",
                      node_addrs=lambda n: NODES.get(n, ()))
    table, problems = model.desired_table(cfg, node_addrs=lambda n: NODES.get(n, ()),
                                          node_of=lambda a: None, is_down=lambda n: n in down)
    assert problems == []
    return table


def test_apply_matches_ipvsadm(kernel: Kernel) -> None:
    want = desired()
    plan = diff(kernel.dump(), want)
    assert plan.added == len(want) + sum(len(e.dests) for e in want.values())
    result = kernel.apply(plan)
    assert result.errors == []
    assert kernel_view() == expected_view(want)
    assert kernel.dump() == want  # the raw dump reads back exactly what was asked


def test_second_apply_changes_nothing(kernel: Kernel) -> None:
    want = desired()
    assert kernel.apply(diff(kernel.dump(), want)).ok
    before = ipvsadm("-Sn")
    plan = diff(kernel.dump(), want)
    assert plan.ops == []
    assert kernel.apply(plan).sent == 0
    assert ipvsadm("-Sn") == before


def test_drift_is_detected_and_corrected(kernel: Kernel) -> None:
    want = desired()
    assert kernel.apply(diff(kernel.dump(), want)).ok
    # Hand-made drift: a weight, a removed real server, a foreign service.
    ipvsadm("-e", "-t", "10.78.0.100:80", "-r", "10.78.0.11:8080", "-m", "-w", "7")
    ipvsadm("-d", "-t", "[fd00:77::100]:443", "-r", "[fd00:77::12]:443")
    ipvsadm("-A", "-t", "10.78.0.200:22", "-s", "rr")
    plan = diff(kernel.dump(), want)
    kinds = sorted(op.kind.value for op in plan.ops)
    assert kinds == ["add-dest", "del-service", "set-dest"]
    set_dest = next(op for op in plan.ops if op.kind is OpKind.SET_DEST)
    # a set carries the complete object: thresholds survive a weight correction
    assert set_dest.dest is not None and set_dest.dest.u_threshold == 100
    assert kernel.apply(plan).ok
    assert kernel_view() == expected_view(want)
    assert diff(kernel.dump(), want).ops == []


def test_report_only_keeps_foreign_services(kernel: Kernel) -> None:
    ipvsadm("-A", "-t", "10.78.0.200:22", "-s", "rr")
    want = desired()
    assert kernel.apply(diff(kernel.dump(), want, prune=False)).ok
    assert "TCP 10.78.0.200:22 rr" in kernel_view()


def test_changed_service_fields_keep_the_rest(kernel: Kernel) -> None:
    want = desired()
    assert kernel.apply(diff(kernel.dump(), want)).ok
    key = ServiceKey(AF_INET, 6, "10.78.0.100", 80)
    old = want[key].service
    changed = Service(key=key, scheduler="sh", flags=0x1 | 0x8, timeout=120, netmask=24)
    want2 = dict(want)
    want2[key] = Entry(changed, dict(want[key].dests))
    plan = diff(kernel.dump(), want2)
    assert [op.kind for op in plan.ops] == [OpKind.SET_SERVICE]
    assert kernel.apply(plan).ok
    assert kernel_view() == expected_view(want2)
    assert old.scheduler == "mh"


def test_quiesce_sets_weight_zero_only(kernel: Kernel) -> None:
    assert kernel.apply(diff(kernel.dump(), desired())).ok
    want = desired(down={3})
    plan = diff(kernel.dump(), want)
    assert [(op.kind, op.dest.addr if op.dest else "", op.dest.weight if op.dest else -1)
            for op in plan.ops] == [(OpKind.SET_DEST, "10.78.0.13", 0)]
    assert kernel.apply(plan).ok
    assert kernel_view()["SCTP 10.78.0.100:9 rr"] == {"10.78.0.13:9": "Masq 0 0 0"}


def _kernel_schedulers() -> list[str]:
    mods = Path(f"/usr/lib/uml/modules/{os.uname().release}/kernel/net/netfilter/ipvs")
    names = sorted(p.name[len("ip_vs_"):-3] for p in mods.glob("ip_vs_*.ko"))
    return [n for n in names if n in model.SCHEDULERS]


@pytest.mark.parametrize("sched", _kernel_schedulers())
def test_every_scheduler(kernel: Kernel, sched: str) -> None:
    text = f"""
[[ipvs.virtual_server]]
address = "10.78.0.100:80"
scheduler = "{sched}"
  [[ipvs.virtual_server.real_server]]
  address = "10.78.0.11:80"
  [[ipvs.virtual_server.real_server]]
  address = "10.78.0.12:80"
  weight = 4
"""
    want = desired(text)
    assert kernel.apply(diff(kernel.dump(), want)).ok
    assert kernel_view() == expected_view(want)
    assert f"TCP 10.78.0.100:80 {sched}" in kernel_view()


def test_kernel_errors_name_service_and_field(kernel: Kernel) -> None:
    # twos is a valid name but this kernel has no module for it
    assert "twos" not in _kernel_schedulers()
    text = '[[ipvs.virtual_server]]\naddress = "10.78.0.100:80"\nscheduler = "twos"\n'
    result = kernel.apply(diff(kernel.dump(), desired(text)))
    assert len(result.errors) == 1
    err = result.errors[0]
    assert err.code == errno.ENOENT
    assert "tcp 10.78.0.100:80" in str(err) and "scheduler" in str(err) and "twos" in str(err)
    # EEXIST: adding what is already there
    svc = Service(key=ServiceKey(AF_INET, 6, "10.78.0.101", 80), scheduler="rr")
    assert kernel.apply([Op(OpKind.ADD_SERVICE, svc)]).ok
    again = kernel.apply([Op(OpKind.ADD_SERVICE, svc)])
    assert [e.code for e in again.errors] == [errno.EEXIST]
    assert "tcp 10.78.0.101:80" in str(again.errors[0])
    # a refused op in the middle of a batch does not stop the others
    d = Dest(af=AF_INET, addr="10.78.0.11", port=80)
    batch = kernel.apply([Op(OpKind.ADD_SERVICE, svc), Op(OpKind.ADD_DEST, svc, d)])
    assert [e.code for e in batch.errors] == [errno.EEXIST]
    assert "10.78.0.11:80" in kernel_view()["TCP 10.78.0.101:80 rr"]


def test_bulk_apply_pipelined(kernel: Kernel) -> None:
    want: Table = {}
    for i in range(1500):
        key = ServiceKey(AF_INET, 6, f"10.78.{i // 250}.{i % 250 + 1}", 80)
        entry = Entry(Service(key=key, scheduler="wlc"))
        for r in range(4):
            d = Dest(af=AF_INET, addr=f"10.79.{r}.{i % 250 + 1}", port=8080 + i // 250)
            entry.dests[d.ident] = d
        want[key] = entry
    result = kernel.apply(diff(kernel.dump(), want))
    assert result.ok and result.sent == 1500 * 5
    lines = ipvsadm("-Ln").splitlines()
    assert sum(line.startswith("TCP") for line in lines) == 1500
    assert sum(line.startswith("  -> 10.79.") for line in lines) == 6000
    assert kernel.dump() == want


def test_sync_daemon_control(kernel: Kernel) -> None:
    subprocess.run(["ip", "link", "add", "sync0", "type", "dummy"], check=True)
    subprocess.run(["ip", "addr", "add", "10.78.9.1/24", "dev", "sync0"], check=True)
    subprocess.run(["ip", "link", "set", "sync0", "up"], check=True)
    kernel.start_daemon("master", interface="sync0", syncid=7, port=8849, maxlen=1400,
                        group="224.0.0.82", ttl=2)
    text = ipvsadm("-L", "--daemon")
    assert ("master sync daemon (mcast=sync0, syncid=7, maxlen=1400, group=224.0.0.82, "
            "port=8849, ttl=2)") in text
    kernel.start_daemon("backup", interface="sync0", syncid=7)
    assert "backup sync daemon (mcast=sync0, syncid=7" in ipvsadm("-L", "--daemon")
    assert {d["state"] for d in kernel.daemons()} == {"master", "backup"}
    with pytest.raises(IpvsKernelError) as info:
        kernel.start_daemon("master", interface="sync0", syncid=7)
    assert info.value.code == errno.EEXIST
    kernel.stop_daemon("master")
    text = ipvsadm("-L", "--daemon")
    assert "master" not in text and "backup sync daemon" in text
    kernel.stop_daemon("backup")
    assert ipvsadm("-L", "--daemon").strip() == ""
    assert kernel.daemons() == []


def test_a_stop_right_after_a_start_returns(kernel: Kernel) -> None:
    """Linux sends no answer to a stop that finds the daemon's thread not yet run (-EINTR
    from kthread_stop; netlink acks nothing for -EINTR): a stop right after a start, as in
    a quick VRRP flap or a maxlen change, blocked the caller forever (the applier's lock
    with it). Both daemon clients (the applier's and conn-sync's) must come back, with
    the daemon stopped, every time."""
    from clusterbus.plugins.connsync import kernel as csk

    subprocess.run(["ip", "link", "add", "sync0", "type", "dummy"], check=True)
    subprocess.run(["ip", "addr", "add", "10.78.9.1/24", "dev", "sync0"], check=True)
    subprocess.run(["ip", "link", "set", "sync0", "up"], check=True)
    with csk.SyncDaemons() as sd:
        for client in (kernel, sd):
            for role in ("master", "backup") * 10:
                client.start_daemon(role, interface="sync0", syncid=7)
                client.stop_daemon(role)
                assert client.daemons() == []
        # a stop of a daemon that is not running still says so
        with pytest.raises(IpvsKernelError) as info:
            kernel.stop_daemon("master")
        assert info.value.code == errno.ESRCH
        with pytest.raises(csk.SyncKernelError) as info2:
            sd.stop_daemon("master")
        assert info2.value.errno == errno.ESRCH


def test_timeouts(kernel: Kernel) -> None:
    kernel.set_timeouts(tcp=900, tcp_fin=120, udp=300)
    assert "Timeout (tcp tcpfin udp): 900 120 300" in ipvsadm("-L", "--timeout")
    kernel.set_timeouts(udp=30)  # 0 leaves the others unchanged
    assert kernel.timeouts() == {"tcp": 900, "tcp_fin": 120, "udp": 30}
    assert "Timeout (tcp tcpfin udp): 900 120 30" in ipvsadm("-L", "--timeout")
