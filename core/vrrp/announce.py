"""Takeover announcements, sans-IO: the gratuitous ARP and unsolicited neighbour
advertisement frames a new MASTER sends for its VIPs (RFC 5798 §6.4.1 / §6.4.2).

Only the bytes live here; :class:`clusterbus.vrrp.sockets.Announcer` sends them.
Standard library only.
"""

from __future__ import annotations

import ipaddress
import struct

__all__ = ["garp_frame", "unsolicited_na", "ETH_P_ARP"]

#: <linux/if_ether.h> ETH_P_ARP
ETH_P_ARP = 0x0806


def garp_frame(mac: bytes, vip: str) -> bytes:
    """A gratuitous ARP request for ``vip`` as keepalived sends it (RFC 5227 §3 "ARP
    Announcement": sender IP = target IP = the address, to broadcast; the target hardware
    address is ff:ff:ff:ff:ff:ff like keepalived's, see tests/vectors/vrrp).

    :param mac: the interface's 6-byte MAC.
    :param vip: an IPv4 address.
    """
    ip = ipaddress.IPv4Address(vip).packed
    eth = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\xff" * 6 + ip
    return eth + arp


def unsolicited_na(mac: bytes, vip: str) -> bytes:
    """An unsolicited neighbour advertisement for ``vip`` (RFC 4861 §4.4, §7.2.6): Override
    set, Solicited clear, with the target link-layer address option. The kernel fills in the
    ICMPv6 checksum.
    """
    target = ipaddress.IPv6Address(vip).packed
    flags = 0x20000000  # O: override caches that hold the old master's MAC
    return struct.pack("!BBHI", 136, 0, 0, flags) + target + bytes([2, 1]) + mac
