"""systemd's notify protocol, spoken by a real ``clusterbus run`` to a real AF_UNIX datagram
socket standing in for systemd ($NOTIFY_SOCKET, $WATCHDOG_USEC as systemd sets them)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cbdaemon import CLUSTERBUS, Daemon, status

WATCHDOG_USEC = 400_000  # WatchdogSec=0.4s: a ping every 0.2 s


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: every datagram as a dict of assignments."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = str(path)
        self.seen: list[dict[str, str]] = []

    def until(self, pred, timeout: float = 30.0) -> dict[str, str]:
        """Read datagrams until one satisfies ``pred``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no such notification within {timeout} s; got {self.seen}"
            self.sock.settimeout(left)
            data = self.sock.recv(4096).decode()
            msg = dict(line.split("=", 1) for line in data.split("\n"))
            self.seen.append(msg)
            if pred(msg):
                return msg


@pytest.fixture
def systemd(tmp_path):
    fake = FakeSystemd(tmp_path / "notify")
    yield fake
    fake.sock.close()


def test_ready_watchdog_reload_stop(tmp_path, systemd):
    root = os.geteuid() == 0
    extra = (f'[keepalived]\nnotify_fifo = "{tmp_path}/keepalived.fifo"\n\n'
             f'[metrics]\nlisten = "127.0.0.1:0"\n\n'
             f'[netlink]\nenabled = {"true" if root else "false"}\n')
    d = Daemon(tmp_path, None, extra=extra)
    env = {**os.environ, "NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    with open(d.log, "ab") as log:
        proc = subprocess.Popen([CLUSTERBUS, "run", "-c", str(d.config)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    try:
        ready = systemd.until(lambda m: "READY" in m)
        # READY=1 came only now: every endpoint answers, every source is open
        st = status(d.snapshot, timeout=5)
        assert ready == {"READY": "1", "STATUS": ready["STATUS"]}
        assert "node 7" in ready["STATUS"] and "metrics" in ready["STATUS"]
        with socket.create_connection(st["services"]["metrics"]["bound"].rsplit(":", 1),
                                      timeout=5):
            pass
        assert st["services"]["keepalived"]["open"] is True
        assert Path(tmp_path, "keepalived.fifo").exists()
        if root:
            assert st["services"]["netlink"]["listening"] is True
        assert systemd.seen[0] != ready, "the first notification should say it is starting"
        assert all("READY" not in m for m in systemd.seen[:-1])

        # the watchdog keeps coming from the loop
        for _ in range(3):
            systemd.until(lambda m: m == {"WATCHDOG": "1"})

        proc.send_signal(signal.SIGHUP)
        reloading = systemd.until(lambda m: "RELOADING" in m)
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        assert int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(
            time.CLOCK_MONOTONIC) // 1000
        again = systemd.until(lambda m: "READY" in m)
        assert again["STATUS"] == "reloaded"
        systemd.until(lambda m: m == {"WATCHDOG": "1"})  # still alive after the reload

        proc.send_signal(signal.SIGTERM)
        stopping = systemd.until(lambda m: "STOPPING" in m)
        assert stopping["STOPPING"] == "1"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_without_notify_socket_the_daemon_runs_as_before(tmp_path):
    d = Daemon(tmp_path, None, extra="[netlink]\nenabled = false\n",
               env={"NOTIFY_SOCKET": ""}).start()
    try:
        assert d.status()["node"] == 7
    finally:
        assert d.stop() == 0
    assert "sd_notify" not in d.log.read_text()


BLOCKER = '''
import os
import time

import clusterbus


class Blocker:
    """node.up for node 99 blocks the event loop until the gate file exists (<= 60 s)."""

    @clusterbus.hookimpl
    def clusterbus_node_up(self, event):
        if event.node != 99:
            return
        gate = os.environ["BLOCKER_GATE"]
        open(gate + ".blocked", "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)


plugin = Blocker()
'''


def test_a_stuck_loop_stops_the_watchdog_pings(tmp_path, systemd):
    """What makes systemd restart a hung daemon: no WATCHDOG=1 while the loop is stuck."""
    import asyncio

    from clusterbus.bus.client import emit

    site = tmp_path / "site"
    (site / "blocker_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "blocker_plugin.py").write_text(BLOCKER)
    info = site / "blocker_plugin-0.1.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: blocker-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clusterbus]\nblocker = blocker_plugin:plugin\n")
    gate = tmp_path / "gate"
    d = Daemon(tmp_path, None, extra="[netlink]\nenabled = false\n")
    env = {**os.environ, "NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": str(WATCHDOG_USEC),
           "BLOCKER_GATE": str(gate),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site),
                                                        os.environ.get("PYTHONPATH")]))}
    with open(d.log, "ab") as log:
        proc = subprocess.Popen([CLUSTERBUS, "run", "-c", str(d.config)], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    try:
        systemd.until(lambda m: "READY" in m)
        systemd.until(lambda m: m == {"WATCHDOG": "1"})
        asyncio.run(emit(d.ingest, "node.up", 99, (), 0))
        deadline = time.monotonic() + 30
        while not Path(f"{gate}.blocked").exists():
            assert time.monotonic() < deadline and proc.poll() is None, d.log.read_text()
            time.sleep(0.05)
        # the loop is stuck from now on: drain what it sent before, then silence
        systemd.sock.setblocking(False)
        try:
            while True:
                systemd.sock.recv(4096)
        except BlockingIOError:
            pass
        systemd.sock.settimeout(8 * WATCHDOG_USEC / 1e6)  # eight ping intervals
        with pytest.raises(TimeoutError):
            systemd.sock.recv(4096)
        gate.touch()
        systemd.until(lambda m: m == {"WATCHDOG": "1"})  # the loop turns: pings again
        assert "blocker" in d.log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
