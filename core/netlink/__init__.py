"""The clusterbus netlink membership protocol (NETLINK_USERSOCK multicast). See docs/netlink.md.

:mod:`.message` is the sans-IO codec (standard library only); :mod:`.sender` sends;
:mod:`.nlmsg` describes the message for pyroute2 (imported on demand, not here, so the
codec stays importable without pyroute2). The receiving side is
:class:`clusterbus.sources.netlink.NetlinkSource`.
"""

from __future__ import annotations

from .message import MSG_TYPE, VERSION, Attr, Command, NodeMessage, decode, encode

__all__ = ["MSG_TYPE", "VERSION", "Attr", "Command", "NodeMessage", "decode", "encode"]
