"""Gap repair, sans-IO: the ZeroMQ guide's Clone pattern as a state machine.

Standard library only; no sockets, no clock, no awaits. The subscriber (an adapter,
:class:`clusterbus.bus.client.Subscriber`) feeds it what arrives -- events (with the
epoch their frame carries, when it carries one), heartbeats, replies to its requests --
and the current time, and acts on its decisions:

* **Deliver**: the items appended to :attr:`Sequencer.ready`, in order: events (a
  decision to deliver an event is the event itself, so the per-event path builds no
  wrapper) and snapshots (where continuity was re-established);
* **RequestReplay** / **RequestSnapshot**: :attr:`Sequencer.request`, at most one at a
  time. The adapter sends it and hands the answer back through :meth:`Sequencer.replayed`
  or :meth:`Sequencer.resynced`; until then nothing else it feeds moves the sequence
  (an event that arrives meanwhile is in the daemon's ring, so the answer covers it). A
  request that got no answer stays set: the adapter asks again.

The rules are those of docs/wire-protocol.md ("Epochs, sequence numbers and gap repair"):
every event is delivered exactly once and in seq order, or a snapshot says where
continuity was re-established; a new epoch -- in a heartbeat, a reply, or the frame of
any event of the new run -- means the daemon restarted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

__all__ = [
    "Sequencer",
    "Unknown",
    "RequestReplay",
    "RequestSnapshot",
    "Request",
    "Item",
    "Position",
]


class Unknown(NamedTuple):
    """Stands in for an event whose topic (or version) is not known here: it takes its
    place in the seq order and is never delivered (docs/wire-protocol.md, "Events")."""

    seq: int
    topic: str


class Item(Protocol):
    """What the sequencer orders: an event (or an :class:`Unknown`)."""

    @property
    def seq(self) -> int: ...

    @property
    def topic(self) -> str: ...


class Position(Protocol):
    """A snapshot, as far as the sequencer cares: where it puts the stream."""

    @property
    def epoch(self) -> int: ...

    @property
    def seq(self) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReplay:
    """Decision: ask for the events after ``after`` (``REPLAY after``)."""

    after: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestSnapshot:
    """Decision: ask for the current state (``SNAPSHOT``), because of ``reason``:
    ``initial``, ``epoch_changed``, ``replay_too_old``, ``replay_ahead``, ``replay_hole``,
    ``replay_invalid``."""

    reason: str


Request = RequestReplay | RequestSnapshot

#: Epochs of earlier runs remembered, so that their events still queued on our side
#: after a resynchronisation are recognised as stale rather than as yet another restart.
RETIRED_EPOCHS = 8


class Sequencer:
    """The state of one subscription: ``(epoch, seq)`` and what to do next.

    :param prefixes: deliver only events whose topic starts with one of these (all when
        empty); the others are accounted for (``filtered``). Snapshots always go out.
    :param resume: ``(epoch, seq)`` of the last event a previous run handled: starts with
        a replay of what came after it.
    :param initial_snapshot: start with a snapshot of the current state.
    :param deliver_snapshots: put snapshots in :attr:`ready` (else only in
        :attr:`last_snapshot`).
    :param dead_after: seconds without a heartbeat after which :meth:`alive` is false;
        default three announced heartbeat intervals (3 s before the first heartbeat).
    :param now: the current (monotonic) time.
    """

    def __init__(self, *, prefixes: Sequence[str] = (), resume: tuple[int, int] | None = None,
                 initial_snapshot: bool = False, deliver_snapshots: bool = True,
                 dead_after: float | None = None, now: float = 0.0) -> None:
        self.prefixes = tuple(prefixes)
        self.deliver_snapshots = deliver_snapshots
        self.dead_after = dead_after
        #: the daemon run followed (None until a heartbeat, an event frame or a reply says)
        self.epoch: int | None = None
        #: the last seq accounted for (delivered, filtered out, or covered by a snapshot)
        self.seq: int | None = None
        #: Deliver decisions, in order: events and snapshots
        self.ready: deque[Any] = deque()
        #: the pending request decision (None: none)
        self.request: Request | None = None
        self.last_snapshot: Any = None
        #: what happened: delivered, filtered, unknown_topic (skipped, seq counted),
        #: heartbeats, duplicates, stale (an earlier run's), gaps (detected),
        #: gaps_repaired, replayed, suspect, restarts (a new run, confirmed by the
        #: snapshot), resyncs.<reason>, dropped.<code>.
        self.counters: dict[str, int] = {
            "delivered": 0, "filtered": 0, "unknown_topic": 0, "heartbeats": 0,
            "duplicates": 0, "gaps": 0, "gaps_repaired": 0, "replayed": 0,
        }
        # Events below the floor cannot come again on the PUB stream (they were
        # delivered live before the last repair): one that does hints at a restart.
        self._floor = 0
        self._retired: deque[int] = deque(maxlen=RETIRED_EPOCHS)
        # The epoch that made the pending snapshot request (a heartbeat, a frame or a
        # reply of another run), until the snapshot says whether it is the run now.
        self._announced: int | None = None
        self._replayed = 0  # events replayed by the repair under way
        self._lower_floor: int | None = None  # a suspect seq, once the replay cleared it
        self._opened_at = now
        self._heard_at: float | None = None
        self._interval: float | None = None
        if resume is not None:
            self.epoch, self.seq = resume
            self._replay()
        elif initial_snapshot:
            self.request = RequestSnapshot(reason="initial")

    # -- position and liveness ----------------------------------------------------------------

    @property
    def position(self) -> tuple[int, int] | None:
        """``(epoch, seq)`` to resume from later, once both are known."""
        if self.epoch is None or self.seq is None:
            return None
        return self.epoch, self.seq

    def opened(self, now: float) -> None:
        """The subscription (re)started listening at ``now``: liveness counts from here."""
        self._opened_at = now

    @property
    def effective_dead_after(self) -> float:
        """``dead_after``, or three announced heartbeat intervals (3 s before any)."""
        if self.dead_after is not None:
            return self.dead_after
        return 3.0 if self._interval is None else 3 * self._interval

    def since_heartbeat(self, now: float) -> float:
        """Seconds since the last heartbeat (since :meth:`opened` when none came yet)."""
        return now - (self._heard_at if self._heard_at is not None else self._opened_at)

    def alive(self, now: float) -> bool:
        """True while heartbeats arrive within :attr:`effective_dead_after`."""
        return self._heard_at is not None and \
            self.since_heartbeat(now) < self.effective_dead_after

    # -- inputs ---------------------------------------------------------------------------------

    def event(self, item: Item, epoch: int | None = None) -> None:
        """An event from the PUB stream (or the :class:`Unknown` standing in for one).

        :param epoch: the epoch its frame carries (batch frames), None when it carries
            none (single-event frames).
        """
        if self.request is not None:
            return  # the pending request's answer covers it (see the module docstring)
        if epoch is not None and epoch != self.epoch:
            if self.epoch is None:
                self.epoch = epoch
            elif epoch in self._retired:
                self.counters["stale"] = self.counters.get("stale", 0) + 1
                return
            else:
                self._restarted(epoch)
                return
        seq = item.seq
        if self.seq is None:
            self.seq, self._floor = seq - 1, seq  # the first event sets the baseline
        if self.epoch is None:
            # Without an epoch the position is not resumable: learn it (and whatever is
            # already after the baseline) from a replay before delivering anything.
            self._replay()
            return
        if seq == self.seq + 1:
            self._accept(item)
        elif seq <= self.seq:
            if epoch is not None or seq >= self._floor:
                # Already replayed (or received in the other format while switching to
                # or from batches), now arriving on the PUB stream as well.
                self.counters["duplicates"] += 1
                return
            # The PUB stream cannot repeat what it delivered live before the last
            # repair, and this frame does not say its epoch: the daemon probably
            # restarted. A (cheap) replay tells.
            self._count("suspect")
            self._replay()
            self._lower_floor = seq
        else:
            self.counters["gaps"] += 1
            self._replay()

    def events(self, items: Iterable[Item], epoch: int | None = None) -> None:
        """The events of one batch frame, in order (same as :meth:`event` for each)."""
        ready, prefixes, counters = self.ready, self.prefixes, self.counters
        # in order, same run, nothing pending: accept inline (the per-event path)
        inline = epoch is not None and epoch == self.epoch and self.request is None
        for item in items:
            seq = self.seq
            if inline and seq is not None and item.seq == seq + 1 \
                    and type(item) is not Unknown:
                self.seq = seq + 1
                if not prefixes or item.topic.startswith(prefixes):
                    ready.append(item)
                    counters["delivered"] += 1
                else:
                    counters["filtered"] += 1
            else:
                self.event(item, epoch)
                inline = epoch is not None and epoch == self.epoch and self.request is None

    def missing(self, code: str) -> None:
        """An event frame that cannot be decoded and whose seq is unknown (``code``
        names why): counted; the next event or heartbeat reveals the gap."""
        self._count(f"dropped.{code}")

    def heartbeat(self, *, epoch: int, seq: int, interval: float, now: float) -> None:
        """A heartbeat: the daemon's epoch and the last seq it sent."""
        self.counters["heartbeats"] += 1
        self._heard_at = now
        self._interval = interval
        if self.request is not None:
            return
        if self.epoch is None:
            self.epoch = epoch
            if self.seq is None:
                self.seq, self._floor = seq, seq + 1
                return
        if epoch != self.epoch:
            if epoch in self._retired:
                self.counters["stale"] = self.counters.get("stale", 0) + 1
            else:
                self._restarted(epoch)
        elif self.seq is not None and seq > self.seq:
            self.counters["gaps"] += 1  # lost after the last event received (a burst's tail)
            self._replay()

    def replayed(self, *, epoch: Any, status: Any, more: bool,
                 items: Sequence[Item | None] | None) -> None:
        """The answer to :class:`RequestReplay`.

        :param epoch: the reply's ``epoch``.
        :param status: its ``status`` (``ok``, ``too_old``, ``ahead``).
        :param more: its ``more``.
        :param items: its events in order, ``None`` for one that cannot be decoded (an
            :class:`Unknown` for one that counts all the same); ``items`` itself is
            ``None`` when the payload is unusable as a whole.
        """
        self.request = None
        if self.seq is None:
            return
        if self.epoch is None and type(epoch) is int:
            self.epoch = epoch
        if epoch != self.epoch:
            if type(epoch) is int:
                self._announced = epoch
            self._resync("epoch_changed")
            return
        if status != "ok":
            self._resync(f"replay_{status}")
            return
        if items is None:
            self._resync("replay_invalid")
            return
        for item in items:
            if item is None:
                self._resync("replay_invalid")
                return
            if item.seq <= self.seq:
                continue
            if item.seq != self.seq + 1:
                self._resync("replay_hole")
                return
            self._accept(item)
            self._replayed += 1
        if more and items:
            self.request = RequestReplay(after=self.seq)  # the floor stays where it is
            return
        if self._replayed:
            self.counters["gaps_repaired"] += 1
            self.counters["replayed"] += self._replayed
            self._replayed = 0
        if self._lower_floor is not None:
            self._floor = min(self._floor, self._lower_floor)
            self._lower_floor = None

    def resynced(self, snapshot: Position) -> None:
        """The answer to :class:`RequestSnapshot`: continue after ``snapshot.seq``.

        A snapshot asked for because of another run's epoch (``epoch_changed``) that
        comes from the run already followed means that epoch was an earlier run's, whose
        frames were still queued: the daemon did not restart again (its restart happened
        while a request was pending, and the run after it answered). That epoch is
        retired, nothing is delivered, and the events after the position are replayed
        (so the stream stays continuous where it can).
        """
        reason = self.request.reason if isinstance(self.request, RequestSnapshot) else ""
        self.request = None
        announced, self._announced = self._announced, None
        if announced is not None and announced != snapshot.epoch:
            self._retire(announced)  # a run already over: its queued frames are stale
            if snapshot.epoch == self.epoch and self.seq is not None \
                    and snapshot.seq >= self.seq:
                self._count("stale")
                if snapshot.seq > self.seq:
                    self._replay()
                return
        if self.epoch is not None and snapshot.epoch != self.epoch:
            self._retire(self.epoch)
            self._count("restarts")
        self.epoch, self.seq = snapshot.epoch, snapshot.seq
        # After a snapshot the PUB queue may still hold anything older: none of it is a
        # sign of a restart any more (heartbeats and epoch-carrying frames will tell).
        self._floor = 0
        self._replayed = 0
        self._lower_floor = None
        self.last_snapshot = snapshot
        self._count(f"resyncs.{reason}")
        if self.deliver_snapshots:
            self.ready.append(snapshot)

    # -- internals ------------------------------------------------------------------------------

    def _accept(self, item: Item) -> None:
        self.seq = item.seq
        if type(item) is Unknown:
            self.counters["unknown_topic"] += 1
        elif not self.prefixes or item.topic.startswith(self.prefixes):
            self.ready.append(item)
            self.counters["delivered"] += 1
        else:
            self.counters["filtered"] += 1

    def _replay(self) -> None:
        assert self.seq is not None
        self._floor = self.seq + 1
        self._replayed = 0
        self.request = RequestReplay(after=self.seq)

    def _resync(self, reason: str) -> None:
        self.request = RequestSnapshot(reason=reason)

    def _restarted(self, epoch: int) -> None:
        self._announced = epoch
        self._resync("epoch_changed")

    def _retire(self, epoch: int) -> None:
        if epoch not in self._retired:
            self._retired.append(epoch)

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1
