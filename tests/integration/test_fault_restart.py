"""Fault test (issue 12): kill -9 the daemon at random (seeded) moments under a steady
event load, ``KILLS`` times, with a Python :class:`Subscriber` and a running
``clusterbus events --json --follow`` attached the whole time.

What must hold (issue 12 "Fault and load tests", issue 8 "kill -9 and restart"):

* every subscriber ends either continuous or with an explicit snapshot: per daemon run
  (epoch), the events it delivers follow the last snapshot (or the first event) with no
  hole, and nothing is delivered twice;
* every restarted daemon comes back with the persisted view marked unconfirmed
  (``confirmed: false`` in its SNAPSHOT), and the running ``events --json`` prints a
  ``{"snapshot": ...}`` record for the new run, whose nodes carry the same mark;
* no event of the new run is lost: after the last restart, both subscribers reach the
  daemon's newest seq continuously from their snapshot.

Load: a PUSH socket here sends alternating ``node.up``/``node.down`` reports (each one a
real change) to the daemon's ipc ingest socket; the nodes ``STATIC`` are reported once
before the first kill and never again, so every run restores them unconfirmed.
Restarts are fast (the daemon is ready in well under a second on an idle machine), so the
whole test takes about a minute; bench/soak.py has the load side at full size.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import select
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from busproc import BusProcess
from cbdaemon import CLUSTERBUS, Daemon
from netns import Topology

from clusterbus.bus import codec
from clusterbus.bus.client import RequestTimeout, Snapshot, Subscriber, fetch_snapshot

#: kill -9 / restart cycles. The issue asks for 50: ``CLUSTERBUS_KILLS=50`` runs that
#: (about 3.5 minutes on a loaded 2-core machine); the suite default keeps it near a minute.
KILLS = int(os.environ.get("CLUSTERBUS_KILLS", "15"))
SEED = 20261202  #: the kill moments are random, but reproducible
RUN_MIN, RUN_MAX = 0.05, 0.6  #: seconds a daemon runs (after ready) before kill -9
RATE = 400  #: reports per second sent by the load
LOAD_NODES = 40  #: nodes 1..LOAD_NODES flap up and down
STATIC = (900, 901, 902)  #: reported once, then only ever restored from the state file
LIMIT = 30.0  #: seconds: bound on every wait (never a speed assertion)


@pytest.fixture
def ns() -> Iterator[str]:
    with Topology() as topo:
        yield topo.netns("faults")


def wait_for(pred: Any, what: Any, timeout: float = LIMIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.05)


class Load(threading.Thread):
    """Steady membership reports into the ingest socket (non-blocking: while the daemon
    is down, ZeroMQ queues up to its HWM, then this drops and counts)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.stop = threading.Event()
        self.sent = 0
        self.refused = 0

    def run(self) -> None:
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 1000)
        push.connect(self.endpoint)
        up = [False] * (LOAD_NODES + 1)
        i = 0
        try:
            while not self.stop.is_set():
                node = 1 + i % LOAD_NODES
                i += 1
                up[node] = not up[node]
                frames = codec.encode_ingest("node.up" if up[node] else "node.down", node,
                                             [f"10.1.{node // 256}.{node % 256 or 1}"])
                try:
                    push.send_multipart(frames, zmq.NOBLOCK)
                    self.sent += 1
                except zmq.Again:
                    self.refused += 1
                time.sleep(1 / RATE)
        finally:
            push.close(0)
            ctx.term()


class Follower(threading.Thread):
    """A Python :class:`Subscriber` in its own thread and loop, logging what it yields as
    ``(epoch, "event"|"snapshot", seq, detail)``."""

    def __init__(self, d: Daemon) -> None:
        super().__init__(daemon=True)
        self.publish, self.snapshot = d.publish, d.snapshot
        self.stop = threading.Event()
        self.log: list[tuple[int | None, str, int, Any]] = []
        self.counters: dict[str, int] = {}
        self.seq: int | None = None
        self.epoch: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._follow())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _follow(self) -> None:
        async with Subscriber(self.publish, self.snapshot, request_timeout=0.5,
                              request_retries=1) as sub:
            self.counters = sub.counters
            epoch: int | None = None
            while not self.stop.is_set():
                try:
                    item = await sub.next(timeout=0.2)
                except (TimeoutError, RequestTimeout):
                    continue
                if isinstance(item, Snapshot):
                    epoch = item.epoch
                    self.log.append((epoch, "snapshot", item.seq, item))
                else:
                    if epoch is None:
                        epoch = sub.epoch
                    self.log.append((epoch, "event", item.seq, item.topic))
                self.seq, self.epoch = sub.seq, sub.epoch


class CliFollower(threading.Thread):
    """``clusterbus events --json --follow``: every line it prints, parsed."""

    def __init__(self, d: Daemon) -> None:
        super().__init__(daemon=True)
        self.proc = subprocess.Popen([CLUSTERBUS, "events", "-c", str(d.config), "--json",
                                      "--follow"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.records: list[dict[str, Any]] = []

    def run(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            self.records.append(json.loads(text))

    def close(self) -> str:
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.join(10)
        return err or ""


def check_stream(items: list[tuple[Any, str, int]], who: str) -> dict[Any, int]:
    """Per epoch: a snapshot or the first event starts a segment, then every event is
    exactly the next seq. Returns the last seq accounted for, per epoch."""
    last: dict[Any, int] = {}
    seen: set[tuple[Any, int]] = set()
    for i, (epoch, kind, seq) in enumerate(items):
        trail = [(e % 1000 if e else e, k[0], s) for e, k, s in items[max(0, i - 8):i + 3]]
        if kind == "snapshot":
            assert seq >= last.get(epoch, 0), \
                f"{who}: snapshot at {seq} after seq {last[epoch]} of epoch {epoch}: {trail}"
            last[epoch] = seq
            continue
        assert (epoch, seq) not in seen, f"{who}: seq {seq} of epoch {epoch} delivered twice"
        seen.add((epoch, seq))
        if epoch in last:
            assert seq == last[epoch] + 1, \
                f"{who}: epoch {epoch}: seq {seq} after {last[epoch]} (a hole or a repeat)"
        last[epoch] = seq
    return last


@pytest.mark.root
def test_kill_9_under_load_repeatedly(tmp_path: Path, ns: str) -> None:
    rng = random.Random(SEED)
    d = Daemon(tmp_path, ns).start()
    load = Load(d.ingest)
    sub = Follower(d)
    cli: CliFollower | None = None
    try:
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(d.ingest)
        for node in STATIC:
            push.send_multipart(codec.encode_ingest("node.up", node, [f"10.2.0.{node - 890}"]))
        push.close(linger=5000)

        def static_saved() -> bool:
            try:
                doc = json.loads((tmp_path / "state" / "membership.json").read_text())
            except (FileNotFoundError, ValueError):
                return False
            return set(STATIC) <= {row[0] for row in doc["nodes"]}

        wait_for(static_saved, "the static nodes in the state file")
        sub.start()
        cli = CliFollower(d)
        cli.start()
        load.start()
        wait_for(lambda: sub.seq is not None and any(r.get("topic") for r in cli.records),
                 "both subscribers to receive events")

        epochs = []
        for _ in range(KILLS):
            time.sleep(rng.uniform(RUN_MIN, RUN_MAX))
            assert d.proc is not None and d.proc.poll() is None, d.log.read_text()[-3000:]
            d.proc.kill()  # SIGKILL: no shutdown path runs
            d.proc.wait(10)
            d.start()
            snap = asyncio.run(fetch_snapshot(d.snapshot, timeout=2.0))
            epochs.append(snap.epoch)
            static = {n["node"]: n for n in snap.nodes if n["node"] in STATIC}
            assert set(static) == set(STATIC), "the persisted view did not come back"
            assert not any(n["confirmed"] for n in static.values()), snap.nodes

        time.sleep(0.5)
        load.stop.set()
        load.join(10)
        assert load.sent > KILLS * 10, "the load did not run"
        assert len(set(epochs)) == KILLS, "a restart kept its epoch"
        # the last run: both subscribers reach its newest seq
        final = epochs[-1]
        head = wait_for(lambda: d.status()["seq"], "the final run to publish")
        wait_for(lambda: sub.epoch == final and sub.seq == d.status()["seq"],
                 f"the Python subscriber to reach seq {head} of the last run "
                 f"(at {sub.epoch}/{sub.seq}, last run {final}, error {sub.error!r}, "
                 f"{sub.counters}, last items {[x[:3] for x in sub.log[-5:]]})")

        def cli_done() -> bool:
            events = [r for r in cli.records if "topic" in r]
            return bool(events) and events[-1]["seq"] == d.status()["seq"] \
                and any("snapshot" in r and r["snapshot"]["epoch"] == str(final)
                        or "snapshot" in r and r["snapshot"]["epoch"] == final
                        for r in cli.records)

        wait_for(cli_done, lambda: (
            f"clusterbus events to reach seq {d.status()['seq']} of the last run {final} "
            f"(exit status {cli.proc.poll()}, last records "
            f"{[r.get('seq') if 'topic' in r else ('snapshot', r['snapshot']['epoch'], r['snapshot']['seq']) for r in cli.records[-5:]]})"))
    finally:
        load.stop.set()
        sub.stop.set()
        sub.join(10)
        err = cli.close() if cli is not None else ""
        print(f"clusterbus events stderr:\n{err[-3000:]}")
        d.stop()
    assert sub.error is None, repr(sub.error)

    # The Python subscriber: continuous or with a snapshot, per run, nothing twice.
    last = check_stream([(e, k, s) for e, k, s, _ in sub.log], "Subscriber")
    assert last[final] == head
    snaps = [x for x in sub.log if x[1] == "snapshot"]
    assert sub.counters.get("restarts", 0) >= 1 and snaps, sub.counters
    for _epoch, _, _, snap in snaps:
        static = [n for n in snap.nodes if n["node"] in STATIC]
        if snap.reason == "epoch_changed":
            assert static and not any(n["confirmed"] for n in static), static
    resynced = [e for e, _, _, s in snaps if s.reason == "epoch_changed"]
    assert final in resynced
    # one snapshot per restart at most: a run skipped while a request was pending (killed
    # before it answered) left frames queued here, which are stale, not another restart
    assert len(resynced) == len(set(resynced)) <= KILLS, (resynced, sub.counters)
    assert sub.counters["restarts"] <= KILLS, sub.counters

    # clusterbus events --json: a snapshot record on each restart it noticed, then the
    # new run's events continue from its seq; nothing twice.
    def epoch_of(value: Any) -> int:
        return int(value)

    items: list[tuple[Any, str, int]] = []
    epoch: Any = None
    for r in cli.records:
        if "snapshot" in r:
            epoch = epoch_of(r["snapshot"]["epoch"])
            items.append((epoch, "snapshot", r["snapshot"]["seq"]))
            static = [n for n in r["snapshot"]["nodes"] if n["node"] in STATIC]
            assert static and not any(n["confirmed"] for n in static), static
        else:
            items.append((epoch, "event", r["seq"]))
    cli_last = check_stream(items, "clusterbus events")
    assert cli_last[final] == head, err
    cli_snaps = [r["snapshot"] for r in cli.records if "snapshot" in r]
    assert len(cli_snaps) >= 1 and all(s["reason"] for s in cli_snaps)
    cli_resynced = [s["epoch"] for s in cli_snaps if s["reason"] == "epoch_changed"]
    assert len(cli_resynced) == len(set(cli_resynced)) <= KILLS, cli_resynced
    print(f"kills={KILLS} sent={load.sent} refused={load.refused} "
          f"sub_snapshots={len(snaps)} cli_snapshots={len(cli_snaps)} "
          f"sub_counters={dict(sub.counters)}")


def _line(stream: Any) -> str:
    """One line from a child's pipe, waiting at most LIMIT seconds."""
    ready, _, _ = select.select([stream], [], [], LIMIT)
    assert ready, "nothing printed"
    return str(stream.readline())


def test_events_follow_keeps_asking_while_the_daemon_does_not_answer(tmp_path: Path) -> None:
    """A repair request nobody answers (no daemon yet; under the kill -9 load, every
    attempt reached a run that was killed before it replied) made ``clusterbus events
    --follow`` exit 1 ("no (more) events within None s"): it then printed nothing more
    for the runs after. With --follow it keeps asking; without, it exits 1 saying which
    request went unanswered."""
    endpoints = {k: f"ipc://{tmp_path}/{k}" for k in ("publish", "ingest", "snapshot")}
    config = tmp_path / "clusterbus.toml"
    config.write_text("[bus]\n" + "".join(f'{k} = "{v}"\n' for k, v in endpoints.items()))
    once = subprocess.run([CLUSTERBUS, "events", "-c", str(config), "--json", "--snapshot"],
                          capture_output=True, text=True, timeout=120)
    assert once.returncode == 1 and "no reply to SNAPSHOT" in once.stderr, once.stderr
    proc = subprocess.Popen([CLUSTERBUS, "events", "-c", str(config), "--json", "--follow",
                             "--snapshot"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        warning = _line(proc.stderr)
        assert "no reply to SNAPSHOT" in warning and "still trying" in warning, warning
        assert proc.poll() is None, proc.stderr.read()
        with BusProcess(heartbeat_interval=0.05, **endpoints):
            record = json.loads(_line(proc.stdout))
        assert record["snapshot"]["reason"] == "initial" and int(record["snapshot"]["epoch"])
    finally:
        proc.kill()
        proc.wait(10)
