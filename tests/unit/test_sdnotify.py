"""clusterbus.sdnotify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest

from clusterbus.sdnotify import Notifier, service_ready


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def _fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


def test_ready_status_reloading_stopping_reach_a_path_socket(listener):
    path, sock = listener
    n = Notifier(path)
    n.ready("node 1 running")
    assert _fields(sock.recv(4096)) == {"READY": "1", "STATUS": "node 1 running"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    got = _fields(sock.recv(4096))
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert got["RELOADING"] == "1" and before <= int(got["MONOTONIC_USEC"]) <= after
    n.status("same")
    n.status("same")  # unchanged: not sent again
    n.stopping()
    assert _fields(sock.recv(4096)) == {"STATUS": "same"}
    assert _fields(sock.recv(4096)) == {"STOPPING": "1", "STATUS": "stopping"}
    assert n.counters == {"sent": 4, "send_failed": 0}
    n.close()


def test_abstract_namespace_address():
    name = f"clusterbus-test-{os.getpid()}-{threading.get_ident()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier("@" + name).notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_nobody_listening_is_counted_not_raised(tmp_path, caplog):
    n = Notifier(str(tmp_path / "nobody"))
    assert not n.notify("READY=1") and not n.notify("WATCHDOG=1")
    assert n.counters == {"sent": 0, "send_failed": 2}
    assert sum("sd_notify" in r.message for r in caplog.records) == 1  # warned once


def test_without_notify_socket_nothing_is_sent():
    n = Notifier.from_environ({})
    assert not n.enabled and not n.notify("READY=1") and n.counters["send_failed"] == 0


def test_environment_is_read_and_unset():
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    n = Notifier.from_environ(env)
    assert n.address == "@x" and n.watchdog == 3.0 and env == {}
    # the watchdog is for another process: not ours to ping
    n = Notifier.from_environ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "5",
                               "WATCHDOG_PID": "1"}, unset=False)
    assert n.address == "/x" and n.watchdog is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": "relative"}).address is None


def test_reload_is_framed_by_reloading_and_ready_even_when_it_raises(listener):
    path, sock = listener
    n = Notifier(path)
    n.reload(lambda: True)
    assert "RELOADING" in _fields(sock.recv(4096))
    assert _fields(sock.recv(4096)) == {"READY": "1", "STATUS": "reloaded"}

    def broken() -> bool:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        n.reload(broken)
    assert "RELOADING" in _fields(sock.recv(4096))
    assert _fields(sock.recv(4096))["READY"] == "1"


class _Evt:
    def __init__(self):
        self.ready = asyncio.Event()

    def status(self):
        return {}


class _Flag:
    def __init__(self, open_):
        self.open_ = open_

    def status(self):
        return {"enabled": True, "open": self.open_}


class _Disabled:
    def status(self):
        return {"enabled": False, "open": False}


class _Private:
    _ready = False

    def status(self):
        return {}


def test_service_ready_reads_events_flags_and_status():
    e = _Evt()
    assert not service_ready(e)
    e.ready.set()
    assert service_ready(e)
    assert not service_ready(_Flag(False)) and service_ready(_Flag(True))
    assert service_ready(_Disabled())
    p = _Private()
    assert not service_ready(p)
    p._ready = True
    assert service_ready(p)
