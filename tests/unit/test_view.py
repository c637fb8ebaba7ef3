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


@given(st.lists(st.tuples(st.sampled_from(list(NodeState)), st.integers(1, 4),
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


@pytest.mark.parametrize("bad", [
    {"node": 0}, {"node": 2**32}, {"node": True}, {"addrs": ("127.0.0.1",)},
    {"addrs": ("0.0.0.0",)}, {"addrs": ("224.0.0.1",)}, {"addrs": ("::",)},
    {"addrs": tuple(f"10.1.0.{i}" for i in range(1, 18))}, {"addrs": "10.0.0.1"},
    {"addrs": 5}, {"reason": ""}, {"reason": "r" * 65}, {"incarnation": -1},
])
def test_every_bad_report_field_is_an_invalid_event(bad):
    fields = {"state": UP, "node": 3, "addrs": ("10.0.0.3",), "incarnation": 0,
              "reason": "test", **bad}
    with pytest.raises(InvalidEvent):
        NodeReport(**fields)


def test_a_report_is_immutable_and_always_valid():
    r = rep(UP, 3, ["::ffff:10.0.0.3", "10.0.0.3", "FD00::3"])
    assert r.addrs == ("10.0.0.3", "fd00::3")
    with pytest.raises(AttributeError):
        r.node = 4  # type: ignore[misc]
    with pytest.raises(InvalidEvent):
        r._replace(node=0)
    with pytest.raises(InvalidEvent):
        NodeReport._make((UP, 0, (), 0, "x"))
    import pickle
    assert pickle.loads(pickle.dumps(r)) == r


def test_restored_nodes_are_unconfirmed_until_reported_again(tmp_path):
    from clusterbus.view import ViewStore

    v = MembershipView()
    v.apply(rep(UP, 3, ("10.0.0.3",), inc=2))
    v.apply(rep(DOWN, 4))
    store = ViewStore(tmp_path / "state")
    store.save(7, v)
    assert not list((tmp_path / "state").glob(".membership.*"))  # no temporary file left
    view_id, nodes = store.load()
    w = MembershipView()
    w.restore(view_id, nodes)
    assert w.view_id == 2 and w.unconfirmed() == (3, 4)
    assert [n["confirmed"] for n in w.snapshot()["nodes"]] == [False, False]
    c = w.apply(rep(UP, 3))  # the same state, but it confirms the node: a change
    assert c and c.view == 3 and c.info.confirmed and c.info.addrs == ("10.0.0.3",)
    assert w.apply(rep(UP, 3)) is None and w.unconfirmed() == (4,)


@pytest.mark.parametrize("text", [
    b"", b"{", b"[]", b'{"version": 2, "view": 1, "nodes": []}',
    b'{"version": 1, "view": 1, "nodes": [[0, "up", [], 0, 1]]}',
    b'{"version": 1, "view": 1, "nodes": [[3, "sideways", [], 0, 1]]}',
    b'{"version": 1, "view": 1, "nodes": [[3, "up", ["127.0.0.1"], 0, 1]]}',
    b'{"version": 1, "view": 1, "nodes": [[3, "up", [], 0, 2]]}',
    b'{"version": 1, "view": 1, "nodes": [[3, "up", [], 0, 1], [3, "down", [], 0, 1]]}',
    b'{"version": 1, "view": 1, "nodes": [{"node": 3}]}',
    b"[" * 5000,
])
def test_a_bad_state_file_is_refused_whole(tmp_path, text):
    from clusterbus.view import ViewStore

    store = ViewStore(tmp_path)
    store.path.write_bytes(text)
    with pytest.raises(InvalidEvent):
        store.load()
