"""The event model: typed, frozen, versioned events.

Every event has a ``topic`` (``node.down``), the ``origin`` node id of the daemon that
produced it, a per-origin strictly increasing ``seq`` and a ``time`` (UNIX seconds).
Events are frozen, slotted, keyword-only dataclasses validated at construction: an invalid
event cannot exist. One registry maps ``(topic, version)`` to the class; the wire codec in
:mod:`clusterbus.bus.codec` and the JSON output of the CLI both use :meth:`Event.to_dict`
and :func:`event_from_dict`.

Standard library only: this module is imported by sans-IO code.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .addresses import (
    address_or_none,
    canonical_address,
    canonical_node_address,
    node_address_or_none,
)
from .errors import DecodeError, InvalidEvent

__all__ = [
    "Event",
    "NodeState",
    "MembershipEvent",
    "membership_event",
    "NodeUp",
    "NodeDown",
    "NodeComingUp",
    "NodeGoingDown",
    "VrrpTransition",
    "VipAcquired",
    "VipReleased",
    "NodemapChanged",
    "AddressConflict",
    "MembershipResync",
    "IpvsApplied",
    "register_event",
    "event_class",
    "event_from_dict",
    "EVENT_TYPES",
    "MAX_NODE",
    "MIN_NODE",
    "MAX_NODE_ADDRS",
    "canonical_addr",
    "node_addr",
    "node_addrs",
    "check_node",
    "check_incarnation",
    "check_reason",
]

#: Node numbers are 1 .. 2**32-1 (u32; 0 is refused at the membership boundary: it is
#: the "no node" value of C senders and of a zeroed signal payload).
MIN_NODE = 1
MAX_NODE = 2**32 - 1
#: The most addresses one node may have, and one membership report, membership event,
#: netlink message or ``nodemap.changed`` may carry (docs/netlink.md, the wire document).
MAX_NODE_ADDRS = 16
#: Longest ``reason`` of a membership report or event.
MAX_REASON = 64
_U64 = 2**64 - 1
_TOPIC_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")

#: (topic, version) -> event class. Filled by :func:`register_event`.
EVENT_TYPES: dict[tuple[str, int], type[Event]] = {}

E = TypeVar("E", bound="type[Event]")
M = TypeVar("M", bound="MembershipEvent")


def register_event(cls: E) -> E:
    """Class decorator: make ``cls`` known to the codec under ``(cls.TOPIC, cls.VERSION)``.

    Third-party plugins may register their own events; topics are dotted lower-case names
    (``myplugin.something``) and must not collide with an existing (topic, version).
    """
    topic, version = cls.TOPIC, cls.VERSION
    if not _TOPIC_RE.match(topic):
        raise ValueError(f"bad event topic {topic!r}: want dotted lower-case words")
    key = (topic, version)
    if key in EVENT_TYPES and EVENT_TYPES[key] is not cls:
        raise ValueError(f"event {topic!r} version {version} is already registered")
    EVENT_TYPES[key] = cls
    return cls


def event_class(topic: str, version: int = 1) -> type[Event]:
    """Return the class registered for ``(topic, version)``.

    :raises DecodeError: the topic or version is unknown.
    """
    try:
        return EVENT_TYPES[(topic, version)]
    except KeyError:
        known = sorted({t for t, _ in EVENT_TYPES})
        if any(t == topic for t, _ in EVENT_TYPES):
            raise DecodeError(f"unsupported version {version!r} of topic {topic!r}") from None
        raise DecodeError(f"unknown topic {topic!r} (known: {', '.join(known)})") from None


_FLOAT_MAX = sys.float_info.max

def canonical_addr(value: object, field: str = "addr") -> str:
    """Validate an IPv4/IPv6 address and return its canonical text form
    (:func:`clusterbus.addresses.canonical_address`).

    :raises InvalidEvent: not a string holding an IP address.
    """
    if type(value) is str:
        canon = address_or_none(value)
        if canon is not None:
            return canon
    if not isinstance(value, str):
        raise InvalidEvent(f"{field}: expected an IP address string, got {type(value).__name__}")
    try:  # a str subclass (parsed as a plain copy, not cached) or a refusal, with its reason
        return canonical_address(str.__str__(value))
    except ValueError as exc:
        raise InvalidEvent(f"{field}: {exc}") from None


def node_addr(value: object, field: str = "addr") -> str:
    """Validate one address of a node (the membership boundary's rule, that of
    :func:`clusterbus.addresses.canonical_node_address`): an IPv4/IPv6 address that is
    unicast, not loopback and not unspecified; returned in canonical form (an IPv4-mapped
    IPv6 address becomes the IPv4 address).

    :raises InvalidEvent: not an address string, or not one a node can have.
    """
    if type(value) is str:
        canon = node_address_or_none(value)
        if canon is not None:
            return canon
    if not isinstance(value, str):
        raise InvalidEvent(f"{field}: expected an IP address string, got {type(value).__name__}")
    try:
        return canonical_node_address(str.__str__(value))
    except ValueError as exc:
        raise InvalidEvent(f"{field}: {exc}") from None


def node_addrs(values: object, field: str = "addrs") -> tuple[str, ...]:
    """Validate a node's addresses: a tuple or list of at most :data:`MAX_NODE_ADDRS`
    :func:`node_addr` strings, returned canonical with repeats dropped (first one kept).

    :raises InvalidEvent: not a tuple/list, too many, or an element is not a node address.
    """
    if type(values) is tuple and len(values) < 2:
        # the common case: nothing, or one address already canonical, returned as is
        if not values:
            return values
        first = values[0]
        if type(first) is str and node_address_or_none(first) == first:
            return values
    if not isinstance(values, (tuple, list)):
        raise InvalidEvent(f"{field}: expected a tuple of addresses, got {type(values).__name__}")
    if not values:
        return ()
    if len(values) > MAX_NODE_ADDRS:
        raise InvalidEvent(f"{field}: {len(values)} addresses, at most {MAX_NODE_ADDRS} "
                           "per node")
    canon = tuple(node_addr(a, field) for a in values)
    if len(canon) > 1 and len(set(canon)) != len(canon):
        canon = tuple(dict.fromkeys(canon))
    return canon


def check_node(owner: str, v: object, name: str = "node", lo: int = MIN_NODE) -> int:
    """Return ``v`` if it is a node number (:data:`MIN_NODE` .. :data:`MAX_NODE`).

    :param lo: 0 for events, which accept the whole u32 on the wire (what an older daemon
        may have published); reports (the membership boundary) refuse node 0.
    :raises InvalidEvent: otherwise.
    """
    if type(v) is int and lo <= v <= MAX_NODE:
        return v
    return check_int(owner, name, v, lo, MAX_NODE)


def check_incarnation(owner: str, v: object) -> int:
    """Return ``v`` if it is an incarnation number (u32, 0 = unknown).

    :raises InvalidEvent: otherwise.
    """
    if type(v) is int and 0 <= v <= MAX_NODE:
        return v
    return check_int(owner, "incarnation", v, 0, MAX_NODE)


def check_reason(owner: str, v: object) -> str:
    """Return ``v`` if it is a membership ``reason``: a string of 1..64 characters.

    :raises InvalidEvent: otherwise.
    """
    if type(v) is str and 0 < len(v) <= MAX_REASON:
        return v
    raise InvalidEvent(f"{owner}.reason: must be a string of 1..{MAX_REASON} characters, "
                       f"got {v!r:.80}")


def check_int(owner: str, name: str, v: object, lo: int, hi: int) -> int:
    """Return ``v`` if it is an ``int`` (not a bool) in ``lo..hi``.

    :param owner: class name for the message.
    :raises InvalidEvent: otherwise.
    """
    if type(v) is not int:
        raise InvalidEvent(f"{owner}.{name}: expected int, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise InvalidEvent(f"{owner}.{name}: {v} outside {lo}..{hi}")
    return v


def check_float(owner: str, name: str, v: object) -> float:
    """Return ``v`` as a finite ``float`` >= 0 (an ``int`` is converted).

    :raises InvalidEvent: not a number of that kind (bools, NaN, infinities refused).
    """
    if type(v) is int:
        try:
            v = float(v)
        except OverflowError:  # an int beyond any float (JSON allows those)
            raise InvalidEvent(f"{owner}.{name}: {v} is not a finite number") from None
    # NaN fails every comparison, infinities exceed the largest finite float.
    if type(v) is not float or not 0.0 <= v <= _FLOAT_MAX:
        raise InvalidEvent(f"{owner}.{name}: expected a finite float >= 0, got {v!r}")
    return v


def _int(obj: object, name: str, lo: int, hi: int) -> None:
    v = getattr(obj, name)
    if type(v) is not int or not lo <= v <= hi:
        check_int(type(obj).__name__, name, v, lo, hi)


def _str(obj: object, name: str, *, empty: bool = False, maxlen: int = 255) -> None:
    v = getattr(obj, name)
    if type(v) is str and (empty or v) and len(v) <= maxlen:
        return
    if not isinstance(v, str):
        raise InvalidEvent(f"{type(obj).__name__}.{name}: expected str, got {type(v).__name__}")
    if not empty and not v:
        raise InvalidEvent(f"{type(obj).__name__}.{name}: must not be empty")
    if len(v) > maxlen:
        raise InvalidEvent(f"{type(obj).__name__}.{name}: longer than {maxlen} characters")


def _float(obj: object, name: str) -> None:
    v = getattr(obj, name)
    if type(v) is not float or not 0.0 <= v <= _FLOAT_MAX:
        object.__setattr__(obj, name, check_float(type(obj).__name__, name, v))


def _addrs(obj: object, name: str) -> None:
    # a field of node addresses: node_addr each, at most MAX_NODE_ADDRS, no repeats
    v = getattr(obj, name)
    if type(v) is tuple and not v:
        return
    if isinstance(v, list):
        v = tuple(v)
    where = f"{type(obj).__name__}.{name}"
    if not isinstance(v, tuple):
        raise InvalidEvent(f"{where}: expected a tuple of addresses")
    if len(v) > MAX_NODE_ADDRS:
        raise InvalidEvent(f"{where}: {len(v)} addresses, at most {MAX_NODE_ADDRS} per node")
    canon = tuple(node_addr(a, where) for a in v)
    if len(canon) > 1 and len(set(canon)) != len(canon):
        raise InvalidEvent(f"{where}: duplicate address in {canon}")
    object.__setattr__(obj, name, canon)


def _nodes(obj: object, name: str) -> None:
    v = getattr(obj, name)
    if type(v) is tuple and not v:
        return
    if isinstance(v, list):
        v = tuple(v)
    if not isinstance(v, tuple) or any(type(n) is not int or not 0 <= n <= MAX_NODE for n in v):
        raise InvalidEvent(f"{type(obj).__name__}.{name}: expected a tuple of node numbers")
    object.__setattr__(obj, name, v)


#: event class -> its ``_validate`` methods, base class first (see Event.__post_init__).
_CHECKS: dict[type, tuple[Any, ...]] = {}
#: event class -> (field names in declaration order, the same as a set).
_NAMES: dict[type, tuple[tuple[str, ...], frozenset[str]]] = {}


def _names(cls: type) -> tuple[tuple[str, ...], frozenset[str]]:
    found = _NAMES.get(cls)
    if found is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        found = _NAMES[cls] = (names, frozenset(names))
    return found


def _checks(cls: type) -> tuple[Any, ...]:
    chain = tuple(check for klass in reversed(cls.__mro__)
                  if (check := klass.__dict__.get("_validate")) is not None)
    _CHECKS[cls] = chain
    return chain


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events.

    :param origin: node id of the daemon that produced the event.
    :param seq: per-origin sequence number, strictly increasing from 1.
    :param time: UNIX time in seconds when the event was produced.
    """

    TOPIC: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    origin: int
    seq: int
    time: float

    @property
    def topic(self) -> str:
        """The event's topic, e.g. ``node.down``."""
        return self.TOPIC

    def __post_init__(self) -> None:
        # slots=True dataclasses cannot use zero-argument super(): every class's own
        # _validate runs, base class first, from a chain computed once per class.
        chain = _CHECKS.get(type(self))
        if chain is None:
            chain = _checks(type(self))
        for check in chain:
            check(self)

    def _validate(self) -> None:
        if not self.TOPIC:
            raise InvalidEvent(f"{type(self).__name__} is abstract: it has no TOPIC")
        v = self.origin
        if type(v) is not int or not 0 <= v <= MAX_NODE:
            check_int(type(self).__name__, "origin", v, 0, MAX_NODE)
        v = self.seq
        if type(v) is not int or not 1 <= v <= _U64:
            check_int(type(self).__name__, "seq", v, 1, _U64)
        t = self.time
        if type(t) is not float or not 0.0 <= t <= _FLOAT_MAX:
            _float(self, "time")

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict (tuples stay tuples), without the topic."""
        return {name: getattr(self, name) for name in _names(type(self))[0]}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the fields of this event class, in declaration order."""
        return _names(cls)[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipEvent(Event):
    """A node changed state in the membership view.

    :param node: the node number (0 .. 2**32-1 on the wire; the daemon's reports are
        1 .. 2**32-1: node 0 is refused at the membership boundary).
    :param addrs: the node's addresses as canonical IPv4/IPv6 strings (may be empty), at
        most :data:`MAX_NODE_ADDRS`, each one a node address (see :func:`node_addr`).
    :param view: the membership view id after this change (increases on every real change).
    :param joined: nodes that became UP in this view change.
    :param left: nodes that became DOWN in this view change.
    :param reason: who said so: ``netlink``, ``sigcluster``, ``vrrp``, ``zmq``, ...
    :param incarnation: the node's incarnation (boot) number; 0 when unknown.
    """

    node: int
    addrs: tuple[str, ...] = ()
    view: int
    joined: tuple[int, ...] = ()
    left: tuple[int, ...] = ()
    reason: str
    incarnation: int = 0

    def _validate(self) -> None:
        # The hottest validator (every membership event, built and decoded): the common
        # case is checked inline, the helpers only run to convert or to explain a refusal.
        # membership_event() makes exactly these checks inline too.
        v = self.node
        if type(v) is not int or not 0 <= v <= MAX_NODE:
            check_node(type(self).__name__, v, lo=0)
        a = self.addrs
        # fast: a tuple of one address already in canonical form (what the view passes)
        if type(a) is not tuple or len(a) > 1 \
                or (a and (type(a[0]) is not str or node_address_or_none(a[0]) != a[0])):
            _addrs(self, "addrs")
        v = self.view
        if type(v) is not int or not 1 <= v <= _U64:
            _int(self, "view", 1, _U64)
        for name in ("joined", "left"):
            n = getattr(self, name)
            if type(n) is not tuple or len(n) > 1 \
                    or (n and (type(n[0]) is not int or not 0 <= n[0] <= MAX_NODE)):
                _nodes(self, name)
        r = self.reason
        if type(r) is not str or not 0 < len(r) <= MAX_REASON:
            check_reason(type(self).__name__, r)
        v = self.incarnation
        if type(v) is not int or not 0 <= v <= MAX_NODE:
            check_incarnation(type(self).__name__, v)


# The slot setters of MembershipEvent's fields: membership_event fills them directly
# (a frozen dataclass's __init__ goes through object.__setattr__ per field, then runs
# the validators). A field added to MembershipEvent must be added here too.
_PUT = {name: getattr(MembershipEvent, name).__set__ for name in MembershipEvent.field_names()}
_put_origin, _put_seq, _put_time = _PUT.pop("origin"), _PUT.pop("seq"), _PUT.pop("time")
_put_node, _put_addrs, _put_view = _PUT.pop("node"), _PUT.pop("addrs"), _PUT.pop("view")
_put_joined, _put_left, _put_reason = _PUT.pop("joined"), _PUT.pop("left"), _PUT.pop("reason")
_put_incarnation = _PUT.pop("incarnation")
if _PUT:
    raise TypeError(f"membership_event does not fill {', '.join(sorted(_PUT))}")
del _PUT


def membership_event(cls: type[M], origin: Any, seq: Any, time: Any, node: Any,
                     addrs: Any, view: Any, joined: Any, left: Any, reason: Any,
                     incarnation: Any) -> M:
    """Build a membership event: the one function the engine and the bus codec use.

    Equal to ``cls(origin=..., ...)``, and as strict: every field is checked here, inline,
    against what :meth:`MembershipEvent._validate` accepts unchanged (at most one address,
    already canonical; ``joined``/``left`` empty or one node). When they all pass, the
    event is filled in without a second validation (the per-event path of the daemon and
    of every subscriber); anything else (a conversion, two addresses, a refusal) goes to
    the validating constructor, which converts or raises. tests/unit/test_hot_path.py and
    tests/unit/test_codec_fast.py check that both give the same event or the same refusal.

    :param cls: NodeUp, NodeDown, NodeComingUp or NodeGoingDown (no fields of their own).
    :raises InvalidEvent: a field is invalid.
    """
    if cls not in _STATE_FOR_CLASS \
            or type(origin) is not int or not 0 <= origin <= MAX_NODE \
            or type(seq) is not int or not 1 <= seq <= _U64 \
            or type(time) is not float or not 0.0 <= time <= _FLOAT_MAX \
            or type(node) is not int or not 0 <= node <= MAX_NODE \
            or type(addrs) is not tuple or len(addrs) > 1 \
            or (addrs and (type(addrs[0]) is not str or node_address_or_none(addrs[0]) != addrs[0])) \
            or type(view) is not int or not 1 <= view <= _U64 \
            or type(joined) is not tuple or len(joined) > 1 \
            or (joined and (type(joined[0]) is not int or not 0 <= joined[0] <= MAX_NODE)) \
            or type(left) is not tuple or len(left) > 1 \
            or (left and (type(left[0]) is not int or not 0 <= left[0] <= MAX_NODE)) \
            or type(reason) is not str or not 0 < len(reason) <= MAX_REASON \
            or type(incarnation) is not int or not 0 <= incarnation <= MAX_NODE:
        return cls(origin=origin, seq=seq, time=time, node=node, addrs=addrs, view=view,
                   joined=joined, left=left, reason=reason, incarnation=incarnation)
    event = object.__new__(cls)
    _put_origin(event, origin)
    _put_seq(event, seq)
    _put_time(event, time)
    _put_node(event, node)
    _put_addrs(event, addrs)
    _put_view(event, view)
    _put_joined(event, joined)
    _put_left(event, left)
    _put_reason(event, reason)
    _put_incarnation(event, incarnation)
    return event


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeUp(MembershipEvent):
    """A node is a full member (OpenSSI CLMS ``NODE_UP``)."""

    TOPIC: ClassVar[str] = "node.up"


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeDown(MembershipEvent):
    """A node left the cluster or died (CLMS ``NODE_DOWN``)."""

    TOPIC: ClassVar[str] = "node.down"


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeComingUp(MembershipEvent):
    """A node is joining but is not a full member yet (CLMS ``NODE_COMINGUP``)."""

    TOPIC: ClassVar[str] = "node.coming_up"


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeGoingDown(MembershipEvent):
    """A node announced it is leaving (CLMS ``NODE_GOINGDOWN``)."""

    TOPIC: ClassVar[str] = "node.going_down"


class NodeState(enum.IntEnum):
    """State of a node in the membership view (the OpenSSI CLMS transitions).

    The one definition of the node-state codes: the values are the netlink message's
    ``command`` byte (docs/netlink.md), the SIGCLUSTER payload's top four bits and the
    C emitter's commands; :attr:`label` is the name in snapshots, ``status`` and logs.
    """

    UP = 1  #: full member (``node.up``)
    DOWN = 2  #: not a member: left or died (``node.down``)
    COMING_UP = 3  #: joining, not a full member yet (``node.coming_up``)
    GOING_DOWN = 4  #: announced that it is leaving (``node.going_down``)

    @property
    def label(self) -> str:
        """``up``, ``down``, ``coming_up`` or ``going_down``."""
        return _LABELS[self]

    @property
    def event_class(self) -> type[MembershipEvent]:
        """The event class announcing a move into this state."""
        return _CLASS_FOR_STATE[self]

    @classmethod
    def from_topic(cls, topic: str) -> NodeState:
        """``node.up`` -> UP, ... :raises ValueError: not a membership topic."""
        for state, klass in _CLASS_FOR_STATE.items():
            if klass.TOPIC == topic:
                return state
        raise ValueError(f"{topic!r} is not a membership topic")

    @classmethod
    def parse(cls, value: object) -> NodeState:
        """A NodeState, or a name: ``up``, ``down``, ``coming_up``/``comingup``,
        ``going_down``/``goingdown`` (any case), optionally prefixed ``node-``,
        ``node_`` or ``node.``.

        :raises ValueError: not a state name.
        """
        if isinstance(value, NodeState):
            return value
        if isinstance(value, str):
            key = value.strip().lower()
            for prefix in ("node-", "node_", "node."):
                if key.startswith(prefix):
                    key = key[len(prefix):]
            found = _BY_NAME.get(key.replace("_", "").replace("-", ""))
            if found is not None:
                return found
        raise ValueError(f"unknown node state {value!r}; expected up, down, comingup or "
                         "goingdown")


_LABELS = {state: state.name.lower() for state in NodeState}
_BY_NAME = {state.name.lower().replace("_", ""): state for state in NodeState}
_CLASS_FOR_STATE: dict[NodeState, type[MembershipEvent]] = {
    NodeState.UP: NodeUp,
    NodeState.DOWN: NodeDown,
    NodeState.COMING_UP: NodeComingUp,
    NodeState.GOING_DOWN: NodeGoingDown,
}
_STATE_FOR_CLASS = {cls: state for state, cls in _CLASS_FOR_STATE.items()}


#: VRRP instance states as RFC 5798 names them, plus keepalived's extra ones.
VRRP_STATES = frozenset({"INITIALIZE", "BACKUP", "MASTER", "FAULT", "STOP", "UNKNOWN"})


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class VrrpTransition(Event):
    """A VRRP instance changed state (our own speaker, or keepalived's notify FIFO).

    :param instance: instance name (``VI_1``); for keepalived sync groups the group name.
    :param vrid: virtual router id 1..255, or 0 when the source does not say (keepalived FIFO).
    :param family: ``inet`` or ``inet6``.
    :param interface: the interface name, ``""`` when unknown.
    :param old: previous state (one of :data:`VRRP_STATES`).
    :param new: new state.
    :param priority: priority at the time of the transition (0..255).
    :param reason: ``master_down_timer``, ``higher_priority_seen``, ``priority_zero``,
        ``preempt``, ``shutdown``, ``startup``, ``keepalived``, ...
    :param source: ``speaker`` (built-in) or ``keepalived``.
    :param group: ``True`` when the transition is of a keepalived sync group.
    """

    TOPIC: ClassVar[str] = "vrrp.transition"

    instance: str
    vrid: int = 0
    family: str = "inet"
    interface: str = ""
    old: str = "UNKNOWN"
    new: str
    priority: int = 0
    reason: str
    source: str = "speaker"
    group: bool = False

    def _validate(self) -> None:
        _str(self, "instance", maxlen=128)
        _int(self, "vrid", 0, 255)
        if self.family not in ("inet", "inet6"):
            raise InvalidEvent(f"VrrpTransition.family: {self.family!r} is not inet or inet6")
        _str(self, "interface", empty=True, maxlen=15)
        for name in ("old", "new"):
            if getattr(self, name) not in VRRP_STATES:
                raise InvalidEvent(
                    f"VrrpTransition.{name}: {getattr(self, name)!r} is not one of "
                    f"{', '.join(sorted(VRRP_STATES))}"
                )
        _int(self, "priority", 0, 255)
        _str(self, "reason", maxlen=64)
        _str(self, "source", maxlen=32)
        if type(self.group) is not bool:
            raise InvalidEvent("VrrpTransition.group: expected bool")


@dataclass(frozen=True, slots=True, kw_only=True)
class _VipEvent(Event):
    instance: str
    address: str
    interface: str

    def _validate(self) -> None:
        _str(self, "instance", maxlen=128)
        _str(self, "interface", maxlen=15)
        if not isinstance(self.address, str):
            raise InvalidEvent(f"{type(self).__name__}.address: expected str")
        try:
            iface = ipaddress.ip_interface(self.address)
        except ValueError:
            raise InvalidEvent(
                f"{type(self).__name__}.address: {self.address!r} is not ADDR or ADDR/PREFIX"
            ) from None
        object.__setattr__(self, "address", str(iface))


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class VipAcquired(_VipEvent):
    """A virtual IP was added to an interface of this director."""

    TOPIC: ClassVar[str] = "vip.acquired"


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class VipReleased(_VipEvent):
    """A virtual IP was removed from an interface of this director."""

    TOPIC: ClassVar[str] = "vip.released"


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class NodemapChanged(Event):
    """The addresses known for a node changed.

    :param node: the node number.
    :param addrs: the node's complete address list after the change (at most
        :data:`MAX_NODE_ADDRS`; empty once they were forgotten).
    :param reason: ``config``, the topic of the event that taught it (``node.up``), or
        ``expired`` (a node down for ``[nodemap] forget_after`` seconds).
    """

    TOPIC: ClassVar[str] = "nodemap.changed"

    node: int
    addrs: tuple[str, ...]
    reason: str

    def _validate(self) -> None:
        check_node(type(self).__name__, self.node, lo=0)
        _addrs(self, "addrs")
        check_reason(type(self).__name__, self.reason)


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class AddressConflict(Event):
    """Two nodes claimed one address; the node map kept the first owner.

    :param addr: the contested address.
    :param owner: the node that holds the address in the map.
    :param claimant: the node whose claim was refused.
    :param reason: where the refused claim came from (``config``, ``node.up``, ...).
    """

    TOPIC: ClassVar[str] = "nodemap.conflict"

    addr: str
    owner: int
    claimant: int
    reason: str

    def _validate(self) -> None:
        object.__setattr__(self, "addr", node_addr(self.addr, "AddressConflict.addr"))
        check_node("AddressConflict", self.owner, "owner", lo=0)
        check_node("AddressConflict", self.claimant, "claimant", lo=0)
        check_reason("AddressConflict", self.reason)


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipResync(Event):
    """The view was reconciled with a source's full table after the source lost messages
    (a netlink receive-buffer overrun: docs/netlink.md "Overrun recovery").

    The membership events of the nodes whose state differed come first, each as usual;
    this event follows them and says the view is whole again.

    :param source: the source that resynchronised (``netlink``).
    :param reported: nodes listed in the answers to the dump request.
    :param changed: view changes the resync made (the events before this one).
    :param down: nodes the source had reported, missing from every answer, so reported
        DOWN (counted in ``changed`` when they were not DOWN already).
    :param view: the view id after the resync.
    """

    TOPIC: ClassVar[str] = "membership.resync"

    source: str
    reported: int
    changed: int
    down: int
    view: int

    def _validate(self) -> None:
        _str(self, "source", maxlen=64)
        for name in ("reported", "changed", "down"):
            _int(self, name, 0, _U64)
        _int(self, "view", 1, _U64)


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class IpvsApplied(Event):
    """The IPVS applier reconciled the kernel table with the desired state.

    :param added: objects (services + real servers) added.
    :param removed: objects removed.
    :param changed: objects updated in place.
    :param duration: seconds the apply took.
    :param reason: what triggered it (``startup``, ``node.down``, ``reconcile``, ...).
    """

    TOPIC: ClassVar[str] = "ipvs.applied"

    added: int
    removed: int
    changed: int
    duration: float
    reason: str

    def _validate(self) -> None:
        for name in ("added", "removed", "changed"):
            _int(self, name, 0, _U64)
        _float(self, "duration")
        _str(self, "reason", maxlen=64)


def event_from_dict(topic: str, body: Mapping[str, Any], version: int = 1, *,
                    lists: bool = True) -> Event:
    """Rebuild an event from its topic and field mapping (the inverse of ``to_dict``).

    Lists are accepted where tuples are expected (JSON has no tuples).

    :param lists: ``False`` when ``body`` cannot hold lists (msgpack unpacked with
        ``use_list=False``): skips the pass that turns them into tuples.
    :raises DecodeError: unknown topic/version, missing or unknown fields, invalid values.
    """
    cls = EVENT_TYPES.get((topic, version)) if type(version) is int else None
    if cls is None:
        cls = event_class(topic, version)
    names, name_set = _names(cls)
    try:
        if not body.keys() <= name_set:
            unknown = set(body) - set(names)
            raise DecodeError(
                f"{topic}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    except TypeError:  # an unhashable key
        raise DecodeError(f"{topic}: a field name is not a string") from None
    try:
        if lists:
            fields: Mapping[str, Any] = {k: (tuple(v) if isinstance(v, list) else v)
                                         for k, v in body.items()}
            return cls(**fields)
        return cls(**body)
    except InvalidEvent as exc:
        raise DecodeError(f"{topic}: {exc}") from None
    except TypeError as exc:  # missing required keyword argument
        msg = str(exc).split("() ", 1)[-1]
        raise DecodeError(f"{topic}: {msg}") from None



# -- director cluster (Corosync) ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _DirectorEvent(Event):
    node: int
    reason: str

    def _validate(self) -> None:
        _int(self, "node", 0, MAX_NODE)
        _str(self, "reason", maxlen=64)


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class DirectorUp(_DirectorEvent):
    """A peer director's daemon became reachable (it joined the Corosync CPG group).

    :param node: the peer director's node number.
    :param reason: how it was learnt, e.g. ``corosync.join``, ``corosync.nodeup``.
    """

    TOPIC: ClassVar[str] = "director.up"


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class DirectorDown(_DirectorEvent):
    """A peer director's daemon is gone (its process left the CPG group, or its node).

    :param node: the peer director's node number.
    :param reason: e.g. ``corosync.procdown`` (the process died), ``corosync.leave`` (it
        stopped cleanly), ``corosync.nodedown`` (its node left the membership).
    """

    TOPIC: ClassVar[str] = "director.down"


@register_event
@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterQuorum(Event):
    """The cluster's quorum flag changed (Corosync's votequorum, through libquorum).

    :param quorate: whether this director's partition holds quorum.
    :param members: the node numbers in this director's partition (sorted).
    """

    TOPIC: ClassVar[str] = "cluster.quorum"

    quorate: bool
    members: tuple[int, ...] = ()

    def _validate(self) -> None:
        if type(self.quorate) is not bool:
            raise InvalidEvent("ClusterQuorum.quorate: expected bool")
        _nodes(self, "members")


__all__ += ["DirectorUp", "DirectorDown", "ClusterQuorum"]
