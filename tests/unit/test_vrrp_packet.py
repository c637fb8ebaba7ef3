"""VRRP advertisement codec against frames captured from keepalived 2.2.7 (tests/vectors)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vectors import VECTORS as _ALL

from clusterbus.errors import DecodeError, LocalProtocolError
from clusterbus.vrrp.packet import (
    MULTICAST_V4,
    MULTICAST_V6,
    Advertisement,
    ChecksumError,
    check_ip_fields,
    internet_checksum,
    split_ipv4_frame,
)

VECTORS = _ALL / "vrrp"

A, B, VIP = "10.77.0.1", "10.77.0.2", "10.77.0.100"

# From tests/vectors/README.md: file -> (version, sender, priority, interval (s), checksum)
EXPECTED = {
    "v3_advert.hex": (3, A, 150, 1.0, 0x42BF),
    "v2_advert.hex": (2, A, 150, 1.0, 0x3DFF),
    "v3_advert_5cs.hex": (3, A, 150, 0.05, 0x431E),
    "v3_advert_backup_prio100.hex": (3, B, 100, 1.0, 0x74BE),
    "v3_advert_prio0.hex": (3, A, 0, 1.0, 0xD8BF),
    "v2_advert_prio0.hex": (2, A, 0, 1.0, 0xD3FF),
}


def load(name: str) -> bytes:
    return bytes.fromhex((VECTORS / name).read_text().strip())


def vector(name: str) -> tuple[bytes, str, str]:
    ip = split_ipv4_frame(load(name))
    return ip.payload, ip.src, ip.dst


def test_all_vectors_are_listed() -> None:
    on_disk = {p.name for p in VECTORS.glob("v*_advert*.hex")}
    assert on_disk == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_vector_decodes_to_readme_values(name: str) -> None:
    version, sender, prio, interval, checksum = EXPECTED[name]
    ip = split_ipv4_frame(load(name))
    assert (ip.src, ip.dst, ip.ttl, ip.protocol) == (sender, MULTICAST_V4, 255, 112)
    check_ip_fields(ttl=ip.ttl, protocol=ip.protocol)
    adv = Advertisement.from_bytes(ip.payload, src=ip.src, dst=ip.dst)
    assert adv.version == version
    assert adv.vrid == 77
    assert adv.priority == prio
    assert adv.interval == interval
    assert adv.checksum == checksum
    assert adv.addresses == (VIP,)
    assert adv.family == "inet"
    if version == 3:
        assert adv.max_adver_int_cs == round(interval * 100) and adv.advert_int_s == 0
        assert len(ip.payload) == 12
    else:
        assert adv.advert_int_s == interval and adv.max_adver_int_cs == 0
        assert (adv.auth_type, adv.auth_data) == (0, b"")
        assert len(ip.payload) == 20


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_vector_reencodes_byte_identical(name: str) -> None:
    data, src, dst = vector(name)
    adv = Advertisement.from_bytes(data, src=src, dst=dst)
    assert adv.to_bytes(src=src, dst=dst) == data


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_locally_built_advert_matches_vector(name: str) -> None:
    version, sender, prio, interval, _ = EXPECTED[name]
    data, src, dst = vector(name)
    if version == 3:
        adv = Advertisement(version=3, vrid=77, priority=prio, addresses=(VIP,),
                            max_adver_int_cs=round(interval * 100))
    else:
        adv = Advertisement(version=2, vrid=77, priority=prio, addresses=(VIP,),
                            advert_int_s=int(interval))
    assert adv.to_bytes(src=src, dst=dst) == data


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_truncated_prefix_raises(name: str) -> None:
    data, src, dst = vector(name)
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            Advertisement.from_bytes(data[:n], src=src, dst=dst)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_truncated_frame_raises(name: str) -> None:
    frame = load(name)
    for n in range(14 + 28):  # everything up to a complete header + 8 VRRP bytes
        with pytest.raises(DecodeError):
            ip = split_ipv4_frame(frame[:n])
            Advertisement.from_bytes(ip.payload, src=ip.src, dst=ip.dst)


def test_trailing_byte_raises() -> None:
    data, src, dst = vector("v3_advert.hex")
    with pytest.raises(DecodeError, match="must be 12 bytes"):
        Advertisement.from_bytes(data + b"\x00", src=src, dst=dst)


def garble(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1 :]


def fix_checksum(data: bytes, src: str, dst: str, version: int) -> bytes:
    """Recompute the checksum so only the field under test is wrong."""
    zeroed = data[:6] + b"\x00\x00" + data[8:]
    if version == 3:
        pseudo = (ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
                  + struct.pack("!BBH", 0, 112, len(data)))
    else:
        pseudo = b""
    return zeroed[:6] + struct.pack("!H", internet_checksum(pseudo + zeroed)) + zeroed[8:]


@pytest.mark.parametrize(
    ("name", "offset", "value", "match"),
    [
        ("v3_advert.hex", 0, 0x41, "version 4"),
        ("v3_advert.hex", 0, 0x11, "version 1"),
        ("v3_advert.hex", 0, 0x32, "type 2"),
        ("v3_advert.hex", 1, 0, "VRID 0"),
        ("v3_advert.hex", 3, 0, "address count is 0"),
        ("v3_advert.hex", 3, 2, "must be 16 bytes"),
        ("v2_advert.hex", 4, 3, "auth type 3"),
        ("v2_advert.hex", 5, 0, "Adver Int is 0"),
        ("v2_advert.hex", 3, 2, "must be 24 bytes"),
        ("v2_advert.hex", 1, 0, "VRID 0"),
    ],
)
def test_garbled_field_raises(name: str, offset: int, value: int, match: str) -> None:
    version = EXPECTED[name][0]
    data, src, dst = vector(name)
    bad = fix_checksum(garble(data, offset, value), src, dst, version)
    with pytest.raises(DecodeError, match=match) as info:
        Advertisement.from_bytes(bad, src=src, dst=dst)
    assert info.value.offset is not None


def test_zero_v3_interval_raises() -> None:
    data, src, dst = vector("v3_advert.hex")
    bad = fix_checksum(data[:4] + b"\x00\x00" + data[6:], src, dst, 3)
    with pytest.raises(DecodeError, match="Max Adver Int is 0"):
        Advertisement.from_bytes(bad, src=src, dst=dst)


def test_v3_reserved_bits_are_ignored() -> None:
    # RFC 5798 §5.2.6: set to zero on transmission, ignored on reception.
    data, src, dst = vector("v3_advert.hex")
    odd = fix_checksum(data[:4] + b"\xf0" + data[5:], src, dst, 3)
    adv = Advertisement.from_bytes(odd, src=src, dst=dst)
    assert adv.max_adver_int_cs == 100
    assert adv.to_bytes(src=src, dst=dst) == data


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_single_bit_flip_is_caught(name: str) -> None:
    data, src, dst = vector(name)
    for i in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(DecodeError):
            Advertisement.from_bytes(bytes(flipped), src=src, dst=dst)


def test_checksum_error_is_a_decode_error_and_names_the_right_value() -> None:
    data, src, dst = vector("v3_advert.hex")
    bad = data[:6] + b"\x00\x00" + data[8:]
    with pytest.raises(ChecksumError, match="expected 0x42bf") as info:
        Advertisement.from_bytes(bad, src=src, dst=dst)
    assert isinstance(info.value, DecodeError) and info.value.offset == 6


def test_v3_checksum_covers_pseudo_header() -> None:
    data, src, _ = vector("v3_advert.hex")
    # Same bytes sent unicast to a peer: the pseudo-header differs, so the checksum fails.
    with pytest.raises(ChecksumError):
        Advertisement.from_bytes(data, src=src, dst=B)
    with pytest.raises(ChecksumError):
        Advertisement.from_bytes(data, src=B, dst=MULTICAST_V4)


def test_v2_checksum_does_not_cover_pseudo_header() -> None:
    data, src, _ = vector("v2_advert.hex")
    assert Advertisement.from_bytes(data, src=B, dst=A).priority == 150


def test_v2_over_ipv6_is_rejected() -> None:
    data, _, _ = vector("v2_advert.hex")
    with pytest.raises(DecodeError, match="IPv4 only"):
        Advertisement.from_bytes(data, src="fe80::1", dst=MULTICAST_V6)


def test_bad_src_is_a_local_error() -> None:
    data, _, dst = vector("v3_advert.hex")
    with pytest.raises(LocalProtocolError):
        Advertisement.from_bytes(data, src="not-an-ip", dst=dst)
    with pytest.raises(LocalProtocolError):
        Advertisement.from_bytes(data, src="fe80::1", dst=dst)


def test_ipv6_round_trip_with_known_checksum() -> None:
    adv = Advertisement(version=3, vrid=1, priority=100, family="inet6",
                        addresses=("fe80::1", "fd00:77::100"), max_adver_int_cs=100)
    data = adv.to_bytes(src="fe80::2", dst=MULTICAST_V6)
    assert len(data) == 8 + 32
    # The IPv6 pseudo-header (RFC 8200 §8.1) computed independently here.
    pseudo = (ipaddress.ip_address("fe80::2").packed + ipaddress.ip_address(MULTICAST_V6).packed
              + struct.pack("!I3xB", len(data), 112))
    assert internet_checksum(pseudo + data) == 0
    back = Advertisement.from_bytes(data, src="fe80::2", dst=MULTICAST_V6)
    assert back.addresses == ("fe80::1", "fd00:77::100") and back.family == "inet6"


def test_check_ip_fields() -> None:
    check_ip_fields(ttl=255, protocol=112)
    check_ip_fields(ttl=64, protocol=112, check_ttl=False)
    with pytest.raises(DecodeError, match="TTL 254"):
        check_ip_fields(ttl=254, protocol=112)
    with pytest.raises(DecodeError, match="protocol 17"):
        check_ip_fields(ttl=255, protocol=17)


def test_split_frame_rejects_non_ipv4_and_bad_header() -> None:
    garp = load("garp_after_takeover.hex")
    with pytest.raises(DecodeError, match="ethertype 0x0806"):
        split_ipv4_frame(garp.ljust(60, b"\x00"))
    frame = load("v3_advert.hex")
    with pytest.raises(ChecksumError):
        split_ipv4_frame(garble(frame, 14 + 8, 64))  # TTL changed, header checksum stale


def test_bad_local_construction_raises_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Advertisement(version=3, vrid=0, priority=1, addresses=(VIP,), max_adver_int_cs=100)
    with pytest.raises(LocalProtocolError):
        Advertisement(version=2, vrid=1, priority=1, addresses=("fe80::1",), family="inet6",
                      advert_int_s=1)
    with pytest.raises(LocalProtocolError):
        Advertisement(version=3, vrid=1, priority=1, addresses=(VIP,), max_adver_int_cs=4096)


# -- property tests ---------------------------------------------------------------------

@settings(max_examples=500)
@given(data=st.binary(max_size=100), v6=st.booleans())
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes, v6: bool) -> None:
    src, dst = ("fe80::1", MULTICAST_V6) if v6 else (A, MULTICAST_V4)
    try:
        adv = Advertisement.from_bytes(data, src=src, dst=dst)
    except DecodeError:
        return
    assert isinstance(adv, Advertisement)


@settings(max_examples=300)
@given(data=st.binary(min_size=8, max_size=60), v6=st.booleans())
def test_arbitrary_bodies_with_valid_header_decode_or_raise(data: bytes, v6: bool) -> None:
    # Steer hypothesis past the version/type check so the later checks get exercised.
    data = bytes([0x31 if data[0] & 1 else 0x21]) + data[1:]
    src, dst = ("fe80::1", MULTICAST_V6) if v6 else (A, MULTICAST_V4)
    try:
        Advertisement.from_bytes(data, src=src, dst=dst)
    except DecodeError:
        pass


@st.composite
def adverts(draw: st.DrawFn) -> tuple[Advertisement, str, str]:
    version = draw(st.sampled_from([2, 3]))
    family = "inet" if version == 2 else draw(st.sampled_from(["inet", "inet6"]))
    if family == "inet":
        addr = st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i)))
    else:
        addr = st.integers(0, 2**128 - 1).map(lambda i: str(ipaddress.IPv6Address(i)))
    src = draw(addr)
    dst = draw(st.one_of(st.just(MULTICAST_V6 if family == "inet6" else MULTICAST_V4), addr))
    common = dict(vrid=draw(st.integers(1, 255)), priority=draw(st.integers(0, 255)),
                  addresses=tuple(draw(st.lists(addr, min_size=1, max_size=20))),
                  family=family)
    if version == 3:
        adv = Advertisement(version=3, max_adver_int_cs=draw(st.integers(1, 4095)), **common)
    else:
        adv = Advertisement(version=2, advert_int_s=draw(st.integers(1, 255)),
                            auth_type=draw(st.sampled_from([0, 1, 2])),
                            auth_data=draw(st.binary(max_size=8)).rstrip(b"\x00"), **common)
    return adv, src, dst


@settings(max_examples=300)
@given(case=adverts())
def test_round_trip(case: tuple[Advertisement, str, str]) -> None:
    adv, src, dst = case
    data = adv.to_bytes(src=src, dst=dst)
    back = Advertisement.from_bytes(data, src=src, dst=dst)
    assert back.checksum == int.from_bytes(data[6:8], "big")
    assert back == Advertisement(**{**{f: getattr(adv, f) for f in adv.__slots__},
                                    "checksum": back.checksum})
    assert back.to_bytes(src=src, dst=dst) == data
