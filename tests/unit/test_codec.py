"""The bus wire codec: round trips for every registered event class, and hostile input
that never raises anything but DecodeError."""

from __future__ import annotations

import ipaddress
import string

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterbus.bus import codec
from clusterbus.errors import DecodeError, InvalidEvent
from clusterbus.events import (
    EVENT_TYPES,
    VRRP_STATES,
    NodeDown,
    NodeUp,
    VrrpTransition,
    node_addrs,
)
from clusterbus.view import NodeReport, NodeState

U32 = st.integers(0, 2**32 - 1)
U64_POS = st.integers(1, 2**64 - 1)
TEXT = st.text(min_size=1, max_size=32)
IFNAME = st.text(string.ascii_letters + string.digits + ".-_", min_size=1, max_size=15)
FLOAT = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).map(str)
# node addresses: unicast, not loopback, not unspecified, canonical (not IPv4-mapped)
ADDR = st.one_of(IPV4, IPV6).filter(lambda a: _ok(a) and node_addrs((a,)) == (a,))
ADDRS = st.lists(ADDR, max_size=4, unique=True).map(tuple)
NODES = st.lists(U32, max_size=4).map(tuple)
VIP = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)),
).map(lambda t: str(ipaddress.ip_interface(f"{t[0]}/{t[1]}")))


def _ok(addr: str) -> bool:
    try:
        node_addrs((addr,))
    except InvalidEvent:
        return False
    return True


#: A strategy per field name. A new event class with a new field makes the round-trip test
#: fail until the field is listed here, so every registered class stays covered.
FIELDS = {
    "origin": U32, "seq": U64_POS, "time": FLOAT, "node": U32, "addrs": ADDRS,
    "view": U64_POS, "joined": NODES, "left": NODES, "reason": TEXT, "incarnation": U32,
    "instance": TEXT, "vrid": st.integers(0, 255), "family": st.sampled_from(["inet", "inet6"]),
    "interface": IFNAME, "old": st.sampled_from(sorted(VRRP_STATES)),
    "new": st.sampled_from(sorted(VRRP_STATES)), "priority": st.integers(0, 255),
    "source": TEXT, "group": st.booleans(), "address": VIP, "addr": ADDR,
    "owner": U32, "claimant": U32, "added": st.integers(0, 2**64 - 1),
    "reported": st.integers(0, 2**64 - 1), "down": st.integers(0, 2**64 - 1),
    "removed": st.integers(0, 2**64 - 1), "changed": st.integers(0, 2**64 - 1),
    "duration": FLOAT,
    "quorate": st.booleans(), "members": NODES,
}

CLASSES = sorted(EVENT_TYPES.values(), key=lambda c: (c.TOPIC, c.VERSION))


def events_of(cls: type) -> st.SearchStrategy:
    missing = [n for n in cls.field_names() if n not in FIELDS]
    assert not missing, f"add a strategy for {cls.__name__}.{missing} in FIELDS"
    return st.builds(cls, **{n: FIELDS[n] for n in cls.field_names()})


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.TOPIC)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_every_event_class(cls: type, data: st.DataObject) -> None:
    event = data.draw(events_of(cls))
    frames = codec.encode(event)
    assert frames[0] == cls.TOPIC.encode()
    body = msgpack.unpackb(frames[1], raw=False)
    assert body["v"] == cls.VERSION
    assert codec.decode(frames) == event


def sample() -> NodeUp:
    return NodeUp(origin=1, seq=7, time=12.5, node=3, addrs=("10.0.0.3",), view=2,
                  joined=(3,), reason="netlink")


def body_of(event: NodeUp, **changes: object) -> bytes:
    d = {"v": 1, **event.to_dict(), **changes}
    return msgpack.packb({k: v for k, v in d.items() if v is not ...}, use_bin_type=True)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"node.up"], "frame_count"),
        ([b"node.up", b"", b""], "frame_count"),
        ("node.up", "frame_count"),
        ([b"node.up", "text"], "frame_count"),
        ([b"no.such.topic", body_of(sample())], "unknown_topic"),
        ([b"\xff\xfe", body_of(sample())], "bad_topic"),
        ([b"", body_of(sample())], "bad_topic"),
        ([b"node.up", body_of(sample()) + b"\x00"], "bad_body"),  # trailing bytes
        ([b"node.up", b"\xc1"], "bad_body"),  # reserved msgpack byte
        ([b"node.up", msgpack.packb([1, 2])], "bad_body"),  # not a map
        ([b"node.up", msgpack.packb({1: 2})], "bad_body"),  # int key
        ([b"node.up", body_of(sample())[:-3]], "bad_body"),  # truncated
        ([b"node.up", body_of(sample(), v=2)], "unknown_topic"),  # unknown version
        ([b"node.up", body_of(sample(), v="1")], "bad_version"),
        ([b"node.up", body_of(sample(), v=...)], "bad_version"),
        ([b"node.up", body_of(sample(), node=-1)], "bad_field"),
        ([b"node.up", body_of(sample(), addrs=["not an ip"])], "bad_field"),
        ([b"node.up", body_of(sample(), extra=1)], "bad_field"),
        ([b"node.up", body_of(sample(), reason=...)], "bad_field"),
        ([b"node.up", body_of(sample(), time=float("nan"))], "bad_field"),
        ([b"node.up", b"\x00" * (codec.MAX_FRAME + 1)], "oversized"),
    ],
)
def test_malformed_event_frames(frames: object, code: str) -> None:
    with pytest.raises(codec.FrameError) as info:
        codec.decode(frames)  # type: ignore[arg-type]
    assert isinstance(info.value, DecodeError)
    assert info.value.code == code


@pytest.mark.parametrize(
    ("topic", "body", "seq"),
    [
        (b"no.such.topic", body_of(sample()), 7),
        (b"node.up", body_of(sample(), v=2), 7),  # a version this process does not know
        (b"no.such.topic", msgpack.packb({"v": 1, "origin": 1, "seq": 9}), 9),  # only those
        (b"no.such.topic", body_of(sample(), seq=...), None),
        (b"no.such.topic", body_of(sample(), seq="7"), None),
        (b"no.such.topic", body_of(sample(), seq=0), None),
        (b"no.such.topic", body_of(sample(), seq=-1), None),
        (b"no.such.topic", body_of(sample(), origin=...), None),
        (b"no.such.topic", body_of(sample(), origin=-1), None),
        (b"_future", body_of(sample()), None),  # reserved for the bus: never an event
    ],
)
def test_unknown_topic_carries_the_seq_to_account_for(topic: bytes, body: bytes,
                                                      seq: int | None) -> None:
    with pytest.raises(codec.UnknownTopic) as info:
        codec.decode([topic, body])
    assert info.value.code == "unknown_topic"
    assert info.value.topic == topic.decode()
    assert info.value.seq == seq


def test_every_truncated_body_raises_decode_error() -> None:
    topic, body = codec.encode(sample())
    for n in range(len(body)):
        with pytest.raises(DecodeError):
            codec.decode([topic, body[:n]])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_arbitrary_frames_only_raise_decode_error(frames: list[bytes]) -> None:
    for decoder in (codec.decode, codec.decode_heartbeat, codec.decode_ingest,
                    codec.decode_request, codec.decode_reply):
        try:
            decoder(frames)
        except DecodeError:
            pass


MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    topic=st.sampled_from([c.TOPIC.encode() for c in CLASSES] + [b"_hb"]),
    version=st.one_of(st.just(1), MSGPACK_VALUES),
    data=st.data(),
)
def test_structured_garbage_only_raises_decode_error(topic: bytes, version: object,
                                                     data: st.DataObject) -> None:
    # Right topic, the right field names, values of any msgpack type: exercises the event
    # validators rather than the msgpack parser.
    cls = next((c for c in CLASSES if c.TOPIC.encode() == topic), None)
    names = list(cls.field_names()) if cls else ["epoch", "origin", "seq", "time", "interval"]
    names += ["node", "addrs", "incarnation", "x"]
    fields = data.draw(st.dictionaries(st.sampled_from(names), MSGPACK_VALUES, max_size=12))
    body = msgpack.packb({"v": version, **fields}, use_bin_type=True)
    for decoder in (codec.decode, codec.decode_heartbeat, codec.decode_ingest):
        try:
            decoder([topic, body])
        except DecodeError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=16), MSGPACK_VALUES.map(
    lambda v: msgpack.packb(v, use_bin_type=True))), max_size=5))
def test_garbage_requests_and_replies(frames: list[bytes]) -> None:
    for prefix in ([], [b"REPLAY"], [b"SNAPSHOT"], [b"STATUS"], [b"ERROR"]):
        for decoder in (codec.decode_request, codec.decode_reply):
            try:
                decoder(prefix + frames)
            except DecodeError:
                pass


def test_heartbeat_round_trip() -> None:
    hb = codec.Heartbeat(epoch=2**64 - 1, origin=4, seq=99, time=1.5, interval=0.25)
    frames = codec.encode_heartbeat(hb)
    assert frames[0] == codec.HEARTBEAT_TOPIC
    assert codec.decode_heartbeat(frames) == hb
    # Extra keys are ignored (additive, compatible change within version 1).
    body = msgpack.unpackb(frames[1])
    body["future"] = "x"
    assert codec.decode_heartbeat([frames[0], msgpack.packb(body)]) == hb


@pytest.mark.parametrize("change", [{"epoch": 0}, {"seq": -1}, {"v": 2}, {"time": "now"},
                                    {"interval": float("inf")}])
def test_bad_heartbeats(change: dict[str, object]) -> None:
    body = {"v": 1, "epoch": 5, "origin": 1, "seq": 0, "time": 1.0, "interval": 1.0, **change}
    with pytest.raises(DecodeError):
        codec.decode_heartbeat([b"_hb", msgpack.packb(body)])


def test_heartbeat_topic_cannot_be_an_event_topic() -> None:
    assert all(not c.TOPIC.startswith("_") for c in CLASSES)
    with pytest.raises(ValueError):
        from clusterbus.events import register_event

        class Bad(NodeUp):  # noqa: D401 - deliberately invalid
            TOPIC = "_hb"

        register_event(Bad)


def test_ingest_round_trip_and_defaults() -> None:
    frames = codec.encode_ingest("node.down", 7, ["10.0.0.7", "fd00:77::07"], 3)
    rep = codec.decode_ingest(frames)
    assert rep == NodeReport(state=NodeState.DOWN, node=7, addrs=("10.0.0.7", "fd00:77::7"),
                             incarnation=3, reason="zmq")
    minimal = [b"node.coming_up", msgpack.packb({"v": 1, "node": 2})]
    assert codec.decode_ingest(minimal) == NodeReport(state=NodeState.COMING_UP, node=2,
                                                      reason=codec.INGEST_REASON)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([b"vrrp.transition", msgpack.packb({"v": 1, "node": 1})], "bad_topic"),
        ([b"node.up", msgpack.packb({"v": 1})], "bad_field"),
        ([b"node.up", msgpack.packb({"v": 1, "node": 1, "adrs": []})], "bad_field"),
        ([b"node.up", msgpack.packb({"v": 1, "node": 2**32})], "bad_field"),
        ([b"node.up", msgpack.packb({"v": 1, "node": True})], "bad_field"),
        ([b"node.up", msgpack.packb({"v": 1, "node": 1, "addrs": "10.0.0.1"})], "bad_field"),
        ([b"node.up", msgpack.packb({"v": 1, "node": 1, "addrs": {"10.0.0.1": 1}})],
         "bad_field"),  # a map's keys must not pass for an array of addresses
        ([b"node.up", msgpack.packb({"v": 1, "node": 1, "incarnation": -1})], "bad_field"),
        ([b"node.up", msgpack.packb({"v": 9, "node": 1})], "bad_version"),
        ([b"node.up", msgpack.packb({"node": 1})], "bad_version"),
        ([b"node.up", msgpack.packb({"v": 1, "node": 1}) + b"x"], "bad_body"),
    ],
)
def test_malformed_ingest(frames: list[bytes], code: str) -> None:
    with pytest.raises(codec.FrameError) as info:
        codec.decode_ingest(frames)
    assert info.value.code == code


def test_encode_ingest_refuses_bad_input() -> None:
    with pytest.raises(InvalidEvent):
        codec.encode_ingest("vrrp.transition", 1)
    with pytest.raises(InvalidEvent):
        codec.encode_ingest("node.up", 1, ["nope"])
    with pytest.raises(InvalidEvent):
        codec.encode_ingest("node.up", 1, "10.0.0.1")  # one address, not a sequence of them
    with pytest.raises(InvalidEvent):
        codec.encode_ingest("node.up", -1)


def test_requests() -> None:
    assert codec.decode_request(codec.encode_request("REPLAY", 5)) == ("REPLAY", (5,))
    assert codec.decode_request(codec.encode_request("REPLAY", 5, 10)) == ("REPLAY", (5, 10))
    assert codec.decode_request([b"SNAPSHOT"]) == ("SNAPSHOT", ())
    assert codec.decode_request([b"STATUS"]) == ("STATUS", ())
    for frames, code in (([b"HELLO"], "unknown_command"), ([b"REPLAY"], "bad_args"),
                         ([b"REPLAY", b"\xcd"], "bad_args"),  # truncated uint16
                         ([b"REPLAY", msgpack.packb(-1)], "bad_args"),
                         ([b"REPLAY", msgpack.packb("5")], "bad_args"),
                         ([b"SNAPSHOT", msgpack.packb(1)], "bad_args"), ([], "frame_count")):
        with pytest.raises(codec.FrameError) as info:
            codec.decode_request(frames)
        assert info.value.code == code


def test_reply_round_trip() -> None:
    event = NodeDown(origin=1, seq=2, time=3.0, node=4, view=5, left=(4,), reason="zmq")
    frames = codec.encode_reply("REPLAY", {"status": "ok"}, codec.encode(event))
    name, header, payload = codec.decode_reply(frames)
    assert (name, header) == ("REPLAY", {"status": "ok"})
    assert codec.decode(payload) == event


def test_vrrp_transition_group_flag_survives() -> None:
    ev = VrrpTransition(origin=1, seq=1, time=0.0, instance="VI_1", new="MASTER",
                        reason="keepalived", group=True)
    assert codec.decode(codec.encode(ev)).group is True


# -- replies bigger than a frame ----------------------------------------------------------------

def _big_snapshot(nodes: int) -> dict[str, object]:
    return {"origin": 1, "seq": nodes, "view": nodes, "nodemap": {},
            "nodes": [{"node": n, "state": "up", "addrs": [f"10.0.{n // 256}.{n % 256}"] * 4,
                       "incarnation": 0, "view": n, "confirmed": True} for n in range(1, nodes + 1)]}


def test_a_header_bigger_than_a_frame_is_split_and_joined() -> None:
    frames = codec.encode_snapshot(5, _big_snapshot(3000))
    assert all(len(f) <= codec.MAX_FRAME for f in frames)
    split = msgpack.unpackb(frames[1])
    assert split == {"v": codec.SPLIT_VERSION, "parts": len(frames) - 2, "epoch": 5}
    assert len(b"".join(frames[2:])) > codec.MAX_FRAME
    name, header, payload = codec.decode_reply([*frames, b"payload"])
    assert name == "SNAPSHOT" and payload == [b"payload"]
    assert header["epoch"] == 5 and len(header["nodes"]) == 3000
    assert header["nodes"][-1]["addrs"] == ("10.0.11.184",) * 4
    # a small one is not split: what every receiver read before
    small = codec.encode_snapshot(5, _big_snapshot(3))
    assert len(small) == 2 and msgpack.unpackb(small[1])["v"] == 1


def test_a_bad_split_header_is_a_frame_error() -> None:
    frames = codec.encode_snapshot(5, _big_snapshot(3000))
    parts = len(frames) - 2
    for bad, code in (
        ([frames[0], codec.pack({"v": 2, "parts": parts + 1}), *frames[2:]], "bad_reply"),
        ([frames[0], codec.pack({"v": 2, "parts": 0}), *frames[2:]], "bad_reply"),
        ([frames[0], codec.pack({"v": 2}), *frames[2:]], "bad_reply"),
        ([frames[0], frames[1], *frames[2:-1]], "bad_reply"),  # a part missing
        ([frames[0], codec.pack({"v": 2, "parts": 1}), frames[2] + frames[3]], "oversized"),
        ([frames[0], codec.pack({"v": 2, "parts": 1}), frames[2]], "bad_body"),  # cut short
        ([frames[0], codec.pack({"v": 3})], "bad_version"),
    ):
        with pytest.raises(codec.FrameError) as info:
            codec.decode_reply(bad)
        assert info.value.code == code, (code, info.value)
