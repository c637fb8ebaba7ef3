"""Cluster-wide subscribers: ``MultiSubscriber`` and ``clusterbus events --connect``
merge two real daemons' streams, in order per origin."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cbdaemon import CLUSTERBUS, Daemon

from clusterbus.bus.client import MultiSubscriber, Snapshot, emit
from clusterbus.events import Event

LIMIT = 20.0


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    ds = []
    try:
        for node in (1, 2):
            d = tmp_path / f"d{node}"
            d.mkdir()
            ds.append(Daemon(d, None, node=node, extra="[netlink]\nenabled = false\n").start())
        yield ds[0], ds[1]
    finally:
        for d in ds:
            d.stop()


def test_multisubscriber_merges_per_origin(two: tuple[Daemon, Daemon]) -> None:
    d1, d2 = two

    async def go() -> dict[int, list[int]]:
        seen: dict[int, list[int]] = {1: [], 2: []}
        nodes: dict[int, list[int]] = {1: [], 2: []}
        async with MultiSubscriber([(d1.publish, d1.snapshot), (d2.publish, d2.snapshot)],
                                   prefixes=("node.",)) as multi:
            async with asyncio.timeout(LIMIT):
                while any(s.last_heartbeat is None for s in multi.subscribers):
                    await asyncio.sleep(0.05)
                for i in range(5):
                    await emit(d1.ingest, "node.up", 100 + i)
                    await emit(d2.ingest, "node.up", 200 + i)
                while len(nodes[1]) < 5 or len(nodes[2]) < 5:
                    item = await multi.next()
                    if isinstance(item, Snapshot):
                        continue
                    assert isinstance(item, Event)
                    seen[item.origin].append(item.seq)
                    nodes[item.origin].append(item.node)  # type: ignore[attr-defined]
        assert nodes == {1: [100, 101, 102, 103, 104], 2: [200, 201, 202, 203, 204]}
        return seen

    seen = asyncio.run(go())
    for seqs in seen.values():  # continuous per origin
        assert seqs == list(range(seqs[0], seqs[0] + 5))


def test_events_connect_twice(two: tuple[Daemon, Daemon]) -> None:
    d1, d2 = two
    proc = subprocess.Popen(
        [CLUSTERBUS, "events", "--json", "--count", "6", "--filter", "node.", "--timeout",
         str(LIMIT), "--connect", f"{d1.publish},{d1.snapshot}",
         "--connect", f"{d2.publish},{d2.snapshot}", "-c", str(d1.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + LIMIT
        i = 0
        while proc.poll() is None and time.monotonic() < deadline:
            # rounds until the command printed 6: once it is connected to both, each
            # round brings one event of each origin
            asyncio.run(emit(d1.ingest, "node.up", 300 + i))
            asyncio.run(emit(d2.ingest, "node.up", 400 + i))
            i += 1
            time.sleep(0.3)
        out, err = proc.communicate(timeout=LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == 6 and all(x["topic"] == "node.up" for x in lines)
    assert {x["origin"] for x in lines} == {1, 2}
    for origin in (1, 2):  # in order per origin
        seqs = [x["seq"] for x in lines if x["origin"] == origin]
        assert seqs == sorted(seqs)


def test_events_connect_needs_a_snapshot_endpoint_for_ipc(tmp_path: Path) -> None:
    p = subprocess.run([CLUSTERBUS, "events", "--connect", "ipc:///nowhere"],
                       capture_output=True, text=True, timeout=LIMIT)
    assert p.returncode == 2 and "PUB,SNAPSHOT" in p.stderr
