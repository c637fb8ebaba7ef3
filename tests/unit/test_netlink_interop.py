"""The codec, pyroute2's view of the message and the sender helpers agree."""

from __future__ import annotations

import pytest

from clusterbus.errors import LocalProtocolError
from clusterbus.netlink.message import MSG_TYPE, VERSION, decode, encode
from clusterbus.netlink.nlmsg import cbmsg
from clusterbus.netlink.sender import parse_state
from clusterbus.view import NodeState


def test_pyroute2_encoding_is_byte_identical():
    m = cbmsg()
    m["cmd"] = NodeState.UP
    m["version"] = VERSION
    m["reserved"] = 0
    m["header"]["type"] = MSG_TYPE
    m["header"]["sequence_number"] = 5
    m["attrs"] = [("CB_ATTR_NODE", 3), ("CB_ATTR_ADDR", "10.77.0.3"),
                  ("CB_ATTR_ADDR", "fd00:77::3"), ("CB_ATTR_INCARNATION", 2)]
    m.encode()
    ours = encode(NodeState.UP, 3, ("10.77.0.3", "fd00:77::3"), 2, seq=5)
    assert bytes(m.data) == ours
    [d] = decode(bytes(m.data))
    assert (d.node, d.addrs, d.incarnation, d.seq) == (3, ("10.77.0.3", "fd00:77::3"), 2, 5)


def test_pyroute2_parses_our_message():
    p = cbmsg(encode(NodeState.GOING_DOWN, 8, ("192.0.2.8",), 4, seq=9, pid=77))
    p.decode()
    assert p["cmd"] == NodeState.GOING_DOWN and p["version"] == VERSION
    assert p["header"]["type"] == MSG_TYPE and p["header"]["pid"] == 77
    assert p.get_attr("CB_ATTR_NODE") == 8
    assert p.get_attrs("CB_ATTR_ADDR") == ["192.0.2.8"]
    assert p.get_attr("CB_ATTR_INCARNATION") == 4


@pytest.mark.parametrize(("text", "state"), [
    ("up", NodeState.UP), ("node-up", NodeState.UP), ("DOWN", NodeState.DOWN),
    ("comingup", NodeState.COMING_UP), ("coming_up", NodeState.COMING_UP),
    ("node.going_down", NodeState.GOING_DOWN), ("goingdown", NodeState.GOING_DOWN),
    (NodeState.DOWN, NodeState.DOWN),
])
def test_parse_state(text, state):
    assert parse_state(text) is state


@pytest.mark.parametrize("bad", ["sideways", "", "nodeup", 1, None])
def test_parse_state_rejects(bad):
    with pytest.raises(LocalProtocolError):
        parse_state(bad)
