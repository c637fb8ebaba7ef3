"""SIGHUP re-reads the configuration; a bad file is refused and the daemon keeps running."""

from __future__ import annotations

import os
import signal
import time

from cbdaemon import Daemon


def _wait_log(d: Daemon, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in d.log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the daemon log:\n{d.log.read_text()}")


def test_reload_refuses_a_bad_file_and_applies_a_good_one(tmp_path):
    d = Daemon(tmp_path, None, extra="[netlink]\nenabled = false\n").start()
    try:
        good = d.config.read_text()
        d.config.write_text(good.replace("heartbeat_interval = 0.2", "heartbeat_interval = -1"))
        # the CLI checks the file before it signals anything...
        p = d.cli("reload", check=False)
        assert p.returncode == 2 and "bus.heartbeat_interval" in p.stderr
        # ...and a daemon sent SIGHUP anyway (kill -HUP) refuses it and keeps running
        os.kill(d.proc.pid, signal.SIGHUP)
        _wait_log(d, "reload refused, keeping the running configuration")
        assert "bus.heartbeat_interval" in d.log.read_text()
        assert d.proc.poll() is None and d.status()["node"] == 7
        assert d.status()["reload"]["result"] == "refused"
        assert "bus.heartbeat_interval" in d.status()["reload"]["reason"]
        # the CLI shows the daemon's verdict: applied...
        d.config.write_text(good)
        p = d.cli("reload")
        assert f"reloaded {d.config} (pid {d.proc.pid}): applied" in p.stdout
        assert "restart" not in p.stdout and "note" not in p.stderr
        # ...or applied except what needs a restart (exit 1: the file is not all in force)
        d.config.write_text(good + "\n[nodemap.nodes]\n1 = ['10.0.0.1']\n")
        p = d.cli("reload", check=False)
        assert p.returncode == 1, p
        assert "applied except" in p.stdout and "needs a restart to apply: [nodemap]" in p.stdout
        assert "[nodemap] changed, but plugin nodemap applies its section at start-up only" in d.log.read_text()
        st = d.status()["reload"]
        assert st["result"] == "applied" and list(st["restart_needed"]) == ["nodemap"]
        assert st["generation"] == 3
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0
