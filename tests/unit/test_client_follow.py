"""``Subscriber.follow()``: events handed on from the SUB socket's wake-up callback (the
daemon's peer links use it), with the same gap repair as ``next()``.

A real XPUB and ROUTER on ipc stand in for a peer daemon: the tests choose exactly which
frames arrive, and when. Frames sent while the test blocks the loop (``time.sleep``)
are all queued on the SUB side before its one wake-up: the callback must read on until
none is left, since the edge-triggered ZeroMQ fd gives no second wake-up for them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from clusterbus.bus import client as client_module
from clusterbus.bus.client import Snapshot, Subscriber
from clusterbus.bus.codec import (
    Heartbeat,
    decode_request,
    encode,
    encode_heartbeat,
    encode_reply,
)
from clusterbus.engine import Engine
from clusterbus.events import Event, NodeUp
from clusterbus.peers import PeerLink
from clusterbus.pluginhost import PluginHost, hookimpl
from clusterbus.testing.bus import run, until

EPOCH = 7
#: what the test's own wait for the frames to be queued costs (the loop is blocked)
SETTLE = 0.2


def node_up(seq: int, origin: int = 2) -> NodeUp:
    return NodeUp(origin=origin, seq=seq, time=1.0, node=42, addrs=(), view=seq,
                  joined=(42,), left=(), reason="test")


class Peer:
    """A peer daemon's publish (XPUB) and snapshot (ROUTER) sockets."""

    def __init__(self, tmp: Path, server: Path | None = None) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.pub = self.ctx.socket(zmq.XPUB)
        self.router = self.ctx.socket(zmq.ROUTER)
        if server is not None:  # CURVE with this secret key (no ZAP: any client key)
            public, secret = zmq.auth.load_certificate(server)
            for sock in (self.pub, self.router):
                sock.curve_server, sock.curve_publickey = True, public
                sock.curve_secretkey = secret
        self.publish, self.snapshot = f"ipc://{tmp}/pub", f"ipc://{tmp}/snap"
        self.pub.bind(self.publish)
        self.router.bind(self.snapshot)
        self.ring: dict[int, NodeUp] = {}

    async def subscribed(self) -> None:
        """Wait for the subscriber's subscription (before it, the XPUB drops frames)."""
        await until(lambda: bool(self.pub.poll(0)))
        self.pub.recv()

    def heartbeat(self, seq: int, epoch: int = EPOCH) -> None:
        self.pub.send_multipart(encode_heartbeat(Heartbeat(epoch=epoch, origin=2, seq=seq,
                                                           time=1.0, interval=1.0)))

    def events(self, *seqs: int) -> None:
        """Publish these events (each one also kept for REPLAY), one frame each."""
        for seq in seqs:
            self.ring[seq] = node_up(seq)
            self.pub.send_multipart(encode(self.ring[seq]))

    async def answer(self, epoch: int = EPOCH, snapshot_seq: int = 0) -> str:
        """Answer the next request (REPLAY from the ring, or SNAPSHOT); return its name."""
        await until(lambda: bool(self.router.poll(0)))
        ident, *request = self.router.recv_multipart()
        command, args = decode_request(request)
        if command == "REPLAY":
            payload = [f for s in sorted(self.ring) if s > args[0]
                       for f in encode(self.ring[s])]
            reply = encode_reply("REPLAY", {"epoch": epoch, "status": "ok", "more": False},
                                 payload)
        else:
            reply = encode_reply("SNAPSHOT", {"epoch": epoch, "origin": 2,
                                              "seq": snapshot_seq, "view": 1})
        self.router.send_multipart([ident, *reply])
        return command

    def close(self) -> None:
        self.ctx.destroy(0)


@pytest.fixture
def peer(tmp_path: Path) -> Any:
    p = Peer(tmp_path)
    yield p
    p.close()


class Follower:
    """``Subscriber.follow()`` running as a task; what it handed on and returned."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.got: list[int] = []
        self.snapshots: list[Snapshot] = []
        self.task = asyncio.ensure_future(self._run())

    def _on_event(self, event: Event) -> None:
        self.got.append(event.seq)

    async def _run(self) -> None:
        while True:
            self.snapshots.append(await self.sub.follow(self._on_event))

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def started(peer: Peer, sub: Subscriber) -> Follower:
    sub.open()
    await peer.subscribed()
    f = Follower(sub)
    peer.heartbeat(0)  # the epoch and the start of the sequence
    await until(lambda: sub.counters["heartbeats"] == 1)
    return f


def test_several_frames_queued_at_one_wake_up_are_all_handed_on(peer: Peer) -> None:
    async def main() -> list[int]:
        sub = Subscriber(peer.publish, peer.snapshot)
        try:
            f = await started(peer, sub)
            peer.events(1, 2, 3, 4, 5)
            time.sleep(SETTLE)  # the loop is blocked: all five are queued at the wake-up
            await until(lambda: len(f.got) == 5)
            await f.stop()
            return f.got
        finally:
            sub.close()

    assert run(main(), limit=10) == [1, 2, 3, 4, 5]


def test_a_burst_over_the_turn_budget_goes_on_at_the_next_turn(
        peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "TURN_BUDGET", 2)

    async def main() -> tuple[list[int], list[int]]:
        sub = Subscriber(peer.publish, peer.snapshot)
        turns: list[int] = []  # events handed on by the end of each loop turn
        try:
            f = await started(peer, sub)
            peer.events(*range(1, 8))
            time.sleep(SETTLE)
            while len(f.got) < 7:
                await asyncio.sleep(0)
                turns.append(len(f.got))
            await f.stop()
            return f.got, turns
        finally:
            sub.close()

    got, turns = run(main(), limit=10)
    assert got == list(range(1, 8))
    steps = [b - a for a, b in zip([0, *turns], turns)]
    # a couple per turn (two, or four if a second wake-up came in the same turn)
    assert max(steps) <= 4 and sum(1 for s in steps if s) >= 2


def test_frames_that_arrive_during_a_repair_are_read_after_it(peer: Peer) -> None:
    async def main() -> tuple[list[int], dict[str, int]]:
        sub = Subscriber(peer.publish, peer.snapshot)
        try:
            f = await started(peer, sub)
            peer.ring[2] = node_up(2)  # in the ring, never received: a gap
            peer.events(1, 3)
            await until(lambda: f.got == [1])
            await until(lambda: bool(peer.router.poll(0)))  # the REPLAY request
            peer.events(4, 5)  # queued while the repair is under way
            time.sleep(SETTLE)
            assert await peer.answer() == "REPLAY"
            await until(lambda: len(f.got) == 5)
            await f.stop()
            return f.got, dict(sub.counters)
        finally:
            sub.close()

    got, counters = run(main(), limit=10)
    assert got == [1, 2, 3, 4, 5]
    assert counters["gaps"] == 1 and counters["gaps_repaired"] == 1


def test_a_new_epoch_returns_the_snapshot_and_bad_frames_only_count(peer: Peer) -> None:
    async def main() -> tuple[list[int], list[Snapshot], dict[str, int]]:
        sub = Subscriber(peer.publish, peer.snapshot)
        try:
            f = await started(peer, sub)
            peer.events(1)
            peer.pub.send_multipart([b"node.up", b"\xc1 not msgpack"])
            peer.pub.send_multipart([b"x"])
            peer.events(2)
            await until(lambda: f.got == [1, 2])
            peer.heartbeat(0, epoch=EPOCH + 1)  # the peer restarted
            assert await peer.answer(epoch=EPOCH + 1, snapshot_seq=0) == "SNAPSHOT"
            await until(lambda: len(f.snapshots) == 1)
            peer.ring.clear()
            peer.events(1)  # the new run's first event
            await until(lambda: f.got == [1, 2, 1])
            await f.stop()
            return f.got, f.snapshots, dict(sub.counters)
        finally:
            sub.close()

    got, snaps, counters = run(main(), limit=10)
    assert snaps[0].epoch == EPOCH + 1 and snaps[0].reason == "epoch_changed"
    assert sum(v for k, v in counters.items() if k.startswith("dropped.")) == 2
    assert counters["delivered"] == 3


def test_an_exception_of_the_consumer_ends_follow_and_the_next_call_goes_on(peer: Peer) -> None:
    async def main() -> tuple[list[int], list[int]]:
        sub = Subscriber(peer.publish, peer.snapshot)
        got: list[int] = []

        def fussy(event: Event) -> None:
            if event.seq == 2 and 2 not in failed:
                failed.append(2)
                raise RuntimeError("hook broke")
            got.append(event.seq)

        failed: list[int] = []
        try:
            sub.open()
            await peer.subscribed()
            peer.heartbeat(0)
            peer.events(1, 2, 3)
            with pytest.raises(RuntimeError, match="hook broke"):
                await sub.follow(fussy)
            task = asyncio.ensure_future(sub.follow(fussy))
            await until(lambda: len(got) == 2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return got, failed
        finally:
            sub.close()

    got, failed = run(main(), limit=10)
    assert failed == [2] and got == [1, 3]  # the event that raised is consumed


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    @hookimpl
    def clusterbus_event(self, event: Event) -> None:
        self.seen.append((event.topic, event.origin, event.seq))


def test_a_peer_link_hands_events_to_the_hooks_from_the_wake_up(tmp_path: Path) -> None:
    """PeerLink.follow() (CURVE, as configured) to the stand-in peer: the events reach the
    hooks, a wrong origin is dropped and counted, a restart is director.down then up."""
    zmq.auth.create_certificates(str(tmp_path), "d1")
    zmq.auth.create_certificates(str(tmp_path), "d2")
    peer = Peer(tmp_path, server=tmp_path / "d2.key_secret")
    host = PluginHost()
    rec = _Recorder()
    host.register(rec, "rec")
    engine = Engine(origin=1, plugins=host)
    link = PeerLink({"node": 2, "publish": peer.publish, "snapshot": peer.snapshot,
                     "public_key": str(tmp_path / "d2.key")},
                    str(tmp_path / "d1.key_secret"), engine)

    async def main() -> None:
        link.sub.open()
        await peer.subscribed()
        task = asyncio.ensure_future(link.follow())
        try:
            peer.heartbeat(0)
            peer.events(1, 2)
            peer.ring[3] = node_up(3, origin=5)
            peer.pub.send_multipart(encode(peer.ring[3]))
            time.sleep(SETTLE)
            await until(lambda: link.counters["dropped.wrong_origin"] == 1)
            link.check()
            peer.heartbeat(3, epoch=EPOCH + 1)  # restarted
            assert await peer.answer(epoch=EPOCH + 1, snapshot_seq=0) == "SNAPSHOT"
            await until(lambda: link.liveness.counters["restarts"] == 1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            link.sub.close()
            peer.close()

    run(main(), limit=10)
    assert [s for s in rec.seen if s[0] == "node.up"] == [("node.up", 2, 1), ("node.up", 2, 2)]
    assert [(s[0], s[1]) for s in rec.seen if s[0].startswith("director.")] == [
        ("director.up", 1), ("director.down", 1), ("director.up", 1)]
    assert link.counters["events.delivered"] == 2
    assert link.last_event == {"topic": "node.up", "origin": 2, "seq": 2}


def test_raise_when_dead_ends_follow_with_publisher_lost(peer: Peer) -> None:
    async def main() -> list[int]:
        sub = Subscriber(peer.publish, peer.snapshot, raise_when_dead=True, dead_after=0.5)
        got: list[int] = []
        try:
            sub.open()
            await peer.subscribed()
            peer.heartbeat(0)
            peer.events(1)
            with pytest.raises(client_module.PublisherLost, match="no heartbeat"):
                await sub.follow(lambda e: got.append(e.seq))  # then silence
            return got
        finally:
            sub.close()

    assert run(main(), limit=10) == [1]
