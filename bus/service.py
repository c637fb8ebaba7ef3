"""The bus service: the daemon's three ZeroMQ endpoints on one asyncio loop.

* publish (XPUB, ``bus.publish``): every event the engine dispatches, plus heartbeats
  (:mod:`clusterbus.bus.publisher`);
* ingest (PULL, ``bus.ingest``): membership reports from external programs, turned into
  ``engine.report(NodeReport(..., reason="zmq"))``;
* snapshot (ROUTER, ``bus.snapshot``): ``SNAPSHOT``, ``REPLAY`` and ``STATUS`` requests.

Malformed input on any socket is dropped, counted by reason in :attr:`BusService.counters`
and logged at DEBUG; nothing else changes. The wire format is in docs/wire-protocol.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from ..config import Config
from ..engine import Engine
from .codec import (
    MAX_FRAME,
    FrameError,
    decode_ingest,
    decode_request,
    encode_reply,
    encode_snapshot,
)
from .publisher import Publisher
from .ring import OK, Ring
from .security import BusSecurity, prepare_ipc_dir
from .sockets import NOBLOCK, SNDMORE, Reader

__all__ = ["BusService", "REPLAY_BATCH", "MAX_REPLAY_BATCH", "MAX_REPLAY_BYTES",
           "MAX_INBOUND", "MAX_PEER_REQUESTS", "MAX_PEER_REPLIES",
           "MAX_QUEUED_BYTES", "MAX_QUEUED_PEERS"]

log = logging.getLogger(__name__)


#: Events per REPLAY reply when the request gives no limit.
REPLAY_BATCH = 1000
#: Largest limit a REPLAY request may ask for.
MAX_REPLAY_BATCH = 10_000
#: ZMQ_MAXMSGSIZE of the ingest and snapshot sockets: libzmq disconnects a peer that sends a
#: bigger frame. Frames between MAX_FRAME and this reach the decoder and are counted as
#: ``oversized``; beyond it they cost no memory at all.
MAX_INBOUND = 16 * MAX_FRAME

#: Bytes of events in one REPLAY reply: a reply stops early (``more`` = true) rather
#: than grow past this.
MAX_REPLAY_BYTES = 1024 * 1024
#: Requests ZeroMQ queues per peer before it stops reading that peer (ROUTER RCVHWM).
MAX_PEER_REQUESTS = 16
#: Replies to one peer that may wait in ZeroMQ's queues (sent by us, not yet taken by
#: the peer's connection: ROUTER SNDHWM); more are dropped and counted
#: (``reply.dropped.queue_full``). A REPLAY reply is at most MAX_REPLAY_BYTES.
MAX_PEER_REPLIES = 8
#: Bytes of replies to all peers together that may wait (``reply.dropped.total_limit``).
MAX_QUEUED_BYTES = 64 * 1024 * 1024
#: Peers that may have replies waiting at once.
MAX_QUEUED_PEERS = 1024

StatusProvider = Callable[[], dict[str, Any]]


def _no_status() -> dict[str, Any]:
    return {}


def _bind_error(key: str, endpoint: str, exc: zmq.ZMQError) -> zmq.ZMQError:
    # the same error, in one line that names the configuration key and the endpoint
    # (pyzmq's own message repeats the endpoint as "(addr='...')")
    reason = zmq.strerror(exc.errno) if exc.errno is not None else str(exc)
    return zmq.ZMQError(exc.errno, f"[bus] {key}: cannot bind {endpoint}: {reason}")


def _split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    # ROUTER prefixes the peer identity. A REQ peer (or a DEALER imitating one) adds an
    # empty delimiter frame; commands are never empty, so the two shapes are unambiguous.
    if len(frames) >= 2 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]


class BusService:
    """Publisher, ingest and snapshot/replay endpoints of one daemon.

    The publisher is attached to ``engine.sinks`` at construction, so events produced while
    the daemon starts are in the replay ring even before the sockets are bound.

    ``[bus] enabled`` is not read here: it decides whether the daemon builds a BusService
    at all, and building one asks for the endpoints.

    :param engine: the daemon's engine.
    :param config: the validated configuration (section ``[bus]``).
    :param status_provider: returns the msgpack-able dict a ``STATUS`` request answers
        (``clusterbus status``); default ``{}``.
    :param epoch: this run's epoch; default a random non-zero u64 (tests may fix it).
    :param clock: UNIX time source for heartbeats.
    """

    def __init__(
        self,
        engine: Engine,
        config: Config,
        *,
        status_provider: StatusProvider | None = None,
        epoch: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        bus = config["bus"]
        self.engine = engine
        self.config = config
        self.status_provider = status_provider or _no_status
        self.epoch = epoch if epoch is not None else (secrets.randbits(64) or 1)
        #: what happened, in dotted keys: ``ingest.received``, ``ingest.accepted``,
        #: ``ingest.unchanged``, ``ingest.dropped.<code>``, ``request.received``,
        #: ``request.<command>``, ``request.dropped.<code>``, ``reply.dropped.<why>``
        #: and the publisher's (see :class:`~clusterbus.bus.publisher.Publisher`).
        self.counters: dict[str, int] = {
            "ingest.received": 0, "ingest.accepted": 0, "ingest.unchanged": 0,
            "request.received": 0,
        }
        self.ring = Ring(bus["replay_ring"])
        self.publisher = Publisher(
            bus["publish"], epoch=self.epoch, origin=engine.origin, ring=self.ring,
            send_hwm=bus["send_hwm"], heartbeat_interval=bus["heartbeat_interval"],
            counters=self.counters, clock=clock,
        )
        #: the endpoints as bound (``tcp://127.0.0.1:*`` resolved to the real port).
        self.endpoints: dict[str, str] = {
            "publish": bus["publish"], "ingest": bus["ingest"], "snapshot": bus["snapshot"],
        }
        #: set once every socket is bound (tests and the daemon may wait for it).
        self.ready = asyncio.Event()
        #: CURVE (``[bus] certificate``), or None when off.
        self.security = BusSecurity.from_config(bus, self.counters, config.file)
        self._router: zmq.Socket[Any] | None = None
        #: peer identity -> (tracker, bytes) of each reply still in ZeroMQ's queues
        self._queued: dict[bytes, deque[tuple[zmq.MessageTracker, int]]] = {}
        self._queued_bytes = 0
        engine.sinks.append(self.publisher)

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Bind the three endpoints and serve until cancelled; sockets are closed on exit.

        :raises zmq.ZMQError: an endpoint cannot be bound (address in use, bad endpoint);
            its message names the ``[bus]`` key and the endpoint.
        """
        ctx: zmq.Context[Any] = zmq.Context()
        socks: list[zmq.Socket[Any]] = []
        readers: list[Reader] = []
        security = self.security
        try:
            for endpoint in self.endpoints.values():
                prepare_ipc_dir(endpoint)
            if security is not None:
                # the authenticator and the handshake monitors are asyncio sockets
                security.start(zmq.asyncio.Context.shadow(ctx.underlying))
            try:
                self.publisher.open(ctx, None if security is None
                                    else functools.partial(security.server, name="publish"))
            except zmq.ZMQError as exc:
                raise _bind_error("publish", self.endpoints["publish"], exc) from None
            self.endpoints["publish"] = self.publisher.bound
            pull = self._bind(ctx, zmq.PULL, "ingest", socks)
            router = self._bind(ctx, zmq.ROUTER, "snapshot", socks)
            readers += (Reader(pull), Reader(router))
            self._router = router
            self.ready.set()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.publisher.run_heartbeats(), name="bus-heartbeats")
                # Each socket gets a bounded share of every loop turn (TURN_BUDGET
                # messages): a flood of reports or requests never stops heartbeats,
                # STATUS replies or the rest of the daemon.
                tg.create_task(readers[0].serve(self._ingest), name="bus-ingest")
                tg.create_task(readers[1].serve(self._request), name="bus-requests")
                if security is not None:
                    tg.create_task(security.run(), name="bus-security")
        finally:
            self.ready.clear()
            self._router = None
            if security is not None:
                security.stop()
            self._detach()
            for reader in readers:
                reader.close()
            self.publisher.close()
            for sock in socks:
                sock.close(0)
            ctx.term()

    def _detach(self) -> None:
        if self.publisher in self.engine.sinks:
            self.engine.sinks.remove(self.publisher)

    def _bind(self, ctx: zmq.Context[Any], kind: int, name: str,
              socks: list[zmq.Socket[Any]]) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = ctx.socket(kind)
        socks.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND)
        if kind == zmq.ROUTER:
            # Unroutable replies (the requester went away) raise EHOSTUNREACH instead of
            # vanishing, so they are counted.
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            # Requests and replies queued per peer: a peer can make us hold only a few.
            sock.setsockopt(zmq.RCVHWM, MAX_PEER_REQUESTS)
            sock.setsockopt(zmq.SNDHWM, MAX_PEER_REPLIES)
            # send(copy=False) of a small frame copies it and returns a finished tracker
            # unless the threshold is 0: replies must be tracked (see _reply)
            sock.copy_threshold = 0
        if self.security is not None:
            self.security.server(sock, name)
        try:
            sock.bind(self.endpoints[name])
        except zmq.ZMQError as exc:
            raise _bind_error(name, self.endpoints[name], exc) from None
        self.endpoints[name] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("bus %s endpoint on %s", name, self.endpoints[name])
        return sock

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    # -- ingest ---------------------------------------------------------------------------

    def _ingest(self, frames: list[bytes]) -> None:
        self.counters["ingest.received"] += 1
        try:
            report = decode_ingest(frames)
        except FrameError as exc:
            self._count(f"ingest.dropped.{exc.code}")
            log.debug("dropped ingest frame (%s): %s", exc.code, exc)
            return
        if self.engine.report(report) is None:
            self.counters["ingest.unchanged"] += 1
        else:
            self.counters["ingest.accepted"] += 1

    # -- snapshot / replay / status ---------------------------------------------------------

    def _request(self, frames: list[bytes]) -> None:
        self.counters["request.received"] += 1
        envelope, body = _split_envelope(frames)
        try:
            command, args = decode_request(body)
            reply = self._answer(command, args)
        except FrameError as exc:
            self._count(f"request.dropped.{exc.code}")
            log.debug("bad request (%s): %s", exc.code, exc)
            reply = encode_reply("ERROR", {"epoch": self.epoch, "error": exc.code,
                                           "message": str(exc)})
        self._reply(envelope, reply)

    def _reply(self, envelope: list[bytes], reply: list[bytes]) -> None:
        """Send a reply unless its peer, or all peers together, already have too much of
        ours waiting in ZeroMQ's queues: a peer that sends requests and never reads must
        cost a bounded amount of memory. Per peer, libzmq refuses a reply while
        :data:`MAX_PEER_REPLIES` wait (SNDHWM; ``reply.dropped.queue_full``); in total,
        replies are refused while :data:`MAX_QUEUED_BYTES` or replies to
        :data:`MAX_QUEUED_PEERS` peers wait (``reply.dropped.total_limit``). The peer's
        own timeout and retry take over (the Lazy Pirate pattern)."""
        sock = self._router
        if sock is None:
            return
        size = sum(map(len, reply))
        self._release()
        peer = envelope[0]
        if self._queued_bytes and (self._queued_bytes + size > MAX_QUEUED_BYTES
                                   or (peer not in self._queued
                                       and len(self._queued) >= MAX_QUEUED_PEERS)):
            self._count("reply.dropped.total_limit")
            return
        try:
            # Every part but the last is copied into ZeroMQ; the last one is tracked:
            # libzmq releases a message's parts in order once its connection took them,
            # so the reply stops costing memory when the last part is released. (The
            # release is reported by pyzmq's collector thread, a little late: only the
            # total is judged by it, the per-peer limit is libzmq's own.)
            sock.send_multipart(envelope + reply[:-1], NOBLOCK | SNDMORE)
            tracker = sock.send(reply[-1], NOBLOCK, copy=False, track=True)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: peer gone; EAGAIN: its queue is full
            self._count("reply.dropped.unroutable" if exc.errno == zmq.EHOSTUNREACH
                        else "reply.dropped.queue_full")
            log.debug("reply not sent: %s", exc)
            return
        if not tracker.done:
            self._queued.setdefault(peer, deque()).append((tracker, size))
            self._queued_bytes += size

    def _release(self) -> None:
        """Forget the replies ZeroMQ has handed to their connections."""
        for peer, queued in list(self._queued.items()):
            while queued and queued[0][0].done:
                self._queued_bytes -= queued.popleft()[1]
            if not queued:
                del self._queued[peer]

    def _answer(self, command: str, args: tuple[int, ...]) -> list[bytes]:
        self._count(f"request.{command.lower()}")
        if command == "SNAPSHOT":
            return encode_snapshot(self.epoch, self.engine.snapshot())
        if command == "REPLAY":
            return self._replay(args[0], args[1] if len(args) > 1 else REPLAY_BATCH)
        return self._status_reply()

    def _replay(self, after: int, limit: int) -> list[bytes]:
        limit = max(1, min(limit, MAX_REPLAY_BATCH))
        status, entries = self.ring.after(after, limit)
        payload: list[bytes] = []
        size = 0
        for i, entry in enumerate(entries):
            size += len(entry.topic) + len(entry.body)
            if size > MAX_REPLAY_BYTES and i:
                del entries[i:]  # the rest comes with the next request ("more")
                break
            payload += (entry.topic, entry.body)
        last = entries[-1].seq if entries else after
        header = {
            "epoch": self.epoch, "origin": self.engine.origin, "status": status,
            "after": after, "first": self.ring.first, "head": self.ring.last,
            "count": len(entries), "more": status == OK and last < self.ring.last,
        }
        return encode_reply("REPLAY", header, payload)

    def _status_reply(self) -> list[bytes]:
        try:
            status = self.status_provider()
        except Exception:  # supervisor boundary: a broken provider must not stop the bus
            log.exception("status provider failed")
            self._count("request.dropped.status_failed")
            return encode_reply("ERROR", {"epoch": self.epoch, "error": "status_failed",
                                          "message": "the status provider raised"})
        try:
            return encode_reply("STATUS", {"epoch": self.epoch, "status": status})
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("status is not msgpack-able: %s", exc)
            self._count("request.dropped.status_unencodable")
            return encode_reply("ERROR", {"epoch": self.epoch, "error": "status_unencodable",
                                          "message": str(exc)})

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Plain data for ``clusterbus status``."""
        return {
            "epoch": self.epoch,
            "endpoints": dict(self.endpoints),
            "publisher": self.publisher.status(),
            "counters": dict(self.counters),
            "security": self.security.status() if self.security else {"curve": False},
        }
