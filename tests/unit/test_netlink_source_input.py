"""NetlinkSource's judgement of one datagram (what recvmsg returned), without a socket.

The socket path is covered end to end in tests/integration/test_netlink_source.py; here
the cases the kernel will not produce on demand (missing or cut credentials, MSG_TRUNC)
are fed to :meth:`NetlinkSource.handle_datagram` directly, with a real engine.
"""

from __future__ import annotations

import socket
import struct

import pytest

from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.netlink.message import encode
from clusterbus.pluginhost import PluginHost
from clusterbus.sources.netlink import NetlinkSource
from clusterbus.view import NodeState


def creds(pid: int = 100, uid: int = 0, gid: int = 0) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("=iII", pid, uid, gid))]


@pytest.fixture
def source() -> NetlinkSource:
    engine = Engine(origin=1, plugins=PluginHost(), clock=lambda: 1000.0)
    cfg = parse_config({"netlink": {"group": 7, "allowed_uids": [0, 42]}}, file="<test>")
    return NetlinkSource(engine, cfg)


def test_config_is_read(source: NetlinkSource):
    assert source.group == 7 and source.allowed_uids == {0, 42}
    assert source.rcvbuf == 4 << 20
    st = source.status()
    assert st["group"] == 7 and st["listening"] is False and st["allowed_uids"] == [0, 42]


def test_valid_datagram_reaches_the_view(source: NetlinkSource):
    data = encode(NodeState.UP, 5, ("10.77.0.5",), 1) + encode(NodeState.UP, 6)
    source.handle_datagram(data, creds(uid=42), 0)
    assert source.engine.view.up_nodes() == (5, 6)
    assert source.engine.view.nodes[5].addrs == ("10.77.0.5",)
    assert source.counters["messages"] == 2 and source.counters["changes"] == 2
    source.handle_datagram(encode(NodeState.UP, 5), creds(), 0)  # duplicate: no change
    assert source.counters["reported"] == 3 and source.counters["changes"] == 2


@pytest.mark.parametrize(("ancdata", "flags", "reason"), [
    ([], 0, "no_credentials"),
    ([(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, b"\x01\x02")], 0, "no_credentials"),
    ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("=iII", 1, 0, 0))], 0,
     "no_credentials"),
    (creds(), socket.MSG_CTRUNC, "no_credentials"),
    (creds(), socket.MSG_TRUNC, "oversize"),
    (creds(uid=1000), 0, "unauthorised_sender"),
])
def test_untrusted_datagrams_are_dropped(source: NetlinkSource, ancdata, flags, reason):
    source.handle_datagram(encode(NodeState.UP, 5), ancdata, flags)
    assert source.counters[reason] == 1
    assert source.engine.view.view_id == 0 and source.engine.seq == 0
    assert source.last_error


def test_malformed_is_counted_by_kind(source: NetlinkSource):
    good = encode(NodeState.UP, 5)
    source.handle_datagram(good[:20], creds(), 0)
    source.handle_datagram(good + b"\x00", creds(), 0)
    source.handle_datagram(b"\xff" * 40, creds(), 0)
    c = source.counters
    assert c["malformed"] == 3 and c["malformed.truncated"] == 3
    assert source.engine.view.view_id == 0
    source.handle_datagram(good, creds(), 0)  # still works
    assert source.engine.view.up_nodes() == (5,)
