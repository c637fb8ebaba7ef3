"""Batch frames (several events in one publish frame) and the heartbeat's ``batch`` key:
round trips, the exact msgpack layout, and hostile input raising only DecodeError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterbus.bus import codec
from clusterbus.errors import DecodeError
from clusterbus.events import NodeDown, NodeUp, VrrpTransition


def events(n: int) -> list[NodeUp | NodeDown | VrrpTransition]:
    out: list[NodeUp | NodeDown | VrrpTransition] = []
    for i in range(n):
        seq = i + 1
        if i % 7 == 3:
            out.append(VrrpTransition(origin=1, seq=seq, time=1.5, instance="VI_1",
                                      new="MASTER", reason="test"))
        elif i % 2:
            out.append(NodeDown(origin=1, seq=seq, time=2.0, node=i, view=seq, left=(i,),
                                reason="netlink"))
        else:
            out.append(NodeUp(origin=1, seq=seq, time=2.0, node=i, view=seq, joined=(i,),
                              addrs=(f"10.77.0.{i % 250}", "fd00:77::1"), reason="netlink"))
    return out


def as_batch(evs: list[NodeUp | NodeDown | VrrpTransition]) -> list[bytes]:
    return codec.encode_batch([tuple(codec.encode(e)) for e in evs])  # type: ignore[misc]


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 300, codec.MAX_BATCH_EVENTS])
def test_batch_round_trip(n: int) -> None:
    evs = events(n)
    frames = as_batch(evs)
    assert frames[0] == codec.BATCH_TOPIC == b"_batch"
    got = [codec.decode_event(t, b) for t, b in codec.decode_batch(frames)]
    assert got == evs


def test_batch_is_the_documented_msgpack_map() -> None:
    # Spliced bytes must be exactly what a msgpack library would produce for
    # {"v": 1, "events": [[topic, body], ...]} (docs/wire-protocol.md).
    evs = events(40)
    frames = as_batch(evs)
    expected = {"v": 1, "events": [[e.topic, msgpack.unpackb(codec.encode(e)[1])] for e in evs]}
    assert msgpack.unpackb(frames[1]) == expected
    assert frames[1] == msgpack.packb(expected, use_bin_type=True)


@pytest.mark.parametrize("n", [0, 15, 16, 65535, 65536, 70000])
def test_array_headers(n: int) -> None:
    packed = msgpack.packb([None] * n)
    assert codec._array_header(n) == packed[:len(packed) - n]


def test_one_bad_event_in_a_batch_spoils_only_itself() -> None:
    good = events(3)
    bodies = [msgpack.unpackb(codec.encode(e)[1]) for e in good]
    bodies[1]["node"] = "seven"
    raw = msgpack.packb({"v": 1, "events": [[e.topic, b] for e, b in zip(good, bodies)]})
    items = codec.decode_batch([codec.BATCH_TOPIC, raw])
    assert codec.decode_event(*items[0]) == good[0]
    with pytest.raises(codec.FrameError) as info:
        codec.decode_event(*items[1])
    assert info.value.code == "bad_field"
    assert codec.decode_event(*items[2]) == good[2]


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"node.up", msgpack.packb({"v": 1, "events": []})], "bad_topic"),
        ([codec.BATCH_TOPIC], "frame_count"),
        ([codec.BATCH_TOPIC, msgpack.packb({"v": 2, "events": []})], "bad_version"),
        ([codec.BATCH_TOPIC, msgpack.packb({"events": []})], "bad_version"),
        ([codec.BATCH_TOPIC, msgpack.packb({"v": 1})], "bad_body"),
        ([codec.BATCH_TOPIC, msgpack.packb({"v": 1, "events": {}})], "bad_body"),
        ([codec.BATCH_TOPIC, msgpack.packb({"v": 1, "events": [["node.up"]]})], "bad_body"),
        ([codec.BATCH_TOPIC, msgpack.packb({"v": 1, "events": [[b"node.up", {}]]})], "bad_body"),
        ([codec.BATCH_TOPIC, msgpack.packb({"v": 1, "events": [["", {}]]})], "bad_body"),
        ([codec.BATCH_TOPIC, msgpack.packb({"v": 1, "events": [["node.up", [1]]]})], "bad_body"),
        ([codec.BATCH_TOPIC, msgpack.packb(
            {"v": 1, "events": [["node.up", {}]] * (codec.MAX_BATCH_EVENTS + 1)})], "bad_body"),
        ([codec.BATCH_TOPIC, msgpack.packb({"v": 1, "events": []}) + b"\x00"], "bad_body"),
        ([codec.BATCH_TOPIC, b"\x00" * (codec.MAX_FRAME + 1)], "oversized"),
    ],
)
def test_malformed_batches(frames: list[bytes], code: str) -> None:
    with pytest.raises(codec.FrameError) as info:
        codec.decode_batch(frames)
    assert isinstance(info.value, DecodeError)
    assert info.value.code == code


def test_bad_element_fields_are_bad_field_or_unknown_topic() -> None:
    cases = [
        (("node.up", {"v": 1}), "bad_field"),  # missing fields
        (("node.up", {"v": 1, b"node": 1}), "bad_field"),  # a bin key
        (("node.sideways", {"v": 1}), "unknown_topic"),
        (("node.up", {"v": 9}), "unknown_topic"),  # unknown version of a known topic
        (("node.up", {"v": "1"}), "bad_version"),
    ]
    for (topic, body), code in cases:
        with pytest.raises(codec.FrameError) as info:
            codec.decode_event(topic, dict(body))  # type: ignore[arg-type]
        assert info.value.code == code


def test_unknown_topic_in_a_batch_keeps_its_seq() -> None:
    # seq 1 and 3 are known events, seq 2 is a topic this process never registered
    good = events(3)
    raw = msgpack.packb({"v": 1, "events": [
        [good[0].topic, msgpack.unpackb(codec.encode(good[0])[1])],
        ["plugin.thing", {"v": 1, "origin": 1, "seq": 2, "time": 1.0, "x": 1}],
        [good[2].topic, msgpack.unpackb(codec.encode(good[2])[1])],
    ]})
    items = codec.decode_batch([codec.BATCH_TOPIC, raw])
    assert codec.decode_event(*items[0]) == good[0]
    with pytest.raises(codec.UnknownTopic) as info:
        codec.decode_event(*items[1])
    assert (info.value.topic, info.value.version, info.value.seq) == ("plugin.thing", 1, 2)
    assert codec.decode_event(*items[2]) == good[2]


MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=12) | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), inner, max_size=4),
    max_leaves=16,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_batch_bytes_only_raise_decode_error(raw: bytes) -> None:
    try:
        for topic, body in codec.decode_batch([codec.BATCH_TOPIC, raw]):
            codec.decode_event(topic, body)
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["node.up", "node.down", "vrrp.transition", "x.y"]),
                          st.dictionaries(st.sampled_from(
                              ["v", "origin", "seq", "time", "node", "addrs", "view", "joined",
                               "left", "reason", "incarnation", "zz"]), MSGPACK_VALUES,
                              max_size=12)), max_size=5),
       MSGPACK_VALUES)
def test_structured_batch_garbage_only_raises_decode_error(
        items: list[tuple[str, dict[str, object]]], version: object) -> None:
    for v in (1, version):
        raw = msgpack.packb({"v": v, "events": [[t, {"v": 1, **b}] for t, b in items]},
                            use_bin_type=True)
        try:
            for topic, body in codec.decode_batch([codec.BATCH_TOPIC, raw]):
                try:
                    codec.decode_event(topic, body)
                except DecodeError:
                    pass
        except DecodeError:
            pass


def test_heartbeat_batch_key() -> None:
    hb = codec.Heartbeat(epoch=7, origin=1, seq=3, time=1.0, interval=1.0, batch=True)
    frames = codec.encode_heartbeat(hb)
    assert msgpack.unpackb(frames[1])["batch"] is True
    assert codec.decode_heartbeat(frames) == hb
    # absent means false (a daemon from before batches), and false is not sent
    old = codec.Heartbeat(epoch=7, origin=1, seq=3, time=1.0, interval=1.0)
    assert "batch" not in msgpack.unpackb(codec.encode_heartbeat(old)[1])
    assert codec.decode_heartbeat(codec.encode_heartbeat(old)).batch is False
    body = {"v": 1, "epoch": 7, "origin": 1, "seq": 3, "time": 1.0, "interval": 1.0,
            "batch": 1}
    with pytest.raises(codec.FrameError) as info:
        codec.decode_heartbeat([codec.HEARTBEAT_TOPIC, msgpack.packb(body)])
    assert info.value.code == "bad_field"


def test_batch_and_heartbeat_topics_cannot_be_event_topics() -> None:
    from clusterbus.events import EVENT_TYPES

    assert all(not t.startswith("_") for t, _ in EVENT_TYPES)
    assert not codec.BATCH_TOPIC.startswith(codec.HEARTBEAT_TOPIC)
    assert not codec.HEARTBEAT_TOPIC.startswith(codec.BATCH_TOPIC)


def test_batch_frames_carry_the_epoch_and_old_readers_ignore_it() -> None:
    evs = [codec.encode(NodeDown(origin=1, seq=s, time=1.0, node=3, view=s, reason="t"))
           for s in (1, 2)]
    frames = codec.encode_batch([(t, b) for t, b in evs], epoch=2**64 - 1)
    epoch, items = codec.decode_batch_epoch(frames)
    assert epoch == 2**64 - 1 and [t for t, _ in items] == ["node.down"] * 2
    raw = msgpack.unpackb(frames[1])
    assert list(raw) == ["v", "epoch", "events"] and raw["epoch"] == 2**64 - 1
    # what a reader that predates the key does: take "events", ignore the rest
    assert codec.decode_batch(frames) == items
    assert codec.decode_batch_epoch(codec.encode_batch(evs))[0] is None  # an older daemon
    for bad in (0, -1, "7", 1.5):
        body = codec.pack({"v": 1, "epoch": bad, "events": []})
        with pytest.raises(codec.FrameError) as info:
            codec.decode_batch_epoch([codec.BATCH_TOPIC, body])
        assert info.value.code in ("bad_field", "bad_body")
    with pytest.raises(ValueError):
        codec.batch_head(0)
