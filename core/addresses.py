"""The one home of the address rules: the configuration, the membership boundary
(:func:`clusterbus.events.node_addr`), the netlink decoder and the VRRP configuration all
call these functions.

Each function takes what a user or a peer wrote and returns the canonical text form
(``ipaddress``'s ``str``: lower case, zeros compressed), or says why not. The rules:

- only a ``str`` holding a literal address is an address: the integer ``167772161`` is not
  ``10.0.0.1``, and a name (``localhost``, ``eth0``) is not resolved;
- a zone (``fe80::1%eth0``) is refused: the interface is configured elsewhere;
- an IPv4-mapped IPv6 address (``::ffff:10.0.0.3``) **is** the IPv4 address it maps
  (``10.0.0.3``): one address has one text form, so a mapped spelling meets every
  "already used" / one-owner check as the IPv4 address it is;
- a *node address* (the address of a director or real server, a VRRP peer, a virtual
  address) is unicast and is neither loopback nor unspecified: no ``0.0.0.0``/``::``,
  ``127.0.0.0/8``/``::1``, multicast or ``255.255.255.255``. Link-local addresses are
  unicast and allowed (a VRRPv3 IPv6 router's first address is one, RFC 5798 §7.1).

Two entry styles share one implementation: the ``canonical_*`` functions raise
:class:`ValueError` (whose message is the reason, ready for a
:class:`~clusterbus.errors.ConfigError` or a counted drop), and the cached
:func:`address_or_none` / :func:`node_address_or_none` answer ``None`` instead, for the
per-event hot path (a cache hit costs tens of nanoseconds; a parse, microseconds).
"""

from __future__ import annotations

import functools
import ipaddress

__all__ = [
    "ADDR_CACHE_SIZE",
    "address_or_none",
    "canonical_address",
    "canonical_node_address",
    "canonical_node_interface",
    "node_address_or_none",
    "node_address_problem",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Distinct address strings whose canonical form is remembered by :func:`address_or_none`
#: and :func:`node_address_or_none`. Membership traffic repeats the same few addresses;
#: bounded (LRU), so hostile input that invents new strings costs a parse each, never memory.
ADDR_CACHE_SIZE = 4096

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse(value: object) -> IPAddress:
    if not isinstance(value, str):
        raise ValueError(f"expected an IP address as a string, got {type(value).__name__} "
                         f"{_short(value)}")
    if "%" in value:
        raise ValueError(f"{_short(value)}: a zone (%...) is not allowed here")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{_short(value)} is not an IPv4 or IPv6 address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _problem(ip: IPAddress) -> str | None:
    if ip.is_unspecified:
        return "is unspecified"
    if ip.is_loopback:
        return "is a loopback address"
    if ip.is_multicast:
        return "is a multicast address"
    if ip == _BROADCAST:
        return "is the broadcast address"
    return None


def node_address_problem(canon: str) -> str | None:
    """Why the canonical address ``canon`` (as returned by :func:`canonical_address`)
    cannot be a node's address (``"is a loopback address"``, ...), else ``None``."""
    return _problem(ipaddress.ip_address(canon))


def canonical_address(value: object) -> str:
    """Any literal IPv4/IPv6 address (loopback and unspecified included), canonical; an
    IPv4-mapped IPv6 address becomes the IPv4 address.

    >>> canonical_address("::FFFF:10.0.0.3")
    '10.0.0.3'

    :raises ValueError: not a string, not an address, a zone.
    """
    return str(_parse(value))


def canonical_node_address(value: object) -> str:
    """The address of a node, canonical.

    >>> canonical_node_address("FD00:0::1")
    'fd00::1'

    :raises ValueError: as :func:`canonical_address`, or not unicast, loopback, unspecified.
    """
    ip = _parse(value)
    problem = _problem(ip)
    if problem:
        raise ValueError(f"{ip} {problem}, not the address of a node")
    return str(ip)


@functools.lru_cache(maxsize=ADDR_CACHE_SIZE)
def address_or_none(value: str) -> str | None:
    """:func:`canonical_address` of the plain ``str`` ``value``, or ``None`` (cached too)
    when it is not an address. Cached: call it with a plain ``str`` only (a subclass
    would be kept alive by the cache; pass ``str.__str__(value)``)."""
    try:
        return str(_parse(value))
    except ValueError:
        return None


@functools.lru_cache(maxsize=ADDR_CACHE_SIZE)
def node_address_or_none(value: str) -> str | None:
    """:func:`canonical_node_address` of the plain ``str`` ``value``, or ``None`` when it
    is not a node address. Cached like :func:`address_or_none`."""
    canon = address_or_none(value)
    if canon is None or node_address_problem(canon) is not None:
        return None
    return canon


def canonical_node_interface(value: object) -> str:
    """A node address with an optional prefix length (``10.77.0.100/24``), canonical; a bare
    address gets the host prefix (``/32``, ``/128``). An IPv4-mapped address with a prefix
    (``::ffff:10.77.0.100/120``) is the IPv4 interface (``10.77.0.100/24``).

    :raises ValueError: as :func:`canonical_node_address`, or a bad prefix.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected ADDRESS or ADDRESS/PREFIX as a string, got "
                         f"{type(value).__name__} {_short(value)}")
    addr, slash, prefix = value.partition("/")
    ip = canonical_node_address(addr)
    if not slash:
        return str(ipaddress.ip_interface(ip))
    if not prefix.isdigit():
        raise ValueError(f"{_short(value)}: the prefix length is not a number")
    length = int(prefix)
    if ":" in addr and ":" not in ip:  # IPv4-mapped: the IPv6 prefix covers ::ffff:0:0/96
        length -= 96
        if length < 0 or length > 32:
            raise ValueError(f"{_short(value)}: prefix length out of range for an "
                             "IPv4-mapped address (96..128)")
    try:
        return str(ipaddress.ip_interface(f"{ip}/{length}"))
    except ValueError:
        raise ValueError(f"{_short(value)}: prefix length out of range") from None
