"""How the publisher groups one flush's events into batch frames: in order, none lost,
each frame within the event count and byte budget the decoders accept, and the same
bytes as codec.encode_batch."""

from __future__ import annotations

from clusterbus.bus import codec
from clusterbus.bus.publisher import BATCH_BYTES, BATCH_EVENTS, hwm_messages, split_batches
from clusterbus.events import NodeUp


def encoded(n: int, reason_len: int = 8) -> list[tuple[bytes, bytes]]:
    out = []
    for seq in range(1, n + 1):
        topic, body = codec.encode(NodeUp(origin=1, seq=seq, time=1.0, node=seq % 7,
                                          view=seq, reason="r" * reason_len))
        out.append((topic, body))
    return out


def flat(events: list[tuple[bytes, bytes]]) -> list[bytes]:
    parts: list[bytes] = []
    for _topic, body in events:
        parts += (codec.event_encoder(NodeUp).element, body)
    return parts


def check(events: list[tuple[bytes, bytes]]) -> list[list[bytes]]:
    chunks = list(split_batches(flat(events)))
    assert [p for chunk in chunks for p in chunk] == flat(events)  # in order, nothing lost
    done = 0
    for chunk in chunks:
        assert chunk and len(chunk) % 2 == 0
        frames = codec.batch_frame(chunk)
        mine = events[done:done + len(chunk) // 2]
        done += len(chunk) // 2
        assert frames == codec.encode_batch(mine)
        assert len(frames[1]) <= codec.MAX_FRAME
        assert [codec.decode_event(t, b) for t, b in codec.decode_batch(frames)] == \
            [codec.decode([t, b]) for t, b in mine]
    return chunks


def test_count_bound() -> None:
    chunks = check(encoded(2 * BATCH_EVENTS + 3))
    assert [len(c) // 2 for c in chunks] == [BATCH_EVENTS, BATCH_EVENTS, 3]
    assert BATCH_EVENTS <= codec.MAX_BATCH_EVENTS  # what every decoder accepts


def test_byte_bound() -> None:
    big = encoded(codec.MAX_BATCH_EVENTS, reason_len=64)
    assert sum(map(len, flat(big))) > BATCH_BYTES  # the count alone would fit
    chunks = list(split_batches(flat(big), max_events=codec.MAX_BATCH_EVENTS))
    assert len(chunks) > 1 and sum(len(c) for c in chunks) == len(flat(big))
    assert all(sum(map(len, c)) <= BATCH_BYTES for c in chunks)


def test_the_socket_queue_is_about_send_hwm_events() -> None:
    # SNDHWM counts messages: a batch subscriber's messages hold up to BATCH_EVENTS events
    assert hwm_messages(100_000) * BATCH_EVENTS < 100_000 + BATCH_EVENTS
    assert hwm_messages(100_000) * BATCH_EVENTS >= 100_000
    assert hwm_messages(1) == 1 and hwm_messages(BATCH_EVENTS + 1) == 2


def test_one_frame_when_it_fits() -> None:
    events = encoded(BATCH_EVENTS)
    assert sum(map(len, flat(events))) <= BATCH_BYTES
    assert len(check(events)) == 1


def test_nothing_and_one() -> None:
    assert list(split_batches([])) == []
    assert check(encoded(1)) == [flat(encoded(1))]


def test_an_event_bigger_than_the_budget_goes_alone() -> None:
    small = encoded(2)
    head = codec.event_encoder(NodeUp).element
    parts = flat(small[:1]) + [head, b"x" * BATCH_BYTES] + flat(small[1:])
    chunks = list(split_batches(parts))
    assert [len(c) // 2 for c in chunks] == [1, 1, 1]
    assert chunks[1] == [head, b"x" * BATCH_BYTES]
