"""An event whose topic the subscriber does not know (a third-party plugin registered it in
the daemon only) still counts toward the sequence: the subscriber skips its content and
goes on without a gap, a replay or a snapshot. A real BusService on 127.0.0.1 and a real
Subscriber; the subscriber's ignorance is made real by removing the class from the event
registry once the daemon side has encoded the event (both run in this process). No mocks."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import ClassVar

import pytest
from loopbus import bus, run

from clusterbus.bus.client import Snapshot, Subscriber
from clusterbus.bus.service import BusService
from clusterbus.events import EVENT_TYPES, Event, register_event
from clusterbus.view import NodeReport, NodeState


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Event):
    """What a third-party plugin might publish."""

    TOPIC: ClassVar[str] = "thirdparty.ping"

    payload: str


KEY = (Ping.TOPIC, Ping.VERSION)


@pytest.fixture
def plugin_topic() -> Iterator[None]:
    """``Ping`` is registered for the test (and removed again whatever happens)."""
    register_event(Ping)
    try:
        yield
    finally:
        EVENT_TYPES.pop(KEY, None)


def up(svc: BusService, node: int) -> Event:
    ev = svc.engine.report(NodeReport(state=NodeState.UP, node=node, reason="test"))
    assert ev is not None
    return ev


def publish_three(svc: BusService) -> tuple[Event, Event, Event]:
    """NodeUp, Ping, NodeUp (seq n, n+1, n+2), then forget Ping on the subscriber side.

    The publisher encodes each event as it is published (into the replay ring and the
    pending flush), so the frames exist before the class is removed.
    """
    first = up(svc, 1)
    ping = svc.engine.publish(Ping, payload="hello")
    last = up(svc, 2)
    assert (ping.seq, last.seq) == (first.seq + 1, first.seq + 2)
    del EVENT_TYPES[KEY]
    return first, ping, last


async def heard(sub: Subscriber, *, batching: bool) -> None:
    """Read until a heartbeat has set the subscriber's epoch (and, if asked, until it has
    switched to batch frames)."""
    while sub.epoch is None or (batching and not sub.batching):
        try:
            await sub.next(timeout=0.05)
        except TimeoutError:
            pass


async def take(sub: Subscriber, n: int) -> list[Event | Snapshot]:
    return [await sub.next() for _ in range(n)]


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_live_unknown_topic_is_skipped_without_a_gap(plugin_topic: None, batch: bool) -> None:
    async def main() -> None:
        async with bus() as svc:
            async with Subscriber(svc.endpoints["publish"], svc.endpoints["snapshot"],
                                  batch=batch) as sub:
                await heard(sub, batching=batch)
                first, ping, last = publish_three(svc)
                assert await take(sub, 2) == [first, last]
                assert sub.seq == last.seq
                assert sub.counters["unknown_topic"] == 1
                assert sub.counters["gaps"] == 0
                assert sub.counters["replayed"] == 0
                assert sub.last_snapshot is None
                assert not any(k.startswith(("resyncs.", "dropped.")) for k in sub.counters)
    run(main())


def test_replayed_unknown_topic_is_skipped_without_a_snapshot(plugin_topic: None) -> None:
    # A subscriber resuming before all three replays them: the Ping in the replay counts
    # toward the sequence as it does live.
    async def main() -> None:
        async with bus() as svc:
            first, ping, last = publish_three(svc)
            async with Subscriber(svc.endpoints["publish"], svc.endpoints["snapshot"],
                                  resume=(svc.epoch, first.seq - 1)) as sub:
                assert await take(sub, 2) == [first, last]
                assert sub.seq == last.seq
                assert sub.counters["unknown_topic"] == 1
                assert sub.counters["replayed"] == 3  # seqs accounted for, as for filtered ones
                assert sub.last_snapshot is None
                assert not any(k.startswith("resyncs.") for k in sub.counters)
    run(main())

