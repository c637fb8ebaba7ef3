"""The subscriber client library: receive a daemon's events in order, without gaps.

Typical use::

    from clusterbus.bus.client import Subscriber, Snapshot

    async with Subscriber(publish="tcp://127.0.0.1:7661",
                          snapshot="tcp://127.0.0.1:7663",
                          prefixes=("node.",)) as sub:
        async for item in sub:
            if isinstance(item, Snapshot):   # state was re-read (see below)
                rebuild_from(item)
            else:                            # an Event, seq = previous seq + 1
                handle(item)

:class:`Subscriber` follows the ZeroMQ guide's Clone pattern: it reads the daemon's PUB
stream and, when it notices it missed something, asks the daemon's snapshot endpoint:

* an event whose seq jumps over the next expected one, or a heartbeat announcing a seq
  ahead of the last one seen: ``REPLAY`` the missing events from the daemon's ring;
* the ring no longer holds them, or the epoch changed (the daemon restarted and counts
  from 1 again; a heartbeat, a reply or the batch frame of the new run's first event says
  so): ``SNAPSHOT`` -- the iterator then yields a :class:`Snapshot` (the view as the
  daemon has it now) and continues with the events after it.

The rules live in a sans-IO state machine, :class:`~clusterbus.bus.sequencer.Sequencer`;
:class:`Subscriber` only reads the sockets, decodes, feeds it, and carries out its
requests.

Events are therefore delivered in seq order with no hole: either every event, or a
:class:`Snapshot` that says exactly where continuity was re-established. Prefix filtering
happens here, not in ZeroMQ, because the seq numbers cover every topic: a subscriber that
only received ``node.*`` could not tell a missed event from a filtered one.

Also here: :func:`emit` (send one membership report to the ingest endpoint, used by
``clusterbus emit --via zmq``), :func:`fetch_status` and :func:`fetch_snapshot` (one
request to the snapshot endpoint, used by ``clusterbus status``), :func:`item_to_dict`
(JSON-friendly form of what the iterator yields, for ``clusterbus events --json``).
The wire protocol is specified in docs/wire-protocol.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import zmq
import zmq.asyncio

from ..config import Config
from ..errors import ClusterbusError, ConfigError, RemoteProtocolError
from ..events import Event
from .codec import (
    BATCH_TOPIC,
    HEARTBEAT_TOPIC,
    FrameError,
    Heartbeat,
    UnknownTopic,
    decode,
    decode_batch_epoch,
    decode_event,
    decode_heartbeat,
    decode_reply,
    encode_ingest,
    encode_request,
)
from .security import load_client_keys
from .sequencer import Request, RequestSnapshot, Sequencer, Unknown
from .sockets import TURN_BUDGET, Reader

__all__ = [
    "Subscriber",
    "MultiSubscriber",
    "split_connect",
    "Snapshot",
    "Requester",
    "PublisherLost",
    "RequestTimeout",
    "RequestFailed",
    "emit",
    "fetch_status",
    "fetch_snapshot",
    "item_to_dict",
    "connectable",
]

log = logging.getLogger(__name__)



def _stand_in(exc: FrameError) -> Unknown | None:
    """The stand-in for an undecodable event that must still count toward the sequence,
    or ``None`` when its seq cannot be known (it is then missing, i.e. a gap)."""
    if isinstance(exc, UnknownTopic) and exc.seq is not None:
        return Unknown(exc.seq, exc.topic)
    return None


class PublisherLost(ClusterbusError):
    """No heartbeat from the daemon for ``dead_after`` seconds (``raise_when_dead=True``)."""


class RequestTimeout(ClusterbusError, TimeoutError):
    """The snapshot endpoint did not answer (after every retry)."""


class RequestFailed(RemoteProtocolError):
    """The snapshot endpoint answered with an error or with something unusable.

    :param code: the ``error`` code of an ``ERROR`` reply (``unknown_command``, ...), or
        ``bad_reply``.
    """

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """The daemon's membership state at ``seq`` (yielded when continuity was re-established).

    :param epoch: the daemon run's epoch.
    :param origin: the daemon's node number.
    :param seq: the last event seq included in this state; the next event is ``seq + 1``.
    :param view: the membership view id.
    :param nodes: one mapping per node: ``node``, ``state`` (``up``/``down``/``coming_up``/
        ``going_down``), ``addrs``, ``incarnation``, ``view``.
    :param nodemap: node number (as a string) -> addresses.
    :param reason: why it was taken: ``initial``, ``replay_too_old``, ``epoch_changed``,
        ``replay_ahead``, ``replay_hole``, ``replay_invalid``.
    """

    epoch: int
    origin: int
    seq: int
    view: int
    nodes: tuple[Mapping[str, Any], ...] = ()
    nodemap: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    reason: str = ""

    @classmethod
    def from_header(cls, header: Mapping[str, Any], reason: str = "") -> Snapshot:
        """Build from a ``SNAPSHOT`` reply header.

        :raises RequestFailed: a field is missing or has the wrong type.
        """
        try:
            ints = {k: header[k] for k in ("epoch", "origin", "seq", "view")}
            nodes = header.get("nodes", ())
            nodemap = header.get("nodemap", {})
        except KeyError as exc:
            raise RequestFailed("bad_reply", f"snapshot without {exc.args[0]!r}") from None
        if any(type(v) is not int or v < 0 for v in ints.values()) \
                or not isinstance(nodes, (tuple, list)) or not isinstance(nodemap, Mapping) \
                or not all(isinstance(n, Mapping) for n in nodes):
            raise RequestFailed("bad_reply", "snapshot fields have the wrong types")
        return cls(**ints, nodes=tuple(nodes), nodemap=dict(nodemap), reason=reason)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts) for JSON."""
        return {
            "epoch": self.epoch, "origin": self.origin, "seq": self.seq, "view": self.view,
            "nodes": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in n.items()}
                      for n in self.nodes],
            "nodemap": {k: list(v) for k, v in self.nodemap.items()},
            "reason": self.reason,
        }


def item_to_dict(item: Event | Snapshot) -> dict[str, Any]:
    """JSON-friendly form of what :class:`Subscriber` yields.

    Events give ``{"topic": "node.up", "origin": ..., "seq": ..., ...}``; snapshots give
    ``{"topic": "_snapshot", "epoch": ..., "seq": ..., "nodes": [...], ...}``.
    """
    if isinstance(item, Snapshot):
        return {"topic": "_snapshot", **item.to_dict()}
    return {"topic": item.topic,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in item.to_dict().items()}}


_WILDCARD_HOST = re.compile(r"^tcp://(\*|0\.0\.0\.0)(:)")


def connectable(endpoint: str) -> str:
    """Turn a bind endpoint into one a client can connect to.

    ``tcp://*:7661`` and ``tcp://0.0.0.0:7661`` become ``tcp://127.0.0.1:7661``,
    ``tcp://[::]:7661`` becomes ``tcp://[::1]:7661``.

    :raises ValueError: the endpoint has an ephemeral port (``:*`` or ``:0``).
    """
    if re.search(r":(\*|0)$", endpoint) and endpoint.startswith("tcp://"):
        raise ValueError(f"{endpoint}: cannot connect to an ephemeral port")
    endpoint = _WILDCARD_HOST.sub(r"tcp://127.0.0.1\2", endpoint)
    return endpoint.replace("tcp://[::]:", "tcp://[::1]:")


class Requester:
    """Client of the snapshot endpoint (DEALER), with timeout and retry (Lazy Pirate).

    After a timeout the socket is closed and a fresh one is connected, so a late reply to
    an abandoned request can never be taken for the answer to the next one.

    :param endpoint: the daemon's ``bus.snapshot`` endpoint.
    :param context: an asyncio ZeroMQ context.
    :param timeout: seconds to wait for each reply.
    :param retries: attempts per request.
    :param sockopts: extra ZeroMQ options for the DEALER socket (CURVE keys).
    """

    def __init__(self, endpoint: str, context: zmq.asyncio.Context, *, timeout: float = 2.0,
                 retries: int = 3, sockopts: Mapping[int, int | bytes] | None = None) -> None:
        self.endpoint = endpoint
        self.sockopts = dict(sockopts or {})
        self.context = context
        self.timeout = timeout
        self.retries = max(1, retries)
        self.timeouts = 0  #: requests that got no reply in time
        self._sock: zmq.asyncio.Socket | None = None
        self._lock = asyncio.Lock()

    def _socket(self) -> zmq.asyncio.Socket:
        if self._sock is None:
            sock = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            for option, value in self.sockopts.items():
                sock.setsockopt(option, value)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def close(self) -> None:
        """Close the socket (a later request opens a new one)."""
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    async def request(self, command: str, *args: int) -> tuple[dict[str, Any], list[bytes]]:
        """Send one request and return the reply's (header, payload).

        :raises RequestTimeout: no reply after every retry.
        :raises RequestFailed: an ``ERROR`` reply, or a malformed one.
        """
        frames = encode_request(command, *args)
        async with self._lock:
            for _attempt in range(self.retries):
                sock = self._socket()
                try:
                    async with asyncio.timeout(self.timeout):
                        await sock.send_multipart(frames)
                        reply = await sock.recv_multipart()
                except TimeoutError:
                    self.timeouts += 1
                    log.debug("no reply to %s from %s within %.1fs", command, self.endpoint,
                              self.timeout)
                    self.close()
                    continue
                except BaseException:
                    # Cancelled mid-request (the caller's own timeout, as with
                    # ``Subscriber.next(timeout=...)``): the reply may still come, and would
                    # then be read as the answer to the next request. A fresh socket next time.
                    self.close()
                    raise
                try:
                    name, header, payload = decode_reply(reply)
                except FrameError as exc:
                    raise RequestFailed("bad_reply", str(exc)) from None
                if name == "ERROR":
                    raise RequestFailed(str(header.get("error", "error")),
                                        str(header.get("message", "")))
                if name != command:
                    raise RequestFailed("bad_reply", f"asked {command}, answered {name}")
                return header, payload
        raise RequestTimeout(f"{self.endpoint}: no reply to {command} after {self.retries} "
                             f"attempt(s) of {self.timeout:g}s; is the daemon running?")


class Subscriber:
    """Ordered, gap-free event stream from one clusterbus daemon.

    Use as an async context manager and an async iterator (see the module docstring), or
    hand each event to a function as soon as it is read with :meth:`follow`. Nothing
    runs in the background: the sockets are read while you iterate (or follow). A consumer
    slower than the daemon makes ZeroMQ drop frames for it (the daemon's slow-subscriber
    policy); the next frame or heartbeat reveals the hole and it is repaired by ``REPLAY``.
    Events of a topic (or version) not registered in this process, such as another
    plugin's, are never yielded but take their place in the sequence, like events
    filtered out by ``prefixes`` (``counters["unknown_topic"]``).

    :param publish: the daemon's ``bus.publish`` endpoint.
    :param snapshot: the daemon's ``bus.snapshot`` endpoint.
    :param prefixes: deliver only events whose topic starts with one of these (all when
        empty). Snapshots are always delivered.
    :param dead_after: seconds without a heartbeat after which :attr:`alive` is false;
        default three heartbeat intervals (3 s before the first heartbeat).
    :param raise_when_dead: make iteration raise :class:`PublisherLost` when dead instead
        of waiting on.
    :param resume: ``(epoch, seq)`` of the last event handled by a previous run (see
        :attr:`position`): the events after it are replayed first (or a snapshot is taken
        when that is impossible).
    :param initial_snapshot: start with a :class:`Snapshot` of the current state.
    :param deliver_snapshots: yield :class:`Snapshot` items (else they only update
        :attr:`last_snapshot`).
    :param request_timeout: seconds to wait for a snapshot-endpoint reply.
    :param request_retries: attempts per request.
    :param rcvhwm: frames ZeroMQ may queue on our side before dropping.
    :param batch: receive batch frames (several events per frame) once a heartbeat says
        the daemon sends them; ``False`` keeps single-event frames.
    :param sockopts: extra ZeroMQ options for the SUB socket (``{zmq.RCVBUF: 65536}``),
        set before it connects.
    :param context: an asyncio ZeroMQ context (default: a private one).
    :param certificate: this client's ``.key_secret`` file, with ``server_key`` (the
        daemon's public ``.key`` file): connect with CURVE (``[bus] certificate``).
    :raises ConfigError: a key file cannot be used, or only one of the two given.
    """

    def __init__(
        self,
        publish: str,
        snapshot: str,
        *,
        prefixes: Sequence[str] | str = (),
        dead_after: float | None = None,
        raise_when_dead: bool = False,
        resume: tuple[int, int] | None = None,
        initial_snapshot: bool = False,
        deliver_snapshots: bool = True,
        request_timeout: float = 2.0,
        request_retries: int = 3,
        rcvhwm: int = 100_000,
        batch: bool = True,
        sockopts: Mapping[int, int | bytes] | None = None,
        context: zmq.asyncio.Context | None = None,
        certificate: str | None = None,
        server_key: str | None = None,
    ) -> None:
        keys = load_client_keys(certificate, server_key)
        curve = keys.sockopts() if keys is not None else {}
        self.publish = publish
        self.snapshot_endpoint = snapshot
        self.prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
        self.raise_when_dead = raise_when_dead
        self.resume = resume
        self.initial_snapshot = initial_snapshot
        self.deliver_snapshots = deliver_snapshots
        self.rcvhwm = rcvhwm
        self.batch = batch
        self.sockopts = {**curve, **(sockopts or {})}
        self._own_context = context is None
        self.context = context or zmq.asyncio.Context()
        self.requester = Requester(snapshot, self.context, timeout=request_timeout,
                                   retries=request_retries, sockopts=curve)
        #: gap repair: the protocol core this class adapts to sockets and awaits
        self.sequencer = Sequencer(prefixes=self.prefixes, resume=resume,
                                   initial_snapshot=initial_snapshot,
                                   deliver_snapshots=deliver_snapshots, dead_after=dead_after,
                                   now=time.monotonic())
        self.last_heartbeat: Heartbeat | None = None
        #: what happened (the sequencer's counters, see :class:`Sequencer`, plus
        #: batching_on / batching_off).
        self.counters: dict[str, int] = self.sequencer.counters
        self._sub: zmq.asyncio.Socket | None = None
        self._sync: zmq.Socket[Any] | None = None
        self._reader: Reader | None = None
        #: receiving batch frames (subscribed to ``_batch`` and ``_hb``) rather than
        #: single-event frames (subscribed to everything); switched by heartbeats.
        self.batching = False

    @property
    def epoch(self) -> int | None:
        """The daemon run followed (None until a heartbeat, an event frame or a reply)."""
        return self.sequencer.epoch

    @property
    def seq(self) -> int | None:
        """The last seq accounted for (delivered, filtered out, or covered by a snapshot)."""
        return self.sequencer.seq

    @property
    def last_snapshot(self) -> Snapshot | None:
        """The last snapshot taken to re-establish continuity."""
        snap: Snapshot | None = self.sequencer.last_snapshot
        return snap

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> Subscriber:
        """A subscriber for the daemon configured by ``config`` (``[bus]`` endpoints).

        :raises ConfigError: an endpoint uses an ephemeral port.
        """
        bus = config["bus"]
        try:
            return cls(connectable(bus["publish"]), connectable(bus["snapshot"]), **kwargs)
        except ValueError as exc:
            raise ConfigError(str(exc), file=config.file, key="bus") from None

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        """Connect and subscribe (idempotent). ``async with`` calls it."""
        if self._sub is not None:
            return
        sub = self.context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
        # Everything: seq numbers span all topics, so filtering happens after gap checks.
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        for option, value in self.sockopts.items():
            sub.setsockopt(option, value)
        sub.connect(self.publish)
        self._sub = sub
        self._sync = zmq.Socket.shadow(sub.underlying)
        self._reader = Reader(self._sync)
        self.batching = False
        self.sequencer.opened(time.monotonic())

    def close(self) -> None:
        """Close the sockets (and the private context)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sub is not None:
            self._sub.close(0)
            self._sub = self._sync = None
        self.requester.close()
        if self._own_context and not self.context.closed:
            self.context.term()

    async def __aenter__(self) -> Subscriber:
        self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __aiter__(self) -> Subscriber:
        return self

    async def __anext__(self) -> Event | Snapshot:
        return await self.next()

    # -- liveness -----------------------------------------------------------------------------

    @property
    def dead_after(self) -> float | None:
        """Seconds without a heartbeat after which :attr:`alive` is false (None: three
        announced intervals)."""
        return self.sequencer.dead_after

    @dead_after.setter
    def dead_after(self, value: float | None) -> None:
        self.sequencer.dead_after = value

    @property
    def effective_dead_after(self) -> float:
        """``dead_after``, or three announced heartbeat intervals (3 s before any)."""
        return self.sequencer.effective_dead_after

    @property
    def since_heartbeat(self) -> float:
        """Seconds since the last heartbeat (since :meth:`open` when none came yet)."""
        return self.sequencer.since_heartbeat(time.monotonic())

    @property
    def alive(self) -> bool:
        """True while heartbeats arrive within :attr:`effective_dead_after`."""
        return self.sequencer.alive(time.monotonic())

    @property
    def position(self) -> tuple[int, int] | None:
        """``(epoch, seq)`` to pass as ``resume=`` to a later subscriber."""
        return self.sequencer.position

    # -- requests --------------------------------------------------------------------------------

    async def fetch_snapshot(self, reason: str = "") -> Snapshot:
        """Ask for a snapshot (does not change the stream's position)."""
        header, _ = await self.requester.request("SNAPSHOT")
        return Snapshot.from_header(header, reason)

    async def fetch_status(self) -> dict[str, Any]:
        """Ask the daemon for its status (what ``clusterbus status`` shows)."""
        header, _ = await self.requester.request("STATUS")
        return _status_of(header)

    # -- the stream ------------------------------------------------------------------------

    async def next(self, timeout: float | None = None) -> Event | Snapshot:
        """The next event (or snapshot) in order.

        :param timeout: give up after this many seconds (``TimeoutError``).
        :raises PublisherLost: ``raise_when_dead`` and no heartbeat for too long.
        :raises RequestTimeout: a needed replay/snapshot request got no answer (the next
            call asks again).
        """
        ready = self.sequencer.ready
        if ready:
            item: Event | Snapshot = ready.popleft()
            return item
        if timeout is None:
            return await self._fill()
        async with asyncio.timeout(timeout):
            return await self._fill()

    async def _fill(self) -> Event | Snapshot:
        # next() without an item ready (no asyncio.timeout object when there is no timeout)
        self.open()
        seqr = self.sequencer
        ready = seqr.ready
        while not ready:
            if seqr.request is not None:
                await self._ask(seqr.request)
                continue
            self._handle(await self._receive())
            # Handle whatever else is already queued (up to a budget) while we are here:
            # one wake-up per burst instead of one per frame. A request decision is
            # answered before anything else is read.
            reader = self._reader
            for _ in range(TURN_BUDGET):
                if seqr.request is not None or reader is None:
                    break
                frames = reader.poll()
                if frames is None:
                    break
                self._handle(frames)
        item: Event | Snapshot = ready.popleft()
        return item

    async def follow(self, on_event: Callable[[Event], object]) -> Snapshot:
        """Hand every event, in order, to ``on_event`` as soon as its frame is read; return
        the next :class:`Snapshot` (call again to go on).

        The push form of :meth:`next`, for a consumer that handles each event at once
        (the daemon's peer links): while no repair is under way, the frames are read,
        ordered and handed on from the socket's own wake-up callback on the loop, with no
        task switch per frame. Whatever is already queued is read first; at most
        :data:`~clusterbus.bus.sockets.TURN_BUDGET` frames per loop turn (then it goes on
        at the next turn). A repair (``REPLAY``, ``SNAPSHOT``) is awaited here, as
        :meth:`next` does, and no frame is read meanwhile. The same events and
        snapshots, in the same order, as :meth:`next` would return. Anything
        ``on_event`` raises ends the call with that exception (that event is consumed;
        the ones after it stay queued for the next call).

        :raises PublisherLost: ``raise_when_dead`` and no heartbeat for too long.
        :raises RequestTimeout: a needed replay/snapshot request got no answer (the next
            call asks again).
        :raises RequestFailed: as for :meth:`next`.
        """
        self.open()
        seqr = self.sequencer
        ready = seqr.ready
        reader = self._reader
        assert reader is not None
        while True:
            while ready:
                item = ready.popleft()
                if isinstance(item, Snapshot):
                    return item
                on_event(item)
            if seqr.request is not None:
                await self._ask(seqr.request)
                continue
            done = reader.drain(lambda frames: self._push(frames, on_event),
                                budget=TURN_BUDGET)
            try:
                while not done.done():
                    await self._wait_alive(functools.partial(asyncio.shield, done))
                done.result()  # raises what on_event (or decoding) raised
            finally:
                done.cancel()  # (a no-op once done) stops the callback

    def _push(self, frames: list[bytes], on_event: Callable[[Event], object]) -> bool:
        """:meth:`follow`'s handler, on the socket's wake-up: order one message's events
        and hand them on; True when a repair is needed or a snapshot waits (then
        :meth:`follow` takes over)."""
        self._handle(frames)
        seqr = self.sequencer
        ready = seqr.ready
        while ready:
            if type(ready[0]) is Snapshot:  # (only a repair makes one: not here)
                return True
            on_event(ready.popleft())
        return seqr.request is not None

    async def _wait_alive(self, wait: Callable[[], Awaitable[object]]) -> None:
        """Await ``wait()``; with ``raise_when_dead`` no longer than the publisher may stay
        silent (then return: the caller checks again).

        :raises PublisherLost: ``raise_when_dead`` and no heartbeat for too long.
        """
        if not self.raise_when_dead:
            await wait()
            return
        left = self.effective_dead_after - self.since_heartbeat
        if left <= 0:
            raise PublisherLost(f"{self.publish}: no heartbeat for "
                                f"{self.since_heartbeat:.1f}s")
        try:
            async with asyncio.timeout(left):
                await wait()
        except TimeoutError:
            pass

    async def _receive(self) -> list[bytes]:
        reader = self._reader
        assert reader is not None
        while True:
            frames = reader.poll()
            if frames is not None:
                return frames
            # Nothing there (just checked, on this loop turn): wait for a wake-up that
            # saw a message.
            await self._wait_alive(reader.readable)

    def _handle(self, frames: list[bytes]) -> None:
        head = frames[0] if frames else b""
        seqr = self.sequencer
        if head == BATCH_TOPIC:
            try:
                epoch, items = decode_batch_epoch(frames)
            except FrameError as exc:
                seqr.missing(exc.code)
                log.debug("dropped batch from %s (%s): %s", self.publish, exc.code, exc)
                return
            events: list[Event | Unknown] = []
            for topic, body in items:
                try:
                    events.append(decode_event(topic, body))
                except FrameError as exc:
                    unknown = self._undecodable(exc)
                    if unknown is not None:
                        events.append(unknown)
            seqr.events(events, epoch)
            return
        if head == HEARTBEAT_TOPIC:
            self._heartbeat(frames)
            return
        try:
            event: Event | Unknown = decode(frames)
        except FrameError as exc:
            unknown = self._undecodable(exc)
            if unknown is None:
                return
            event = unknown
        seqr.event(event)

    def _undecodable(self, exc: FrameError) -> Unknown | None:
        """An event from the PUB stream that cannot be decoded: its stand-in when it still
        counts toward the sequence, else count it as dropped (its seq is then missing)."""
        unknown = _stand_in(exc)
        if unknown is not None:
            log.debug("skipping seq %d from %s: %s", unknown.seq, self.publish, exc)
        else:
            self.sequencer.missing(exc.code)
            log.debug("dropped frame from %s (%s): %s", self.publish, exc.code, exc)
        return unknown

    def _heartbeat(self, frames: list[bytes]) -> None:
        try:
            hb = decode_heartbeat(frames)
        except FrameError as exc:
            self.sequencer.missing(exc.code)
            log.debug("dropped heartbeat (%s): %s", exc.code, exc)
            return
        self.last_heartbeat = hb
        if hb.batch != self.batching and self.batch:
            self._set_batching(hb.batch)
        before = self.sequencer.epoch
        self.sequencer.heartbeat(epoch=hb.epoch, seq=hb.seq, interval=hb.interval,
                                 now=time.monotonic())
        if before is not None and hb.epoch != before:
            log.info("daemon at %s restarted (epoch %016x -> %016x)", self.publish, before,
                     hb.epoch)

    async def _ask(self, request: Request) -> None:
        """Carry out the sequencer's request decision and hand it the answer.

        :raises RequestTimeout: no answer (the decision stays: the next call asks again).
        """
        seqr = self.sequencer
        if isinstance(request, RequestSnapshot):
            snap = await self.fetch_snapshot(request.reason)
            seqr.resynced(snap)
            if seqr.last_snapshot is snap:
                log.info("resynchronised from a snapshot at seq %d (%s)", snap.seq,
                         request.reason)
            else:  # the new epoch was an earlier run's (its frames were still queued)
                log.debug("still the run %016x at seq %d: an earlier run's epoch retired",
                          snap.epoch, snap.seq)
            return
        header, payload = await self.requester.request("REPLAY", request.after)
        items: list[Event | Unknown | None] | None = None
        if len(payload) % 2 == 0:
            items = []
            for i in range(0, len(payload), 2):
                try:
                    items.append(decode(payload[i:i + 2]))
                except FrameError as exc:
                    unknown = _stand_in(exc)
                    if unknown is None:
                        log.warning("undecodable event in a replay from %s: %s",
                                    self.snapshot_endpoint, exc)
                    items.append(unknown)
        replayed = seqr.counters["replayed"]
        seqr.replayed(epoch=header.get("epoch"), status=header.get("status"),
                      more=bool(header.get("more")), items=items)
        if seqr.counters["replayed"] != replayed:
            log.debug("replayed %d event(s) up to seq %s",
                      seqr.counters["replayed"] - replayed, seqr.seq)

    def _set_batching(self, on: bool) -> None:
        """Switch between single-event frames and batch frames.

        The new subscription is made before the old one is dropped, so for a moment
        both formats arrive; the copies are skipped as duplicates by seq.
        """
        sub = self._sync
        if sub is None or on == self.batching:
            return
        if on:
            sub.setsockopt(zmq.SUBSCRIBE, BATCH_TOPIC)
            sub.setsockopt(zmq.SUBSCRIBE, HEARTBEAT_TOPIC)
            sub.setsockopt(zmq.UNSUBSCRIBE, b"")
        else:
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.setsockopt(zmq.UNSUBSCRIBE, BATCH_TOPIC)
            sub.setsockopt(zmq.UNSUBSCRIBE, HEARTBEAT_TOPIC)
        self.batching = on
        self._count("batching_on" if on else "batching_off")
        log.debug("%s: %s batch frames", self.publish, "receiving" if on else "not receiving")

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1


class MultiSubscriber:
    """Several daemons' streams merged: one :class:`Subscriber` per daemon, gap repair per
    origin.

    Each daemon publishes only its own events (a director never re-publishes a peer's), so
    one subscriber per daemon is one gap-repaired, seq-ordered stream per origin. Items
    are yielded as they become ready: in order within an origin, interleaved across
    origins (an event's ``origin`` and a :class:`Snapshot`'s ``origin`` say whose).

    :param daemons: ``(publish, snapshot)`` endpoints, or ``(publish, snapshot,
        server_key)`` with that daemon's public ``.key`` file (else ``server_key``).
    :param kwargs: as for :class:`Subscriber` (``prefixes``, ``certificate``,
        ``server_key``, ``raise_when_dead``, ...), given to each one.
    :raises ConfigError: a key file cannot be used.
    :raises ValueError: no daemon given.
    """

    def __init__(self, daemons: Sequence[tuple[str, str] | tuple[str, str, str | None]],
                 **kwargs: Any) -> None:
        if not daemons:
            raise ValueError("MultiSubscriber needs at least one daemon")
        kwargs.pop("context", None)
        self.context = zmq.asyncio.Context()
        self.subscribers: list[Subscriber] = []
        for entry in daemons:
            publish, snapshot, *rest = entry
            kw = dict(kwargs)
            if rest and rest[0]:
                kw["server_key"] = rest[0]
            self.subscribers.append(Subscriber(publish, snapshot, context=self.context, **kw))
        self._queue: asyncio.Queue[tuple[Event | Snapshot | None, BaseException | None]] \
            = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def open(self) -> None:
        """Connect every subscriber and start reading them (idempotent)."""
        if self._tasks:
            return
        for sub in self.subscribers:
            sub.open()
            self._tasks.append(asyncio.ensure_future(self._pump(sub)))

    async def _pump(self, sub: Subscriber) -> None:
        while True:
            try:
                item = await sub.next()
            except RequestTimeout as exc:  # asked again on the next call
                log.debug("%s: %s", sub.publish, exc)
                await asyncio.sleep(0.1)
                continue
            except Exception as exc:  # PublisherLost, RequestFailed: the caller decides
                await self._queue.put((None, exc))
                return
            await self._queue.put((item, None))

    def close(self) -> None:
        """Stop reading and close every subscriber and the shared context."""
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        for sub in self.subscribers:
            sub.close()
        if not self.context.closed:
            self.context.destroy(0)

    async def __aenter__(self) -> MultiSubscriber:
        self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __aiter__(self) -> MultiSubscriber:
        return self

    async def __anext__(self) -> Event | Snapshot:
        return await self.next()

    async def next(self, timeout: float | None = None) -> Event | Snapshot:
        """The next item of any daemon.

        :raises PublisherLost: a daemon's subscriber has ``raise_when_dead`` and it fell
            silent (the other daemons' items already queued stay queued).
        :raises RequestFailed: a daemon answered a repair request with something unusable.
        """
        self.open()
        async with asyncio.timeout(timeout):
            item, exc = await self._queue.get()
        if exc is not None:
            raise exc
        assert item is not None
        return item

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        """Each subscriber's counters, by publish endpoint."""
        return {sub.publish: dict(sub.counters) for sub in self.subscribers}


def split_connect(text: str) -> tuple[str, str, str | None]:
    """``clusterbus events --connect`` argument -> ``(publish, snapshot, server_key)``.

    ``PUB``, ``PUB,SNAPSHOT`` or ``PUB,SNAPSHOT,KEYFILE`` (KEYFILE: that daemon's public
    ``.key``). Without SNAPSHOT (absent or empty: ``PUB,,KEYFILE``), a ``tcp://HOST:PORT``
    publish endpoint gives
    ``tcp://HOST:PORT+2`` (the defaults are 7661 and 7663).

    :raises ValueError: no PUB, too many parts, or a SNAPSHOT that cannot be
        derived (not ``tcp://HOST:PORT``).
    """
    parts = text.split(",")
    if len(parts) > 3 or not parts[0].strip():
        raise ValueError(f"{text!r}: expected PUB[,SNAPSHOT[,KEYFILE]]")
    publish = parts[0].strip()
    if len(parts) >= 2 and parts[1].strip():
        snapshot = parts[1].strip()
    else:
        m = re.fullmatch(r"(tcp://.+):(\d+)", publish)
        if m is None or not 0 < int(m.group(2)) <= 65533:
            raise ValueError(f"{publish}: cannot derive the snapshot endpoint (only from "
                             "tcp://HOST:PORT); give it as PUB,SNAPSHOT")
        snapshot = f"{m.group(1)}:{int(m.group(2)) + 2}"
    key = parts[2].strip() if len(parts) == 3 and parts[2].strip() else None
    return publish, snapshot, key


# -- one-shot helpers ----------------------------------------------------------------------------

async def emit(endpoint: str, topic: str, node: int, addrs: Sequence[str] = (),
               incarnation: int = 0, *, timeout: float = 2.0, certificate: str | None = None,
               server_key: str | None = None) -> None:
    """Send one membership report to a daemon's ingest endpoint (``clusterbus emit --via zmq``).

    PUSH/PULL has no acknowledgement: this returns once the frame is handed to a live
    connection and flushed (or ``timeout`` passed).

    :param topic: ``node.up``, ``node.down``, ``node.coming_up`` or ``node.going_down``.
    :raises InvalidEvent: bad topic, node, address or incarnation.
    :raises TimeoutError: no connection to the daemon within ``timeout``.
    :raises ConfigError: a key file cannot be used (``certificate``/``server_key`` as for
        :class:`Subscriber`).
    """
    frames = encode_ingest(topic, node, addrs, incarnation)
    keys = load_client_keys(certificate, server_key)
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.PUSH)
    try:
        for option, value in (keys.sockopts() if keys else {}).items():
            sock.setsockopt(option, value)
        # IMMEDIATE: queue only on a completed connection, so a missing daemon makes the
        # send wait (and time out) instead of pretending to succeed.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(endpoint)
        try:
            async with asyncio.timeout(timeout):
                await sock.send_multipart(frames)
        except TimeoutError:
            raise TimeoutError(f"{endpoint}: no daemon accepted the frame within "
                               f"{timeout:g}s") from None
        sock.close(linger=int(timeout * 1000))
    finally:
        if not sock.closed:
            sock.close(0)
        # term() waits until the lingering frame is flushed to the kernel.
        await asyncio.to_thread(ctx.term)


def _status_of(header: Mapping[str, Any]) -> dict[str, Any]:
    """The ``status`` map of a ``STATUS`` reply header (anything else, wrapped in one)."""
    status = header.get("status", {})
    return dict(status) if isinstance(status, Mapping) else {"status": status}


async def _request_once(endpoint: str, command: str, *, timeout: float, retries: int,
                        certificate: str | None = None,
                        server_key: str | None = None) -> dict[str, Any]:
    """One request on a private context and socket, both closed before returning.

    :returns: the reply header.
    :raises RequestTimeout: no daemon answered.
    :raises RequestFailed: the daemon answered with an error or a malformed reply.
    """
    keys = load_client_keys(certificate, server_key)
    ctx = zmq.asyncio.Context()
    req = Requester(endpoint, ctx, timeout=timeout, retries=retries,
                    sockopts=keys.sockopts() if keys else None)
    try:
        header, _ = await req.request(command)
    finally:
        req.close()
        ctx.term()
    return header


async def fetch_status(endpoint: str, *, timeout: float = 2.0, retries: int = 1,
                       certificate: str | None = None,
                       server_key: str | None = None) -> dict[str, Any]:
    """Ask a running daemon for its status (the ``STATUS`` request); ``certificate`` and
    ``server_key`` as for :class:`Subscriber`.

    :raises RequestTimeout: no daemon answered.
    :raises RequestFailed: the daemon answered with an error.
    """
    return _status_of(await _request_once(endpoint, "STATUS", timeout=timeout, retries=retries,
                                          certificate=certificate, server_key=server_key))


async def fetch_snapshot(endpoint: str, *, timeout: float = 2.0, retries: int = 1,
                         certificate: str | None = None,
                         server_key: str | None = None) -> Snapshot:
    """Ask a running daemon for a snapshot of its membership view; ``certificate`` and
    ``server_key`` as for :class:`Subscriber`.

    :raises RequestTimeout: no daemon answered.
    :raises RequestFailed: the daemon answered with an error or an unusable snapshot.
    """
    return Snapshot.from_header(
        await _request_once(endpoint, "SNAPSHOT", timeout=timeout, retries=retries,
                            certificate=certificate, server_key=server_key))
