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
        self._slots: list[Entry | None] = [None] * capacity
        self.first = 0  #: oldest seq held (0: empty)
        self.last = 0  #: newest seq held or, once emptied by a break, the last seq seen
        self.breaks = 0  #: times the sequence broke and the ring was emptied

    def __len__(self) -> int:
        return 0 if self.first == 0 else self.last - self.first + 1

    def append(self, seq: int, topic: bytes, body: bytes) -> Entry:
        """Add the event ``seq`` (normally ``last + 1``).

        :returns: the ring's entry for it.
        """
        if self.first == 0 or seq != self.last + 1:
            if self.first != 0 or self.last != 0:
                self.breaks += 1
            self._slots = [None] * self.capacity
            self.first = seq
        elif seq - self.first >= self.capacity:
            self.first += 1  # the slot we overwrite held the oldest event
        entry = self._slots[seq % self.capacity] = Entry(seq, topic, body)
        self.last = seq
        return entry

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
        slots, cap = self._slots, self.capacity
        return OK, [slots[s % cap] for s in range(seq + 1, stop + 1)]  # type: ignore[misc]
