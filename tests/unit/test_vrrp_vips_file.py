"""The speaker's record of the VIPs a run is configured with (``[daemon] state_dir``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterbus.vrrp.speaker import VIPS_FILE, _read_vips, _write_vips


def test_round_trip_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / VIPS_FILE
    assert _read_vips(path) == []
    vips = [("eth0", "inet", "10.0.0.100/24"), ("eth1", "inet6", "fd00::1/64")]
    _write_vips(path, vips)
    assert _read_vips(path) == vips
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    _write_vips(path, [])
    assert _read_vips(path) == []


@pytest.mark.parametrize("text", ["{", "{}", '[["eth0", "inet"]]', '[["eth0", "ipx", "1.2.3.4"]]',
                                  '[["eth0", "inet", "not an address"]]', '[[1, "inet", "x"]]'])
def test_a_bad_file_is_a_value_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / VIPS_FILE
    path.write_text(text)
    with pytest.raises(ValueError):
        _read_vips(path)
