"""The replay ring: the last N published events, already encoded, indexed by seq.

Standard library only. Sequence numbers of one daemon are consecutive, so the slot of an
event is ``seq % capacity`` and a lookup is O(1); a break in the sequence (it should not
happen) empties the ring so it never answers with a hole in it.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Ring", "Entry", "OK", "TOO_OLD", "AHEAD"]

#: :meth:`Ring.after` statuses (also the ``status`` field of REPLAY replies).
OK = "ok"  #: every event after the requested seq is here (maybe none)
TOO_OLD = "too_old"  #: some events after the requested seq are no longer in the ring
AHEAD = "ahead"  #: the requested seq is newer than the last event published


class Entry(NamedTuple):
    """One ring slot."""

    seq: int
    topic: bytes
    body: bytes


class Ring:
    """A bounded ring of encoded events.

    :param capacity: number of events kept (``bus.replay_ring``).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("ring capacity must be >= 1")
        self.capacity = capacity
        # Two lists rather than one of Entry tuples: no object per event beyond the body
        # (the topic is the class's shared bytes); entries are built on replay only.
        self._topics: list[bytes | None] = [None] * capacity
        self._bodies: list[bytes | None] = [None] * capacity
        self.first = 0  #: oldest seq held (0: empty)
        self.last = 0  #: newest seq held or, once emptied by a break, the last seq seen
        self.breaks = 0  #: times the sequence broke and the ring was emptied

    def __len__(self) -> int:
        return 0 if self.first == 0 else self.last - self.first + 1

    def append(self, seq: int, topic: bytes, body: bytes) -> None:
        """Add the event ``seq`` (normally ``last + 1``)."""
        if seq != self.last + 1 or self.first == 0:
            if self.first != 0 or self.last != 0:
                self.breaks += 1
            self._topics = [None] * self.capacity
            self._bodies = [None] * self.capacity
            self.first = seq
        elif seq - self.first >= self.capacity:
            self.first += 1  # the slot we overwrite held the oldest event
        i = seq % self.capacity
        self._topics[i] = topic
        self._bodies[i] = body
        self.last = seq

    def after(self, seq: int, limit: int) -> tuple[str, list[Entry]]:
        """The events after ``seq``, oldest first, at most ``limit`` of them.

        :returns: (:data:`OK` / :data:`TOO_OLD` / :data:`AHEAD`, entries). Entries are
            returned only with :data:`OK`.
        """
        if seq > self.last:
            return AHEAD, []
        if seq == self.last:
            return OK, []
        if self.first == 0 or seq + 1 < self.first:
            return TOO_OLD, []
        stop = min(self.last, seq + limit)
        topics, bodies, cap = self._topics, self._bodies, self.capacity
        return OK, [Entry(s, topics[s % cap], bodies[s % cap])  # type: ignore[arg-type]
                    for s in range(seq + 1, stop + 1)]
