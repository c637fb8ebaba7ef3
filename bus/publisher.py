"""The publisher: an engine sink that sends every event on an XPUB socket, keeps it in the
replay ring, and sends heartbeats.

Slow-subscriber policy (docs/wire-protocol.md, "Slow subscribers"): a subscriber's queue
holds at most about ``bus.send_hwm`` events. libzmq's ``SNDHWM`` counts messages and a batch
message carries up to :data:`BATCH_EVENTS` events, so the socket's ``SNDHWM`` is
``send_hwm / BATCH_EVENTS`` messages (:func:`hwm_messages`), set once before it binds
(lowering it on connected pipes stalls them: see the wire document). A PUB/XPUB socket never blocks: once a
subscriber's queue is full, libzmq drops that subscriber's messages (and only that
subscriber's) until it catches up. The daemon cannot see those drops (libzmq does not report
them); the subscriber sees the hole in the seq numbers, or a heartbeat whose seq is ahead of
what it has, and repairs it from the replay ring. The loop is never blocked: sends use
``NOBLOCK`` and a failed send (``EAGAIN``, which an XPUB without ``XPUB_NODROP`` does not
normally return) is counted, not retried.

The socket is a plain (synchronous) pyzmq socket watched with ``loop.add_reader`` rather than
a ``zmq.asyncio`` socket: sends are then a direct call with no future per event, and because
the ZeroMQ file descriptor is edge-triggered we re-check ``EVENTS`` after every batch of sends
so no subscription message is left unread.

Batches: a subscriber that subscribes to exactly ``_batch`` (the Python client does once a
heartbeat says ``batch``) receives the events of one flush as batch frames of up to
:data:`BATCH_EVENTS` events (the decoders accept up to
:data:`~clusterbus.bus.codec.MAX_BATCH_EVENTS`): one ZeroMQ send and one receive for
many events instead of one each. ``XPUB_VERBOSER`` passes every subscription and
unsubscription (a disconnect unsubscribes everything the peer had), so the publisher
counts subscriptions per prefix and sends single-event frames only while someone
subscribes to something other than ``_batch`` and ``_hb``, batch frames only while
someone subscribes to ``_batch``, and nothing while nobody listens (libzmq would drop the
frames anyway). A miscount can only cost a gap, which subscribers repair.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from ..events import Event
from .codec import (
    BATCH_TOPIC,
    HEARTBEAT_TOPIC,
    MAX_BATCH_EVENTS,
    MAX_FRAME,
    EventEncoder,
    Heartbeat,
    batch_frame,
    batch_head,
    encode_heartbeat,
    event_encoder,
    new_packer,
)
from .ring import Ring
from .sockets import EVENTS, NOBLOCK, POLLIN

__all__ = ["Publisher", "split_batches", "hwm_messages", "BATCH_BYTES", "BATCH_EVENTS",
           "IDLE_AFTER"]

log = logging.getLogger(__name__)


#: Bytes of batch elements per batch frame: below the decoders' MAX_FRAME with room for
#: the frame's own head (16 bytes at most).
BATCH_BYTES = MAX_FRAME - 4096
#: Events per batch frame sent. Small enough that ``send_hwm`` messages of them stay close
#: to ``send_hwm`` events (a subscriber's queue is bounded in events, see
#: :func:`hwm_messages`); large enough that a subscriber at 10,000 events/s receives a
#: few hundred messages a second, not ten thousand.
BATCH_EVENTS = 32
#: Seconds without sending events after which the daemon counts as idle: the next event
#: is sent at once rather than at the end of its loop turn. Under load the next turn's
#: first event follows the previous flush within tens of microseconds and waits for its
#: turn's end, so batching is kept where it pays.
IDLE_AFTER = 100e-6
_monotonic = time.monotonic
#: Subscriptions that want no single-event frames.
_NOT_SINGLE = frozenset((BATCH_TOPIC, HEARTBEAT_TOPIC))


def hwm_messages(send_hwm: int) -> int:
    """The XPUB socket's ``SNDHWM`` (messages) for a queue of about ``send_hwm`` events per
    subscriber: a batch subscriber's messages carry up to :data:`BATCH_EVENTS` events each,
    a single-frame subscriber's one (it gets that many events of slack, then repairs)."""
    return max(1, -(-send_hwm // BATCH_EVENTS))


def split_batches(parts: list[bytes], max_events: int = BATCH_EVENTS,
                  max_bytes: int = BATCH_BYTES) -> Iterator[list[bytes]]:
    """Group a flush's encoded events, in order, into the parts of batch frames (for
    :func:`~clusterbus.bus.codec.batch_frame`): at most ``max_events`` events and
    ``max_bytes`` bytes of elements each (one event bigger than that still gets a batch of
    its own).

    :param parts: for each event, its batch element head and its body, flat.
    """
    assert 0 < max_events <= MAX_BATCH_EVENTS
    if len(parts) <= 2 * max_events and sum(map(len, parts)) <= max_bytes:
        if parts:
            yield parts  # the usual flush: one frame, no per-event work
        return
    start = size = 0
    for i in range(0, len(parts), 2):
        n = len(parts[i]) + len(parts[i + 1])
        if i > start and (i - start == 2 * max_events or size + n > max_bytes):
            yield parts[start:i]
            start, size = i, 0
        size += n
    if start < len(parts):
        yield parts[start:]


class Publisher:
    """Engine sink + XPUB socket + replay ring + heartbeats.

    :param endpoint: where to bind (``bus.publish``).
    :param epoch: this daemon run's epoch (random non-zero u64).
    :param origin: the daemon's node number.
    :param ring: the replay ring to fill.
    :param send_hwm: events queued per subscriber before libzmq drops for it.
    :param heartbeat_interval: seconds between heartbeats.
    :param counters: the service's counter dict (updated in place).
    :param clock: UNIX time source for heartbeats.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        epoch: int,
        origin: int,
        ring: Ring,
        send_hwm: int,
        heartbeat_interval: float,
        counters: dict[str, int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint = endpoint
        self.bound = ""  #: the resolved endpoint once bound (ports for ``:*``)
        self.epoch = epoch
        self.origin = origin
        self.ring = ring
        self.send_hwm = send_hwm
        self.heartbeat_interval = heartbeat_interval
        self.counters = counters
        self.clock = clock
        self.sent_seq = 0  #: last event seq handed to the socket
        self._sock: zmq.Socket[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        #: this turn's events: element head and body of each, flat (see split_batches)
        self._pending: list[bytes] = []
        self._pending_seq = 0  #: seq of the last pending event
        self._sent_at = 0.0  #: monotonic time of the last send of events
        self._flush_scheduled = False
        self._encoders: dict[type, EventEncoder] = {}
        #: every batch frame says which run its events belong to (a restarted daemon is
        #: recognised from the first event of its new run)
        self._batch_head = batch_head(epoch)
        #: element head -> topic frame, for single-event frames
        self._topics: dict[bytes, bytes] = {}
        # the loop's own packer: no thread-local look-up per event (the sink runs on the
        # loop thread only)
        self._packer = new_packer()
        #: live subscriptions by prefix (from XPUB_VERBOSER (un)subscription messages)
        self.subscriptions: dict[bytes, int] = {}
        self._want_single = False
        self._want_batch = False
        for key in ("published", "frames_sent", "batches_sent", "send_again", "encode_failed",
                    "heartbeats", "subscribe", "unsubscribe"):
            counters.setdefault(key, 0)

    # -- lifecycle ------------------------------------------------------------------------

    def open(self, context: zmq.Context[Any],
             prepare: Callable[[zmq.Socket[Any]], None] | None = None) -> None:
        """Create and bind the XPUB socket and watch it on the running loop.

        :param context: a synchronous ZeroMQ context (a shadow of the service's one).
        :param prepare: called with the socket before it binds (CURVE options).
        :raises zmq.ZMQError: the endpoint cannot be bound.
        """
        self._loop = asyncio.get_running_loop()
        sock = context.socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, hwm_messages(self.send_hwm))
            # XPUB_VERBOSER passes every (un)subscription up, not only the first per topic,
            # so the counters count subscribers rather than distinct topics.
            sock.setsockopt(zmq.XPUB_VERBOSER, 1)
            if prepare is not None:
                prepare(sock)
            sock.bind(self.endpoint)
            self.bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            sock.close(0)
            raise
        self._sock = sock
        self._fd = sock.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._on_readable)
        log.info("publishing on %s (epoch %016x)", self.bound, self.epoch)

    def close(self) -> None:
        """Flush what is pending, stop watching the socket and close it."""
        if self._sock is None:
            return
        try:
            self._send_pending()
        finally:
            if self._loop is not None and self._fd is not None:
                self._loop.remove_reader(self._fd)
            self._sock.close(0)
            self._sock = None

    # -- the sink -------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """Engine sink: encode, remember in the ring, queue for sending this loop turn."""
        enc = self._encoders.get(type(event))
        try:
            if enc is None:
                enc = self._encoder(type(event))
            body = enc.body(event, self._packer)
        except (TypeError, ValueError, OverflowError):
            # An event the codec cannot encode is a bug; the ring then breaks the sequence
            # rather than hold a hole, and subscribers resynchronise from a snapshot.
            self._packer.reset()  # a failed pack may leave bytes in its buffer
            self.counters["encode_failed"] += 1
            log.exception("cannot encode %s seq %d", event.topic, event.seq)
            return
        self.ring.append(event.seq, enc.topic, body)
        self.counters["published"] += 1
        if self._sock is None:
            return  # not running: kept in the ring only
        self._pending += (enc.element, body)
        self._pending_seq = event.seq
        if not self._flush_scheduled:
            # The events of one loop turn (a burst of reports, a plugin's follow-up
            # events) are flushed together at its end; the loop is never blocked by a
            # send. On an idle daemon the first event of a turn goes out at once instead
            # of waiting a loop iteration: nothing was sent for IDLE_AFTER, so the
            # events are sparse and latency, not frames per event, is what counts.
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)
            if _monotonic() - self._sent_at >= IDLE_AFTER:
                self._send_pending()

    def _encoder(self, cls: type) -> EventEncoder:
        enc = self._encoders[cls] = event_encoder(cls)
        self._topics[enc.element] = enc.topic
        return enc

    def _flush(self) -> None:
        # the end of a loop turn that produced events
        self._flush_scheduled = False
        self._send_pending()

    def _send_pending(self) -> None:
        pending, self._pending = self._pending, []
        sock = self._sock
        if sock is None or not pending:
            return
        self._sent_at = _monotonic()
        # Who listens, as of now: decides single frames, batches, both or neither.
        self._drain_subscriptions()
        send = sock.send_multipart
        sent = batches = again = 0
        if self._want_single:
            topics = self._topics
            for i in range(0, len(pending), 2):
                try:
                    send((topics[pending[i]], pending[i + 1]), NOBLOCK)
                    sent += 1
                except zmq.Again:
                    again += 1
        if self._want_batch:
            head = self._batch_head
            for chunk in split_batches(pending):
                try:
                    send(batch_frame(chunk, head), NOBLOCK)
                    batches += 1
                except zmq.Again:
                    again += 1
        self.sent_seq = self._pending_seq
        self.counters["frames_sent"] += sent
        self.counters["batches_sent"] += batches
        if again:
            self.counters["send_again"] += again
            log.debug("%d event frame(s) not sent: EAGAIN", again)
        self._drain_subscriptions()

    def send_heartbeat(self) -> Heartbeat | None:
        """Flush pending events, then send one heartbeat carrying the last seq sent."""
        if self._sock is None:
            return None
        self._send_pending()
        hb = Heartbeat(epoch=self.epoch, origin=self.origin, seq=self.sent_seq,
                       time=self.clock(), interval=self.heartbeat_interval, batch=True)
        try:
            self._sock.send_multipart(encode_heartbeat(hb), zmq.NOBLOCK)
            self.counters["heartbeats"] += 1
        except zmq.Again:
            self.counters["send_again"] += 1
        self._drain_subscriptions()
        return hb

    async def run_heartbeats(self) -> None:
        """Send a heartbeat now and every ``heartbeat_interval`` seconds until cancelled."""
        while True:
            self.send_heartbeat()
            await asyncio.sleep(self.heartbeat_interval)

    # -- subscriptions (XPUB) ---------------------------------------------------------------

    def _on_readable(self) -> None:
        self._drain_subscriptions()

    def _drain_subscriptions(self) -> None:
        sock = self._sock
        if sock is None:
            return
        # The ZeroMQ FD only signals a change of EVENTS; read while POLLIN is set.
        changed = False
        subs = self.subscriptions
        while int(sock.getsockopt(EVENTS)) & POLLIN:
            try:
                msg = sock.recv(NOBLOCK)
            except zmq.Again:
                break
            prefix = msg[1:]
            if msg[:1] == b"\x01":
                self.counters["subscribe"] += 1
                subs[prefix] = subs.get(prefix, 0) + 1
                changed = True
                log.debug("subscription %r", prefix[:64])
            elif msg[:1] == b"\x00":
                self.counters["unsubscribe"] += 1
                left = subs.get(prefix, 0) - 1
                if left > 0:
                    subs[prefix] = left
                else:
                    subs.pop(prefix, None)
                changed = True
                log.debug("unsubscription %r", prefix[:64])
        if changed:
            self._want_batch = BATCH_TOPIC in subs
            self._want_single = any(p not in _NOT_SINGLE for p in subs)

    def status(self) -> dict[str, Any]:
        """Plain-data status of the publisher."""
        return {
            "endpoint": self.bound or self.endpoint,
            "sent_seq": self.sent_seq,
            "send_hwm": self.send_hwm,
            "send_hwm_messages": hwm_messages(self.send_hwm),
            # the first few prefixes only: subscribers choose them, the status stays small
            "subscriptions": {p[:64].decode("utf-8", "replace"): n
                              for p, n in sorted(self.subscriptions.items())[:32]},
            "heartbeat_interval": self.heartbeat_interval,
            "ring": {"first": self.ring.first, "last": self.ring.last, "size": len(self.ring),
                     "capacity": self.ring.capacity, "breaks": self.ring.breaks},
        }
