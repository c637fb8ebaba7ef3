"""The loop-lag monitor counts a deliberate blocking call as a stall, alone and in the
daemon. Counts only: a stall on a busy machine may add to them, never remove one."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import clusterbus
from clusterbus.config import parse_config
from clusterbus.daemon import Daemon
from clusterbus.looplag import LoopLagMonitor

LIMIT = 20.0  # seconds: bounds every wait, never a speed assertion


def test_observe_counts_stalls_and_keeps_the_worst(caplog):
    mon = LoopLagMonitor(stall_ms=50)
    with caplog.at_level(logging.WARNING, logger="clusterbus.looplag"):
        assert mon.observe(0.001) is False
        assert mon.observe(0.2) is True
        assert mon.observe(0.07) is True
        assert mon.observe(-0.001) is False  # woke early: no negative lag
    assert mon.counters == {"samples": 4, "stalls": 2}
    assert mon.worst_ms == pytest.approx(200) and mon.last_ms == 0
    # two stalls within the log interval: one line
    assert [r.getMessage()[:40] for r in caplog.records] == [
        "event loop stalled: a task woke 200.0 ms"]
    st = mon.status()
    assert st["counters"] == {"samples": 4, "stalls": 2} and st["worst_ms"] == 200.0


def test_a_blocking_call_is_a_stall():
    mon = LoopLagMonitor(interval=0.01, stall_ms=50)

    async def go() -> None:
        task = asyncio.create_task(mon.run())
        try:
            while mon.counters["samples"] < 3:
                await asyncio.sleep(0.01)
            before = mon.counters["stalls"]
            time.sleep(0.3)  # holds the loop: the monitor wakes at least ~0.29 s late
            samples = mon.counters["samples"]
            while mon.counters["samples"] == samples:
                await asyncio.sleep(0.01)
            assert mon.counters["stalls"] >= before + 1
            assert mon.worst_ms >= 200
        finally:
            task.cancel()

    asyncio.run(asyncio.wait_for(go(), LIMIT))


def test_the_daemon_runs_the_monitor_and_reports_it():
    cfg = parse_config({"netlink": {"enabled": False}, "bus": {"enabled": False}}, file="t.toml")
    daemon = Daemon(cfg, load_entrypoints=False)

    class Blocker:
        """A plugin whose service blocks the loop once (what a bad plugin does)."""

        @clusterbus.hookimpl
        def clusterbus_services(self):
            return [self.block]

        async def block(self) -> None:
            await asyncio.sleep(0.05)
            time.sleep(0.3)

    daemon.plugins.register(Blocker(), "blocker")

    async def go() -> None:
        task = asyncio.create_task(daemon.run(install_signal_handlers=False))
        try:
            while daemon.looplag.counters["stalls"] == 0:
                await asyncio.sleep(0.02)
        finally:
            daemon.stop()
            await task

    asyncio.run(asyncio.wait_for(go(), LIMIT))
    st = daemon.status()["looplag"]
    assert st["counters"]["stalls"] >= 1 and st["worst_ms"] >= 200
