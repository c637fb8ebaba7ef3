"""Batch frames on a real BusService (127.0.0.1, ephemeral ports): the client switches to
them when a heartbeat offers them, a subscriber from before batches keeps receiving
single-event frames beside it, and the publisher sends each format only while someone
subscribes to it. No mocks."""

from __future__ import annotations

import pytest
import zmq
import zmq.asyncio
from loopbus import bus, run, until

from clusterbus.bus import codec, publisher
from clusterbus.bus.client import Subscriber
from clusterbus.engine import Engine
from clusterbus.events import Event, NodeDown, NodeUp
from clusterbus.view import NodeReport, NodeState


async def batching(sub: Subscriber) -> None:
    """Read heartbeats until the subscriber has switched to batch frames."""
    while not sub.batching:
        try:
            await sub.next(timeout=0.05)
        except TimeoutError:
            pass


def flip(engine: Engine, first: int, count: int) -> list[Event]:
    """``count`` real membership changes in one loop turn (one publisher flush)."""
    out = []
    for i in range(first, first + count):
        node = i % 50 + 1
        state = NodeState.DOWN if engine.view.state(node) is NodeState.UP else NodeState.UP
        ev = engine.report(NodeReport(state=state, node=node, reason="test"))
        assert ev is not None
        out.append(ev)
    return out


async def take(sub: Subscriber, n: int) -> list[Event]:
    got = []
    while len(got) < n:
        item = await sub.next()
        assert isinstance(item, Event), item  # a Snapshot would mean lost continuity
        got.append(item)
    return got


async def raw_events(sock: zmq.asyncio.Socket, n: int) -> list[Event]:
    """Single-event frames as a pre-batching subscriber sees them (it skips ``_`` topics)."""
    got = []
    while len(got) < n:
        frames = await sock.recv_multipart()
        if frames[0].startswith(b"_"):
            continue
        got.append(codec.decode(frames))
    return got


def test_client_takes_batches_while_an_old_subscriber_gets_single_frames(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # never idle: every event waits for the end of its loop turn (see the idle test below)
    monkeypatch.setattr(publisher, "IDLE_AFTER", float("inf"))

    async def main() -> None:
        async with bus() as svc:
            pub = svc.publisher
            ctx = zmq.asyncio.Context()
            old = ctx.socket(zmq.SUB)
            old.setsockopt(zmq.SUBSCRIBE, b"")
            old.connect(svc.endpoints["publish"])
            async with Subscriber(svc.endpoints["publish"], svc.endpoints["snapshot"]) as sub:
                await batching(sub)
                await until(lambda: codec.BATCH_TOPIC in pub.subscriptions
                            and b"" in pub.subscriptions)
                # more than one batch's worth, in one flush
                sent = flip(svc.engine, 0, codec.MAX_BATCH_EVENTS + 100)
                base = sub.seq or 0
                want = [e for e in sent if e.seq > base]
                assert await take(sub, len(want)) == want
                assert await raw_events(old, len(sent)) == sent
                assert svc.counters["batches_sent"] >= 2
                assert svc.counters["frames_sent"] >= len(sent)
                assert sub.counters["gaps"] == 0

                # The old subscriber leaves: single frames stop, batches go on.
                old.close(0)
                await until(lambda: b"" not in pub.subscriptions)
                singles, batches = svc.counters["frames_sent"], svc.counters["batches_sent"]
                more = flip(svc.engine, len(sent), 30)
                assert await take(sub, len(more)) == more
                assert svc.counters["frames_sent"] == singles
                assert svc.counters["batches_sent"] == batches + 1
                assert sub.counters["gaps"] == 0
                assert sub.counters.get("batching_on") == 1
            ctx.term()
            # Nobody listens: nothing is sent, but seq and the ring move on.
            await until(lambda: not pub.subscriptions)
            singles, batches = svc.counters["frames_sent"], svc.counters["batches_sent"]
            last = flip(svc.engine, 10_000, 5)
            await until(lambda: pub.sent_seq == last[-1].seq)
            assert (svc.counters["frames_sent"], svc.counters["batches_sent"]) == (singles, batches)
            assert svc.ring.last == last[-1].seq
    run(main())


@pytest.mark.parametrize("batch", [True, False])
def test_idle_daemon_sends_the_first_event_at_once(batch: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Always idle: the first event of a turn is sent inside engine.report itself; the
    # rest of the turn still goes out together at the turn's end, in order, no gap.
    monkeypatch.setattr(publisher, "IDLE_AFTER", 0.0)

    async def main() -> None:
        async with bus() as svc:
            async with Subscriber(svc.endpoints["publish"], svc.endpoints["snapshot"],
                                  batch=batch) as sub:
                if batch:
                    await batching(sub)
                    await until(lambda: codec.BATCH_TOPIC in svc.publisher.subscriptions)
                else:
                    await until(lambda: b"" in svc.publisher.subscriptions)
                key = "batches_sent" if batch else "frames_sent"
                before = svc.counters[key]
                first = flip(svc.engine, 0, 1)
                assert svc.counters[key] == before + 1  # sent, and no await happened
                assert svc.publisher.sent_seq == first[0].seq
                rest = flip(svc.engine, 1, 20)  # same turn: waits for its end
                assert svc.counters[key] == before + 1
                base = sub.seq or 0
                want = [e for e in first + rest if e.seq > base]
                assert await take(sub, len(want)) == want
                assert svc.counters[key] == before + (2 if batch else 21)
                assert sub.counters["gaps"] == 0
    run(main())


def test_batch_false_keeps_single_frames() -> None:
    async def main() -> None:
        async with bus() as svc:
            async with Subscriber(svc.endpoints["publish"], svc.endpoints["snapshot"],
                                  batch=False) as sub:
                while sub.counters["heartbeats"] < 3:
                    try:
                        await sub.next(timeout=0.05)
                    except TimeoutError:
                        pass
                assert not sub.batching
                assert sub.last_heartbeat is not None and sub.last_heartbeat.batch
                sent = flip(svc.engine, 0, 20)
                base = sub.seq or 0
                assert await take(sub, 20) == [e for e in sent if e.seq > base]
                assert codec.BATCH_TOPIC not in svc.publisher.subscriptions
                assert svc.counters["batches_sent"] == 0
    run(main())


@pytest.mark.parametrize("offer", [True, False])
def test_client_follows_what_heartbeats_offer(offer: bool) -> None:
    # A hand-made publisher in place of a daemon: heartbeats with or without ``batch``
    # (a daemon from before batches sends none); the client subscribes accordingly and,
    # when the offer is withdrawn, goes back to single frames.
    async def main() -> None:
        ctx = zmq.asyncio.Context()
        xpub = ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.XPUB_VERBOSER, 1)
        xpub.bind("tcp://127.0.0.1:*")
        endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        subs: list[bytes] = []
        try:
            async with Subscriber(endpoint, "tcp://127.0.0.1:9") as sub:
                sub.open()
                subs.append(await xpub.recv())
                assert subs == [b"\x01"]  # everything, as before batches

                async def beat(batch: bool) -> None:
                    hb = codec.Heartbeat(epoch=5, origin=1, seq=0, time=1.0, interval=0.05,
                                         batch=batch)
                    await xpub.send_multipart(codec.encode_heartbeat(hb))
                    with pytest.raises(TimeoutError):
                        await sub.next(timeout=0.1)

                await beat(offer)
                assert sub.batching is offer
                if not offer:
                    with pytest.raises(zmq.Again):
                        await xpub.recv(zmq.NOBLOCK)
                    return
                for _ in range(3):
                    subs.append(await xpub.recv())
                assert subs[1:] == [b"\x01_batch", b"\x01_hb", b"\x00"]
                # events now come as batches
                ev = NodeUp(origin=1, seq=1, time=1.0, node=3, view=1, reason="t")
                ev2 = NodeDown(origin=1, seq=2, time=1.0, node=3, view=2, reason="t")
                await xpub.send_multipart(codec.encode_batch(
                    [tuple(codec.encode(ev)), tuple(codec.encode(ev2))]))  # type: ignore[list-item]
                assert [await sub.next(timeout=5), await sub.next(timeout=5)] == [ev, ev2]
                await beat(False)
                assert not sub.batching
                for _ in range(3):
                    subs.append(await xpub.recv())
                assert subs[4:] == [b"\x01", b"\x00_batch", b"\x00_hb"]
        finally:
            xpub.close(0)
            ctx.term()
    run(main())
