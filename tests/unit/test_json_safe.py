"""JSON output (``status --json``, ``events --json``) survives any JSON reader: the epoch
(a random u64) and any integer beyond +-(2^53-1) are decimal strings."""

from __future__ import annotations

import json

from clusterbus.statusview import JSON_SAFE_INT, json_safe


def test_epoch_and_big_integers_become_decimal_strings() -> None:
    status = {"bus": {"epoch": 2**64 - 1, "counters": {"published": 3}},
              "old": {"epoch": 7}, "big": -(JSON_SAFE_INT + 1), "ok": True, "none": None,
              "nodes": ({"node": 3, "addrs": ("10.0.0.3",), "view": JSON_SAFE_INT},),
              3: 1.5}
    got = json.loads(json.dumps(json_safe(status)))
    assert got["bus"] == {"epoch": "18446744073709551615", "counters": {"published": 3}}
    assert got["old"] == {"epoch": "7"}  # always a string, whatever its size
    assert got["big"] == str(-(JSON_SAFE_INT + 1))
    assert got["ok"] is True and got["none"] is None and got["3"] == 1.5
    assert got["nodes"] == [{"node": 3, "addrs": ["10.0.0.3"], "view": JSON_SAFE_INT}]


def test_unknown_objects_are_their_text() -> None:
    assert json_safe({"path": object}) == {"path": str(object)}
