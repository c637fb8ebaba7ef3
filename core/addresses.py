"""Address rules shared by the configuration (and, in time, by every input that names one).

Each function takes what a user or a peer wrote and returns the canonical text form
(``ipaddress``'s ``str``: lower case, zeros compressed), or raises :class:`ValueError` whose
message is the reason, ready for a :class:`~clusterbus.errors.ConfigError` or a counted
drop. The rules:

- only a ``str`` holding a literal address is an address: the integer ``167772161`` is not
  ``10.0.0.1``, and a name (``localhost``, ``eth0``) is not resolved;
- a zone (``fe80::1%eth0``) is refused: the interface is configured elsewhere;
- an IPv4-mapped IPv6 address (``::ffff:10.0.0.3``) is refused, not translated: it would
  be a second spelling of ``10.0.0.3`` and dodge every "already used" check;
- a *node address* (the address of a director or real server, a VRRP peer, a virtual
  address) is unicast and is neither loopback nor unspecified: no ``0.0.0.0``/``::``,
  ``127.0.0.0/8``/``::1``, multicast or ``255.255.255.255``. Link-local addresses are
  unicast and allowed (a VRRPv3 IPv6 router's first address is one, RFC 5798 §7.1).
"""

from __future__ import annotations

import ipaddress

__all__ = ["canonical_address", "canonical_node_address", "canonical_node_interface"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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
        raise ValueError(f"{value} is an IPv4-mapped IPv6 address; write {ip.ipv4_mapped}")
    return ip


def _node_problem(ip: IPAddress) -> str | None:
    if ip.is_unspecified:
        return "is unspecified (any address), not the address of a node"
    if ip.is_loopback:
        return "is a loopback address, not the address of a node"
    if ip.is_multicast or ip == _BROADCAST:
        return "is not a unicast address"
    return None


def canonical_address(value: object) -> str:
    """Any literal IPv4/IPv6 address (loopback and unspecified included), canonical.

    :raises ValueError: not a string, not an address, a zone, an IPv4-mapped address.
    """
    return str(_parse(value))


def canonical_node_address(value: object) -> str:
    """The address of a node, canonical.

    >>> canonical_node_address("FD00:0::1")
    'fd00::1'

    :raises ValueError: as :func:`canonical_address`, or not unicast, loopback, unspecified.
    """
    ip = _parse(value)
    problem = _node_problem(ip)
    if problem:
        raise ValueError(f"{ip} {problem}")
    return str(ip)


def canonical_node_interface(value: object) -> str:
    """A node address with an optional prefix length (``10.77.0.100/24``), canonical; a bare
    address gets the host prefix (``/32``, ``/128``).

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
    try:
        return str(ipaddress.ip_interface(f"{ip}/{int(prefix)}"))
    except ValueError:
        raise ValueError(f"{_short(value)}: prefix length out of range") from None
