"""How the publisher groups one flush's events into batch frames: in order, none lost,
each frame within the event count and byte budget the decoders accept."""

from __future__ import annotations

from clusterbus.bus import codec
from clusterbus.bus.publisher import BATCH_BYTES, split_batches
from clusterbus.bus.ring import Entry
from clusterbus.events import NodeUp


def entries(n: int, reason_len: int = 8) -> list[Entry]:
    out = []
    for seq in range(1, n + 1):
        topic, body = codec.encode(NodeUp(origin=1, seq=seq, time=1.0, node=seq % 7,
                                          view=seq, reason="r" * reason_len))
        out.append(Entry(seq, topic, body))
    return out


def check(pending: list[Entry]) -> list[list[tuple[bytes, bytes]]]:
    chunks = list(split_batches(pending))
    assert [pair for chunk in chunks for pair in chunk] == [(e.topic, e.body) for e in pending]
    for chunk in chunks:
        frames = codec.encode_batch(chunk)
        assert len(frames[1]) <= codec.MAX_FRAME
        assert [codec.decode_event(t, b) for t, b in codec.decode_batch(frames)] == \
            [codec.decode([t, b]) for t, b in chunk]
    return chunks


def test_count_bound() -> None:
    chunks = check(entries(2 * codec.MAX_BATCH_EVENTS + 3))
    assert [len(c) for c in chunks] == [codec.MAX_BATCH_EVENTS, codec.MAX_BATCH_EVENTS, 3]


def test_byte_bound() -> None:
    big = entries(codec.MAX_BATCH_EVENTS, reason_len=64)
    assert sum(len(e.body) for e in big) > BATCH_BYTES  # the count alone would fit
    chunks = check(big)
    assert len(chunks) > 1


def test_nothing_and_one() -> None:
    assert list(split_batches([])) == []
    assert check(entries(1)) == [[(entries(1)[0].topic, entries(1)[0].body)]]
