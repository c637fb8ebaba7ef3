"""Every truncated prefix of a valid clusterbus netlink message is rejected (sans-IO)."""

from __future__ import annotations

import pytest

from clusterbus.errors import DecodeError
from clusterbus.netlink.message import MessageError, decode, encode
from clusterbus.view import NodeState

VALID = {
    "up_v4_v6": encode(NodeState.UP, 3, ("10.77.0.3", "fd00:77::3"), 9, seq=7, pid=1234),
    "down_bare": encode(NodeState.DOWN, 1),
    "comingup_many": encode(NodeState.COMING_UP, 2**32 - 1,
                            tuple(f"10.78.0.{i}" for i in range(1, 9)), 2**32 - 1),
    "goingdown_v6": encode(NodeState.GOING_DOWN, 77, ("fd00::77",), 1),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_whole_message_decodes(name):
    [m] = decode(VALID[name])
    assert m.node in (3, 1, 2**32 - 1, 77)


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_truncated_prefix_raises_decode_error(name):
    data = VALID[name]
    for cut in range(len(data)):
        with pytest.raises(DecodeError) as info:
            decode(data[:cut])
        assert isinstance(info.value, MessageError)
        assert info.value.offset is not None and 0 <= info.value.offset <= cut, cut


def test_truncated_second_message_rejects_the_whole_datagram():
    first, second = VALID["up_v4_v6"], VALID["down_bare"]
    for cut in range(1, len(second)):
        with pytest.raises(DecodeError) as info:
            decode(first + second[:cut])
        # the fault is reported at or after the start of the second message
        assert info.value.offset is not None and info.value.offset >= len(first)
