"""A daemon restarted while a snapshot request was pending (killed again before it
answered, or before the request reached it): the run after it answers, and the frames of
the skipped run still queued on the subscriber's side are an earlier run's, not one more
restart. Each restart gives at most one snapshot (the kill -9 fault test had more
snapshots than kills: every queued frame of a skipped run asked for another one).

Uses the model daemon of test_bus_sequencer.py.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_bus_sequencer import Daemon, Snap, _run, answer, check, feed, mutation, op, simulate

from clusterbus.bus.sequencer import RequestReplay, RequestSnapshot, Sequencer


def _following(daemon: Daemon, events: int) -> Sequencer:
    seqr = Sequencer(now=0.0)
    out = _run(seqr, daemon, [("hb", daemon.epoch, 0)]
               + [("ev", daemon.publish(False), True) for _ in range(events)])
    assert [e.seq for e in out] == list(range(1, events + 1))
    return seqr


def test_a_run_skipped_during_the_request_is_not_another_restart() -> None:
    daemon = Daemon(ring_size=100)
    seqr = _following(daemon, 5)
    daemon.restart()  # run 2
    skipped = [("ev", daemon.publish(False), True) for _ in range(3)]
    seqr.heartbeat(epoch=2, seq=3, interval=1.0, now=0.0)
    assert seqr.request == RequestSnapshot(reason="epoch_changed")
    daemon.restart()  # run 2 killed before it answered: run 3 does
    for _ in range(2):
        daemon.publish(False)
    seqr.resynced(Snap(daemon.epoch, daemon.head))
    assert list(seqr.ready) == [Snap(3, 2)] and seqr.counters["restarts"] == 1
    seqr.ready.clear()
    # what run 2 sent is still queued here: stale, no request, nothing delivered
    assert _run(seqr, daemon, [*skipped, ("hb", 2, 3)]) == []
    assert seqr.request is None and seqr.counters["stale"] == 4
    out = _run(seqr, daemon, [("ev", daemon.publish(False), True)])
    assert [(e.epoch, e.seq) for e in out] == [(3, 3)]
    assert seqr.counters["resyncs.epoch_changed"] == 1 and seqr.counters["restarts"] == 1


def test_an_earlier_run_never_seen_before_costs_a_request_but_no_snapshot() -> None:
    daemon = Daemon(ring_size=100)
    seqr = _following(daemon, 2)
    daemon.restart()
    unseen = [("ev", daemon.publish(False), True) for _ in range(2)]  # run 2: not read yet
    daemon.restart()
    for _ in range(2):
        daemon.publish(False)
    assert _run(seqr, daemon, [("hb", 3, 2)]) == [Snap(3, 2)]  # run 3's heartbeat first
    for _ in range(2):
        daemon.publish(False)
    # run 2's frames come out of the queue now: they look like a restart, but the
    # snapshot says the daemon is still run 3 (at seq 4): the events after seq 2 are
    # replayed instead of a second snapshot
    feed(seqr, unseen[0])
    assert seqr.request == RequestSnapshot(reason="epoch_changed")
    seqr.resynced(Snap(daemon.epoch, daemon.head))
    assert not seqr.ready and seqr.request == RequestReplay(after=2)
    answer(seqr, daemon)
    assert [(e.epoch, e.seq) for e in seqr.ready] == [(3, 3), (3, 4)]
    seqr.ready.clear()
    assert _run(seqr, daemon, unseen[1:]) == [] and seqr.request is None  # retired now
    assert seqr.counters["restarts"] == 1 and seqr.counters["resyncs.epoch_changed"] == 1


@settings(max_examples=300)
@given(st.lists(op, max_size=40), st.lists(mutation, max_size=40), st.integers(2, 30))
def test_never_more_restart_snapshots_than_restarts(
        ops: list[tuple[Any, ...]], mutations: list[str], ring_size: int) -> None:
    seqr, out, daemon = simulate(ops, mutations, epochs=True, ring_size=ring_size)
    check(out, daemon)
    restarts = daemon.epoch - 1
    assert seqr.counters.get("resyncs.epoch_changed", 0) <= restarts, seqr.counters
    assert seqr.counters.get("restarts", 0) <= restarts, seqr.counters
