"""The conn-sync channel over real ZeroMQ CURVE sockets on loopback: two directors'
relays converge while the test's transport shim drops 20 % of the messages; garbage from
an authorized peer only changes counters; a client with an unknown key is refused."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio
import zmq.auth
from loopbus import dead_endpoint

from clusterbus.plugins.connsync.channel import Channel, ChannelPeer, RelayLink, request_show
from clusterbus.plugins.connsync.relay import Deliver, Effect, Relay, ResyncStarted


class LossyChannel(Channel):
    """The transport shim: drops a share of what it is asked to send (both directions)."""

    def __init__(self, *, loss: float, seed: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.loss = loss
        self.rnd = random.Random(seed)
        self.shim_dropped = 0

    def send(self, peer: int, message: Any) -> bool:
        if self.rnd.random() < self.loss:
            self.shim_dropped += 1
            return False
        return super().send(peer, message)


class Director:
    def __init__(self, node: int, keys: Path, listen: str, peers: list[ChannelPeer],
                 *, loss: float = 0.0) -> None:
        self.node = node
        self.table: dict[str, list[Any]] = {}
        self.received: dict[int, dict[str, list[Any]]] = {p.node: {} for p in peers}
        self.channel = LossyChannel(loss=loss, seed=node, listen=listen,
                                    certificate=str(keys / f"d{node}.key_secret"), peers=peers)
        self.relay = Relay(run=node * 1000, peers=[p.node for p in peers],
                           snapshot=lambda: list(self.table.values()), batch_max=16,
                           window=8, rto=0.05, rto_max=0.5, keepalive=0.2)
        self.link = RelayLink(self.relay, self.channel, self.effect,
                              request=lambda m: ["TABLE", len(self.table)])

    def effect(self, e: Effect) -> None:
        if isinstance(e, ResyncStarted):
            self.received[e.peer] = {}
        elif isinstance(e, Deliver):
            for entry in e.entries:
                self.received[e.peer][entry[0]] = entry

    def originate(self, entries: list[list[Any]]) -> None:
        for entry in entries:
            self.table[entry[0]] = entry
        self.link.originate(entries)


def _keys(tmp: Path) -> Path:
    keys = tmp / "keys"
    keys.mkdir()
    for name in ("d1", "d2", "stranger"):
        zmq.auth.create_certificates(keys, name)
    return keys


def _pair(tmp: Path, loss: float) -> tuple[Director, Director, str, str, Path]:
    keys = _keys(tmp)
    ep1, ep2 = dead_endpoint(), dead_endpoint()
    d1 = Director(1, keys, ep1, [ChannelPeer(node=2, public_key=str(keys / "d2.key"),
                                             endpoint=ep2)], loss=loss)
    d2 = Director(2, keys, ep2, [ChannelPeer(node=1, public_key=str(keys / "d1.key"),
                                             endpoint=ep1)], loss=loss)
    return d1, d2, ep1, ep2, keys


def _dealer(ctx: zmq.asyncio.Context, keys: Path, server: str, client: str) -> zmq.asyncio.Socket:
    """A CURVE DEALER with ``client``'s key pair, for ``server``'s public key."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    pub, sec = zmq.auth.load_certificate(keys / f"{client}.key_secret")
    sock.curve_serverkey = zmq.auth.load_certificate(keys / f"{server}.key")[0]
    sock.curve_publickey, sock.curve_secretkey = pub, sec
    return sock


async def _until(cond: Any, timeout: float = 20.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return True
        await asyncio.sleep(0.02)
    return bool(cond())


def test_two_channels_converge_with_20_percent_loss(tmp_path: Path) -> None:
    d1, d2, *_ = _pair(tmp_path, loss=0.2)

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            t1 = tg.create_task(d1.link.run())
            t2 = tg.create_task(d2.link.run())
            for i in range(50):  # both directions, while the links come up
                d1.originate([[f"a{i}.{j}", i, j] for j in range(10)])
                d2.originate([[f"b{i}", i, 0]])
                if i % 10 == 0:
                    d1.originate([["a0.0", "updated", i]])  # a key updated: last one wins
                await asyncio.sleep(0.005)
            ok = await _until(lambda: d2.received[1] == d1.table and d1.received[2] == d2.table)
            t1.cancel()
            t2.cancel()
        assert ok, (len(d2.received[1]), len(d1.table), len(d1.received[2]), len(d2.table))

    asyncio.run(main())
    assert len(d1.table) == 500 and d1.table["a0.0"] == ["a0.0", "updated", 40]
    assert d1.channel.shim_dropped > 0 and d2.channel.shim_dropped > 0
    c = d1.relay.status(0.0)[2]["counters"]
    assert c["resends"] + d2.relay.status(0.0)[1]["counters"]["nacks.sent"] > 0
    assert d1.channel.counters["frames.received"] > 0


def test_garbage_from_an_authorized_peer_changes_only_counters(tmp_path: Path) -> None:
    d1, d2, ep1, _ep2, keys = _pair(tmp_path, loss=0.0)

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        evil = _dealer(ctx, keys, "d1", "d2")  # d2's key: authorized, but a broken program
        try:
            async with asyncio.TaskGroup() as tg:
                t1 = tg.create_task(d1.link.run())
                t2 = tg.create_task(d2.link.run())
                d2.originate([["k1", 1, 1]])
                assert await _until(lambda: d1.received[2] == d2.table)
                evil.connect(ep1)
                garbage = [b"", b"\xc1", b"\x92\x01", msgpack.packb(["B", 1]),
                           msgpack.packb(["B", 2000, 1, 1, 9, []]),
                           msgpack.packb(["B", 2000, 1, 5, 0, "x" * 10]),
                           msgpack.packb(["A", 2000, 1000, 1, 99]),
                           msgpack.packb(["Q", 1, 2, 3]), msgpack.packb({"a": 1}),
                           bytes(range(256)) * 64]
                for g in garbage:
                    await evil.send(g)
                await evil.send_multipart([b"two", b"frames"])
                assert await _until(lambda: sum(
                    v for k, v in d1.channel.counters.items() if k.startswith("dropped.")) >= 10)
                d2.originate([["k2", 2, 2]])  # the link still works
                assert await _until(lambda: d1.received[2] == d2.table)
                t1.cancel()
                t2.cancel()
        finally:
            evil.close(0)
            ctx.term()

    asyncio.run(main())
    dropped = {k: v for k, v in d1.channel.counters.items() if k.startswith("dropped.") and v}
    assert dropped.get("dropped.bad_frame", 0) >= 3 and dropped.get("dropped.bad_message", 0) >= 4
    assert d1.received[2] == {"k1": ["k1", 1, 1], "k2": ["k2", 2, 2]}


def test_unknown_key_is_refused_and_the_daemon_key_may_ask(tmp_path: Path) -> None:
    d1, _d2, ep1, _ep2, keys = _pair(tmp_path, loss=0.0)

    async def main() -> Any:
        ctx = zmq.asyncio.Context()
        stranger = _dealer(ctx, keys, "d1", "stranger")
        try:
            async with asyncio.TaskGroup() as tg:
                t1 = tg.create_task(d1.link.run())
                await asyncio.sleep(0.1)
                stranger.connect(ep1)
                await stranger.send(msgpack.packb(["A", 5, 0, 1, 0]))
                refused = await _until(lambda: d1.channel.counters["auth_denied"] >= 1, 10.0)
                shown = await request_show(ep1, str(keys / "d1.key_secret"),
                                           str(keys / "d1.key"))
                t1.cancel()
        finally:
            stranger.close(0)
            ctx.term()
        return refused, shown

    refused, shown = asyncio.run(main())
    assert refused
    assert d1.channel.counters["frames.received"] == 1  # only the SHOW request got in
    assert d1.relay.peers[2].counters["acks.received"] == 0
    assert shown == ["TABLE", 0]


def test_a_peer_without_an_endpoint_is_answered_over_its_connection(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    ep1, ep2 = dead_endpoint(), dead_endpoint()
    d1 = Director(1, keys, ep1, [ChannelPeer(node=2, public_key=str(keys / "d2.key"))])
    d2 = Director(2, keys, ep2, [ChannelPeer(node=1, public_key=str(keys / "d1.key"),
                                             endpoint=ep1)])

    async def main() -> bool:
        async with asyncio.TaskGroup() as tg:
            t1 = tg.create_task(d1.link.run())
            t2 = tg.create_task(d2.link.run())
            d1.originate([["x", 1, 1]])
            d2.originate([["y", 2, 2]])
            ok = await _until(lambda: d2.received[1] == d1.table and d1.received[2] == d2.table)
            t1.cancel()
            t2.cancel()
        return ok

    assert asyncio.run(main())
    assert d1.received[2] == {"y": ["y", 2, 2]} and d2.received[1] == {"x": ["x", 1, 1]}


class _Proxy:
    """A TCP forwarder on loopback that can freeze: it stops passing bytes and keeps the
    connections open, as a peer host that died without closing anything."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self.target = (host, int(port))
        self.frozen = False
        self.accepted = 0
        self.server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"tcp://127.0.0.1:{port}"

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        ur, uw = await asyncio.open_connection(*self.target)
        self.writers += [w, uw]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                while self.frozen:  # hold the bytes: nothing passes, nothing closes
                    await asyncio.sleep(0.05)
                dst.write(data)
                await dst.drain()

        try:
            await asyncio.gather(pipe(r, uw), pipe(ur, w))
        except (ConnectionError, asyncio.CancelledError):
            pass

    def close(self) -> None:
        for w in self.writers:
            w.close()
        if self.server is not None:
            self.server.close()


def test_heartbeats_notice_a_peer_that_went_silent(tmp_path: Path) -> None:
    """A link whose peer stops answering without closing it (the host died, a cable was
    cut) is closed by the ZeroMQ heartbeat and connected again when the peer is back;
    TCP alone would wait for minutes."""
    keys = _keys(tmp_path)
    ep1, ep2 = dead_endpoint(), dead_endpoint()

    async def main() -> tuple[dict[str, int], int, bool]:
        proxy = _Proxy(ep2)
        via = await proxy.start()
        c1 = Channel(listen=ep1, certificate=str(keys / "d1.key_secret"), heartbeat=(0.2, 0.6),
                     peers=[ChannelPeer(node=2, public_key=str(keys / "d2.key"), endpoint=via)])
        c2 = Channel(listen=ep2, certificate=str(keys / "d2.key_secret"), heartbeat=(0.2, 0.6),
                     peers=[ChannelPeer(node=1, public_key=str(keys / "d1.key"))])
        c1.open()
        c2.open()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(c.serve(lambda n, m: None)) for c in (c1, c2)]
                up = await _until(lambda: c1.link_up.get(2) is True)
                proxy.frozen = True
                down = await _until(lambda: c1.counters["link.disconnected"] >= 1)
                was_down = c1.link_up.get(2) is False
                proxy.frozen = False
                back = await _until(lambda: c1.counters["link.connected"] >= 2
                                    and c1.link_up.get(2) is True)
                for t in tasks:
                    t.cancel()
        finally:
            c1.close()
            c2.close()
            proxy.close()
        assert up and down and back
        return dict(c1.counters), proxy.accepted, was_down

    counters, accepted, was_down = asyncio.run(main())
    assert was_down
    assert counters["link.disconnected"] >= 1 and counters["link.connected"] >= 2
    assert accepted >= 2  # the DEALER connected again on its own
