"""A real keepalived in a namespace writes its notify_fifo; KeepalivedSource turns the lines
into vrrp.transition events of an in-process Engine, survives keepalived restarts and
counts garbage without publishing anything."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
from keepalived import Keepalived, VrrpInstance
from netns import Topology

from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.events import Event, VrrpTransition
from clusterbus.pluginhost import PluginHost
from clusterbus.sources.keepalived import KeepalivedSource

pytestmark = [pytest.mark.root, pytest.mark.keepalived]


async def until(pred: Callable[[], object], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def transitions(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.instance, e.old, e.new) for e in events if isinstance(e, VrrpTransition)]


def test_notify_fifo_events_restart_and_garbage(tmp_path) -> None:
    fifo = str(tmp_path / "run" / "notify.fifo")  # directory and FIFO made by the source
    with Topology() as topo:
        a = topo.host("a", "10.77.0.1/24")
        b = topo.host("b", "10.77.0.2/24")
        ka = Keepalived(a, tmp_path, [VrrpInstance(priority=150, advert_int=0.1)],
                        notify_fifo=fifo)
        kb = Keepalived(b, tmp_path, [VrrpInstance(priority=100, advert_int=0.1)])
        try:
            asyncio.run(scenario(ka, kb, fifo))
        finally:
            ka.crash()
            kb.crash()


async def scenario(ka: Keepalived, kb: Keepalived, fifo: str) -> None:
    engine = Engine(origin=1, plugins=PluginHost())
    events: list[Event] = []
    engine.sinks.append(events.append)
    cfg = parse_config({"keepalived": {"notify_fifo": fifo}}, file="test.toml")
    source = KeepalivedSource(engine, cfg)
    task = asyncio.create_task(source.run())
    try:
        await until(lambda: os.path.exists(fifo), 5, "the source to create the FIFO")
        await asyncio.to_thread(kb.start)
        await asyncio.to_thread(ka.start)
        await until(lambda: ("VI_1", "BACKUP", "MASTER") in transitions(events), 20,
                    "keepalived to become MASTER")
        assert transitions(events) == [("VI_1", "UNKNOWN", "BACKUP"), ("VI_1", "BACKUP", "MASTER")]
        first = [e for e in events if isinstance(e, VrrpTransition)]
        assert all(e.source == "keepalived" and e.priority == 150 for e in first)

        # Garbage from another writer changes counters only.
        before = len(events)
        w = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(w, b'garbage\nINSTANCE "VI_1" DANCING 1\n\xff\xfe\xfd\n' + b"z" * 9000 + b"\n")
        os.close(w)
        await until(lambda: source.counters["dropped.malformed"] >= 1
                    and source.counters["dropped.too_long"] >= 1
                    and source.counters["dropped.unknown_state"] >= 1
                    and source.counters["dropped.not_ascii"] >= 1, 5, "garbage to be counted")
        assert len(events) == before

        # Crash keepalived (no STOP line), then start it again: the FIFO sees EOF, the
        # source reopens it, and the restarted keepalived's lines arrive.
        await asyncio.to_thread(ka.crash)
        await until(lambda: source.counters["reopened"] >= 1, 5, "the source to reopen")
        await asyncio.to_thread(ka.start)
        await until(lambda: transitions(events)[-1:] == [("VI_1", "BACKUP", "MASTER")]
                    and len(transitions(events)) == 4, 20, "MASTER after the restart")
        assert transitions(events)[2] == ("VI_1", "MASTER", "BACKUP")

        # A graceful stop writes STOP.
        await asyncio.to_thread(ka.stop)
        await until(lambda: transitions(events)[-1] == ("VI_1", "MASTER", "STOP"), 10, "STOP")
        assert not task.done()
        st = source.status()
        assert st["open"] and st["instances"][0]["state"] == "STOP"
        seqs = [e.seq for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert source.status()["open"] is False
