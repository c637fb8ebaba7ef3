"""The ZeroMQ bus end to end: a real BusService on 127.0.0.1 (ephemeral ports) around an
in-process Engine, real subscriber/ingest/request sockets. No mocks."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio
from loopbus import bus, dead_endpoint, new_engine, run, until

from clusterbus.bus import codec, publisher
from clusterbus.bus.client import (
    PublisherLost,
    Requester,
    RequestFailed,
    RequestTimeout,
    Snapshot,
    Subscriber,
    emit,
    fetch_snapshot,
    fetch_status,
    item_to_dict,
)
from clusterbus.bus.service import BusService
from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.events import Event, IpvsApplied, NodeDown, NodeUp, VrrpTransition
from clusterbus.view import NodeReport, NodeState


def subscriber(svc: BusService, **kw: Any) -> Subscriber:
    return Subscriber(svc.endpoints["publish"], svc.endpoints["snapshot"], **kw)


async def subscribed(svc: BusService, sub: Subscriber, n: int = 1) -> None:
    """Open ``sub`` and wait until the publisher has seen ``n`` subscriptions."""
    sub.open()
    await until(lambda: svc.counters["subscribe"] >= n)


def up(engine: Engine, node: int, *addrs: str) -> Event | None:
    return engine.report(NodeReport(state=NodeState.UP, node=node, addrs=addrs, reason="test"))


def down(engine: Engine, node: int) -> Event | None:
    return engine.report(NodeReport(state=NodeState.DOWN, node=node, reason="test"))


async def take(sub: Subscriber, n: int) -> list[Event | Snapshot]:
    return [await sub.next() for _ in range(n)]


# -- publish -> subscribe ----------------------------------------------------------------------

def test_events_reach_subscriber_in_order_with_prefix_filter() -> None:
    async def main() -> None:
        async with bus() as svc:
            engine = svc.engine
            async with subscriber(svc, prefixes=("node.",)) as sub:
                await subscribed(svc, sub)
                for n in range(1, 11):
                    up(engine, n, f"10.77.0.{n}")
                    if n == 5:  # not a node.* event: filtered, but its seq is accounted for
                        engine.publish(VrrpTransition, instance="VI_1", new="MASTER",
                                       reason="test")
                got = await take(sub, 10)
                assert [type(e) for e in got] == [NodeUp] * 10
                assert [e.node for e in got] == list(range(1, 11))  # type: ignore[union-attr]
                assert [e.seq for e in got] == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]  # type: ignore[union-attr]
                assert got[0].addrs == ("10.77.0.1",)  # type: ignore[union-attr]
                assert sub.counters["filtered"] == 1
                assert sub.counters["gaps"] == 0
                assert sub.seq == 11
                assert item_to_dict(got[0])["topic"] == "node.up"
            assert svc.counters["published"] == 11
            assert svc.counters["frames_sent"] == 11
    run(main())


def test_heartbeats_on_the_wire_and_liveness() -> None:
    async def main() -> None:
        async with bus() as svc:
            ctx = zmq.asyncio.Context()
            raw = ctx.socket(zmq.SUB)
            raw.setsockopt(zmq.SUBSCRIBE, codec.HEARTBEAT_TOPIC)
            raw.connect(svc.endpoints["publish"])
            up(svc.engine, 1)
            hb = codec.decode_heartbeat(await raw.recv_multipart())
            assert hb.epoch == svc.epoch and hb.origin == 1 and hb.interval == 0.05
            await until(lambda: svc.publisher.sent_seq == 1)
            hb2 = codec.decode_heartbeat(await raw.recv_multipart())
            while hb2.seq < 1:
                hb2 = codec.decode_heartbeat(await raw.recv_multipart())
            assert hb2.seq == 1 and hb2.time >= hb.time
            raw.close(0)
            ctx.term()

            sub = subscriber(svc, dead_after=0.3, raise_when_dead=True)
            sub.open()
            assert not sub.alive  # nothing heard yet
            while sub.counters["heartbeats"] < 3:
                try:
                    await sub.next(timeout=0.1)
                except TimeoutError:
                    pass
            assert sub.alive and sub.last_heartbeat is not None
            assert sub.last_heartbeat.epoch == svc.epoch
        # The service is gone: no more heartbeats, the subscriber declares it dead.
        with pytest.raises(PublisherLost):
            await sub.next()
        assert not sub.alive
        sub.close()
    run(main())


# -- ingest ------------------------------------------------------------------------------------

def test_ingest_good_frames_change_the_view() -> None:
    async def main() -> None:
        async with bus() as svc:
            await emit(svc.endpoints["ingest"], "node.up", 3, ["10.77.0.3"], incarnation=2)
            await until(lambda: svc.counters["ingest.accepted"] == 1)
            info = svc.engine.view.nodes[3]
            assert info.state is NodeState.UP and info.addrs == ("10.77.0.3",)
            assert info.incarnation == 2
            await emit(svc.endpoints["ingest"], "node.going_down", 3)
            await emit(svc.endpoints["ingest"], "node.going_down", 3)  # duplicate
            await until(lambda: svc.counters["ingest.received"] == 3)
            assert svc.engine.view.state(3) is NodeState.GOING_DOWN
            assert svc.counters["ingest.unchanged"] == 1
    run(main())


def test_ingest_malformed_frames_change_only_counters() -> None:
    good = msgpack.packb({"v": 1, "node": 4})
    malformed = [
        ([b"node.up"], "frame_count"),
        ([b"node.up", good, b"x"], "frame_count"),
        ([b"vrrp.transition", good], "bad_topic"),
        ([b"\xff", good], "bad_topic"),
        ([b"node.up", b"\xc1"], "bad_body"),
        ([b"node.up", good + b"\x00"], "bad_body"),
        ([b"node.up", msgpack.packb([1, 2])], "bad_body"),
        ([b"node.up", msgpack.packb({"v": 2, "node": 4})], "bad_version"),
        ([b"node.up", msgpack.packb({"v": 1, "node": "4"})], "bad_field"),
        ([b"node.up", msgpack.packb({"v": 1, "node": 4, "addrs": ["300.1.1.1"]})], "bad_field"),
        ([b"node.up", msgpack.packb({"v": 1, "node": 4, "colour": "red"})], "bad_field"),
        ([b"node.up", b"\x00" * (codec.MAX_FRAME + 10)], "oversized"),
    ]

    async def main() -> None:
        async with bus() as svc:
            engine = svc.engine
            up(engine, 1, "10.77.0.1")
            before = (engine.snapshot(), engine.seq, svc.counters["published"])
            ctx = zmq.asyncio.Context()
            push = ctx.socket(zmq.PUSH)
            push.connect(svc.endpoints["ingest"])
            for frames, _ in malformed:
                await push.send_multipart(frames)
            await until(lambda: svc.counters["ingest.received"] == len(malformed))
            assert (engine.snapshot(), engine.seq, svc.counters["published"]) == before
            expected: dict[str, int] = {}
            for _, code in malformed:
                expected[f"ingest.dropped.{code}"] = expected.get(f"ingest.dropped.{code}", 0) + 1
            dropped = {k: v for k, v in svc.counters.items() if k.startswith("ingest.dropped.")}
            assert dropped == expected
            assert svc.counters["ingest.accepted"] == 0
            # ... and the daemon keeps going: a good frame after all that still works.
            await push.send_multipart([b"node.up", good])
            await until(lambda: svc.counters["ingest.accepted"] == 1)
            assert engine.view.state(4) is NodeState.UP
            push.close(0)
            ctx.term()
    run(main())


def test_emit_without_daemon_times_out() -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            await emit(dead_endpoint(), "node.up", 1, timeout=0.3)
    run(main())


# -- snapshot / replay / status ---------------------------------------------------------------

def test_snapshot_status_and_bad_requests() -> None:
    async def main() -> None:
        async with bus(status_provider=lambda: {"daemon": {"node": 1}, "ok": True}) as svc:
            up(svc.engine, 2, "10.77.0.2")
            down(svc.engine, 2)
            snap = await fetch_snapshot(svc.endpoints["snapshot"])
            assert (snap.epoch, snap.origin, snap.seq, snap.view) == (svc.epoch, 1, 2, 2)
            assert [dict(n) for n in snap.nodes] == [
                {"node": 2, "state": "down", "addrs": ("10.77.0.2",), "incarnation": 0,
                 "view": 2, "confirmed": True}]
            status = await fetch_status(svc.endpoints["snapshot"])
            assert status == {"daemon": {"node": 1}, "ok": True}

            # A REQ client (empty delimiter frame) is answered too; garbage gets ERROR.
            ctx = zmq.asyncio.Context()
            req = ctx.socket(zmq.REQ)
            req.connect(svc.endpoints["snapshot"])
            await req.send_multipart(codec.encode_request("REPLAY", 0, 1))
            name, header, payload = codec.decode_reply(await req.recv_multipart())
            assert name == "REPLAY" and header["status"] == "ok" and header["more"] is True
            assert header["count"] == 1 and header["head"] == 2
            assert codec.decode(payload).seq == 1
            for bad, code in (([b"GIMME"], "unknown_command"), ([b"REPLAY"], "bad_args"),
                              ([b"REPLAY", b"\xc1"], "bad_args")):
                await req.send_multipart(bad)
                name, header, _ = codec.decode_reply(await req.recv_multipart())
                assert name == "ERROR" and header["error"] == code
                assert svc.counters[f"request.dropped.{code}"] >= 1
            req.close(0)
            ctx.term()
            # The endpoint survived all of it.
            assert (await fetch_snapshot(svc.endpoints["snapshot"])).seq == 2
    run(main())


def test_broken_status_provider_is_an_error_reply() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    async def main() -> None:
        async with bus(status_provider=broken) as svc:
            with pytest.raises(RequestFailed) as info:
                await fetch_status(svc.endpoints["snapshot"])
            assert info.value.code == "status_failed"
            assert (await fetch_snapshot(svc.endpoints["snapshot"])).epoch == svc.epoch
    run(main())


def test_request_to_nobody_times_out() -> None:
    async def main() -> None:
        with pytest.raises(RequestTimeout):
            await fetch_status(dead_endpoint(), timeout=0.2, retries=2)
    run(main())


# -- gap repair --------------------------------------------------------------------------------

def test_stopped_and_restarted_subscriber_replays_its_gap() -> None:
    async def main() -> None:
        async with bus() as svc:
            engine = svc.engine
            async with subscriber(svc) as first:
                await subscribed(svc, first)
                for n in range(1, 6):
                    up(engine, n)
                got = await take(first, 5)
                assert [e.seq for e in got] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
                position = first.position
            assert position == (svc.epoch, 5)
            for n in range(1, 6):  # published while nobody listens
                down(engine, n)
            async with subscriber(svc, resume=position) as second:
                await subscribed(svc, second, 2)
                up(engine, 9)
                got = await take(second, 6)
                assert [e.seq for e in got] == [6, 7, 8, 9, 10, 11]  # type: ignore[union-attr]
                assert [type(e) for e in got] == [NodeDown] * 5 + [NodeUp]
                assert second.counters["replayed"] >= 5
                assert second.counters["gaps_repaired"] >= 1
    run(main())


def test_resume_older_than_ring_takes_a_snapshot() -> None:
    async def main() -> None:
        async with bus(replay_ring=16) as svc:
            engine = svc.engine
            for n in range(1, 41):
                up(engine, n)
            async with subscriber(svc, resume=(svc.epoch, 3)) as sub:
                await subscribed(svc, sub)
                first = await sub.next()
                assert isinstance(first, Snapshot)
                assert first.reason == "replay_too_old" and first.seq == 40
                assert len(first.nodes) == 40
                up(engine, 41)
                nxt = await sub.next()
                assert isinstance(nxt, NodeUp) and nxt.seq == 41
                assert sub.counters["resyncs.replay_too_old"] == 1
    run(main())


def test_subscriber_that_misses_frames_repairs_to_continuous_seq() -> None:
    total = 30_000

    async def main() -> None:
        # Tiny queues on both sides and a tiny kernel buffer: while the subscriber does not
        # read, ZeroMQ drops frames for it (the declared slow-subscriber policy).
        async with bus(send_hwm=1) as svc:
            engine = svc.engine
            sub = subscriber(svc, rcvhwm=1, sockopts={zmq.RCVBUF: 4096})
            async with sub:
                await subscribed(svc, sub)
                engine.publish(IpvsApplied, added=0, removed=0, changed=0, duration=0.0,
                               reason="first")
                assert (await sub.next()).seq == 1  # type: ignore[union-attr]
                assert sub.epoch == svc.epoch  # learnt through a replay request
                for i in range(1, total):
                    engine.publish(IpvsApplied, added=i, removed=0, changed=0, duration=0.0,
                                   reason="flood")
                    if i % 500 == 0:
                        await asyncio.sleep(0)  # let the publisher flush as it goes
                seqs = [1]
                while len(seqs) < total:
                    item = await sub.next()
                    assert isinstance(item, IpvsApplied)
                    seqs.append(item.seq)
                assert seqs == list(range(1, total + 1))
                assert sub.counters["gaps"] >= 1  # frames really were dropped ...
                assert sub.counters["gaps_repaired"] >= 1  # ... and replayed
    run(main())


def test_restarted_service_is_detected_by_new_epoch() -> None:
    async def main() -> None:
        async with bus() as svc1:
            endpoints = dict(svc1.endpoints)
            epoch1 = svc1.epoch
            sub = subscriber(svc1)
            await subscribed(svc1, sub)
            for n in range(1, 4):
                up(svc1.engine, n)
            got = await take(sub, 3)
            assert [e.seq for e in got] == [1, 2, 3]  # type: ignore[union-attr]
        # Same endpoints, new engine (seq starts again), new epoch.
        engine2 = new_engine()
        async with bus(engine2, **endpoints) as svc2:
            assert svc2.epoch != epoch1
            up(engine2, 7, "10.77.0.7")
            item = await sub.next()
            while not isinstance(item, Snapshot):
                item = await sub.next()
            assert item.reason == "epoch_changed" and item.epoch == svc2.epoch
            assert sub.epoch == svc2.epoch
            assert [n["node"] for n in item.nodes] == [7]
            up(engine2, 8)
            nxt = await sub.next()
            assert isinstance(nxt, NodeUp) and nxt.node == 8 and nxt.seq == item.seq + 1
        sub.close()
    run(main())


def test_bind_failure_raises_and_cleans_up() -> None:
    async def main() -> None:
        async with bus() as svc1:
            with pytest.raises(zmq.ZMQError):
                async with bus(publish=svc1.endpoints["publish"]):
                    pass
            # the failed service detached its sink from its own engine; svc1 still runs
            up(svc1.engine, 1)
            assert (await fetch_snapshot(svc1.endpoints["snapshot"])).seq == 1
    run(main())


def test_restart_is_detected_from_the_first_event_of_the_new_run() -> None:
    async def no_heartbeats() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        async with bus() as svc1:
            endpoints = dict(svc1.endpoints)
            sub = subscriber(svc1)
            await subscribed(svc1, sub)
            for n in range(1, 6):
                up(svc1.engine, n)
            got = await take(sub, 5)
            assert [e.seq for e in got] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
            while not sub.batching:  # receiving batch frames, which carry the epoch
                try:
                    await sub.next(timeout=0.05)  # heartbeats are read while waiting
                except TimeoutError:
                    pass
        engine2 = new_engine()
        svc2 = BusService(engine2, parse_config({"bus": endpoints}, file="<test>"))
        svc2.publisher.run_heartbeats = no_heartbeats  # type: ignore[method-assign]
        heartbeats, duplicates = sub.counters["heartbeats"], sub.counters["duplicates"]
        task = asyncio.create_task(svc2.run())
        try:
            await svc2.ready.wait()
            await until(lambda: svc2.counters["subscribe"] >= 2)  # _batch and _hb again
            up(engine2, 7, "10.77.0.7")  # seq 1 of the new run: not a duplicate of seq 1
            item = await sub.next()
            assert isinstance(item, Snapshot)
            assert item.reason == "epoch_changed" and item.epoch == svc2.epoch
            assert [n["node"] for n in item.nodes] == [7] and item.seq == 1
            up(engine2, 8)
            nxt = await sub.next()
            assert isinstance(nxt, NodeUp) and nxt.node == 8 and nxt.seq == 2
            assert sub.counters["heartbeats"] == heartbeats  # no heartbeat told it
            assert sub.counters["duplicates"] == duplicates  # none of the new run's
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            sub.close()
    run(main())


def test_a_client_that_reads_its_replies_is_never_limited() -> None:
    async def main() -> None:
        async with bus() as svc:
            for i in range(3000):
                svc.engine.publish(IpvsApplied, added=i, removed=0, changed=0, duration=0.0,
                                   reason="x" * 60)
            ctx = zmq.asyncio.Context()
            try:
                req = Requester(svc.endpoints["snapshot"], ctx, timeout=10, retries=1)
                after, replies = 0, 0
                while True:  # back to back, as a subscriber repairing a long gap does
                    header, payload = await req.request("REPLAY", after, 10)
                    replies += 1
                    after += len(payload) // 2
                    if not header["more"]:
                        break
                    await req.request("SNAPSHOT")
                assert after == 3000 and replies == 300
                req.close()
            finally:
                ctx.term()
            assert not any(k.startswith("reply.dropped") for k in svc.counters), svc.counters
    run(main())


def test_a_batch_subscriber_that_never_reads_queues_about_send_hwm_events() -> None:
    # libzmq's SNDHWM counts messages and a batch frame carries many events: with SNDHWM =
    # send_hwm a batch subscriber that stopped reading had send_hwm *frames* queued for it
    # in the daemon (up to 512 events each; a soak's RSS grew 5x). Batch frames now carry
    # up to BATCH_EVENTS and SNDHWM is send_hwm / BATCH_EVENTS: about send_hwm events.
    hwm, total, flush = 2000, 100_000, 500

    async def main() -> dict[str, int]:
        async with bus(send_hwm=hwm) as svc:
            engine = svc.engine
            ctx = zmq.Context.instance()
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.RCVHWM, 1)
            sub.setsockopt(zmq.RCVBUF, 4096)
            sub.setsockopt(zmq.LINGER, 0)
            try:
                sub.connect(svc.endpoints["publish"])
                sub.subscribe(codec.BATCH_TOPIC)  # as the Python client does
                await until(lambda: svc.counters["subscribe"] >= 1)
                for i in range(total):  # never read meanwhile
                    engine.publish(IpvsApplied, added=i, removed=0, changed=0,
                                   duration=0.0, reason="flood " + "x" * 58)
                    if i % flush == flush - 1:
                        await asyncio.sleep(0)  # one flush of `flush` events
                await asyncio.sleep(0.5)
                got = 0
                while True:  # now read what was queued for it
                    if not await asyncio.to_thread(sub.poll, 1000):
                        break
                    frames = sub.recv_multipart()
                    got += len(codec.decode_batch(frames))
                return {"got": got, "status": svc.publisher.status()["send_hwm_messages"]}
            finally:
                sub.close(0)

    r = run(main())
    assert r["status"] == hwm // publisher.BATCH_EVENTS + (hwm % publisher.BATCH_EVENTS > 0)
    # send_hwm events in the daemon's queue, plus what the kernel's socket buffers held;
    # (about 1 MB on loopback TCP); with SNDHWM = send_hwm frames all 100,000 were queued
    assert r["got"] < total // 4, r
