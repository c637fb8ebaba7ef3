"""``clusterbus events --json`` across a restart of the bus it follows: the resync is
printed as a snapshot record ``{"snapshot": {...}}`` holding the new run's nodes, and the
events after it continue from the snapshot's seq. Real BusService child processes on
ipc:// endpoints (the same for both runs), the real CLI."""

from __future__ import annotations

import json
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import zmq
from busproc import BusProcess
from cbdaemon import CLUSTERBUS

from clusterbus.bus import codec

LIMIT = 30.0  # seconds: bound on every wait, never a speed assertion


def report(endpoint: str, node: int) -> None:
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        push.connect(endpoint)
        push.send_multipart(codec.encode_ingest("node.up", node, [f"10.9.0.{node}"]))
        push.close(linger=5000)
    finally:
        ctx.term()


def line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], LIMIT)
    assert ready, "clusterbus events printed nothing"
    text = proc.stdout.readline()
    assert text, f"clusterbus events exited {proc.poll()}"
    return json.loads(text)  # type: ignore[no-any-return]


def test_events_json_prints_the_snapshot_it_resyncs_from(tmp_path: Path) -> None:
    endpoints = {k: f"ipc://{tmp_path}/{k}" for k in ("publish", "ingest", "snapshot")}
    config = tmp_path / "clusterbus.toml"
    config.write_text("[bus]\n" + "".join(f'{k} = "{v}"\n' for k, v in endpoints.items()))
    with BusProcess(heartbeat_interval=0.05, **endpoints):
        proc = subprocess.Popen([CLUSTERBUS, "events", "-c", str(config), "--json", "--follow",
                                 "--snapshot"], stdout=subprocess.PIPE, text=True)
        try:
            first = line(proc)
            assert list(first) == ["snapshot"] and first["snapshot"]["reason"] == "initial"
            deadline = time.monotonic() + LIMIT
            node = 0
            while True:  # the SUB connects at its own pace: report until one arrives
                node += 1
                report(endpoints["ingest"], node)
                assert proc.stdout is not None
                if select.select([proc.stdout], [], [], 0.5)[0]:
                    break
                assert time.monotonic() < deadline
            assert line(proc)["topic"] == "node.up"
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    try:
        with BusProcess(heartbeat_interval=0.05, **endpoints):  # restarted: new epoch
            report(endpoints["ingest"], 77)
            for _ in range(100):
                record = line(proc)
                if "snapshot" in record:
                    break
            else:
                raise AssertionError("no snapshot record")
            snap = record["snapshot"]
            assert snap["reason"] == "epoch_changed" and snap["epoch"] != first["snapshot"]["epoch"]
            # the epoch (a u64) is a decimal string in JSON (docs/wire-protocol.md)
            assert isinstance(snap["epoch"], str) and int(snap["epoch"]) > 0
            nodes = [n["node"] for n in snap["nodes"]]
            assert set(nodes) <= {77} and snap["seq"] == len(nodes)
            report(endpoints["ingest"], 78)
            nxt = line(proc)
            while nxt.get("node") == 77:  # 77 may come after a snapshot taken before it
                nxt = line(proc)
            assert nxt["topic"] == "node.up" and nxt["node"] == 78
            assert nxt["seq"] == 2 and nxt["origin"] == 1
    finally:
        proc.terminate()
        proc.wait(10)
