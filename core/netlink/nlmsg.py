"""The clusterbus message as a pyroute2 ``nlmsg`` class (the I/O side's view).

:mod:`clusterbus.netlink.message` is the authoritative, strict, standard-library codec
that the source uses to decode. This class describes the same layout for pyroute2 users
(e.g. a pyroute2 program that wants to send clusterbus messages, or to pretty-print them);
pyroute2's own parser is lenient, so never use it to judge untrusted input.
"""

from __future__ import annotations

from pyroute2.netlink import genlmsg  # untyped: pyproject's mypy overrides make it Any

from .message import MSG_TYPE, VERSION, Attr

__all__ = ["cbmsg", "MSG_TYPE", "VERSION"]


class cbmsg(genlmsg):  # type: ignore[misc]  # pyroute2 is untyped
    """nlmsghdr + (u8 cmd, u8 version, u16 reserved) + CB_ATTR_* attributes.

    ``CB_ATTR_ADDR`` repeats, one per address; pyroute2's ``ipaddr`` type picks IPv4 or
    IPv6 by payload length (4 or 16 bytes).
    """

    __slots__ = ()

    prefix = "CB_ATTR_"
    nla_map = (
        (Attr.UNSPEC.value, "CB_ATTR_UNSPEC", "none"),
        (Attr.NODE.value, "CB_ATTR_NODE", "uint32"),
        (Attr.ADDR.value, "CB_ATTR_ADDR", "ipaddr"),
        (Attr.INCARNATION.value, "CB_ATTR_INCARNATION", "uint32"),
    )
