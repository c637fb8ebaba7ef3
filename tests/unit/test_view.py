from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterbus.errors import InvalidEvent
from clusterbus.view import MembershipView, NodeReport, NodeState

UP, DOWN, CUP, GDOWN = NodeState.UP, NodeState.DOWN, NodeState.COMING_UP, NodeState.GOING_DOWN


def rep(state, node, addrs=(), inc=0):
    return NodeReport(state=state, node=node, addrs=addrs, incarnation=inc, reason="test")


def test_real_changes_bump_the_view_and_duplicates_do_not():
    v = MembershipView()
    c1 = v.apply(rep(UP, 3, ("10.0.0.3",)))
    assert c1 and c1.view == 1 and c1.joined == (3,) and c1.left == ()
    assert v.apply(rep(UP, 3)) is None
    assert v.apply(rep(UP, 3, ("10.0.0.3",))) is None
    c2 = v.apply(rep(DOWN, 3))
    assert c2 and c2.view == 2 and c2.left == (3,) and c2.info.addrs == ("10.0.0.3",)
    assert v.apply(rep(DOWN, 3)) is None
    assert v.view_id == 2 and v.ignored["duplicate"] == 3


def test_clms_transitions():
    v = MembershipView()
    assert v.apply(rep(CUP, 5)).joined == ()
    assert v.apply(rep(UP, 5)).joined == (5,)
    assert v.apply(rep(GDOWN, 5)).left == ()
    assert v.apply(rep(DOWN, 5)).left == (5,)
    assert v.state(5) is DOWN and v.view_id == 4


def test_incarnation_newer_is_a_rejoin_older_is_stale():
    v = MembershipView()
    v.apply(rep(UP, 2, inc=5))
    c = v.apply(rep(UP, 2, inc=6))
    assert c and c.joined == (2,) and c.info.incarnation == 6
    assert v.apply(rep(DOWN, 2, inc=4)) is None
    assert v.ignored["stale_incarnation"] == 1 and v.state(2) is UP


def test_new_addresses_are_a_change():
    v = MembershipView()
    v.apply(rep(UP, 2, ("10.0.0.2",)))
    c = v.apply(rep(UP, 2, ("10.0.0.2", "fd00::2")))
    assert c and c.joined == () and c.info.addrs == ("10.0.0.2", "fd00::2")


def test_report_validation():
    with pytest.raises(InvalidEvent):
        NodeReport(state="up", node=1, reason="x")  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent):
        rep(UP, -1)
    with pytest.raises(InvalidEvent):
        rep(UP, 1, ("nope",))


@given(st.lists(st.tuples(st.sampled_from(list(NodeState)), st.integers(0, 3),
                          st.integers(0, 3)), max_size=40))
def test_view_id_increases_exactly_on_changes(reports):
    v = MembershipView()
    for state, node, inc in reports:
        before = v.view_id
        prev = v.nodes.get(node)
        change = v.apply(rep(state, node, inc=inc))
        if change is None:
            assert v.view_id == before and v.nodes.get(node) == prev
        else:
            assert change.view == before + 1 == v.view_id
            assert v.state(node) is state
