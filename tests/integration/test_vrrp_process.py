"""The VRRP speaker in its own process (``[vrrp] isolation = "process"``, the default): it
runs apart from the daemon, scheduled ahead of it, dies with it, and its death stops the
daemon (exit code 1) instead of leaving a daemon without a speaker. ``isolation =
"thread"`` still runs it inside the daemon."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from keepalived import VrrpInstance, ns_has_addr, wait_for
from netns import Topology
from speaker import Speaker

pytestmark = [pytest.mark.root]

VIP = "10.77.0.100"


def master(topo: Topology, tmp: Path, extra: str = "") -> tuple[str, Speaker]:
    a = topo.host("a", "10.77.0.1/24")
    sa = Speaker(a, tmp, [VrrpInstance(priority=150, vrid=77, advert_int=0.1, version=3,
                                       vips=(f"{VIP}/24",))], bus=True, extra=extra)
    sa.start()
    wait_for(lambda: ns_has_addr(a, VIP), 30, what="A as MASTER")
    return a, sa


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_speaker_runs_in_its_own_process_and_dies_with_the_daemon(tmp_path: Path) -> None:
    with Topology() as topo:
        a, sa = master(topo, tmp_path)
        try:
            st = sa.status()["services"]["vrrp"]
            assert st["isolation"] == "process"
            pid = st["pid"]
            assert sa.pid is not None and pid != sa.pid and alive(pid)
            assert os.getsid(pid) == pid  # a session (and autogroup) of its own
            assert st["instances"][0]["state"] == "MASTER"
            assert st["counters"]["sent"] > 0
            if st["scheduling"].startswith("SCHED_RR"):
                policy = os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK
                assert policy == os.SCHED_RR
            else:  # refused (no CAP_SYS_NICE, no real-time runtime in this cgroup)
                assert st["scheduling"].startswith("SCHED_OTHER")
            assert sa.proc is not None
            os.kill(sa.proc.pid, signal.SIGKILL)  # the daemon only
            sa.proc.wait(10)
            wait_for(lambda: not alive(pid), 10, what="the speaker process to die too")
            assert ns_has_addr(a, VIP)  # a crash: nothing released, as before
        except BaseException:
            print(sa.log_tail())
            raise
        finally:
            sa.crash()


def test_a_dead_speaker_process_stops_the_daemon(tmp_path: Path) -> None:
    with Topology() as topo:
        _, sa = master(topo, tmp_path)
        try:
            pid = sa.status()["services"]["vrrp"]["pid"]
            os.kill(pid, signal.SIGKILL)
            assert sa.proc is not None
            assert sa.proc.wait(30) == 1
            log = sa.log_text()
            assert f"VRRP speaker process {pid} ended unasked (killed by SIGKILL)" in log
        except BaseException:
            print(sa.log_tail())
            raise
        finally:
            sa.crash()


def test_sigterm_to_the_speaker_process_alone_changes_nothing(tmp_path: Path) -> None:
    """``systemctl stop`` signals every process of the unit: the daemon stops the speaker
    (priority 0, VIPs removed), the speaker does not stop itself first."""
    with Topology() as topo:
        a, sa = master(topo, tmp_path)
        try:
            pid = sa.status()["services"]["vrrp"]["pid"]
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGHUP)
            subprocess.run(["sleep", "0.5"], check=True)
            assert alive(pid) and sa.running() and ns_has_addr(a, VIP)
            assert sa.stop() == 0
            assert not ns_has_addr(a, VIP) and not alive(pid)
        except BaseException:
            print(sa.log_tail())
            raise
        finally:
            sa.crash()


def test_isolation_thread_runs_it_inside_the_daemon(tmp_path: Path) -> None:
    with Topology() as topo:
        _, sa = master(topo, tmp_path, extra='[vrrp]\nisolation = "thread"\n')
        try:
            st = sa.status()["services"]["vrrp"]
            assert st["isolation"] == "thread" and "pid" not in st
            assert st["instances"][0]["state"] == "MASTER"
            assert "on its own thread" in sa.log_text()
        finally:
            sa.crash()
