"""The sans-IO gap-repair sequencer (bus/sequencer.py) against a model daemon.

Hypothesis drives a daemon that publishes events (some of topics the receiver does not
know), sends heartbeats and restarts (new epoch, seq from 1, empty ring), through a wire
that drops, duplicates and reorders frames; requests are answered from the daemon's state
at the moment they are answered, sometimes late (a timeout, retried). Whatever happens,
the sequencer's output is every event exactly once and in seq order, or an explicit
snapshot where continuity was re-established, and it ends where the daemon is.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from clusterbus.bus import sequencer
from clusterbus.bus.sequencer import (
    RequestReplay,
    RequestSnapshot,
    Sequencer,
    Unknown,
)


@dataclass(frozen=True)
class Ev:
    """An event as the receiver decoded it."""

    epoch: int  # not on the wire: for checking only
    seq: int
    topic: str


@dataclass(frozen=True)
class Snap:
    epoch: int
    seq: int


@dataclass
class Daemon:
    ring_size: int
    replay_limit: int = 3
    epoch: int = 1
    events: dict[int, dict[int, str]] = field(default_factory=lambda: {1: {}})  # epoch -> seq -> topic

    @property
    def head(self) -> int:
        return len(self.events[self.epoch])

    def publish(self, unknown: bool) -> Ev:
        seq = self.head + 1
        topic = "plugin.other" if unknown else "node.up"
        self.events[self.epoch][seq] = topic
        return Ev(self.epoch, seq, topic)

    def restart(self) -> None:
        self.epoch += 1
        self.events[self.epoch] = {}

    def replay(self, after: int) -> dict[str, Any]:
        first = max(1, self.head - self.ring_size + 1) if self.head else 0
        header = {"epoch": self.epoch, "more": False}
        if after > self.head:
            return {**header, "status": "ahead", "items": []}
        if after < self.head and after + 1 < first:
            return {**header, "status": "too_old", "items": []}
        last = min(self.head, after + self.replay_limit)
        items = [self.item(Ev(self.epoch, s, self.events[self.epoch][s]))
                 for s in range(after + 1, last + 1)]
        return {**header, "status": "ok", "more": last < self.head, "items": items}

    @staticmethod
    def item(ev: Ev) -> Ev | Unknown:
        return Unknown(ev.seq, ev.topic) if ev.topic == "plugin.other" else ev


# wire items: ("ev", Ev, carries_epoch) or ("hb", epoch, seq)

def answer(seqr: Sequencer, daemon: Daemon) -> None:
    for _ in range(10_000):
        request = seqr.request
        if request is None:
            return
        if isinstance(request, RequestSnapshot):
            seqr.resynced(Snap(daemon.epoch, daemon.head))
        else:
            assert isinstance(request, RequestReplay)
            reply = daemon.replay(request.after)
            seqr.replayed(epoch=reply["epoch"], status=reply["status"], more=reply["more"],
                          items=reply["items"])
    raise AssertionError("requests do not converge")


def feed(seqr: Sequencer, item: tuple[Any, ...]) -> None:
    if item[0] == "hb":
        seqr.heartbeat(epoch=item[1], seq=item[2], interval=1.0, now=0.0)
    else:
        _, ev, carries = item
        seqr.events([Daemon.item(ev)], ev.epoch if carries else None)


def check(out: list[Any], daemon: Daemon) -> None:
    """Delivered events follow each other in seq order, skipping only unknown topics,
    and every discontinuity is a snapshot; the end is the daemon's position."""
    epoch, seq = 1, 0
    for item in out:
        if isinstance(item, Snap):
            assert item.epoch >= epoch
            epoch, seq = item.epoch, item.seq
            continue
        assert isinstance(item, Ev) and item.topic == "node.up"
        assert item.epoch == epoch, (item, epoch)
        assert item.seq > seq, f"seq {item.seq} delivered again or out of order after {seq}"
        skipped = [daemon.events[epoch][s] for s in range(seq + 1, item.seq)]
        assert all(t == "plugin.other" for t in skipped), (seq, item.seq, skipped)
        seq = item.seq
    tail = [daemon.events[epoch][s] for s in range(seq + 1, daemon.head + 1)] \
        if epoch == daemon.epoch else ["<other run>"]
    assert epoch == daemon.epoch and all(t == "plugin.other" for t in tail), (epoch, seq)


op = st.one_of(
    st.tuples(st.just("publish"), st.integers(1, 6), st.booleans(), st.booleans()),
    st.tuples(st.just("heartbeat")),
    st.tuples(st.just("restart")),
    st.tuples(st.just("consume"), st.integers(1, 8), st.booleans()),
)
mutation = st.sampled_from(["keep"] * 6 + ["drop", "duplicate", "swap"])


def simulate(ops: list[tuple[Any, ...]], mutations: list[str], *, epochs: bool,
             ring_size: int) -> tuple[Sequencer, list[Any], Daemon]:
    daemon = Daemon(ring_size=ring_size)
    seqr = Sequencer(now=0.0)
    seqr.heartbeat(epoch=daemon.epoch, seq=0, interval=1.0, now=0.0)
    wire: list[tuple[Any, ...]] = []
    out: list[Any] = []
    muts = iter(mutations * (1 + 64 * len(ops) // max(1, len(mutations))))

    def send(item: tuple[Any, ...]) -> None:
        m = next(muts, "keep")
        if m == "drop":
            return
        wire.append(item)
        if m == "duplicate":
            wire.append(item)
        elif m == "swap" and len(wire) >= 2:
            wire[-1], wire[-2] = wire[-2], wire[-1]

    for o in ops:
        if o[0] == "publish":
            for _ in range(o[1]):
                send(("ev", daemon.publish(unknown=o[2]), epochs))
        elif o[0] == "heartbeat":
            send(("hb", daemon.epoch, daemon.head))
        elif o[0] == "restart" and epochs:
            daemon.restart()
        elif o[0] == "consume":
            for _ in range(min(o[1], len(wire))):
                feed(seqr, wire.pop(0))
                if not o[2]:  # answered at once; else late (a timeout), after the next item
                    answer(seqr, daemon)
            answer(seqr, daemon)
        out += seqr.ready
        seqr.ready.clear()
    # the end: what is still on the wire, then a heartbeat that shows where the daemon is
    for item in [*wire, ("hb", daemon.epoch, daemon.head)]:
        feed(seqr, item)
        answer(seqr, daemon)
    out += seqr.ready
    return seqr, out, daemon


@settings(max_examples=300)
@given(st.lists(op, max_size=40), st.lists(mutation, max_size=40), st.integers(2, 30))
def test_epoch_carrying_frames_exactly_once_in_order_or_snapshot(
        ops: list[tuple[Any, ...]], mutations: list[str], ring_size: int) -> None:
    seqr, out, daemon = simulate(ops, mutations, epochs=True, ring_size=ring_size)
    check(out, daemon)
    assert seqr.position == (daemon.epoch, daemon.head)


@settings(max_examples=300)
@given(st.lists(op, max_size=40), st.lists(mutation, max_size=40), st.integers(2, 30))
def test_single_frames_exactly_once_in_order_or_snapshot(
        ops: list[tuple[Any, ...]], mutations: list[str], ring_size: int) -> None:
    # frames without an epoch (single-event frames): no restarts in this model, since
    # only a heartbeat can tell those apart from duplicates
    seqr, out, daemon = simulate(ops, mutations, epochs=False, ring_size=ring_size)
    check(out, daemon)
    assert seqr.position == (daemon.epoch, daemon.head)


@settings(max_examples=200)
@given(st.lists(op, max_size=40), st.integers(40, 60))
def test_without_losses_nothing_is_replayed_or_resynchronised(
        ops: list[tuple[Any, ...]], ring_size: int) -> None:
    ops = [o for o in ops if o[0] != "restart"]
    seqr, out, daemon = simulate(ops, [], epochs=True, ring_size=ring_size)
    check(out, daemon)
    assert not any(isinstance(i, Snap) for i in out)
    assert seqr.counters["gaps"] == 0 and seqr.counters["duplicates"] == 0


# -- the restart cases, one by one ---------------------------------------------------------------

def _run(seqr: Sequencer, daemon: Daemon, items: list[tuple[Any, ...]]) -> list[Any]:
    for item in items:
        feed(seqr, item)
        answer(seqr, daemon)
    out = list(seqr.ready)
    seqr.ready.clear()
    return out


def test_a_restart_is_seen_on_the_first_event_of_the_new_run() -> None:
    daemon = Daemon(ring_size=100)
    seqr = Sequencer(now=0.0)
    first = [("ev", daemon.publish(False), True) for _ in range(5)]
    assert [e.seq for e in _run(seqr, daemon, first)] == [1, 2, 3, 4, 5]
    daemon.restart()
    # no heartbeat in between: the first event of the new run says it all
    out = _run(seqr, daemon, [("ev", daemon.publish(False), True)])
    assert out == [Snap(2, 1)] and seqr.counters["resyncs.epoch_changed"] == 1
    assert seqr.counters["duplicates"] == 0
    out = _run(seqr, daemon, [("ev", daemon.publish(False), True) for _ in range(2)])
    assert [(e.epoch, e.seq) for e in out] == [(2, 2), (2, 3)]
    # a frame of the old run still queued somewhere is stale, not another restart
    assert _run(seqr, daemon, [first[-1], ("hb", 1, 5)]) == []
    assert seqr.counters["stale"] == 2 and seqr.counters["resyncs.epoch_changed"] == 1


def test_without_epochs_in_frames_a_restart_waits_for_the_heartbeat() -> None:
    daemon = Daemon(ring_size=100)
    seqr = Sequencer(now=0.0)
    seqr.heartbeat(epoch=1, seq=0, interval=1.0, now=0.0)
    assert len(_run(seqr, daemon, [("ev", daemon.publish(False), False) for _ in range(5)])) == 5
    seqr.resynced(Snap(1, 5))  # floor 0: nothing older is suspect any more
    seqr.ready.clear()
    daemon.restart()
    new = [("ev", daemon.publish(False), False) for _ in range(3)]
    assert _run(seqr, daemon, new) == []  # seq 1..3 <= 5: taken for duplicates
    assert seqr.counters["duplicates"] == 3
    assert _run(seqr, daemon, [("hb", 2, 3)]) == [Snap(2, 3)]


def test_resume_replays_then_falls_back_to_a_snapshot() -> None:
    daemon = Daemon(ring_size=4)
    for _ in range(10):
        daemon.publish(False)
    seqr = Sequencer(resume=(1, 7), now=0.0)
    assert seqr.request == RequestReplay(after=7)
    answer(seqr, daemon)
    assert [e.seq for e in seqr.ready] == [8, 9, 10]
    seqr = Sequencer(resume=(1, 2), now=0.0)  # older than the ring
    answer(seqr, daemon)
    assert list(seqr.ready) == [Snap(1, 10)] and seqr.counters["resyncs.replay_too_old"] == 1
    seqr = Sequencer(resume=(9, 2), now=0.0)  # another run
    answer(seqr, daemon)
    assert list(seqr.ready) == [Snap(1, 10)] and seqr.counters["resyncs.epoch_changed"] == 1


def test_a_bad_replay_means_a_snapshot() -> None:
    daemon = Daemon(ring_size=100)
    for _ in range(5):
        daemon.publish(False)
    for items, reason in (([Ev(1, 2, "node.up"), None], "replay_invalid"),
                          ([Ev(1, 3, "node.up")], "replay_hole"),
                          (None, "replay_invalid")):
        seqr = Sequencer(resume=(1, 1), now=0.0)
        seqr.replayed(epoch=1, status="ok", more=False, items=items)
        assert seqr.request == RequestSnapshot(reason=reason)


def test_liveness_from_the_time_passed_in() -> None:
    seqr = Sequencer(now=100.0)
    assert not seqr.alive(100.5) and seqr.since_heartbeat(101.0) == 1.0
    seqr.heartbeat(epoch=1, seq=0, interval=0.5, now=102.0)
    assert seqr.alive(103.4) and not seqr.alive(103.5)  # 3 intervals
    seqr.dead_after = 10.0
    assert seqr.alive(111.9)


def test_the_sequencer_is_sans_io_and_standard_library_only() -> None:
    assert sequencer.__file__ is not None
    tree = ast.parse(open(sequencer.__file__).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no imports from clusterbus"
            names.add((node.module or "").split(".")[0])
    assert names and names <= set(sys.stdlib_module_names), names
    assert not names & {"asyncio", "socket", "selectors", "time", "zmq", "threading"}, names
