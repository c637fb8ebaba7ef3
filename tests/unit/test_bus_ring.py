"""The replay ring: O(1) lookup by seq, bounded, honest about what it no longer holds."""

from __future__ import annotations

from clusterbus.bus.ring import AHEAD, OK, TOO_OLD, Ring


def fill(ring: Ring, first: int, last: int) -> None:
    for seq in range(first, last + 1):
        ring.append(seq, b"t", str(seq).encode())


def test_empty_ring() -> None:
    ring = Ring(4)
    assert len(ring) == 0
    assert ring.after(0, 10) == (OK, [])
    assert ring.after(1, 10) == (AHEAD, [])


def test_after_within_and_beyond_capacity() -> None:
    ring = Ring(4)
    fill(ring, 1, 3)
    status, entries = ring.after(0, 10)
    assert status == OK and [e.seq for e in entries] == [1, 2, 3]
    fill(ring, 4, 10)
    assert (ring.first, ring.last, len(ring)) == (7, 10, 4)
    assert ring.after(5, 10) == (TOO_OLD, [])
    status, entries = ring.after(6, 10)
    assert status == OK and [e.body for e in entries] == [b"7", b"8", b"9", b"10"]
    status, entries = ring.after(6, 2)
    assert [e.seq for e in entries] == [7, 8]
    assert ring.after(10, 10) == (OK, [])
    assert ring.after(11, 10) == (AHEAD, [])


def test_break_in_sequence_empties_the_ring() -> None:
    ring = Ring(8)
    fill(ring, 1, 5)
    ring.append(9, b"t", b"9")
    assert ring.breaks == 1
    assert (ring.first, ring.last) == (9, 9)
    assert ring.after(5, 10) == (TOO_OLD, [])
    assert [e.seq for e in ring.after(8, 10)[1]] == [9]
