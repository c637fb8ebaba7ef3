"""The first hour of a new user (issue 7's traps), each against a real daemon.

* a cluster signal never kills the daemon, and ``emit --via signal`` says when nothing
  reads it;
* the daemon binds every endpoint before it says "running", and a busy port is one line;
* ``emit --via netlink`` says when nobody listens or the listener would drop the sender.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cbdaemon import CLUSTERBUS, Daemon
from netns import Topology

from clusterbus.sources import sigcluster
from clusterbus.view import NodeState

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
SIGCLUSTER = signal.SIGRTMIN + 2


def _wait(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if " ERROR " in line or "Error:" in line]


def test_cluster_signal_never_kills_a_daemon_with_sigcluster_off(tmp_path: Path):
    d = Daemon(tmp_path, None, extra="[netlink]\nenabled = false\n").start()
    try:
        pid = d.proc.pid
        os.kill(pid, SIGCLUSTER)  # `kill -s SIGRTMIN+2`: the default action would kill it
        st = d.status()  # answers after the signal arrived
        assert d.proc.poll() is None and st["view"] == 0
        sigcluster.sigqueue(pid, SIGCLUSTER, sigcluster.encode_payload(NodeState.DOWN, 3))
        assert d.status()["view"] == 0 and d.proc.poll() is None
        assert sigcluster.disposition(pid, SIGCLUSTER) == "ignored"  # discarded on arrival
        # emit refuses, says why, and sends nothing
        p = d.cli("emit", "node-down", "3", "--via", "signal", check=False)
        assert p.returncode == 1, p
        assert "[sigcluster] off" in p.stderr and "nothing sent" in p.stderr
        assert "Traceback" not in p.stderr
        assert d.proc.poll() is None and d.status()["view"] == 0
    finally:
        assert d.stop() == 0, d.log.read_text()


def test_emit_via_signal_refuses_a_process_that_would_die_of_it(tmp_path: Path):
    # no daemon answers: --pid names the target, whose signal masks decide
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[bus]\nsnapshot = "ipc://{tmp_path}/nobody-home"\n')
    # SIG_DFL: a `clusterbus run` invoked in this pytest process (CliRunner) set SIG_IGN,
    # which children inherit
    victim = subprocess.Popen(["sleep", "60"],
                              preexec_fn=lambda: signal.signal(SIGCLUSTER, signal.SIG_DFL))
    try:
        p = subprocess.run([CLUSTERBUS, "emit", "node-down", "3", "--via", "signal",
                            "--pid", str(victim.pid), "-c", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 1 and "it would die of it" in p.stderr, p.stderr
        assert victim.poll() is None
        p = subprocess.run([CLUSTERBUS, "emit", "node-down", "3", "--via", "signal",
                            "-c", str(cfg)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 1 and "give --pid" in p.stderr, p.stderr
    finally:
        victim.kill()
        victim.wait(10)


@pytest.mark.root
def test_emit_via_signal_reaches_a_daemon_with_sigcluster_on(tmp_path: Path):
    # SIG_IGN from start-up does not stop the signalfd: a blocked signal still queues
    d = Daemon(tmp_path, None,
               extra="[netlink]\nenabled = false\n[sigcluster]\nenabled = true\n").start()
    try:
        assert sigcluster.disposition(d.proc.pid, SIGCLUSTER) == "blocked"
        d.cli("emit", "node-up", "3", "--via", "signal")
        _wait(lambda: d.status()["view"] == 1, what="the signalled node-up")
        assert d.status()["services"]["sigcluster"]["counters"]["changes"] == 1
    finally:
        assert d.stop() == 0, d.log.read_text()


@pytest.mark.root
def test_daemon_binds_before_running_and_a_busy_port_is_one_line(tmp_path: Path):
    with Topology() as topo:
        ns = topo.netns("busy")
        d = Daemon(tmp_path, ns, extra="[netlink]\nenabled = false\n")
        text = d.config.read_text().replace(f'publish = "{d.publish}"',
                                            'publish = "tcp://127.0.0.1:7661"')
        d.config.write_text(text)
        d.start()
        try:
            log = d.log.read_text()
            running = log.index(" running (pid")
            assert log.index("publishing on tcp://127.0.0.1:7661") < running
            assert log.index("bus snapshot endpoint on") < running
            # the same publish port; its own ipc endpoints (see the ipc test below)
            other = tmp_path / "second.toml"
            other.write_text(text.replace(f'"{d.ingest}"', f'"{d.ingest}2"')
                             .replace(f'"{d.snapshot}"', f'"{d.snapshot}2"'))
            second = subprocess.run([*Topology.prefix(ns), CLUSTERBUS, "run", "-c",
                                     str(other)], capture_output=True, text=True,
                                    timeout=60)
            assert second.returncode == 1, second.stderr
            errors = _error_lines(second.stderr)
            assert len(errors) == 1, second.stderr
            assert "[bus] publish" in errors[0] and "tcp://127.0.0.1:7661" in errors[0]
            assert "Address already in use" in errors[0]
            assert "Traceback" not in second.stderr and " running" not in second.stderr
            assert d.proc.poll() is None and d.status()["node"] == 7
        finally:
            assert d.stop() == 0, d.log.read_text()


@pytest.mark.root
def test_emit_via_netlink_says_when_nothing_will_take_it_in(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[bus]\nsnapshot = "ipc://{tmp_path}/nobody-home"\n')
    emit = [CLUSTERBUS, "emit", "node-up", "3", "-c", str(cfg)]
    with Topology() as topo:
        ns = topo.netns("nl")
        # nobody listens on group 22 in this fresh namespace
        p = subprocess.run([*Topology.prefix(ns), *emit], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 1 and "no socket in this network namespace listens" in p.stderr
        # a listener appears (a daemon's netlink source, here a bare member of the group)
        listener = subprocess.Popen([*Topology.prefix(ns), sys.executable, "-c", (
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 2)\n"
            "s.bind((0, 0)); s.setsockopt(270, 1, 22)\n"
            "print('ready', flush=True); time.sleep(60)\n")],
            stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout.readline().strip() == "ready"
            p = subprocess.run([*Topology.prefix(ns), *emit], capture_output=True,
                               text=True, timeout=60)
            assert p.returncode == 0, p.stderr
            # ...but a sender the daemon would drop (uid not in allowed_uids) is told so
            # (the embedded default: nobody cannot read the test's file)
            p = subprocess.run([*Topology.prefix(ns), *NOBODY, *emit[:4]],
                               capture_output=True, text=True, timeout=60,
                               env={k: v for k, v in os.environ.items()
                                    if k != "CLUSTERBUS_CONFIG"})
            assert p.returncode == 1 and "uid 65534 is not in" in p.stderr, p.stderr
        finally:
            listener.kill()
            listener.wait(10)


def test_a_second_daemon_does_not_steal_ipc_endpoints(tmp_path: Path):
    # ZeroMQ replaces an ipc:// socket file on bind: without a check the second daemon
    # would take the first one's endpoints without a word
    d = Daemon(tmp_path, None, extra="[netlink]\nenabled = false\n").start()
    try:
        pid = d.status()["pid"]
        second = subprocess.run([CLUSTERBUS, "run", "-c", str(d.config)], capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 1, second.stderr
        errors = _error_lines(second.stderr)
        assert len(errors) == 1 and "[bus] publish" in errors[0], second.stderr
        assert "another process listens on it" in errors[0]
        assert d.status()["pid"] == pid and d.proc.poll() is None
    finally:
        assert d.stop() == 0, d.log.read_text()
    # a stale socket file (the daemon is gone) is no obstacle
    (tmp_path / "stale").mkdir()
    again = Daemon(tmp_path / "stale", None, extra="[netlink]\nenabled = false\n")
    again.config.write_text(d.config.read_text())
    again.snapshot = d.snapshot
    again.start()
    assert again.stop() == 0
