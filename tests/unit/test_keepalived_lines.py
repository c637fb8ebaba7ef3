"""Parsing keepalived notify_fifo lines, and what each kind of line does to the engine."""

from __future__ import annotations

import pytest

from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.errors import DecodeError
from clusterbus.events import Event, VrrpTransition
from clusterbus.pluginhost import PluginHost
from clusterbus.sources.keepalived import KeepalivedSource, parse_line


def test_parse_instance_and_group() -> None:
    line = parse_line(b'INSTANCE "VI_1" MASTER 150')
    assert line is not None
    assert (line.kind, line.name, line.state, line.priority) == ("INSTANCE", "VI_1", "MASTER", 150)
    line = parse_line(b'GROUP "VG_1" BACKUP 0\r')
    assert line is not None and (line.kind, line.name, line.state) == ("GROUP", "VG_1", "BACKUP")
    assert parse_line(b"RS 10.0.0.1:80 UP") is None  # checker lines are not ours


@pytest.mark.parametrize("raw,reason", [
    (b"garbage", "malformed"),
    (b'INSTANCE "VI_1" MASTER', "malformed"),
    (b'INSTANCE VI_1 MASTER 150', "malformed"),
    (b'INSTANCE "VI 1" MASTER 150', "malformed"),
    (b'INSTANCE "VI_1" SLEEPING 150', "unknown_state"),
    (b'INSTANCE "VI_1" MASTER 256', "bad_priority"),
    (b'INSTANCE "VI_\xff" MASTER 150', "not_ascii"),
])
def test_bad_lines(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_line(raw)
    assert info.value.reason == reason


def test_lines_to_events(tmp_path) -> None:
    engine = Engine(origin=1, plugins=PluginHost())
    seen: list[Event] = []
    engine.sinks.append(seen.append)
    cfg = parse_config({"keepalived": {"notify_fifo": str(tmp_path / "fifo")}}, file="t.toml")
    src = KeepalivedSource(engine, cfg)
    # Split across reads on purpose: partial lines wait for their newline.
    src._feed(b'INSTANCE "VI_1" BACKUP 100\nINSTANCE "VI_1" MAS')
    src._feed(b'TER 100\nINSTANCE "VI_1" MASTER_PRIORITY 120\nINSTANCE "VI_1" MASTER 120\n')
    src._feed(b'GROUP "VG_1" FAULT 0\nnonsense\n' + b"x" * 5000 + b"\nINSTANCE \"VI_1\" STOP 0\n")
    trans = [e for e in seen if isinstance(e, VrrpTransition)]
    assert [(e.instance, e.old, e.new, e.priority, e.group) for e in trans] == [
        ("VI_1", "UNKNOWN", "BACKUP", 100, False),
        ("VI_1", "BACKUP", "MASTER", 100, False),
        ("VG_1", "UNKNOWN", "FAULT", 0, True),
        ("VI_1", "MASTER", "STOP", 0, False),
    ]
    assert all(e.source == "keepalived" and e.reason == "keepalived" for e in trans)
    c = src.counters
    assert c["master_priority"] == 1 and c["unchanged"] == 1
    assert c["dropped.malformed"] == 1 and c["dropped.too_long"] == 1 and c["events"] == 4
    st = src.status()
    assert {(i["name"], i["state"]) for i in st["instances"]} == {("VI_1", "STOP"), ("VG_1", "FAULT")}
