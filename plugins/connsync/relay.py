"""The conn-sync relay protocol: sans-IO, FTFW-like (conntrackd's reliable mode).

Each director sends the connection entries it originates (what its kernel's master sync
daemon sent) to every peer director, over one *stream* per peer:

* a stream is numbered by the sender's run id (greater at every start) and a stream
  number (a new stream after a resync); its batches are numbered 1, 2, ... A stream always
  begins with a **full resync**: the sender's own table (``snapshot()``, entries with their
  remaining timeouts), flagged as such and closed by an end-of-snapshot batch, then the
  incremental entries in the order they were originated;
* the receiver delivers each batch exactly once, in order, and acknowledges
  **cumulatively** (``upto``: every batch up to this one was delivered);
* a batch not acknowledged within the peer's retransmission timeout is sent again
  (doubling per try, up to ``rto_max``). The timeout adapts to the round trip as TCP's does
  (RFC 6298: smoothed RTT + 4 x its variation, sampled only on batches sent once, at
  least ``rto_min``; ``rto`` before the first sample), so a receiver slowed by a burst is
  not sent everything twice. A receiver that sees a gap asks for the missing batches at
  once (a NACK, at most once per half timeout per peer) instead of waiting; duplicates and
  stale batches (an older stream, a previous run) are dropped and counted;
* a peer that (re)started shows a new run id in anything it sends (batches, acks, the
  keepalive every ``keepalive`` seconds): the sender starts a new stream for it, so it gets
  the full table again before any incremental entry;
* a batch of fewer than ``hold_size`` entries is held while batches to that peer are in
  flight, until their acknowledgement comes, it grows to ``hold_size``, or it was held
  ``hold`` seconds (Nagle's algorithm, RFC 896): at a steady rate each round trip carries
  one batch of what came meanwhile, instead of a batch (and an acknowledgement) per
  capture; an entry alone still leaves at once. The snapshot of a resync is not held;
* queues are bounded: at most ``window`` batches in flight per peer, at most
  ``max_pending`` entries waiting per peer (beyond that the queue is dropped, counted as
  ``dropped.queue_full``, and the peer is resynced from the table instead: nothing is
  lost, since the table holds every entry originated), at most ``max_out_of_order``
  batches held by a receiver ahead of a gap (``dropped.out_of_order``; they come again).

Nothing here does I/O or reads a clock: every input carries ``now`` (monotonic seconds)
and returns effects: :class:`Send` (a message, plain msgpack-able lists, to one peer),
:class:`Deliver` (entries received from a peer, in order), :class:`ResyncStarted` /
:class:`ResyncDone` (a peer's full table begins / is complete). :meth:`Relay.next_deadline`
says when to call :meth:`Relay.poll` next. Entries are opaque here; the sender's
``encode`` turns one into a msgpack-able value, the receiver's ``decode`` back (raising
:class:`~clusterbus.DecodeError`), or ``encode_batch`` / ``decode_batch`` a whole batch's
entries at once (no call per entry: the plugin's entries are bytes, checked per batch).

Wire messages (lists; the channel frames them with msgpack):

* ``["B", run, stream, seq, kind, [entry, ...]]``: a batch; ``kind`` 0 incremental,
  1 snapshot, 2 the snapshot's last batch (possibly empty);
* ``["A", run, acked_run, stream, upto]``: the receiver's cumulative ack of the sender's
  (``acked_run``, ``stream``), ``upto`` 0 when nothing yet (``acked_run`` 0: no stream
  from that sender yet). Sent after each batch and as the keepalive;
* ``["N", run, acked_run, stream, first, last]``: please send batches ``first..last`` again.

``run`` in every message is the sender's own run id (1..2**64-1).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from clusterbus import DecodeError, LocalProtocolError

__all__ = [
    "Relay",
    "RelayError",
    "Send",
    "Deliver",
    "ResyncStarted",
    "ResyncDone",
    "Effect",
    "KIND_INCREMENTAL",
    "KIND_SNAPSHOT",
    "KIND_SNAPSHOT_END",
    "MAX_U64",
]

MAX_U64 = 2**64 - 1
KIND_INCREMENTAL, KIND_SNAPSHOT, KIND_SNAPSHOT_END = 0, 1, 2
#: most entries one batch may carry on the wire (a receiver refuses more)
MAX_BATCH_ENTRIES = 65_536


class RelayError(DecodeError):
    """A relay message that breaks the protocol (dropped and counted by reason).

    :param code: the counter suffix: ``dropped.<code>``.
    """

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code


# -- effects --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """Send ``message`` to ``peer`` (the channel frames it)."""

    peer: int
    message: list[Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Deliver:
    """Entries from ``peer``, in the order it originated them, each delivered once.

    :param snapshot: part of the peer's full table (a resync), not incremental updates.
    """

    peer: int
    entries: tuple[Any, ...]
    snapshot: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ResyncStarted:
    """``peer`` begins a new stream: its full table follows (``restarted``: a new run)."""

    peer: int
    restarted: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ResyncDone:
    """``peer``'s full table was delivered completely; incremental entries follow."""

    peer: int


Effect = Send | Deliver | ResyncStarted | ResyncDone


# -- per-peer state -------------------------------------------------------------------------

@dataclass(slots=True)
class _Batch:
    seq: int
    kind: int
    wire: list[Any]  # the encoded entries
    count: int
    sent_at: float = 0.0
    first_sent: float = 0.0
    tries: int = 0
    #: when its resend timer started: its last send, or the last ack of newer data, since
    #: the receiver works through the window in order (RFC 6298 5.3)
    timer_at: float = 0.0


@dataclass(slots=True)
class _Out:
    """What we send to one peer."""

    stream: int = 0
    next_seq: int = 1
    unacked: dict[int, _Batch] = field(default_factory=dict)  # seq -> batch, in seq order
    snap: Iterator[Any] | None = None  # the snapshot still to send
    snap_open: bool = False  # the end-of-snapshot batch is still to send
    pending: deque[Any] = field(default_factory=deque)  # incremental entries waiting
    restart_reason: str | None = "start"  # a new stream is due (why), None: none
    started_at: float | None = None  # when the current stream began
    held_since: float | None = None  # since when a partial batch is held (Nagle)


@dataclass(slots=True)
class _In:
    """What we receive from one peer."""

    run: int = 0  # the peer's run we follow (0: none yet)
    stream: int = 0
    next_seq: int = 1
    ahead: dict[int, tuple[int, tuple[Any, ...]]] = field(default_factory=dict)
    nacked_at: float = -1e18
    in_snapshot: bool = False
    last_resync: float | None = None  # when its last full table was complete


@dataclass(slots=True)
class _Peer:
    node: int
    rto: float  # the current retransmission timeout (RFC 6298)
    run: int = 0  # the peer's run id as last seen in anything it sent (0: unknown)
    out: _Out = field(default_factory=_Out)
    inp: _In = field(default_factory=_In)
    keepalive_at: float = 0.0
    heard_at: float | None = None
    srtt: float | None = None  # smoothed round trip of a batch to its ack (None: no sample)
    rttvar: float = 0.0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys((
        "entries.sent", "entries.received", "batches.sent", "batches.received", "resends",
        "acks.sent", "acks.received", "nacks.sent", "nacks.received", "duplicates",
        "resyncs.sent", "resyncs.received", "peer.restarts", "dropped.queue_full",
        "dropped.out_of_order", "dropped.stale"), 0))


class Relay:
    """The relay of one director: its stream to every peer, and every peer's to it.

    :param run: this director's run id (1..2**64-1), greater at every start (the plugin
        uses ``time.time_ns()``).
    :param peers: the peer directors' node numbers.
    :param snapshot: returns this director's own table as entries (remaining timeouts)
        for a full resync; called when a new stream to a peer starts and iterated as the
        window opens. It must hold every entry :meth:`originate` was given so far.
    :param encode: an entry -> a msgpack-able value (default: as is).
    :param decode: that value -> an entry; raises :class:`DecodeError` on garbage.
    :param batch_max: most entries per batch.
    :param window: most unacknowledged batches per peer.
    :param rto: seconds before an unacknowledged batch is sent again until the round trip
        was measured; then smoothed RTT + 4 x RTT variation, at least ``rto_min`` (doubling
        per try up to ``rto_max``).
    :param rto_min: the floor of the adaptive timeout.
    :param keepalive: seconds between two acks to a quiet peer (announces our run).
    :param max_pending: most incremental entries queued per peer (then a resync instead).
    :param max_out_of_order: most batches a receiver holds ahead of a gap.
    :param encode_batch: a batch's entries -> a msgpack-able list (instead of ``encode``
        per entry).
    :param decode_batch: that list -> the entries (instead of ``decode`` per entry); raises
        :class:`DecodeError` on garbage.
    :param hold: longest seconds incremental entries short of ``hold_size`` wait while
        batches to that peer are unacknowledged (0: never held; a batch per poll).
    :param hold_size: entries that make a batch worth sending without waiting (default
        and at most ``batch_max``).
    """

    def __init__(self, *, run: int, peers: Iterable[int],
                 snapshot: Callable[[], Iterable[Any]],
                 encode: Callable[[Any], Any] = lambda e: e,
                 decode: Callable[[Any], Any] = lambda v: v,
                 batch_max: int = 256, window: int = 32, rto: float = 0.5,
                 rto_min: float | None = None, rto_max: float = 2.0,
                 keepalive: float = 1.0, max_pending: int = 200_000,
                 max_out_of_order: int = 256,
                 encode_batch: Callable[[list[Any]], list[Any]] | None = None,
                 decode_batch: Callable[[Any], tuple[Any, ...]] | None = None,
                 hold: float = 0.0, hold_size: int | None = None) -> None:
        if not 0 < run <= MAX_U64:
            raise LocalProtocolError(f"run id {run!r} out of range 1..2**64-1")
        rto_min = min(0.05, rto) if rto_min is None else rto_min
        if batch_max < 1 or window < 1 or rto <= 0 or rto_max < rto or keepalive <= 0 \
                or not 0 < rto_min <= rto_max or not 0 <= hold <= rto_max:
            raise LocalProtocolError("bad relay parameters")
        self.hold = hold
        self.run = run
        self.snapshot = snapshot
        self.encode = encode
        self.decode = decode
        self.encode_batch = encode_batch
        self.decode_batch = decode_batch
        self.rto_min = rto_min
        self.batch_max = min(batch_max, MAX_BATCH_ENTRIES)
        self.hold_size = self.batch_max if hold_size is None \
            else max(1, min(hold_size, self.batch_max))
        self.window = window
        self.rto = rto
        self.rto_max = rto_max
        self.keepalive = keepalive
        self.max_pending = max_pending
        self.max_out_of_order = max_out_of_order
        self.peers: dict[int, _Peer] = {}
        for node in peers:
            self.add_peer(node)

    # -- peers -------------------------------------------------------------------------------

    def add_peer(self, node: int) -> None:
        """Start relaying to ``node`` (a full resync first)."""
        if node not in self.peers:
            self.peers[node] = _Peer(node, rto=self.rto)

    def remove_peer(self, node: int) -> None:
        """Forget ``node`` and everything queued for it."""
        self.peers.pop(node, None)

    # -- inputs ------------------------------------------------------------------------------

    def originate(self, entries: Iterable[Any]) -> None:
        """Entries this director originated (captured from its kernel), for every peer.

        Sent by the next :meth:`poll`. A peer whose queue overflows is resynced instead.
        """
        items = list(entries)
        if not items:
            return
        for p in self.peers.values():
            out = p.out
            if out.restart_reason is not None:
                continue  # the coming resync's snapshot holds them
            if len(out.pending) + len(items) > self.max_pending:
                p.counters["dropped.queue_full"] += len(out.pending) + len(items)
                out.pending.clear()
                out.restart_reason = "queue_full"
                continue
            out.pending.extend(items)

    def receive(self, peer: int, message: Any, now: float) -> list[Effect]:
        """A message from ``peer`` (as the channel decoded it).

        :raises RelayError: a message that breaks the protocol (nothing changed).
        """
        p = self.peers.get(peer)
        if p is None:
            raise RelayError("unknown_peer", f"message from node {peer}, not a peer")
        if not isinstance(message, (list, tuple)) or not message:
            raise RelayError("bad_message", "a relay message is a non-empty array")
        kind = message[0]
        if kind == "B":
            run, stream, seq, bkind, raw = _fields(message, 6, "batch")
            _check_ints(run=run, stream=stream, seq=seq)
            if bkind not in (KIND_INCREMENTAL, KIND_SNAPSHOT, KIND_SNAPSHOT_END):
                raise RelayError("bad_message", f"batch kind {bkind!r}")
            if not isinstance(raw, (list, tuple)) or len(raw) > MAX_BATCH_ENTRIES:
                raise RelayError("bad_message", "batch entries: expected an array")
            inp = p.inp
            if run == inp.run and (stream < inp.stream or stream == inp.stream and (
                    seq < inp.next_seq or seq in inp.ahead)):
                entries: tuple[Any, ...] = ()  # stale or a duplicate: decoded once already
            else:
                # DecodeError propagates
                entries = self.decode_batch(raw) if self.decode_batch is not None \
                    else tuple(self.decode(v) for v in raw)
            if not self._seen(p, run, now):
                return []
            return self._batch(p, run, stream, seq, bkind, entries, now)
        if kind == "A":
            run, acked_run, stream, upto = _fields(message, 5, "ack")
            _check_ints(run=run, stream=stream)
            _check_ints(acked_run=acked_run, upto=upto, zero=True)
            if not self._seen(p, run, now):
                return []
            return self._ack(p, acked_run, stream, upto, now)
        if kind == "N":
            run, acked_run, stream, first, last = _fields(message, 6, "nack")
            _check_ints(run=run, stream=stream, first=first, last=last, acked_run=acked_run)
            if last < first or last - first > 1_000_000:
                raise RelayError("bad_message", f"nack range {first}..{last}")
            if not self._seen(p, run, now):
                return []
            return self._nack(p, acked_run, stream, first, last, now)
        raise RelayError("bad_message", f"unknown relay message kind {_show(kind)}")

    def poll(self, now: float) -> list[Effect]:
        """Send what is due: new batches (window permitting), resends, keepalives."""
        effects: list[Effect] = []
        for p in self.peers.values():
            self._start_stream_if_due(p, now)
            self._fill(p, now, effects)
            self._resend_due(p, now, effects)
            if now >= p.keepalive_at:
                effects.append(self._ack_message(p))
                p.keepalive_at = now + self.keepalive
        return effects

    def next_deadline(self) -> float | None:
        """When :meth:`poll` has something to do next (None: only after an input)."""
        out: float | None = None
        for p in self.peers.values():
            d = p.keepalive_at
            if p.out.restart_reason is not None or self._can_fill(p):
                return float("-inf")  # at once
            if p.out.held_since is not None and p.out.pending:
                d = min(d, p.out.held_since + self.hold)
            for b in p.out.unacked.values():
                d = min(d, b.timer_at + self._rto(p, b))
            out = d if out is None else min(out, d)
        return out

    # -- sending -----------------------------------------------------------------------------

    def _rto(self, p: _Peer, b: _Batch) -> float:
        return min(p.rto * float(1 << max(0, min(b.tries - 1, 16))), self.rto_max)

    def _rtt_sample(self, p: _Peer, rtt: float) -> None:
        """RFC 6298's estimator, from one batch sent once and acknowledged."""
        if p.srtt is None:
            p.srtt, p.rttvar = rtt, rtt / 2
        else:
            p.rttvar = 0.75 * p.rttvar + 0.25 * abs(p.srtt - rtt)
            p.srtt = 0.875 * p.srtt + 0.125 * rtt
        p.rto = min(max(p.srtt + 4 * p.rttvar, self.rto_min), self.rto_max)

    def _start_stream_if_due(self, p: _Peer, now: float) -> None:
        out = p.out
        if out.restart_reason is None:
            return
        out.stream += 1
        out.next_seq = 1
        out.unacked.clear()
        out.pending.clear()
        out.held_since = None
        out.snap = iter(self.snapshot())
        out.snap_open = True
        out.restart_reason = None
        out.started_at = now
        p.counters["resyncs.sent"] += 1

    def _can_fill(self, p: _Peer) -> bool:
        """Whether :meth:`poll` would send a new batch to ``p`` now (a held partial batch
        whose hold was not stamped yet counts: the poll stamps it)."""
        out = p.out
        if len(out.unacked) >= self.window:
            return False
        if out.snap_open:
            return True
        if not out.pending:
            return False
        return not self._holding(out) or out.held_since is None

    def _holding(self, out: _Out) -> bool:
        """Incremental entries short of a batch, behind unacknowledged batches (Nagle)."""
        return self.hold > 0 and bool(out.unacked) and len(out.pending) < self.hold_size

    def _fill(self, p: _Peer, now: float, effects: list[Effect]) -> None:
        out = p.out
        while len(out.unacked) < self.window:
            items: list[Any] = []
            if out.snap_open:
                assert out.snap is not None
                for entry in out.snap:
                    items.append(entry)
                    if len(items) >= self.batch_max:
                        break
                kind = KIND_SNAPSHOT if len(items) >= self.batch_max else KIND_SNAPSHOT_END
                if kind == KIND_SNAPSHOT_END:
                    out.snap, out.snap_open = None, False
            elif out.pending:
                if self._holding(out):
                    if out.held_since is None:
                        out.held_since = now
                    if now < out.held_since + self.hold:
                        return
                kind = KIND_INCREMENTAL
                n = min(self.batch_max, len(out.pending))
                items = [out.pending.popleft() for _ in range(n)]
                if not out.pending:
                    out.held_since = None  # else what is left waits since then
            else:
                return
            wire = self.encode_batch(items) if self.encode_batch is not None \
                else [self.encode(e) for e in items]
            b = _Batch(out.next_seq, kind, wire, len(items))
            out.next_seq += 1
            out.unacked[b.seq] = b
            effects.append(self._transmit(p, b, now))
            p.counters["entries.sent"] += b.count

    def _transmit(self, p: _Peer, b: _Batch, now: float) -> Send:
        if not b.tries:
            b.first_sent = now
        b.sent_at = b.timer_at = now
        b.tries += 1
        p.counters["batches.sent"] += 1
        if b.tries > 1:
            p.counters["resends"] += 1
        return Send(peer=p.node, message=["B", self.run, p.out.stream, b.seq, b.kind, b.wire])

    def _resend_due(self, p: _Peer, now: float, effects: list[Effect]) -> None:
        expired = False
        for b in p.out.unacked.values():
            if now >= b.timer_at + self._rto(p, b):
                effects.append(self._transmit(p, b, now))
                expired = True
        if expired:
            # back off (RFC 6298 5.5) until a batch sent once is acknowledged: else, with
            # every batch resent, Karn's rule would never let a sample through
            p.rto = min(p.rto * 2, self.rto_max)

    def _ack_message(self, p: _Peer) -> Send:
        inp = p.inp
        p.counters["acks.sent"] += 1
        return Send(peer=p.node, message=["A", self.run, inp.run, max(inp.stream, 1),
                                          inp.next_seq - 1 if inp.run else 0])

    # -- receiving ---------------------------------------------------------------------------

    def _seen(self, p: _Peer, run: int, now: float) -> bool:
        """Anything from ``p`` carries its run id: a new (greater) one means it restarted.

        Run ids grow from one start to the next (the daemon uses the wall clock in
        nanoseconds), so a smaller one is a late message of a previous run, dropped. Unless
        the current run has been silent for three keepalives: then the clock was set back
        between two starts, and the smaller id is the new run.

        :returns: False for a message to drop.
        """
        if run == p.run:
            p.heard_at = now
            return True
        if p.run and run < p.run and (p.heard_at is None
                                      or now < p.heard_at + 3 * self.keepalive):
            p.counters["dropped.stale"] += 1
            return False
        p.heard_at = now
        if p.run:
            p.counters["peer.restarts"] += 1
            # it restarted: it needs our whole table again, on a new stream
            p.out.restart_reason = "peer_restarted"
        p.run = run
        return True

    def _batch(self, p: _Peer, run: int, stream: int, seq: int, kind: int,
               entries: tuple[Any, ...], now: float) -> list[Effect]:
        inp = p.inp
        effects: list[Effect] = []
        if run == inp.run and stream < inp.stream:
            p.counters["dropped.stale"] += 1
            return effects
        if run != inp.run or stream != inp.stream:
            # the sender's new run, or its new stream: a full table follows from seq 1
            effects.append(ResyncStarted(peer=p.node, restarted=bool(inp.run) and run != inp.run))
            inp.run, inp.stream, inp.next_seq = run, stream, 1
            inp.ahead.clear()
            inp.in_snapshot = True
            inp.nacked_at = -1e18
            p.counters["resyncs.received"] += 1
        p.counters["batches.received"] += 1
        if seq < inp.next_seq or seq in inp.ahead:
            p.counters["duplicates"] += 1
        elif seq > inp.next_seq:
            if len(inp.ahead) >= self.max_out_of_order:
                p.counters["dropped.out_of_order"] += 1
            else:
                inp.ahead[seq] = (kind, entries)
        else:
            self._deliver(p, kind, entries, effects, now)
            while inp.next_seq in inp.ahead:
                k, e = inp.ahead.pop(inp.next_seq)
                self._deliver(p, k, e, effects, now)
        if inp.ahead and now >= inp.nacked_at + p.rto / 2:
            inp.nacked_at = now
            p.counters["nacks.sent"] += 1
            effects.append(Send(peer=p.node, message=[
                "N", self.run, inp.run, inp.stream, inp.next_seq, min(inp.ahead) - 1]))
        effects.append(self._ack_message(p))
        p.keepalive_at = now + self.keepalive
        return effects

    def _deliver(self, p: _Peer, kind: int, entries: tuple[Any, ...], effects: list[Effect],
                 now: float) -> None:
        inp = p.inp
        inp.next_seq += 1
        snapshot = kind != KIND_INCREMENTAL
        if entries:
            p.counters["entries.received"] += len(entries)
            effects.append(Deliver(peer=p.node, entries=entries, snapshot=snapshot))
        if kind == KIND_SNAPSHOT_END:
            inp.in_snapshot = False
            inp.last_resync = now
            effects.append(ResyncDone(peer=p.node))

    def _ack(self, p: _Peer, acked_run: int, stream: int, upto: int, now: float) -> list[Effect]:
        p.counters["acks.received"] += 1
        out = p.out
        if acked_run != self.run or stream != out.stream or out.restart_reason is not None:
            return []  # about a previous run or stream of ours (or none yet)
        if upto >= out.next_seq:
            raise RelayError("bad_ack", f"ack of batch {upto}, never sent (last {out.next_seq - 1})")
        sample: _Batch | None = None
        done = [s for s in out.unacked if s <= upto]
        for seq in done:
            b = out.unacked.pop(seq)
            if b.tries == 1:  # Karn: a resent batch's ack says nothing of the round trip
                sample = b
        if sample is not None:
            self._rtt_sample(p, now - sample.sent_at)
        if done:
            # the receiver progresses: the batches behind restart their timers (RFC 6298
            # 5.3), or a window sent at once into a receiver that takes one batch after
            # the other is resent from its tail (each wait there is a batch's work, not
            # a loss)
            for b in out.unacked.values():
                b.timer_at = now
        return []

    def _nack(self, p: _Peer, acked_run: int, stream: int, first: int, last: int,
              now: float) -> list[Effect]:
        p.counters["nacks.received"] += 1
        out = p.out
        if acked_run != self.run or stream != out.stream or out.restart_reason is not None:
            return []
        effects: list[Effect] = []
        # Batches no longer held were acknowledged since: the NACK crossed the ACK (the
        # receiver has them). Those not sent yet are not the receiver's to ask for.
        for seq in range(first, min(last, out.next_seq - 1) + 1):
            b = out.unacked.get(seq)
            if b is not None and now >= b.sent_at + p.rto / 4:
                effects.append(self._transmit(p, b, now))
        return effects

    # -- status ------------------------------------------------------------------------------

    def status(self, now: float) -> dict[int, dict[str, Any]]:
        """Per peer: run ids, streams, queue sizes, lag and counters (plain data)."""
        out: dict[int, dict[str, Any]] = {}
        for node, p in self.peers.items():
            o, i = p.out, p.inp
            oldest = min((b.first_sent for b in o.unacked.values()), default=None)
            out[node] = {
                "peer_run": p.run,
                "stream_out": o.stream,
                "stream_in": i.stream,
                "unacked_batches": len(o.unacked),
                "pending_entries": len(o.pending),
                "resync_sending": o.snap_open,
                "resync_receiving": i.in_snapshot,
                "oldest_unacked_s": None if oldest is None else round(now - oldest, 3),
                "last_resync_received_s": None if i.last_resync is None
                else round(now - i.last_resync, 3),
                "since_heard_s": None if p.heard_at is None else round(now - p.heard_at, 3),
                "rto_ms": round(p.rto * 1000, 3),
                "srtt_ms": None if p.srtt is None else round(p.srtt * 1000, 3),
                "counters": dict(p.counters),
            }
        return out

    def incomplete(self, now: float, within: float) -> list[int]:
        """The peers heard from within ``within`` seconds whose full table has not been
        received completely yet (none of its streams yet, or its snapshot in progress):
        the barrier of a director that just started waits for them."""
        return [node for node, p in self.peers.items()
                if p.heard_at is not None and now - p.heard_at <= within
                and (p.inp.run == 0 or p.inp.in_snapshot)]

    def idle(self) -> bool:
        """Nothing queued, in flight or due for any peer (tests: quiescence)."""
        return all(p.out.restart_reason is None and not p.out.unacked and not p.out.pending
                   and not p.out.snap_open and not p.inp.ahead for p in self.peers.values())


def _fields(message: list[Any] | tuple[Any, ...], n: int, what: str) -> list[Any]:
    if len(message) != n:
        raise RelayError("bad_message", f"a {what} has {n} fields, got {len(message)}")
    return list(message[1:])


def _check_ints(*, zero: bool = False, **values: Any) -> None:
    lo = 0 if zero else 1
    for name, v in values.items():
        if type(v) is not int or not lo <= v <= MAX_U64:
            raise RelayError("bad_message", f"{name}: expected an integer {lo}..2**64-1, "
                             f"got {_show(v)}")


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
