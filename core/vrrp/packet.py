"""VRRP advertisement codec: RFC 3768 (VRRPv2, IPv4) and RFC 5798 (VRRPv3, IPv4 and IPv6).

Sans-IO and standard library only. :class:`Advertisement` works on the VRRP message (the
IP payload); the raw socket hands the adapter the IP source, destination and TTL, which
the receiver checks separately (:func:`check_ip_fields`). :func:`split_ipv4_frame` takes an
Ethernet + IPv4 frame apart, for captured test vectors and packet-socket users.

Every malformed input raises :class:`~clusterbus.errors.DecodeError` (a bad checksum raises
its subclass :class:`ChecksumError`), never ``IndexError`` or ``struct.error``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

from ..errors import DecodeError, LocalProtocolError

__all__ = [
    "Advertisement",
    "ChecksumError",
    "IPv4Packet",
    "split_ipv4_frame",
    "check_ip_fields",
    "internet_checksum",
    "IPPROTO_VRRP",
    "VRRP_TTL",
    "MULTICAST_V4",
    "MULTICAST_V6",
    "multicast_group",
]

#: IP protocol number of VRRP (RFC 5798 §5.1.1.3, RFC 3768 §5.2.4).
IPPROTO_VRRP = 112
#: Adverts are sent with TTL / hop limit 255 and a receiver drops anything else (RFC 5798
#: §5.1.1.3, §7.1): a packet that crossed a router cannot come from our link.
VRRP_TTL = 255
#: RFC 5798 §5.1.1.2 / §5.1.2.2 multicast destinations.
MULTICAST_V4 = "224.0.0.18"
MULTICAST_V6 = "ff02::12"

_TYPE_ADVERTISEMENT = 1  # RFC 5798 §5.2.2: the only type defined
_HEADER = struct.Struct("!BBBBHH")  # ver/type, vrid, priority, count, rsvd+int | auth+int, csum
_V2_AUTH_LEN = 8  # RFC 3768 §5.3.10: Authentication Data is always 8 bytes
_V2_AUTH_TYPES = (0, 1, 2)  # RFC 3768 §5.3.6: 0 none, 1 and 2 reserved (were RFC 2338's)
_MAX_V3_INTERVAL_CS = 0x0FFF  # RFC 5798 §5.2.7: 12 bits of centiseconds

Family = Literal["inet", "inet6"]


def multicast_group(family: str) -> str:
    """The VRRP multicast group of ``family`` (``inet`` or ``inet6``)."""
    return MULTICAST_V6 if family == "inet6" else MULTICAST_V4


class ChecksumError(DecodeError):
    """The VRRP checksum does not match the message (and, for v3, the pseudo-header)."""


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones' complement sum of ``data`` (zero-padded to even length), complemented.

    :param data: bytes to sum; a checksum field inside must already be zero (to compute)
        or hold the received value (to verify: the result is then 0).
    :returns: the 16-bit checksum.
    """
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _parse_ip(value: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise LocalProtocolError(f"{what} {value!r} is not an IP address") from None


def _pseudo_header(src: str, dst: str, length: int) -> bytes:
    """RFC 5798 §5.2.8: the IPv4 (RFC 791/793) or IPv6 (RFC 8200 §8.1) pseudo-header."""
    s = _parse_ip(src, "src")
    d = _parse_ip(dst, "dst")
    if s.version != d.version:
        raise LocalProtocolError(f"src {src} and dst {dst} are of different IP versions")
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, IPPROTO_VRRP, length)
    return s.packed + d.packed + struct.pack("!I3xB", length, IPPROTO_VRRP)


@dataclass(frozen=True, slots=True, kw_only=True)
class Advertisement:
    """One VRRP advertisement (RFC 5798 §5.2 for v3, RFC 3768 §5.3 for v2).

    :param version: 2 or 3.
    :param vrid: virtual router id, 1..255.
    :param priority: 0..255; 0 means the master is stepping down, 255 the address owner.
    :param addresses: the virtual addresses, as canonical ``ipaddress`` strings (no prefix).
    :param family: ``inet`` or ``inet6`` (v2 is ``inet`` only).
    :param max_adver_int_cs: v3 only: the sender's advertisement interval in
        **centiseconds** (1..4095); 0 for v2.
    :param advert_int_s: v2 only: the advertisement interval in whole **seconds** (1..255);
        0 for v3.
    :param auth_type: v2 only: 0 (none), 1 or 2 (reserved); 0 for v3.
    :param auth_data: v2 only: up to 8 bytes, zero-padded on the wire (trailing zeros are
        stripped when decoding, so decode/encode is lossless); empty for v3.
    :param checksum: the checksum as received, or ``None`` for an advert built locally
        (:meth:`to_bytes` always computes the right one).
    :raises LocalProtocolError: when built with out-of-range fields (a bug in the caller).
    """

    version: int
    vrid: int
    priority: int
    addresses: tuple[str, ...]
    family: str = "inet"
    max_adver_int_cs: int = 0
    advert_int_s: int = 0
    auth_type: int = 0
    auth_data: bytes = b""
    checksum: int | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> LocalProtocolError:
            return LocalProtocolError(f"Advertisement: {msg}")

        if self.version not in (2, 3):
            raise bad(f"version must be 2 or 3, got {self.version!r}")
        if self.family not in ("inet", "inet6"):
            raise bad(f"family must be inet or inet6, got {self.family!r}")
        if not isinstance(self.vrid, int) or not 1 <= self.vrid <= 255:
            raise bad(f"vrid must be 1..255, got {self.vrid!r}")
        if not isinstance(self.priority, int) or not 0 <= self.priority <= 255:
            raise bad(f"priority must be 0..255, got {self.priority!r}")
        if not isinstance(self.addresses, tuple) or not 1 <= len(self.addresses) <= 255:
            raise bad("addresses must be a tuple of 1..255 addresses")
        want = 6 if self.family == "inet6" else 4
        for a in self.addresses:
            try:
                ip = ipaddress.ip_address(a)
            except ValueError:
                raise bad(f"{a!r} is not an IP address") from None
            if ip.version != want:
                raise bad(f"{a} is not an {self.family} address")
        if self.version == 3:
            if not 1 <= self.max_adver_int_cs <= _MAX_V3_INTERVAL_CS:
                raise bad(f"v3 max_adver_int_cs must be 1..4095, got {self.max_adver_int_cs!r}")
            if self.advert_int_s or self.auth_type or self.auth_data:
                raise bad("advert_int_s, auth_type and auth_data are VRRPv2 fields")
        else:
            if self.family != "inet":
                raise bad("VRRPv2 (RFC 3768) is IPv4 only")
            if not 1 <= self.advert_int_s <= 255:
                raise bad(f"v2 advert_int_s must be 1..255, got {self.advert_int_s!r}")
            if self.max_adver_int_cs:
                raise bad("max_adver_int_cs is a VRRPv3 field")
            if self.auth_type not in _V2_AUTH_TYPES:
                raise bad(f"v2 auth_type must be 0, 1 or 2, got {self.auth_type!r}")
            if not isinstance(self.auth_data, bytes) or len(self.auth_data) > _V2_AUTH_LEN:
                raise bad("v2 auth_data must be at most 8 bytes")
        if self.checksum is not None and not 0 <= self.checksum <= 0xFFFF:
            raise bad(f"checksum must be 0..65535, got {self.checksum!r}")

    @property
    def interval(self) -> float:
        """The advertisement interval in seconds, whatever the version."""
        return self.max_adver_int_cs / 100 if self.version == 3 else float(self.advert_int_s)

    # -- decoding -------------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes, *, src: str, dst: str) -> Advertisement:
        """Decode and verify one VRRP message (the IP payload, without the IP header).

        :param data: the VRRP message.
        :param src: IP source address of the packet (the sender's primary address).
        :param dst: IP destination address (the multicast group, or us for unicast).
        :returns: the advertisement, with :attr:`checksum` as received.
        :raises DecodeError: truncated, wrong version or type, zero VRID, address count
            not matching the length, zero interval, unknown v2 auth type, ...
        :raises ChecksumError: the checksum does not verify.
        :raises LocalProtocolError: ``src``/``dst`` are not addresses of one IP version.
        """
        data = bytes(data)
        # Validate src/dst before looking at the bytes: a bad one is the caller's bug.
        pseudo_check = _pseudo_header(src, dst, 0)
        family: Family = "inet6" if len(pseudo_check) == 40 else "inet"
        if len(data) < _HEADER.size:
            raise DecodeError(
                f"truncated VRRP header: {len(data)} of {_HEADER.size} bytes", offset=len(data)
            )
        vt, vrid, priority, count, word, checksum = _HEADER.unpack_from(data)
        version, ptype = vt >> 4, vt & 0x0F
        # RFC 5798 §5.2.1 / RFC 3768 §5.3.1
        if version not in (2, 3):
            raise DecodeError(f"VRRP version {version} is not 2 or 3", offset=0)
        # RFC 5798 §5.2.2: "A packet with unknown type MUST be discarded."
        if ptype != _TYPE_ADVERTISEMENT:
            raise DecodeError(f"VRRP type {ptype} is not 1 (ADVERTISEMENT)", offset=0)
        # RFC 5798 §5.2.3: VRID 1..255 (0 is not a valid virtual router)
        if vrid == 0:
            raise DecodeError("VRID 0 is not valid", offset=1)
        # RFC 5798 §5.2.5 / RFC 3768 §5.3.5: at least one address
        if count == 0:
            raise DecodeError("address count is 0", offset=3)
        if version == 2 and family == "inet6":
            raise DecodeError("VRRPv2 (RFC 3768) is IPv4 only, got an IPv6 packet", offset=0)
        alen = 16 if family == "inet6" else 4
        trailer = _V2_AUTH_LEN if version == 2 else 0
        expected = _HEADER.size + count * alen + trailer
        if len(data) != expected:
            # Truncated, or count disagrees with the length: either way the list is unusable.
            raise DecodeError(
                f"VRRPv{version} message with {count} {family} addresses must be {expected} "
                f"bytes, got {len(data)}",
                offset=min(len(data), expected),
            )
        if version == 3:
            # RFC 5798 §5.2.7: 4 reserved bits, then 12 bits of centiseconds.
            # §5.2.6: the reserved bits are "ignored on reception" (so an advert with
            # them set does not re-encode byte-identical: we send zeros).
            interval_cs, interval_s, auth_type = word & 0x0FFF, 0, 0
            if interval_cs == 0:
                raise DecodeError("Max Adver Int is 0", offset=4)
            # RFC 5798 §5.2.8: the checksum covers the pseudo-header and the message.
            pseudo = _pseudo_header(src, dst, len(data))
            covered = pseudo + data
        else:
            auth_type, interval_s, interval_cs = word >> 8, word & 0xFF, 0
            # RFC 3768 §5.3.6
            if auth_type not in _V2_AUTH_TYPES:
                raise DecodeError(f"VRRPv2 auth type {auth_type} is not 0, 1 or 2", offset=4)
            if interval_s == 0:
                raise DecodeError("Adver Int is 0", offset=5)
            # RFC 3768 §5.3.8: the checksum covers the VRRP message only.
            pseudo = b""
            covered = data
        if internet_checksum(covered) != 0:
            raise ChecksumError(
                f"bad checksum {checksum:#06x}, expected "
                f"{_checksum_for(data, pseudo):#06x}",
                offset=6,
            )
        off = _HEADER.size
        addresses = []
        for i in range(count):
            raw = data[off + i * alen : off + (i + 1) * alen]
            ip = ipaddress.IPv6Address(raw) if alen == 16 else ipaddress.IPv4Address(raw)
            addresses.append(str(ip))
        auth_data = data[off + count * alen :].rstrip(b"\x00") if version == 2 else b""
        return cls(
            version=version,
            vrid=vrid,
            priority=priority,
            addresses=tuple(addresses),
            family=family,
            max_adver_int_cs=interval_cs,
            advert_int_s=interval_s,
            auth_type=auth_type,
            auth_data=auth_data,
            checksum=checksum,
        )

    # -- encoding -------------------------------------------------------------------------

    def to_bytes(self, *, src: str, dst: str) -> bytes:
        """Encode with the correct checksum (the stored :attr:`checksum` is not used).

        :param src: IP source address the packet will be sent from (v3 pseudo-header).
        :param dst: IP destination address (v3 pseudo-header).
        :returns: the VRRP message.
        :raises LocalProtocolError: ``src``/``dst`` are not of this advert's family.
        """
        want = 6 if self.family == "inet6" else 4
        if _parse_ip(src, "src").version != want:
            raise LocalProtocolError(f"src {src} is not an {self.family} address")
        if self.version == 3:
            word = self.max_adver_int_cs
        else:
            word = (self.auth_type << 8) | self.advert_int_s
        body = bytearray(
            _HEADER.pack(
                (self.version << 4) | _TYPE_ADVERTISEMENT,
                self.vrid,
                self.priority,
                len(self.addresses),
                word,
                0,
            )
        )
        for a in self.addresses:
            body += ipaddress.ip_address(a).packed
        if self.version == 2:
            body += self.auth_data.ljust(_V2_AUTH_LEN, b"\x00")
        pseudo = _pseudo_header(src, dst, len(body)) if self.version == 3 else b""
        struct.pack_into("!H", body, 6, _checksum_for(bytes(body), pseudo))
        return bytes(body)


def _checksum_for(message: bytes, pseudo: bytes) -> int:
    """The checksum ``message`` should carry (its own checksum field is treated as 0)."""
    zeroed = message[:6] + b"\x00\x00" + message[8:]
    return internet_checksum(pseudo + zeroed)


# -- IP level ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class IPv4Packet:
    """The fields of an IPv4 header a VRRP receiver looks at, and the payload.

    :param src: source address.
    :param dst: destination address.
    :param ttl: time to live.
    :param protocol: IP protocol number.
    :param payload: the IP payload (trimmed to the header's total length, so Ethernet
        padding is gone).
    """

    src: str
    dst: str
    ttl: int
    protocol: int
    payload: bytes


_ETH_HEADER = 14
_ETHERTYPE_IPV4 = 0x0800


def split_ipv4_frame(frame: bytes) -> IPv4Packet:
    """Take an Ethernet II + IPv4 frame apart (no VLAN tags).

    :param frame: the frame, starting with the destination MAC.
    :returns: the IPv4 header fields and the payload.
    :raises DecodeError: not IPv4, truncated, bad header length or header checksum,
        fragmented.
    """
    frame = bytes(frame)
    if len(frame) < _ETH_HEADER + 20:
        raise DecodeError(f"frame of {len(frame)} bytes is too short for Ethernet + IPv4",
                          offset=len(frame))
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype != _ETHERTYPE_IPV4:
        raise DecodeError(f"ethertype {ethertype:#06x} is not IPv4", offset=12)
    ip = frame[_ETH_HEADER:]
    if ip[0] >> 4 != 4:
        raise DecodeError(f"IP version {ip[0] >> 4} is not 4", offset=_ETH_HEADER)
    ihl = (ip[0] & 0x0F) * 4
    if ihl < 20 or len(ip) < ihl:
        raise DecodeError(f"bad IPv4 header length {ihl}", offset=_ETH_HEADER)
    total = int.from_bytes(ip[2:4], "big")
    if total < ihl or total > len(ip):
        raise DecodeError(f"IPv4 total length {total} does not fit the {len(ip)} bytes",
                          offset=_ETH_HEADER + 2)
    if internet_checksum(ip[:ihl]) != 0:
        raise ChecksumError("bad IPv4 header checksum", offset=_ETH_HEADER + 10)
    flags_frag = int.from_bytes(ip[6:8], "big")
    if flags_frag & 0x3FFF:  # MF set or a fragment offset: VRRP is never fragmented
        raise DecodeError("fragmented IPv4 packet", offset=_ETH_HEADER + 6)
    return IPv4Packet(
        src=str(ipaddress.IPv4Address(ip[12:16])),
        dst=str(ipaddress.IPv4Address(ip[16:20])),
        ttl=ip[8],
        protocol=ip[9],
        payload=ip[ihl:total],
    )


def check_ip_fields(*, ttl: int, protocol: int = IPPROTO_VRRP, check_ttl: bool = True) -> None:
    """The IP-level receive checks of RFC 5798 §7.1 / RFC 3768 §7.1.

    :param ttl: IPv4 TTL or IPv6 hop limit of the received packet.
    :param protocol: IP protocol / next header.
    :param check_ttl: ``False`` for unicast peers, whose adverts may be routed.
    :raises DecodeError: protocol is not 112, or the TTL is not 255.
    """
    if protocol != IPPROTO_VRRP:
        raise DecodeError(f"IP protocol {protocol} is not VRRP ({IPPROTO_VRRP})")
    if check_ttl and ttl != VRRP_TTL:
        raise DecodeError(f"TTL {ttl} is not {VRRP_TTL}: the advert crossed a router")
