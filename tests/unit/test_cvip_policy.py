"""The CVIP policy (sans-IO): deterministic, sticky, weighted rendezvous hashing.

Several :class:`Policy` objects (one per director) are driven against each other through
a synchronous "bus" that hands every ``cvip.owner`` decision to the other live directors,
as the peer links do; joins, leaves, drains and moves come from hypothesis.
"""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from clusterbus.plugins.cvip.policy import CvipSpec, Decision, Policy, choose, hrw, ranking, score

NODES = (1, 2, 3, 4, 5)


def cvips(n: int) -> list[str]:
    return [f"10.9.{i // 250}.{i % 250 + 1}" for i in range(n)]


class Cluster:
    """N directors' policies and the bus between them."""

    def __init__(self, addrs: list[str], nodes: tuple[int, ...] = NODES,
                 weights: dict[int, float] | None = None) -> None:
        self.specs = [CvipSpec(address=a, directors=nodes, weights=weights or {}) for a in addrs]
        self.nodes = nodes
        self.p: dict[int, Policy] = {}
        self.events: list[tuple[int, Decision]] = []

    def publish(self, origin: int, decisions: list[Decision]) -> None:
        """Deliver decisions to every other live director (and what they cause), in order."""
        queue = [(origin, d) for d in decisions]
        for _ in range(100_000):
            if not queue:
                return
            origin, d = queue.pop(0)
            self.events.append((origin, d))
            gen = d.gen if d.claim else 0
            for node, pol in list(self.p.items()):
                if node != origin:
                    queue += [(node, x) for x in pol.observe(d.cvip, origin=origin, new=d.new,
                                                             gen=gen)]
        raise AssertionError("decisions did not settle")

    def announce(self, node: int) -> None:
        """``node`` re-announces its claims (as the plugin does when a peer comes up)."""
        pol = self.p[node]
        self.publish(node, [Decision(cvip=c, old=node, new=node, reason="announce",
                                     claim=True, gen=g) for c, g in pol.announcements()])

    def join(self, node: int) -> None:
        pol = self.p[node] = Policy(local=node, specs=self.specs, settled=False)
        for other in list(self.p):
            if other == node:
                continue
            self.publish(node, pol.director_up(other))
            self.publish(other, self.p[other].director_up(node))
            self.announce(other)
            if other in self.p[other].draining:  # a drained director says so, too
                self.publish(node, pol.set_draining(other, True))
        self.publish(node, pol.settle())

    def leave(self, node: int) -> None:
        del self.p[node]
        for other in list(self.p):
            self.publish(other, self.p[other].director_down(node))

    def holders(self, cvip: str) -> list[int]:
        return [n for n, pol in self.p.items() if pol.holding(cvip)]

    def agreed(self) -> None:
        """Every live director names the same owner, and that owner alone holds it."""
        for spec in self.specs:
            owners = {pol.owner(spec.address) for pol in self.p.values()}
            assert len(owners) == 1, (spec.address, {n: p.owner(spec.address)
                                                    for n, p in self.p.items()})
            owner = owners.pop()
            assert self.holders(spec.address) == ([owner] if owner is not None else [])


# -- hashing ------------------------------------------------------------------------------


def test_hash_is_stable_across_runs_and_hosts() -> None:
    # fixed values: a change of the hash would move every CVIP of a running cluster
    assert ranking("10.0.0.1", [1, 2, 3]) == ranking("10.0.0.1", [3, 2, 1])
    assert score("10.0.0.1", 1) == score("10.0.0.1", 1)
    assert [hrw(c, NODES) for c in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1")] == \
        [hrw(c, reversed(NODES)) for c in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1")]


@given(st.text(min_size=1, max_size=40), st.sets(st.integers(1, 1000), min_size=1, max_size=8))
def test_score_is_finite_and_positive(cvip: str, nodes: set[int]) -> None:
    for n in nodes:
        s = score(cvip, n, 2.5)
        assert math.isfinite(s) and s > 0


def test_weights_spread_cvips_in_proportion() -> None:
    weights = {1: 1.0, 2: 2.0, 3: 1.0}
    wins = Counter(hrw(c, (1, 2, 3), weights) for c in cvips(4000))
    total = sum(weights.values())
    for node, w in weights.items():
        assert abs(wins[node] / 4000 - w / total) < 0.04, wins


@given(st.sets(st.sampled_from(NODES), min_size=2), st.data())
def test_choose_is_sticky_and_prefers_newer_claims(eligible: set[int], data: st.DataObject) -> None:
    a, b = data.draw(st.lists(st.sampled_from(sorted(eligible)), min_size=2, max_size=2,
                              unique=True))
    assert choose("10.0.0.7", eligible, claims={a: 3}) == (a, "sticky")
    assert choose("10.0.0.7", eligible, claims={a: 3, b: 4})[0] == b
    assert choose("10.0.0.7", eligible, claims={a: 3}, target=(b, 4)) == (b, "move")
    assert choose("10.0.0.7", eligible, claims={a: 5}, target=(b, 4)) == (a, "sticky")
    assert choose("10.0.0.7", eligible, override=b)[0] == b
    assert choose("10.0.0.7", eligible - {a}, claims={a: 3})[0] != a
    assert choose("10.0.0.7", ()) == (None, "none_eligible")


# -- properties over many directors ---------------------------------------------------------

ops = st.lists(st.tuples(st.sampled_from(["join", "leave", "drain", "undrain", "move"]),
                         st.sampled_from(NODES), st.integers(0, 7)), max_size=25)


@settings(max_examples=150, deadline=None)
@given(st.sets(st.sampled_from(NODES), min_size=1), ops)
def test_all_directors_agree_and_one_holds(start: set[int], steps: list) -> None:
    c = Cluster(cvips(8))
    for n in sorted(start):
        c.join(n)
    c.agreed()
    for op, node, i in steps:
        cvip = c.specs[i].address
        if op == "join" and node not in c.p:
            c.join(node)
        elif op == "leave" and node in c.p and len(c.p) > 1:
            c.leave(node)
        elif op in ("drain", "undrain"):
            for n, pol in list(c.p.items()):
                c.publish(n, pol.set_draining(node, op == "drain"))
        elif op == "move" and node in c.p and c.p:
            gen = max(p.next_gen(cvip) for p in c.p.values())
            for n, pol in list(c.p.items()):
                c.publish(n, pol.move(cvip, node, gen))
        c.agreed()


@settings(max_examples=150, deadline=None)
@given(st.sets(st.sampled_from(NODES), min_size=2), st.lists(
    st.tuples(st.sampled_from(["join", "leave"]), st.sampled_from(NODES)), max_size=25))
def test_a_live_owner_keeps_its_cvips(start: set[int], steps: list) -> None:
    c = Cluster(cvips(16))
    for n in sorted(start):
        c.join(n)
    keeper = min(start)
    kept = {s.address for s in c.specs if c.p[keeper].holding(s.address)}
    for op, node in steps:
        if node == keeper:
            continue
        if op == "join" and node not in c.p:
            c.join(node)
        elif op == "leave" and node in c.p:
            c.leave(node)
        c.agreed()
        mine = {s.address for s in c.specs if c.p[keeper].holding(s.address)}
        assert kept <= mine  # it never loses one; it may gain those of leavers
        kept = mine


def test_a_leaving_owner_spreads_by_weight() -> None:
    weights = {1: 1.0, 2: 1.0, 3: 3.0, 4: 1.0}
    c = Cluster(cvips(3000), nodes=(1, 2, 3, 4), weights=weights)
    for n in (1, 2, 3, 4):
        c.join(n)
    before = {s.address: c.holders(s.address)[0] for s in c.specs}
    orphans = [a for a, n in before.items() if n == 1]
    c.leave(1)
    c.agreed()
    after = {s.address: c.holders(s.address)[0] for s in c.specs}
    # only the leaver's CVIPs moved
    assert all(after[a] == before[a] for a in before if before[a] != 1)
    got = Counter(after[a] for a in orphans)
    total = 5.0
    for node in (2, 3, 4):
        assert abs(got[node] / len(orphans) - weights[node] / total) < 0.06, got


def test_returning_owner_does_not_take_back() -> None:
    c = Cluster(cvips(20), nodes=(1, 2, 3))
    for n in (1, 2, 3):
        c.join(n)
    owned_by_1 = [s.address for s in c.specs if c.holders(s.address) == [1]]
    assert owned_by_1
    c.leave(1)
    new = {a: c.holders(a) for a in owned_by_1}
    c.join(1)
    c.agreed()
    assert {a: c.holders(a) for a in owned_by_1} == new
    assert not any(c.p[1].holding(a) for a in owned_by_1)


def test_move_waits_for_the_new_owners_claim() -> None:
    a = "10.0.0.9"
    p1 = Policy(local=1, specs=[CvipSpec(address=a, directors=(1, 2))])
    p1.director_up(2)
    p1.observe(a, origin=2, new=None, gen=0)
    if not p1.holding(a):
        p1.move(a, 1, p1.next_gen(a))
    assert p1.holding(a)
    gen = p1.next_gen(a)
    assert p1.move(a, 2, gen) == []  # still held: node 2 has not claimed yet
    assert p1.handing_over() == {a: 2}
    out = p1.observe(a, origin=2, new=2, gen=gen + 1)
    assert [(d.old, d.new, d.release, d.reason) for d in out] == [(1, 2, True, "move")]
    assert not p1.holding(a)


def test_quorum_loss_releases_at_once() -> None:
    a = "10.0.0.9"
    p1 = Policy(local=1, specs=[CvipSpec(address=a, directors=(1, 2))])
    p1.move(a, 1, 1)
    assert p1.holding(a)
    p1.director_up(2)
    out = p1.set_quorum(False)
    assert [(d.release, d.reason) for d in out] == [(True, "quorum_lost")]


def test_unsettled_director_claims_nothing() -> None:
    a = "10.0.0.9"
    p = Policy(local=1, specs=[CvipSpec(address=a, directors=(1,))], settled=False)
    assert p.decide_all("start") == []
    assert not p.holding(a)
    assert [d.claim for d in p.settle()] == [True]


def test_hook_overrides() -> None:
    a = "10.0.0.9"
    p = Policy(local=1, specs=[CvipSpec(address=a, directors=(1, 2))],
               override=lambda cvip, cands: 2 if 2 in cands else None)
    p.director_up(2)
    assert p.owner(a) == 2 and not p.holding(a)


def test_rank_orders_backups_as_the_next_election() -> None:
    c = Cluster(cvips(10), nodes=(1, 2, 3, 4))
    for n in (1, 2, 3, 4):
        c.join(n)
    for spec in c.specs:
        a = spec.address
        ranks = {n: p.rank(a) for n, p in c.p.items()}
        owner = c.holders(a)[0]
        assert sorted(ranks.values()) == [0, 1, 2, 4] and ranks[owner] == 4
        nxt = min((n for n in ranks if n != owner), key=ranks.__getitem__)
        c.leave(owner)
        assert c.holders(a) == [nxt]  # the backup ranked first is the next owner
        c.join(owner)
