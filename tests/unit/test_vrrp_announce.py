"""Gratuitous ARP and unsolicited NA frames built by the speaker."""

from __future__ import annotations

from vectors import VECTORS

from clusterbus.vrrp.announce import garp_frame, unsolicited_na


def _vector(name: str) -> bytes:
    return bytes.fromhex((VECTORS / "vrrp" / name).read_text().strip())


def test_garp_matches_keepalived_capture() -> None:
    frame = _vector("garp_after_takeover.hex")
    mac = frame[6:12]
    assert garp_frame(mac, "10.77.0.100") == frame


def test_unsolicited_na_layout() -> None:
    mac = bytes.fromhex("020000000001")
    na = unsolicited_na(mac, "fd00:77::100")
    assert na[0] == 136 and na[1] == 0  # RFC 4861 §4.4 type, code
    assert na[4] & 0xE0 == 0x20  # Override only: not a router, not solicited
    assert na[8:24] == bytes.fromhex("fd000077000000000000000000000100")
    assert na[24:] == bytes([2, 1]) + mac  # target link-layer address option
