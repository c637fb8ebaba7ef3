"""No silent loss across restarts: a real daemon learns nodes over netlink, is killed with
SIGKILL, and comes back with its view restored from ``[daemon] state_dir``, every node
marked unconfirmed in SNAPSHOT replies until a source reports it again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cbdaemon import Daemon
from netns import Topology

from clusterbus.bus.client import fetch_snapshot

pytestmark = pytest.mark.root


@pytest.fixture
def ns() -> Iterator[str]:
    with Topology() as topo:
        yield topo.netns("restart")


def nodes(d: Daemon) -> dict[int, dict[str, Any]]:
    snap = asyncio.run(fetch_snapshot(d.snapshot, timeout=2.0))
    return {n["node"]: dict(n) for n in snap.nodes}


def wait_for(pred: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def saved(state: Path) -> dict[int, str]:
    try:
        doc = json.loads((state / "membership.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {row[0]: row[1] for row in doc["nodes"]}


def test_kill_9_and_restart_restores_the_view_unconfirmed(tmp_path: Path, ns: str) -> None:
    d = Daemon(tmp_path, ns).start()
    try:
        d.cli("emit", "node-up", "4", "--addr", "10.0.0.4", ns=True)
        d.cli("emit", "node-up", "5", ns=True)
        d.cli("emit", "node-up", "6", ns=True)
        d.cli("emit", "node-down", "6", ns=True)
        want = {4: "up", 5: "up", 6: "down"}
        wait_for(lambda: {n: i["state"] for n, i in nodes(d).items()} == want, "the view")
        wait_for(lambda: saved(tmp_path / "state") == want, "the state file")
        view_before = max(i["view"] for i in nodes(d).values())
        assert all(i["confirmed"] for i in nodes(d).values())
        assert d.proc is not None
        d.proc.kill()  # SIGKILL: no shutdown hook runs
        d.proc.wait(10)
    finally:
        d.stop()

    d = Daemon(tmp_path, ns).start()
    try:
        got = nodes(d)
        assert {n: i["state"] for n, i in got.items()} == want
        assert not any(i["confirmed"] for i in got.values())
        assert got[4]["addrs"] == ["10.0.0.4"] or got[4]["addrs"] == ("10.0.0.4",)
        assert min(i["view"] for i in got.values()) >= 1
        st = d.status()
        assert st["membership"]["state.restored"] == 3 and st["membership"]["unconfirmed"] == 3
        assert st["view"] >= view_before
        # a source confirms node 4: the same state, but now confirmed (a change)
        d.cli("emit", "node-up", "4", ns=True)
        wait_for(lambda: nodes(d)[4]["confirmed"], "node 4 confirmed")
        after = nodes(d)
        assert not after[5]["confirmed"] and not after[6]["confirmed"]
        assert after[4]["view"] > view_before
    finally:
        d.stop()


def test_a_corrupt_state_file_is_set_aside_and_the_daemon_starts(tmp_path: Path,
                                                                ns: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "membership.json").write_text('{"version": 1, "view": 1, "nodes": [[0, "up"')
    d = Daemon(tmp_path, ns).start()
    try:
        assert nodes(d) == {}
        assert d.status()["membership"]["state.load_failed"] == 1
        assert (state / "membership.json.bad").exists()
    finally:
        d.stop()
