"""The clusterbus netlink membership protocol (NETLINK_USERSOCK multicast). See docs/netlink.md.

:mod:`.message` is the sans-IO codec (standard library only); :mod:`.sender` sends (and,
keeping state, answers dump requests); :mod:`.nlmsg` describes the message for pyroute2
(imported on demand, not here, so the codec stays importable without pyroute2). The
receiving side is :class:`clusterbus.sources.netlink.NetlinkSource`. The ``command``
byte of a node message is a :class:`clusterbus.events.NodeState` code.
"""

from __future__ import annotations

from .message import (
    CMD_DUMP,
    CMD_DUMP_DONE,
    MSG_TYPE,
    VERSION,
    Attr,
    NodeMessage,
    decode,
    encode,
    encode_dump_request,
)

__all__ = ["MSG_TYPE", "VERSION", "CMD_DUMP", "CMD_DUMP_DONE", "Attr", "NodeMessage",
           "decode", "encode", "encode_dump_request"]
