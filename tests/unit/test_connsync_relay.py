"""The conn-sync relay protocol (sans-IO) over a simulated channel that loses, duplicates
and reorders messages: every entry reaches every peer, each at most once per stream and in
the order it was originated, and a restarted director gets the full table again."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterbus import DecodeError
from clusterbus.plugins.connsync.relay import (
    Deliver,
    Relay,
    RelayError,
    ResyncDone,
    ResyncStarted,
    Send,
)

#: an entry is (key, value, uid): uid grows with every entry a director originates
Entry = tuple[int, int, int]


def _decode(v: Any) -> Entry:
    if not isinstance(v, list) or len(v) != 3 or not all(type(x) is int for x in v):
        raise DecodeError(f"bad entry {v!r}")
    return (v[0], v[1], v[2])


@dataclass
class Node:
    """One director: its own table, its relay, and what it received per origin."""

    node: int
    peers: list[int]
    run: int
    table: dict[int, Entry] = field(default_factory=dict)
    received: dict[int, dict[int, Entry]] = field(default_factory=dict)
    uid: int = 0
    last_uid: dict[int, int] = field(default_factory=dict)  # per origin, this stream
    violations: list[str] = field(default_factory=list)
    relay: Relay = field(init=False)

    def __post_init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.relay = Relay(run=self.run, peers=self.peers, snapshot=self.snapshot,
                           encode=list, decode=_decode, batch_max=4, window=4, rto=0.05,
                           rto_max=0.4, keepalive=0.2, max_pending=64)
        self.received = {p: {} for p in self.peers}
        self.last_uid = {p: -1 for p in self.peers}
        self.snapshot_keys: dict[int, set[int]] = {p: set() for p in self.peers}

    def snapshot(self) -> list[Entry]:
        return list(self.table.values())

    def originate(self, keys: Iterable[int]) -> None:
        entries = []
        for k in keys:
            self.uid += 1
            e = (k, self.uid * 7 % 1000, self.uid)
            self.table[k] = e  # the table first: a resync snapshot holds it
            entries.append(e)
        self.relay.originate(entries)

    def apply(self, effects: list[Any], out: list[tuple[int, int, Any]]) -> None:
        for eff in effects:
            if isinstance(eff, Send):
                out.append((self.node, eff.peer, eff.message))
            elif isinstance(eff, ResyncStarted):
                self.received[eff.peer] = {}  # the full table follows
                self.last_uid[eff.peer] = -1
                self.snapshot_keys[eff.peer] = set()
            elif isinstance(eff, ResyncDone):
                self.last_uid[eff.peer] = max(
                    (e[2] for e in self.received[eff.peer].values()), default=-1)
            elif isinstance(eff, Deliver):
                got = self.received[eff.peer]
                for key, value, uid in eff.entries:
                    if eff.snapshot:
                        if key in self.snapshot_keys[eff.peer]:
                            self.violations.append(f"{eff.peer}: key {key} twice in a resync")
                        self.snapshot_keys[eff.peer].add(key)
                    else:
                        if uid <= self.last_uid[eff.peer]:
                            self.violations.append(
                                f"{eff.peer}: uid {uid} after {self.last_uid[eff.peer]}")
                        self.last_uid[eff.peer] = uid
                    got[key] = (key, value, uid)


class Net:
    """Loses, duplicates and delays (so reorders) every message; msgpack on the way."""

    def __init__(self, rnd: random.Random, loss: float, dup: float, jitter: float) -> None:
        self.rnd, self.loss, self.dup, self.jitter = rnd, loss, dup, jitter
        self.flight: list[tuple[float, int, int, bytes]] = []
        self.sent = self.lost = 0

    def send(self, now: float, msgs: list[tuple[int, int, Any]]) -> None:
        for src, dst, msg in msgs:
            self.sent += 1
            data = msgpack.packb(msg)
            for _ in range(2 if self.rnd.random() < self.dup else 1):
                if self.rnd.random() < self.loss:
                    self.lost += 1
                    continue
                self.flight.append((now + self.rnd.uniform(0, self.jitter), src, dst, data))

    def due(self, now: float) -> list[tuple[int, int, Any]]:
        ready = [m for m in self.flight if m[0] <= now]
        self.flight = [m for m in self.flight if m[0] > now]
        self.rnd.shuffle(ready)
        return [(src, dst, msgpack.unpackb(data)) for _, src, dst, data in ready]


def run_cluster(nodes: dict[int, Node], net: Net, now: float, steps: int,
                script: dict[int, list[tuple[str, Any]]] | None = None) -> float:
    """Step the simulation ``steps`` times of 10 ms; ``script`` maps a step to actions."""
    for step in range(steps):
        for action, arg in (script or {}).get(step, []):
            if action == "originate":
                node, keys = arg
                nodes[node].originate(keys)
            elif action == "restart":
                n = nodes[arg]
                n.run += 1000
                n.start()
        outbox: list[tuple[int, int, Any]] = []
        for src, dst, msg in net.due(now):
            try:
                effects = nodes[dst].relay.receive(src, msg, now)
            except RelayError:
                continue
            nodes[dst].apply(effects, outbox)
        for n in nodes.values():
            n.apply(n.relay.poll(now), outbox)
        net.send(now, outbox)
        now += 0.01
    return now


def converged(nodes: dict[int, Node]) -> bool:
    return all(nodes[b].received[a] == nodes[a].table
               for a in nodes for b in nodes if a != b)


def settle(nodes: dict[int, Node], net: Net, now: float, limit: int = 6000) -> float:
    """Run until every peer holds every other's table and nothing is in flight (bounded)."""
    for _ in range(limit // 50):
        if converged(nodes) and all(n.relay.idle() for n in nodes.values()):
            return now
        now = run_cluster(nodes, net, now, 50)
    return now


def make(n: int) -> dict[int, Node]:
    ids = list(range(1, n + 1))
    return {i: Node(i, [j for j in ids if j != i], run=i) for i in ids}


workload = st.lists(
    st.tuples(st.integers(0, 60), st.integers(1, 3),
              st.lists(st.integers(0, 40), min_size=1, max_size=12)),
    min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          report_multiple_bugs=False)
@given(seed=st.integers(0, 2**32 - 1), loss=st.sampled_from([0.0, 0.05, 0.2, 0.3]),
       dup=st.sampled_from([0.0, 0.1, 0.3]), jitter=st.sampled_from([0.0, 0.03, 0.2]),
       ops=workload, restart=st.one_of(st.none(), st.tuples(st.integers(0, 60),
                                                             st.integers(1, 3))))
def test_converges_over_a_lossy_duplicating_reordering_channel(
        seed: int, loss: float, dup: float, jitter: float,
        ops: list[tuple[int, int, list[int]]], restart: tuple[int, int] | None) -> None:
    nodes = make(3)
    net = Net(random.Random(seed), loss, dup, jitter)
    script: dict[int, list[tuple[str, Any]]] = {}
    for step, node, keys in ops:
        script.setdefault(step, []).append(("originate", (node, keys)))
    if restart is not None:
        script.setdefault(restart[0], []).append(("restart", restart[1]))
    now = run_cluster(nodes, net, 0.0, 61, script)
    now = settle(nodes, net, now)
    for n in nodes.values():
        assert n.violations == []
    assert converged(nodes), {(a, b): (nodes[b].received[a], nodes[a].table)
                              for a in nodes for b in nodes if a != b}
    assert all(n.relay.idle() for n in nodes.values())


def test_twenty_percent_loss_every_entry_delivered_once_in_order() -> None:
    nodes = make(2)
    net = Net(random.Random(7), 0.2, 0.05, 0.05)
    # 400 distinct keys: every one must arrive, each once, in order
    script = {s: [("originate", (1, range(s * 10, s * 10 + 10)))] for s in range(40)}
    now = run_cluster(nodes, net, 0.0, 40, script)
    settle(nodes, net, now)
    assert net.lost > 0
    assert nodes[2].received[1] == nodes[1].table and len(nodes[1].table) == 400
    assert nodes[2].violations == []
    c1 = nodes[1].relay.status(now)[2]["counters"]
    assert c1["resends"] > 0 and c1["entries.sent"] >= 400


def test_restarted_director_gets_the_full_table_before_incremental_entries() -> None:
    nodes = make(2)
    net = Net(random.Random(1), 0.0, 0.0, 0.0)
    now = run_cluster(nodes, net, 0.0, 20, {0: [("originate", (1, range(30)))]})
    assert nodes[2].received[1] == nodes[1].table
    nodes[2].run += 1000
    nodes[2].start()  # restarted: knows nothing
    assert nodes[2].received[1] == {}
    kinds: list[str] = []
    orig = nodes[2].apply

    def spy(effects: list[Any], out: list[tuple[int, int, Any]]) -> None:
        for e in effects:
            if isinstance(e, Deliver):
                kinds.append("snapshot" if e.snapshot else "incremental")
            elif isinstance(e, ResyncDone):
                kinds.append("done")
        orig(effects, out)

    nodes[2].apply = spy  # type: ignore[method-assign]
    now = run_cluster(nodes, net, now, 30, {10: [("originate", (1, [100]))]})
    assert nodes[2].received[1] == nodes[1].table and 100 in nodes[2].received[1]
    assert kinds.index("done") < kinds.index("incremental")
    st1 = nodes[1].relay.status(now)[2]
    assert st1["counters"]["peer.restarts"] == 1 and st1["counters"]["resyncs.sent"] == 2


def test_duplicates_and_stale_runs_are_dropped() -> None:
    a = Relay(run=5, peers=[2], snapshot=list)
    b = Relay(run=9, peers=[1], snapshot=list)
    msgs = [e.message for e in a.poll(0.0) if isinstance(e, Send)]  # the empty snapshot
    a.originate([["x", 1]])
    msgs += [e.message for e in a.poll(0.0) if isinstance(e, Send)]
    assert [m[4] for m in msgs if m[0] == "B"] == [2, 0]  # snapshot end, then incremental
    eff = [e for m in msgs for e in b.receive(1, m, 0.0)]
    eff += [e for m in reversed(msgs) for e in b.receive(1, m, 0.0)]  # all again
    delivered = [e for e in eff if isinstance(e, Deliver)]
    assert [(d.entries, d.snapshot) for d in delivered] == [((["x", 1],), False)]
    assert b.peers[1].counters["duplicates"] == 2
    # a's new run: b drops a late message of the old one afterwards
    b.receive(1, ["A", 6, 0, 1, 0], 0.1)
    assert b.peers[1].counters["peer.restarts"] == 1
    assert b.receive(1, msgs[0], 0.2) == []
    assert b.peers[1].counters["dropped.stale"] == 1


@pytest.mark.parametrize("message", [
    None, [], "B", ["Z"], ["B", 1, 1, 1, 0], ["B", 0, 1, 1, 0, []], ["B", 1, 1, 1, 7, []],
    ["B", 1, 1, -1, 0, []], ["B", 1, 1, 1, 0, "xx"], ["B", 1, 1, 1, 0, [["bad"]]],
    ["A", 1, 0, 1], ["A", True, 0, 1, 0], ["N", 1, 1, 1, 5, 2], ["B", 2**64, 1, 1, 0, []],
])
def test_garbage_raises_a_typed_error_and_changes_nothing(message: Any) -> None:
    r = Relay(run=1, peers=[2], snapshot=list, decode=_decode)
    before = r.status(0.0)
    with pytest.raises(DecodeError):
        r.receive(2, message, 0.0)
    assert r.status(0.0) == before


def test_unknown_peer_is_a_typed_error() -> None:
    r = Relay(run=1, peers=[2], snapshot=list)
    with pytest.raises(RelayError) as info:
        r.receive(3, ["A", 1, 0, 1, 0], 0.0)
    assert info.value.code == "unknown_peer"


def test_queue_overflow_drops_counted_and_resyncs_from_the_table() -> None:
    table = {k: (k, 0, k) for k in range(10)}
    a = Relay(run=1, peers=[2], snapshot=lambda: list(table.values()), max_pending=5,
              window=1, batch_max=2)
    b = Relay(run=2, peers=[1], snapshot=list)
    a.poll(0.0)  # stream 1 starts (its snapshot is in flight, not acknowledged)
    a.originate([(k, 1, k) for k in range(10)])  # over max_pending
    st_a = a.status(0.0)[2]
    assert st_a["counters"]["dropped.queue_full"] == 10 and st_a["pending_entries"] == 0
    got: dict[int, Any] = {}
    now = 0.0
    for _ in range(200):
        for e in a.poll(now):
            if isinstance(e, Send):
                for f in b.receive(1, e.message, now):
                    if isinstance(f, Deliver):
                        got.update({x[0]: x for x in f.entries})
                    elif isinstance(f, Send):
                        a.receive(2, f.message, now)
        now += 0.05
        if a.idle():
            break
    assert a.status(now)[2]["counters"]["resyncs.sent"] == 2
    assert got == table


def test_next_deadline_and_keepalive() -> None:
    r = Relay(run=1, peers=[2], snapshot=list, keepalive=0.5)
    assert r.next_deadline() == float("-inf")  # the first stream is due
    effs = r.poll(0.0)
    assert any(isinstance(e, Send) and e.message[0] == "A" for e in effs)
    d = r.next_deadline()
    assert d is not None and 0 < d <= 0.5


def test_incomplete_lists_peers_heard_whose_full_table_is_not_in() -> None:
    a = Relay(run=1, peers=[2], snapshot=lambda: [[k] for k in range(10)], batch_max=4)
    b = Relay(run=2, peers=[1], snapshot=list)
    assert b.incomplete(0.0, 3.0) == []  # never heard: unknown, not waited for
    msgs = [e.message for e in a.poll(0.0) if isinstance(e, Send)]
    first = [m for m in msgs if m[0] == "B"][0]
    b.receive(1, first, 0.0)
    assert b.incomplete(0.0, 3.0) == [1]  # the snapshot has begun
    for m in msgs:
        b.receive(1, m, 0.0)
    assert b.incomplete(0.0, 3.0) == []  # all three snapshot batches in
    assert b.incomplete(10.0, 3.0) == []


def _delayed_run(rtt: float, every: int = 10, **kw: Any) -> tuple[Relay, list[int]]:
    """a streams a batch every ``every`` 10 ms steps for 4 s to b over a lossless link of
    round trip ``rtt``; returns a and a's resend count after each 10 ms step."""
    a = Relay(run=1, peers=[2], snapshot=list, batch_max=8, window=4, **kw)
    b = Relay(run=2, peers=[1], snapshot=list)
    flight: list[tuple[float, str, Any]] = []
    resends: list[int] = []
    now = 0.0
    for step in range(600):
        if step % every == 0 and step < 400:
            a.originate([[step, i] for i in range(8)])
        for _, dst, msg in [m for m in flight if m[0] <= now]:
            target, src = (b, 1) if dst == "b" else (a, 2)
            for e in target.receive(src, msg, now):
                if isinstance(e, Send):
                    flight.append((now + rtt / 2, "a", e.message))
        flight = [m for m in flight if m[0] > now]
        for e in a.poll(now):
            if isinstance(e, Send):
                flight.append((now + rtt / 2, "b", e.message))
        b.poll(now)
        resends.append(a.status(now)[2]["counters"]["resends"])
        now += 0.01
    return a, resends


def test_the_resend_timeout_follows_the_round_trip() -> None:
    """A round trip longer than the first timeout: a fixed timeout resends batches all
    along; the adaptive one learns the round trip and stops resending. (One batch in
    flight at a time: with several, each ack restarts the timers of the ones behind.)"""
    fixed, fixed_resends = _delayed_run(0.3, every=40, rto=0.2, rto_min=0.2, rto_max=0.2)
    adaptive, resends = _delayed_run(0.3, every=40, rto=0.2)
    assert fixed_resends[-1] - fixed_resends[100] >= 7
    assert resends[-1] == resends[100]  # none after the first second
    st = adaptive.status(6.0)[2]
    assert st["srtt_ms"] is not None and 290 <= st["srtt_ms"] <= 320
    assert st["rto_ms"] >= 300
    assert adaptive.idle() and fixed.idle()
    # a fast link: the timeout comes down to its floor
    quick, quick_resends = _delayed_run(0.002, rto=0.5, rto_min=0.05)
    assert quick_resends[-1] == 0 and quick.status(6.0)[2]["rto_ms"] == 50.0


def _serial_run(restart_on_ack: bool) -> tuple[int, int]:
    """a learns a fast round trip (10 ms), then sends a window of 8 batches at once to a
    receiver that handles one message per 30 ms (a busy peer working through its queue):
    (a's resends, batches b received)."""
    a = Relay(run=1, peers=[2], snapshot=list, batch_max=8, window=8, rto=0.5, rto_min=0.05)
    b = Relay(run=2, peers=[1], snapshot=list)
    if not restart_on_ack:  # the timers as before: each batch's from its own send only
        ack = a._ack

        def no_restart(p: Any, *args: Any) -> list[Any]:
            timers = {seq: bt.timer_at for seq, bt in p.out.unacked.items()}
            out = ack(p, *args)
            for seq, bt in p.out.unacked.items():
                bt.timer_at = timers.get(seq, bt.timer_at)
            return out
        a._ack = no_restart  # type: ignore[method-assign]
    to_b: list[tuple[float, Any]] = []
    to_a: list[tuple[float, Any]] = []
    b_free = 0.0
    now = 0.0
    for step in range(1500):  # 1 ms steps
        if step in (0, 100):
            a.originate([[step, i] for i in range(8 if step == 0 else 64)])
        for e in a.poll(now):
            if isinstance(e, Send):
                to_b.append((now + 0.005, e.message))
        while to_b and to_b[0][0] <= now and b_free <= now:  # one message per 30 ms
            _, msg = to_b.pop(0)
            b_free = now + (0.03 if step >= 100 else 0.0)
            for e in b.receive(1, msg, now):
                if isinstance(e, Send):
                    to_a.append((now + 0.005, e.message))
        for _t, msg in [m for m in to_a if m[0] <= now]:
            a.receive(2, msg, now)
        to_a = [m for m in to_a if m[0] > now]
        b.poll(now)
        now += 0.001
    assert a.idle()
    return a.status(now)[2]["counters"]["resends"], \
        b.status(now)[1]["counters"]["batches.received"]


def test_a_window_into_a_busy_receiver_is_not_resent_from_its_tail() -> None:
    """Each ack of new data restarts the timers of the batches behind it (RFC 6298 5.3):
    a receiver taking one batch after the other is progressing, not losing them. Without
    the restart the tail of the window is sent again (duplicates the receiver decrypts and
    drops)."""
    resends, received = _serial_run(restart_on_ack=True)
    assert resends == 0 and received == 9
    old_resends, old_received = _serial_run(restart_on_ack=False)
    assert old_resends > 0 and old_received > 9


def _batches(effects: list[Any]) -> list[list[Any]]:
    return [e.message for e in effects if isinstance(e, Send) and e.message[0] == "B"]


def _acked(a: Relay, b: Relay, batches: list[list[Any]], now: float) -> list[Any]:
    """``b`` receives ``batches`` from 1 and ``a`` gets b's acknowledgements; the entries
    delivered to b."""
    got: list[Any] = []
    for m in batches:
        for e in b.receive(1, m, now):
            if isinstance(e, Send) and e.message[0] == "A":
                a.receive(2, e.message, now)
            elif isinstance(e, Deliver):
                got.extend(e.entries)
    return got


def _streaming(hold: float, hold_size: int | None = None) -> tuple[Relay, Relay]:
    """a's stream to b begun (its empty snapshot acknowledged): a sends incremental only."""
    a = Relay(run=1, peers=[2], snapshot=list, batch_max=100, hold=hold, hold_size=hold_size)
    b = Relay(run=2, peers=[1], snapshot=list)
    _acked(a, b, _batches(a.poll(0.0)), 0.0)
    assert a.idle() and a.next_deadline() != float("-inf")
    return a, b


def test_entries_behind_a_batch_in_flight_wait_for_its_ack() -> None:
    """Nagle: an entry with nothing in flight leaves at once; what comes while that batch
    is unacknowledged waits (no batch per capture), then leaves as one batch with the ack;
    the receiver gets everything, in order."""
    a, b = _streaming(hold=0.02)
    a.originate([[0]])
    first = _batches(a.poll(0.001))
    assert [len(m[5]) for m in first] == [1]          # alone: at once
    for i in range(1, 6):                             # five captures while it flies
        a.originate([[i]])
        assert a.next_deadline() in (float("-inf"), 0.002 + 0.02)  # -inf: not stamped yet
        assert _batches(a.poll(0.001 + i / 1000)) == []
        assert a.next_deadline() == 0.002 + 0.02      # the hold's end, stamped at its start
    got = _acked(a, b, first, 0.007)
    assert a.next_deadline() == float("-inf")         # the ack lets them go
    second = _batches(a.poll(0.007))
    assert [m[5] for m in second] == [[[1], [2], [3], [4], [5]]]
    got += _acked(a, b, second, 0.008)
    assert got == [[i] for i in range(6)] and a.idle()


def test_a_held_batch_goes_when_full_enough_or_when_the_hold_ends() -> None:
    a, _b = _streaming(hold=0.02, hold_size=4)
    a.originate([[0]])
    assert len(_batches(a.poll(0.0))) == 1
    a.originate([[1], [2], [3]])
    assert _batches(a.poll(0.001)) == []              # 3 < hold_size, one in flight
    a.originate([[4]])
    assert a.next_deadline() == float("-inf")         # 4: worth a batch of its own
    assert [len(m[5]) for m in _batches(a.poll(0.002))] == [4]
    a.originate([[5]])
    assert _batches(a.poll(0.003)) == []
    assert _batches(a.poll(0.0229)) == []
    assert [m[5] for m in _batches(a.poll(0.023))] == [[[5]]]  # the hold ended: no ack


def test_without_hold_every_poll_sends_what_came() -> None:
    a, _b = _streaming(hold=0.0)
    a.originate([[0]])
    assert len(_batches(a.poll(0.0))) == 1
    a.originate([[1]])
    assert a.next_deadline() == float("-inf")
    assert len(_batches(a.poll(0.001))) == 1          # two in flight: no waiting


def test_a_resync_snapshot_is_not_held() -> None:
    """The full table goes in full batches at once (the window permitting), never held."""
    a = Relay(run=1, peers=[2], snapshot=lambda: [[k] for k in range(250)], batch_max=100,
              hold=1.0)
    assert [len(m[5]) for m in _batches(a.poll(0.0))] == [100, 100, 50]


def test_bad_hold_is_refused() -> None:
    with pytest.raises(Exception, match="bad relay parameters"):
        Relay(run=1, peers=[2], snapshot=list, hold=-1)


class _Sent:
    """Stands in for the channel: records what the link sends."""

    def __init__(self) -> None:
        self.messages: list[list[Any]] = []

    def send(self, peer: int, message: Any) -> bool:
        self.messages.append(message)
        return True


def test_the_link_sends_in_the_turn_of_the_input_that_made_it_due() -> None:
    """A capture (originate) or an acknowledgement that lets entries go sends them in the
    same call, not in a later loop turn of the timer task; entries held behind a batch in
    flight are not sent until its acknowledgement."""
    from clusterbus.plugins.connsync.channel import RelayLink

    a, b = _streaming(hold=0.02)
    sent = _Sent()
    link = RelayLink(a, sent, lambda e: None, clock=lambda: 0.01)  # type: ignore[arg-type]
    link.originate([[1]])
    assert [m[5] for m in _batches_of(sent.messages)] == [[[1]]]
    link.originate([[2]], now=0.011)
    assert len(_batches_of(sent.messages)) == 1        # held behind [1]
    acks = [e.message for e in b.receive(1, sent.messages[0], 0.012) if isinstance(e, Send)]
    link._receive(2, acks[-1])
    assert [m[5] for m in _batches_of(sent.messages)] == [[[1]], [[2]]]


def _batches_of(messages: list[list[Any]]) -> list[list[Any]]:
    return [m for m in messages if m[0] == "B"]


def test_a_sooner_deadline_reschedules_the_timer_task_in_place() -> None:
    """The timer task waits for the relay's next deadline; an input that brings a sooner
    one (a hold's end) moves that wait, without waking the task for a loop turn."""
    import asyncio
    import time

    from clusterbus.plugins.connsync.channel import RelayLink

    async def main() -> tuple[float | None, float | None, float | None, float | None, bool]:
        a = Relay(run=1, peers=[2], snapshot=list, batch_max=100, hold=0.05, keepalive=30.0,
                  rto_min=0.5)
        b = Relay(run=2, peers=[1], snapshot=list)
        sent = _Sent()
        link = RelayLink(a, sent, lambda e: None)  # type: ignore[arg-type]
        link._wake = asyncio.Event()
        task = asyncio.create_task(link._timers())
        try:
            for _ in range(100):  # bounded: until the task waits (its snapshot sent)
                await asyncio.sleep(0.001)
                if link._timeout is not None:
                    break
            _acked(a, b, _batches_of(sent.messages), time.monotonic())
            before = link._until                    # the keepalive (nothing in flight)
            link.originate([[1]])                   # sent at once (a resend timer, 0.5 s)
            link.originate([[2]])                   # held: the hold ends in 0.05 s
            assert link._timeout is not None
            held = a.peers[2].out.held_since
            return before, link._until, link._timeout.when(), \
                None if held is None else held + a.hold, link._wake.is_set()
        finally:
            task.cancel()

    before, until, when, hold_end, woken = asyncio.run(main())
    assert before is not None and until is not None and hold_end is not None
    assert until == when == hold_end < before and not woken
