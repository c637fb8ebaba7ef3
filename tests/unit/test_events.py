from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterbus import events as ev
from clusterbus.errors import DecodeError, InvalidEvent

BASE = dict(origin=1, seq=1, time=1.5)


def test_node_event_fields_and_topic():
    e = ev.NodeDown(**BASE, node=3, addrs=("10.0.0.3", "FD00::0003"), view=4, left=(3,),
                    reason="netlink")
    assert e.topic == "node.down"
    assert e.addrs == ("10.0.0.3", "fd00::3")  # canonical form
    assert (e.node, e.view, e.seq, e.left) == (3, 4, 1, (3,))


def test_events_are_frozen_and_slotted():
    e = ev.NodeUp(**BASE, node=1, view=1, reason="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.node = 2  # type: ignore[misc]
    assert not hasattr(e, "__dict__")


def test_keyword_only():
    with pytest.raises(TypeError):
        ev.NodeUp(1, 1, 1.0, 3, (), 1, (), (), "x")  # type: ignore[misc]


@pytest.mark.parametrize("bad", [
    dict(node=-1), dict(node=2**32), dict(node=True), dict(seq=0), dict(origin="1"),
    dict(addrs=("not-an-ip",)), dict(addrs=("10.0.0.1", "10.0.0.1")), dict(view=0),
    dict(reason=""), dict(time=float("nan")), dict(time=-1.0), dict(joined=(-1,)),
])
def test_invalid_event_cannot_be_constructed(bad):
    fields = dict(BASE, node=3, view=1, reason="netlink") | bad
    with pytest.raises(InvalidEvent):
        ev.NodeUp(**fields)


def test_abstract_event_has_no_topic():
    with pytest.raises(InvalidEvent):
        ev.MembershipEvent(**BASE, node=1, view=1, reason="x")


def test_vrrp_transition_validates_states():
    ok = ev.VrrpTransition(**BASE, instance="VI_1", vrid=77, old="BACKUP", new="MASTER",
                           priority=150, reason="master_down_timer")
    assert ok.topic == "vrrp.transition"
    with pytest.raises(InvalidEvent):
        ev.VrrpTransition(**BASE, instance="VI_1", new="BOSS", reason="x")
    with pytest.raises(InvalidEvent):
        ev.VrrpTransition(**BASE, instance="VI_1", vrid=256, new="MASTER", reason="x")


def test_vip_event_canonicalises_interface_address():
    e = ev.VipAcquired(**BASE, instance="VI_1", address="10.77.0.100/24", interface="eth0")
    assert e.address == "10.77.0.100/24"
    with pytest.raises(InvalidEvent):
        ev.VipAcquired(**BASE, instance="VI_1", address="10.77.0.300/24", interface="eth0")


def test_registry_round_trip_through_dict_every_class():
    samples = [
        ev.NodeUp(**BASE, node=3, addrs=("10.0.0.3",), view=1, joined=(3,), reason="x"),
        ev.NodeDown(**BASE, node=3, view=2, left=(3,), reason="x"),
        ev.NodeComingUp(**BASE, node=3, view=3, reason="x", incarnation=7),
        ev.NodeGoingDown(**BASE, node=3, view=4, reason="x"),
        ev.VrrpTransition(**BASE, instance="VI_1", new="MASTER", reason="x"),
        ev.VipAcquired(**BASE, instance="VI_1", address="fd00::1/64", interface="eth0"),
        ev.VipReleased(**BASE, instance="VI_1", address="10.0.0.1/32", interface="eth0"),
        ev.NodemapChanged(**BASE, node=2, addrs=("10.0.0.2",), reason="config"),
        ev.AddressConflict(**BASE, addr="10.0.0.2", owner=2, claimant=3, reason="node.up"),
        ev.IpvsApplied(**BASE, added=1, removed=0, changed=2, duration=0.25, reason="startup"),
        ev.DirectorUp(**BASE, node=2, reason="corosync.join"),
        ev.DirectorDown(**BASE, node=2, reason="corosync.procdown"),
        ev.ClusterQuorum(**BASE, quorate=False, members=(3,)),
        ev.MembershipResync(**BASE, source="netlink", reported=5, changed=2, down=1, view=9),
    ]
    # every core class (plugins register their own topics, e.g. cvip.owner, when loaded)
    assert {type(s) for s in samples} == {c for c in ev.EVENT_TYPES.values()
                                          if c.__module__ == ev.__name__}
    for s in samples:
        back = ev.event_from_dict(s.topic, {k: (list(v) if isinstance(v, tuple) else v)
                                            for k, v in s.to_dict().items()})
        assert back == s


def test_from_dict_errors_are_decode_errors():
    with pytest.raises(DecodeError, match="unknown topic"):
        ev.event_from_dict("no.such", {})
    with pytest.raises(DecodeError, match="version"):
        ev.event_from_dict("node.up", {}, version=9)
    with pytest.raises(DecodeError, match="unknown field"):
        ev.event_from_dict("node.up", dict(BASE, node=1, view=1, reason="x", extra=1))
    with pytest.raises(DecodeError, match="missing"):
        ev.event_from_dict("node.up", dict(BASE, node=1))


@given(st.dictionaries(st.sampled_from(["origin", "seq", "time", "node", "addrs", "view",
                                         "joined", "left", "reason", "incarnation", "zz"]),
                       st.one_of(st.integers(), st.text(max_size=5), st.floats(),
                                 st.lists(st.integers(), max_size=3), st.none(), st.booleans())))
def test_from_dict_never_raises_anything_but_decode_error(body):
    try:
        ev.event_from_dict("node.up", body)
    except DecodeError:
        pass


def test_register_event_rejects_bad_topics_and_collisions():
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Bad(ev.Event):
        TOPIC = "NoDots"

    with pytest.raises(ValueError):
        ev.register_event(Bad)

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Clash(ev.Event):
        TOPIC = "node.up"

    with pytest.raises(ValueError):
        ev.register_event(Clash)


@pytest.mark.parametrize("bad", ["127.0.0.1", "::1", "0.0.0.0", "::", "224.0.0.18", "ff02::1",
                                 "255.255.255.255", "not-an-ip", ""])
def test_node_addresses_refuse_what_a_node_cannot_have(bad):
    with pytest.raises(InvalidEvent):
        ev.node_addr(bad)
    with pytest.raises(InvalidEvent):
        ev.NodeUp(**BASE, node=3, addrs=(bad,), view=1, reason="x")


def test_ipv4_mapped_addresses_are_their_ipv4_address_everywhere():
    assert ev.node_addr("::ffff:10.0.0.3") == "10.0.0.3"
    assert ev.canonical_addr("::FFFF:10.0.0.3") == "10.0.0.3"
    e = ev.NodeUp(**BASE, node=3, addrs=("::ffff:10.0.0.3",), view=1, reason="x")
    assert e.addrs == ("10.0.0.3",)
    with pytest.raises(InvalidEvent, match="loopback"):
        ev.node_addr("::ffff:127.0.0.1")


def test_one_cap_of_addresses_per_node():
    many = tuple(f"10.0.0.{i}" for i in range(1, ev.MAX_NODE_ADDRS + 2))
    assert ev.MAX_NODE_ADDRS == 16
    assert len(ev.node_addrs(many[:-1])) == ev.MAX_NODE_ADDRS
    with pytest.raises(InvalidEvent, match="at most 16"):
        ev.node_addrs(many)
    with pytest.raises(InvalidEvent, match="at most 16"):
        ev.NodeUp(**BASE, node=3, addrs=many, view=1, reason="x")
    with pytest.raises(InvalidEvent, match="at most 16"):
        ev.NodemapChanged(**BASE, node=3, addrs=many, reason="x")


def test_node_state_codes_are_one_enum():
    assert [int(s) for s in ev.NodeState] == [1, 2, 3, 4]
    assert [s.label for s in ev.NodeState] == ["up", "down", "coming_up", "going_down"]
    assert ev.NodeState.parse("node.going_down") is ev.NodeState.GOING_DOWN
    assert ev.NodeState.parse("ComingUp") is ev.NodeState.COMING_UP
    assert ev.NodeState.from_topic("node.down") is ev.NodeState.DOWN
    assert ev.NodeState.UP.event_class is ev.NodeUp
    with pytest.raises(ValueError):
        ev.NodeState.parse("sideways")


def test_membership_event_is_the_validating_constructor():
    fields = dict(BASE, node=3, addrs=("10.0.0.3",), view=1, joined=(3,), left=(),
                  reason="x", incarnation=0)
    order = ("origin", "seq", "time", "node", "addrs", "view", "joined", "left", "reason",
             "incarnation")
    fast = ev.membership_event(ev.NodeUp, *(fields[k] for k in order))
    assert fast == ev.NodeUp(**fields) and type(fast) is ev.NodeUp
    for bad in ({"addrs": ("127.0.0.1",)}, {"reason": ""}, {"node": -1}, {"seq": 0}):
        with pytest.raises(InvalidEvent):
            ev.membership_event(ev.NodeUp, *({**fields, **bad}[k] for k in order))
    with pytest.raises(InvalidEvent):  # abstract: no TOPIC
        ev.membership_event(ev.MembershipEvent, *(fields[k] for k in order))
