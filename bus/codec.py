"""The msgpack wire codec of the ZeroMQ bus (see docs/wire-protocol.md).

Pure functions from values to ZeroMQ frames and back; no sockets. Every decoder turns any
input it does not like into a :class:`FrameError` (a :class:`~clusterbus.errors.DecodeError`
carrying a short ``code`` used as a counter key), never into another exception type: the
services drop the input, count it by ``code`` and keep running.

Frames:

* event:      ``[topic, body]`` -- ``body`` = msgpack map ``{"v": version, **event.to_dict()}``
* batch:      ``[b"_batch", {"v": 1, "epoch", "events": [[topic, body], ...]}]`` -- several events
  in one frame, each ``body`` exactly an event frame's body; sent only to subscribers of
  ``_batch`` (the heartbeat's ``batch`` key says the daemon does it)
* heartbeat:  ``[b"_hb", body]`` -- ``{"v": 1, "epoch", "origin", "seq", "time", "interval",
  "batch"?}``
* ingest:     ``[topic, body]`` -- ``{"v": 1, "node", "addrs"?, "incarnation"?}``
* requests:   ``[b"SNAPSHOT"]``, ``[b"REPLAY", after_seq (+ limit)]``, ``[b"STATUS"]``
* replies:    ``[command, header map, *payload]``; errors ``[b"ERROR", {"error", "message"}]``;
  a header bigger than a frame is split (``{"v": 2, "parts": n}`` and ``n`` frames)
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from ..errors import DecodeError, InvalidEvent
from ..events import (
    EVENT_TYPES,
    MAX_NODE,
    Event,
    MembershipEvent,
    NodeComingUp,
    NodeDown,
    NodeGoingDown,
    NodeUp,
    check_float,
    check_int,
    event_from_dict,
    membership_event,
)
from ..view import NodeReport, NodeState, node_report

__all__ = [
    "FrameError",
    "UnknownTopic",
    "Heartbeat",
    "INGEST_REASON",
    "HEARTBEAT_TOPIC",
    "BATCH_TOPIC",
    "MAX_BATCH_EVENTS",
    "INGEST_TOPICS",
    "WIRE_VERSION",
    "MAX_FRAME",
    "MAX_TOPIC",
    "U64",
    "encode",
    "decode",
    "decode_event",
    "encode_batch",
    "batch_frame",
    "EventEncoder",
    "event_encoder",
    "decode_batch",
    "decode_batch_epoch",
    "batch_head",
    "unpack_map",
    "pack",
    "new_packer",
    "encode_heartbeat",
    "decode_heartbeat",
    "encode_ingest",
    "decode_ingest",
    "COMMANDS",
    "encode_request",
    "decode_request",
    "encode_reply",
    "decode_reply",
    "SPLIT_VERSION",
    "MAX_REPLY_HEADER",
    "snapshot_node",
    "encode_snapshot",
]

#: Version of the bus's own messages (heartbeat, ingest body, request/reply headers).
#: Event bodies carry their event class's ``VERSION`` instead.
WIRE_VERSION = 1
#: Topic of heartbeat frames. Event topics are dotted lower-case words, so a leading
#: underscore can never collide with one, and SUB prefix filters for ``node.`` skip it.
HEARTBEAT_TOPIC = b"_hb"
#: Topic of batch frames (several events in one frame). Like ``_hb`` it can never be an
#: event topic; only subscribers of exactly this prefix are sent batches (see the
#: publisher), so subscribers that predate batching never see one unless they subscribe
#: to everything while a batching subscriber is connected.
BATCH_TOPIC = b"_batch"
#: Most events one batch frame carries (the byte size is capped by MAX_FRAME too).
MAX_BATCH_EVENTS = 512
#: Largest frame accepted by any decoder (bytes). Events are a few hundred bytes; the cap
#: bounds the memory a hostile peer can make us spend on one frame.
MAX_FRAME = 64 * 1024
#: Version of a reply header that only says how many frames the real (version 1) header
#: was split into, because it did not fit in one frame.
SPLIT_VERSION = 2
#: Largest reply header a client joins from split frames (bytes): a snapshot of 10,000
#: nodes with 4 addresses each is about 1.6 MB.
MAX_REPLY_HEADER = 64 * 1024 * 1024
#: Largest topic frame accepted (bytes).
MAX_TOPIC = 255
U64 = 2**64 - 1

#: Topics accepted on the ingest socket, and the state each one reports.
INGEST_TOPICS: dict[bytes, NodeState] = {
    state.event_class.TOPIC.encode(): state for state in NodeState
}

# Exceptions msgpack.unpackb can raise on hostile input. ExtraData (trailing bytes),
# FormatError, StackError (nesting too deep) and the non-str-key refusal of
# strict_map_key are ValueErrors; an unhashable map key (a map used as a key) is a
# TypeError; invalid UTF-8 in a str is a UnicodeDecodeError (a ValueError).
_UNPACK_ERRORS = (msgpack.UnpackException, ValueError, TypeError, OverflowError)

class EventEncoder(NamedTuple):
    """How the events of one class are encoded (see :func:`event_encoder`)."""

    #: the topic frame (one bytes object per class, shared by every frame and ring entry)
    topic: bytes
    #: what precedes the body inside a batch element: array of 2, the topic as msgpack str
    element: bytes
    #: ``body(event, packer)``: frame 1 of the event (its body map, ``"v"`` first),
    #: packed with ``packer`` (one of :func:`new_packer`'s; reset it after a failure)
    body: Callable[[Event, msgpack.Packer], bytes]


#: event class -> its EventEncoder, made once per class.
_ENCODERS: dict[type, EventEncoder] = {}


class FrameError(DecodeError):
    """A frame or message that cannot be decoded.

    :param code: short reason used as a counter key (``frame_count``, ``oversized``,
        ``bad_topic``, ``bad_body``, ``bad_version``, ``bad_field``, ...).
    :param msg: human-readable detail for the DEBUG log.
    """

    def __init__(self, code: str, msg: str, *, offset: int | None = None) -> None:
        super().__init__(msg, offset=offset)
        self.code = code


class UnknownTopic(FrameError):
    """An event frame whose ``(topic, v)`` has no registered class in this process (a
    topic a third-party plugin registered in the daemon only, or a newer version); code
    ``unknown_topic``.

    docs/wire-protocol.md: a receiver drops such an event's content but still counts its
    seq, like an event it filters out; treating it as missing would make every one of
    them a gap that no replay can fill.

    :param topic: the event's topic.
    :param version: the event's ``v``.
    :param seq: the event's ``seq`` when the body states it plainly (an integer
        1..2**64-1 beside an integer ``origin``) and the topic is not one of the bus's
        reserved ``_`` topics; ``None`` otherwise (nothing to count).
    """

    def __init__(self, msg: str, *, topic: str, version: int, seq: int | None) -> None:
        super().__init__("unknown_topic", msg)
        self.topic = topic
        self.version = version
        self.seq = seq


_LOCAL = threading.local()


def _packer() -> msgpack.Packer:
    # One Packer per thread, reused: packb builds (and sizes a buffer for) a new one per
    # call, which costs as much as packing a whole event. A Packer is not thread-safe.
    packer: msgpack.Packer | None = getattr(_LOCAL, "packer", None)
    if packer is None:
        packer = _LOCAL.packer = new_packer()
    return packer


def pack(obj: Any) -> bytes:
    """msgpack-encode ``obj`` the way the bus does (str as str, bytes as bin).

    :raises TypeError: ``obj`` holds something msgpack cannot encode.
    """
    packer = _packer()
    try:
        return packer.pack(obj)  # type: ignore[no-any-return]
    except BaseException:
        # a failed pack may leave bytes in the buffer (autoreset only follows success)
        packer.reset()
        raise


def new_packer() -> msgpack.Packer:
    """A msgpack Packer that encodes the way :func:`pack` does, for a caller on one thread
    that packs many values (call its ``reset()`` after a failed ``pack``)."""
    return msgpack.Packer(use_bin_type=True)


def _check_frames(frames: Sequence[Any], n: int | tuple[int, ...]) -> list[bytes]:
    # Fast path: what recv_multipart returns for a well-formed two-frame message.
    if n == 2 and type(frames) is list and len(frames) == 2:
        a, b = frames
        if type(a) is bytes and type(b) is bytes and len(a) <= MAX_FRAME \
                and len(b) <= MAX_FRAME:
            return frames
    if isinstance(frames, (bytes, bytearray, memoryview, str)) or not isinstance(frames, Sequence):
        raise FrameError("frame_count", f"expected a list of frames, got {type(frames).__name__}")
    counts = (n,) if isinstance(n, int) else n
    if len(frames) not in counts:
        raise FrameError("frame_count", f"expected {' or '.join(map(str, counts))} frames, "
                                        f"got {len(frames)}")
    out = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise FrameError("frame_count", f"frame {i} is {type(frame).__name__}, not bytes")
        data = bytes(frame)
        if len(data) > MAX_FRAME:
            raise FrameError("oversized", f"frame {i} is {len(data)} bytes (max {MAX_FRAME})")
        out.append(data)
    return out


def _topic(raw: bytes) -> str:
    if not raw or len(raw) > MAX_TOPIC:
        raise FrameError("bad_topic", f"topic of {len(raw)} bytes (want 1..{MAX_TOPIC})")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError("bad_topic", "topic is not UTF-8", offset=exc.start) from None


def unpack_map(raw: bytes, what: str = "body", *, limit: int = MAX_FRAME) -> dict[str, Any]:
    """Decode one msgpack map (with string keys) that fills ``raw`` exactly.

    Arrays come back as tuples (``use_list=False``).

    :param limit: largest ``raw`` accepted (bytes).
    :raises FrameError: ``bad_body`` -- not msgpack, trailing bytes, not a map, a key that
        is not a string; ``oversized`` -- larger than ``limit``.
    """
    if len(raw) > limit:
        raise FrameError("oversized", f"{what} is {len(raw)} bytes (max {limit})")
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=False)
    except _UNPACK_ERRORS as exc:
        raise FrameError("bad_body", f"{what} is not one msgpack value: {exc}") from None
    if type(obj) is not dict:
        raise FrameError("bad_body", f"{what} is a msgpack {type(obj).__name__}, not a map")
    # strict_map_key leaves only str and bytes keys; refuse bytes (msgpack bin) keys too.
    for k in obj:
        if type(k) is not str:
            raise FrameError("bad_body", f"{what} has a non-string key")
    return obj


def _version(body: dict[str, Any], what: str) -> int:
    v = body.pop("v", None)
    if type(v) is not int:
        raise FrameError("bad_version", f"{what}: 'v' must be an integer, got {v!r}")
    return v


# -- events ---------------------------------------------------------------------------------

def encode(event: Event) -> list[bytes]:
    """Encode an event as the two frames ``[topic, body]``.

    :raises TypeError: ``event`` is not an :class:`~clusterbus.events.Event`.
    """
    enc = _ENCODERS.get(type(event))
    if enc is None:
        enc = event_encoder(type(event))
    packer = _packer()
    try:
        return [enc.topic, enc.body(event, packer)]
    except BaseException:
        packer.reset()  # a failed pack may leave bytes in the buffer
        raise


def event_encoder(cls: type) -> EventEncoder:
    """The encoder of an event class (cached): its topic frame, its batch element head and
    the function giving an event's body map, for callers that encode many events and
    splice batch frames themselves (the publisher).

    :raises TypeError: ``cls`` is not an :class:`~clusterbus.events.Event` class.
    """
    enc = _ENCODERS.get(cls)
    if enc is not None:
        return enc
    if not isinstance(cls, type) or not issubclass(cls, Event):
        raise TypeError(f"expected an Event, got {cls.__name__}")
    names = cls.field_names()
    body: Callable[[Event, msgpack.Packer], bytes]
    if names == _MEMBERSHIP_FIELDS:
        body = _membership_body  # type: ignore[assignment]
    else:
        version = cls.VERSION
        many: Callable[[Event], Any] = operator.attrgetter(*names)
        # attrgetter of one name returns the value itself, not a 1-tuple
        get: Callable[[Event], Any] = (lambda e: (many(e),)) if len(names) == 1 else many
        keys = ("v", *names)

        def body(event: Event, packer: msgpack.Packer) -> bytes:
            return packer.pack(dict(zip(keys, (version, *get(event)))))  # type: ignore[no-any-return]

    topic = cls.TOPIC.encode()
    enc = _ENCODERS[cls] = EventEncoder(topic, _element_head(topic), body)
    return enc


_MEMBERSHIP_FIELDS = MembershipEvent.field_names()


def _membership_items(e: MembershipEvent) -> tuple[Any, ...]:
    # The keys and values of a membership event's body, interleaved, "v" first; the
    # same keys in the same order as its fields (tests/unit/test_codec_fast.py).
    return ("v", e.VERSION, "origin", e.origin, "seq", e.seq, "time", e.time, "node", e.node,
            "addrs", e.addrs, "view", e.view, "joined", e.joined, "left", e.left,
            "reason", e.reason, "incarnation", e.incarnation)


#: msgpack writes a map's pairs exactly as it writes an array's elements, so the body
#: map is the packed 22-element array of _membership_items with its array16 header
#: (dc 00 16) replaced by the fixmap header of 11 pairs (8b). A tuple display and this
#: splice cost less than building a dict per event on the publisher's path.
_MEMBERSHIP_MAP_HEAD = b"\x8b"
if len(_MEMBERSHIP_FIELDS) != 10:
    raise ImportError("codec: _membership_items and its map header assume 10 fields + v")


def _membership_body(e: MembershipEvent, packer: msgpack.Packer) -> bytes:
    return _MEMBERSHIP_MAP_HEAD + packer.pack(_membership_items(e))[3:]  # type: ignore[no-any-return]


def decode(frames: Sequence[Any]) -> Event:
    """Decode ``[topic, body]`` into an event.

    :raises UnknownTopic: no class is registered for the topic and version.
    :raises FrameError: wrong frame count, oversized frame, topic not UTF-8, body not a
        msgpack map or with trailing bytes, bad or missing fields.
    """
    topic_raw, body_raw = _check_frames(frames, 2)
    return decode_event(_topic(topic_raw), unpack_map(body_raw))


def decode_event(topic: str, body: dict[str, Any]) -> Event:
    """Build an event from a topic and its already unpacked body map (``v`` included;
    the map is consumed).

    :raises UnknownTopic: no class is registered for the topic and version.
    :raises FrameError: bad version, bad, missing or unknown fields.
    """
    # The membership events (nearly all of the traffic) take an inline check of every
    # field and are built without a second validation; anything the check does not
    # accept as it is (conversions, refusals, other topics) takes the general path.
    cls = _MEMBERSHIP.get(topic)
    if cls is not None and body.keys() == _MEMBERSHIP_KEYS:
        event = _fast_membership(cls, body)
        if event is not None:
            return event
    version = _version(body, topic)
    if (topic, version) not in EVENT_TYPES:
        raise _unknown_topic(topic, version, body)
    try:
        # unpack_map reads arrays as tuples: no lists to convert
        return event_from_dict(topic, body, version, lists=False)
    except DecodeError as exc:
        # the class exists (checked above): what is wrong is the fields
        raise FrameError("bad_field", str(exc)) from None


#: topic -> class of the membership events, whose bodies :func:`_fast_membership` builds.
_MEMBERSHIP: dict[str, type[MembershipEvent]] = {
    c.TOPIC: c for c in (NodeUp, NodeDown, NodeComingUp, NodeGoingDown)}
#: The keys of a membership event body (``v`` and every field).
_MEMBERSHIP_KEYS = frozenset(("v", *MembershipEvent.field_names()))
_U32 = MAX_NODE


def _fast_membership(cls: type[MembershipEvent], body: dict[str, Any]) -> Event | None:
    """The membership event ``body`` (every field present, nothing else) describes, built
    by :func:`~clusterbus.events.membership_event` (which checks every field inline and
    skips the second validation when all are final); ``None`` for another version.
    A refusal is a ``bad_field`` FrameError, as on the general path
    (tests/unit/test_codec_fast.py checks both paths agree).
    """
    v = body["v"]
    if type(v) is not int or v != cls.VERSION:
        return None  # the general path explains the version
    try:
        return membership_event(cls, body["origin"], body["seq"], body["time"], body["node"],
                                body["addrs"], body["view"], body["joined"], body["left"],
                                body["reason"], body["incarnation"])
    except InvalidEvent as exc:
        raise FrameError("bad_field", f"{cls.TOPIC}: {exc}") from None


def _unknown_topic(topic: str, version: int, body: dict[str, Any]) -> UnknownTopic:
    seq, origin = body.get("seq"), body.get("origin")
    if topic.startswith("_") or type(seq) is not int or not 1 <= seq <= U64 \
            or type(origin) is not int or not 0 <= origin <= MAX_NODE:
        seq = None
    known = any(t == topic for t, _ in EVENT_TYPES)
    what = f"unsupported version {version} of topic" if known else "unknown topic"
    return UnknownTopic(f"{what} {topic!r}", topic=topic, version=version, seq=seq)


# -- batches ----------------------------------------------------------------------------------

_BATCH_HEAD = b"\x82\xa1v\x01\xa6events"  # msgpack {"v": 1, "events": <array follows>
#: topic frame -> batch element head (see _element_head)
_ELEMENT_HEADS: dict[bytes, bytes] = {}


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _element_head(topic: bytes) -> bytes:
    # A batch element is the msgpack array [topic, body]: its header (2 elements), the
    # topic as a msgpack str, then the body map exactly as frame 1 of the event holds it.
    head = _ELEMENT_HEADS.get(topic)
    if head is None:
        head = b"\x92" + pack(topic.decode("utf-8"))
        if len(_ELEMENT_HEADS) < 1024:  # registered topics only, but stay bounded
            _ELEMENT_HEADS[topic] = head
    return head


def encode_batch(events: Sequence[tuple[bytes, bytes]], epoch: int | None = None) -> list[bytes]:
    """Encode already encoded events ``(topic, body)`` (as :func:`encode` made them) as one
    batch frame ``[b"_batch", {"v": 1, "epoch": epoch, "events": [[topic, body], ...]}]``
    (without ``epoch`` when it is None).

    The bodies are spliced in as they are (each is one msgpack map), so a batch costs no
    re-encoding. The caller keeps the frame under :data:`MAX_FRAME` and
    :data:`MAX_BATCH_EVENTS` (the decoder refuses bigger ones).
    """
    parts: list[bytes] = []
    for topic, body in events:
        parts += (_element_head(topic), body)
    return batch_frame(parts, batch_head(epoch))


def batch_head(epoch: int | None = None) -> bytes:
    """The start of a batch frame's map, up to its ``events`` array (for
    :func:`batch_frame`): ``{"v": 1, "epoch": epoch, "events": ``, or without ``epoch``.

    :raises ValueError: ``epoch`` is not a u64.
    """
    if epoch is None:
        return _BATCH_HEAD
    if type(epoch) is not int or not 0 < epoch <= U64:
        raise ValueError(f"batch epoch must be 1..2**64-1, got {epoch!r}")
    return b"\x83\xa1v\x01\xa5epoch" + pack(epoch) + b"\xa6events"


def batch_frame(parts: list[bytes], head: bytes = _BATCH_HEAD) -> list[bytes]:
    """The batch frame of already encoded elements: ``parts`` holds, for each event in
    order, its element head (:attr:`EventEncoder.element`) and then its body; ``head``
    is :func:`batch_head`'s (the daemon's epoch).

    Same bytes as :func:`encode_batch` of the same events; the same limits apply.
    """
    return [BATCH_TOPIC, b"".join((head, _array_header(len(parts) // 2), *parts))]


def decode_batch(frames: Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
    """Split a batch frame into ``(topic, body map)`` pairs, in order; turn each into an
    event with :func:`decode_event` (one bad event does not spoil the others).

    :raises FrameError: see :func:`decode_batch_epoch`.
    """
    return decode_batch_epoch(frames)[1]


def decode_batch_epoch(frames: Sequence[Any]) -> tuple[int | None, list[tuple[str, dict[str, Any]]]]:
    """Split a batch frame into its epoch (None when it carries none: an older daemon)
    and its ``(topic, body map)`` pairs.

    :raises FrameError: not a batch frame, oversized, not msgpack, bad version, a bad
        ``epoch``, more than :data:`MAX_BATCH_EVENTS` events, or an element that is not
        ``[str, map]``.
    """
    topic, raw = _check_frames(frames, 2)
    if topic != BATCH_TOPIC:
        raise FrameError("bad_topic", f"not a batch topic: {topic[:32]!r}")
    body = unpack_map(raw, "batch")
    if _version(body, "batch") != WIRE_VERSION:
        raise FrameError("bad_version", "unsupported batch version")
    events = body.get("events")
    if type(events) is not tuple or len(events) > MAX_BATCH_EVENTS:
        raise FrameError("bad_body", f"batch: 'events' must be an array of at most "
                                     f"{MAX_BATCH_EVENTS} elements")
    epoch = body.get("epoch")
    if epoch is not None and (type(epoch) is not int or not 0 < epoch <= U64):
        raise FrameError("bad_field", "batch: 'epoch' must be an integer 1..2**64-1")
    for item in events:
        if type(item) is not tuple or len(item) != 2 or type(item[0]) is not str \
                or type(item[1]) is not dict or not 0 < len(item[0]) <= MAX_TOPIC:
            raise FrameError("bad_body", "batch: every element must be [topic, map]")
    return epoch, list(events)


# -- heartbeats -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """What the publisher says every ``bus.heartbeat_interval`` seconds.

    :param epoch: random non-zero u64 chosen when the daemon started; a new value means the
        daemon restarted and its sequence numbers started again.
    :param origin: the daemon's node number.
    :param seq: the last event seq sent on the PUB socket before this heartbeat (0: none).
    :param time: UNIX time when the heartbeat was sent.
    :param interval: seconds until the next heartbeat.
    :param batch: the daemon sends batch frames to subscribers of ``_batch`` (the
        ``batch`` key, absent = false).
    """

    epoch: int
    origin: int
    seq: int
    time: float
    interval: float
    batch: bool = False

    def __post_init__(self) -> None:
        check_int("Heartbeat", "epoch", self.epoch, 1, U64)
        check_int("Heartbeat", "origin", self.origin, 0, MAX_NODE)
        check_int("Heartbeat", "seq", self.seq, 0, U64)
        for name in ("time", "interval"):
            object.__setattr__(self, name, check_float("Heartbeat", name, getattr(self, name)))
        if type(self.batch) is not bool:
            raise InvalidEvent(f"Heartbeat.batch: expected bool, got {self.batch!r}")


def encode_heartbeat(hb: Heartbeat) -> list[bytes]:
    """Encode a heartbeat as ``[b"_hb", body]`` (``batch`` only when true)."""
    body = {"v": WIRE_VERSION, "epoch": hb.epoch, "origin": hb.origin, "seq": hb.seq,
            "time": hb.time, "interval": hb.interval}
    if hb.batch:
        body["batch"] = True
    return [HEARTBEAT_TOPIC, pack(body)]


def decode_heartbeat(frames: Sequence[Any]) -> Heartbeat:
    """Decode a heartbeat. Unknown extra keys are ignored (see versioning rules).

    :raises FrameError: not a heartbeat, bad version, missing or invalid fields.
    """
    topic, raw = _check_frames(frames, 2)
    if topic != HEARTBEAT_TOPIC:
        raise FrameError("bad_topic", f"not a heartbeat topic: {topic[:32]!r}")
    body = unpack_map(raw, "heartbeat")
    if _version(body, "heartbeat") != WIRE_VERSION:
        raise FrameError("bad_version", "unsupported heartbeat version")
    try:
        return Heartbeat(**{k: body[k] for k in ("epoch", "origin", "seq", "time", "interval")},
                         batch=body.get("batch", False))
    except KeyError as exc:
        raise FrameError("bad_field", f"heartbeat: missing {exc.args[0]!r}") from None
    except InvalidEvent as exc:
        raise FrameError("bad_field", str(exc)) from None


# -- ingest -----------------------------------------------------------------------------------

#: The ``reason`` of every membership report that comes through the ingest socket.
INGEST_REASON = "zmq"

_INGEST_KEYS = frozenset({"node", "addrs", "incarnation"})


def encode_ingest(topic: str, node: int, addrs: Sequence[str] = (),
                  incarnation: int = 0) -> list[bytes]:
    """Encode one ingest frame (what ``clusterbus emit --via zmq`` sends).

    :param topic: ``node.up``, ``node.down``, ``node.coming_up`` or ``node.going_down``.
    :raises InvalidEvent: bad topic, node, address or incarnation.
    """
    raw_topic = topic.encode()
    state = INGEST_TOPICS.get(raw_topic)
    if state is None:
        raise InvalidEvent(f"topic {topic!r} is not one of "
                           f"{', '.join(t.decode() for t in INGEST_TOPICS)}")
    # the report the daemon will build, built here first: it validates and canonicalises
    report = NodeReport(state=state, node=node, addrs=tuple(addrs), incarnation=incarnation,
                        reason=INGEST_REASON)
    return [raw_topic, pack({"v": WIRE_VERSION, "node": report.node,
                             "addrs": list(report.addrs), "incarnation": report.incarnation})]


def decode_ingest(frames: Sequence[Any]) -> NodeReport:
    """Decode an ingest frame ``[topic, {"v": 1, "node", "addrs"?, "incarnation"?}]`` into
    the membership report it makes (``reason`` :data:`INGEST_REASON`).

    Unknown keys are refused: ingest changes membership, so a misspelt key must not be
    silently ignored.

    :raises FrameError: any problem (``code`` names it).
    """
    topic, raw = _check_frames(frames, 2)
    state = INGEST_TOPICS.get(topic)
    if state is None:
        raise FrameError("bad_topic", f"not a membership topic: {topic[:32]!r}")
    body = unpack_map(raw)
    # per message: no topic decoding, no set built, unless there is something to refuse
    v = body.pop("v", None)
    if type(v) is not int:
        raise FrameError("bad_version", f"{topic.decode()}: 'v' must be an integer, got {v!r}")
    if v != WIRE_VERSION:
        raise FrameError("bad_version", "unsupported ingest version")
    if not body.keys() <= _INGEST_KEYS:
        unknown = set(body) - _INGEST_KEYS
        raise FrameError("bad_field", f"unknown key(s) {', '.join(sorted(unknown))}")
    if "node" not in body:
        raise FrameError("bad_field", "missing 'node'")
    addrs = body.get("addrs", ())
    # NodeReport takes any iterable of addresses; the wire wants an array (a tuple here:
    # use_list=False), not a map whose keys would pass for addresses.
    if type(addrs) is not tuple:
        raise FrameError("bad_field", f"addrs: expected an array of address strings, "
                                      f"got a msgpack {type(addrs).__name__}")
    try:
        # NodeReport(state=..., ...) without the keyword handling: the same checks
        return node_report(state, body["node"], addrs, body.get("incarnation", 0),
                           INGEST_REASON)
    except InvalidEvent as exc:
        raise FrameError("bad_field", str(exc)) from None


# -- snapshot / replay / status requests and replies -----------------------------------------

#: Commands the snapshot endpoint understands, with the number of integer arguments allowed.
COMMANDS: dict[bytes, tuple[int, ...]] = {b"SNAPSHOT": (0,), b"REPLAY": (1, 2), b"STATUS": (0,)}


def encode_request(command: str, *args: int) -> list[bytes]:
    """Encode a request: ``[command, *msgpack_uint_args]`` (e.g. ``REPLAY`` ``after_seq``)."""
    return [command.encode("ascii"), *(pack(a) for a in args)]


def decode_request(frames: Sequence[Any]) -> tuple[str, tuple[int, ...]]:
    """Decode a request (the frames after the ROUTER envelope).

    :returns: (command, integer arguments).
    :raises FrameError: ``frame_count`` (no frame, more than three, not bytes),
        ``oversized``, ``unknown_command`` or ``bad_args`` (wrong count for the command,
        not a msgpack unsigned integer < 2**64, trailing bytes).
    """
    parts = _check_frames(frames, (1, 2, 3))  # the command and up to two arguments
    command = parts[0]
    allowed = COMMANDS.get(command)
    if allowed is None:
        raise FrameError("unknown_command", f"unknown command {command[:32]!r}")
    args = parts[1:]
    if len(args) not in allowed:
        raise FrameError("bad_args", f"{command.decode()} takes {' or '.join(map(str, allowed))}"
                                     f" argument(s), got {len(args)}")
    values = []
    for i, raw in enumerate(args):
        try:
            value = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=False)
        except _UNPACK_ERRORS as exc:
            raise FrameError("bad_args", f"argument {i}: not one msgpack value: {exc}") from None
        if type(value) is not int or not 0 <= value <= U64:
            raise FrameError("bad_args", f"argument {i}: expected an unsigned integer")
        values.append(value)
    return command.decode(), tuple(values)


def encode_reply(command: str, header: dict[str, Any], payload: Sequence[bytes] = ()) -> list[bytes]:
    """Encode a reply: ``[command, msgpack {"v": 1, **header}, *payload]``.

    A header that does not fit in one frame (:data:`MAX_FRAME`) is split: frame 1 is then
    ``{"v": 2, "epoch"?, "parts": n}`` and the next ``n`` frames, joined, are the version 1
    header (docs/wire-protocol.md, "Replies bigger than a frame").

    :raises TypeError: ``header`` holds something msgpack cannot encode.
    """
    raw = pack({"v": WIRE_VERSION, **header})
    name = command.encode("ascii")
    if len(raw) <= MAX_FRAME:
        return [name, raw, *payload]
    parts = [raw[i:i + MAX_FRAME] for i in range(0, len(raw), MAX_FRAME)]
    split: dict[str, Any] = {"v": SPLIT_VERSION, "parts": len(parts)}
    if "epoch" in header:
        split["epoch"] = header["epoch"]
    return [name, pack(split), *parts, *payload]


def decode_reply(frames: Sequence[Any]) -> tuple[str, dict[str, Any], list[bytes]]:
    """Decode a reply (the frames after any envelope), joining a split header.

    :returns: (command, header map without ``v``, payload frames).
    :raises FrameError: malformed reply.
    """
    if isinstance(frames, (bytes, bytearray, memoryview, str)) or not isinstance(frames, Sequence) \
            or len(frames) < 2:
        raise FrameError("frame_count", "a reply has at least 2 frames")
    if not all(isinstance(f, (bytes, bytearray, memoryview)) for f in frames):
        raise FrameError("frame_count", "a reply frame is not bytes")
    try:
        name = bytes(frames[0]).decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("bad_reply", "command is not ASCII") from None
    header = unpack_map(bytes(frames[1]), "reply header")
    version = _version(header, "reply")
    rest = 2
    if version == SPLIT_VERSION:
        n = header.get("parts")
        if type(n) is not int or not 1 <= n <= MAX_REPLY_HEADER // MAX_FRAME \
                or len(frames) < 2 + n:
            raise FrameError("bad_reply", f"split reply header: bad 'parts' {n!r}")
        if any(len(f) > MAX_FRAME for f in frames[2:2 + n]):
            raise FrameError("oversized", "split reply header: a part exceeds MAX_FRAME")
        header = unpack_map(b"".join(bytes(f) for f in frames[2:2 + n]), "reply header",
                            limit=MAX_REPLY_HEADER)
        version = _version(header, "reply")
        rest = 2 + n
    if version != WIRE_VERSION:
        raise FrameError("bad_version", "unsupported reply version")
    payload = [bytes(f) for f in frames[rest:]]
    return name, header, payload


# -- snapshot replies ---------------------------------------------------------------------------

def snapshot_node(node: Mapping[str, Any]) -> dict[str, Any]:
    """One element of a ``SNAPSHOT`` reply's ``nodes`` from one of the view's snapshot
    nodes (docs/wire-protocol.md, "SNAPSHOT reply"): the one place that lists its keys."""
    return {"node": node["node"], "state": node["state"], "addrs": list(node["addrs"]),
            "incarnation": node["incarnation"], "view": node["view"],
            "confirmed": node["confirmed"]}


def encode_snapshot(epoch: int, snapshot: Mapping[str, Any]) -> list[bytes]:
    """The ``SNAPSHOT`` reply for the engine's ``snapshot()`` (``origin``, ``seq``,
    ``view``, ``nodes``, ``nodemap``); split over several frames when it is big."""
    return encode_reply("SNAPSHOT", {
        "epoch": epoch, "origin": snapshot["origin"], "seq": snapshot["seq"],
        "view": snapshot["view"], "nodes": [snapshot_node(n) for n in snapshot["nodes"]],
        "nodemap": snapshot["nodemap"],
    })
