"""Which director owns a cluster virtual IP (CVIP): the sans-IO policy.

Standard library only: no clock, no socket, no asyncio. The plugin (:mod:`clusterbus.plugins.cvip`)
feeds it facts and carries out its decisions.

**Facts** (the same on every director while the cluster links agree):

- the live directors (``director.up`` / ``director.down``, this director always);
- the draining directors (``clusterbus cvip drain NODE``, a ``cvip.command`` event);
- the weights of ``[[cvip.vip]] weight`` (the same file on every director);
- the claims: each director's latest ``cvip.owner`` event about itself. An event whose
  ``new`` is its ``origin`` is that director's *claim*, numbered by a generation
  ``gen``; any other ``cvip.owner`` event of an origin withdraws that origin's claim;
- a planned move's target (``cvip move``, ``drain``, ``rebalance``), numbered the same way.

**Decision** (:func:`choose`), per CVIP, among the eligible candidates (configured for the
CVIP, live, not draining; this director also only while it has quorum where Corosync
quorum is configured):

1. a ``clusterbus_cvip_owner`` hook's answer, when it names an eligible candidate;
2. a planned move's target, when it is eligible and newer than every claim;
3. sticky: the claims of eligible directors, the highest ``(gen, score)`` first: the owner
   keeps its CVIP while it is alive, even when a director with a higher hash comes back;
4. nobody eligible claims it: rendezvous (highest random weight) hashing over the eligible
   candidates, weighted: ``score = -weight / ln(h)``, ``h`` in (0, 1) from BLAKE2b of the
   CVIP and the node number. Every director computes the same winner; when a director
   leaves, only its CVIPs move, spread over the others in proportion to their weights.

:class:`Policy` keeps the facts of one director and says, for each input, what changed
(:class:`Decision`). Generations make every claim comparable: a director that claims takes
the highest generation it knows plus one, so after a partition heals the newer claim wins
and the older owner steps down (reason ``conflict``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["score", "ranking", "hrw", "choose", "Decision", "Policy", "CvipSpec"]

_SCALE = float(1 << 64)


def _unit(cvip: str, node: int) -> float:
    """A stable pseudo-random number in (0, 1) for the pair (the same on every host)."""
    digest = hashlib.blake2b(f"{cvip}/{node}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _SCALE


def score(cvip: str, node: int, weight: float = 1.0) -> float:
    """Weighted rendezvous score of ``node`` for ``cvip`` (higher wins).

    ``-weight / ln(h)``: over many CVIPs a node wins in proportion to its weight.
    """
    return -weight / math.log(_unit(cvip, node))


def ranking(cvip: str, candidates: Iterable[int],
            weights: Mapping[int, float] | None = None) -> list[int]:
    """The candidates best first (ties, which need equal scores, by node number)."""
    w = weights or {}
    return sorted(set(candidates), key=lambda n: (-score(cvip, n, w.get(n, 1.0)), n))


def hrw(cvip: str, candidates: Iterable[int],
        weights: Mapping[int, float] | None = None) -> int | None:
    """The rendezvous winner among ``candidates``, or ``None`` when there are none."""
    order = ranking(cvip, candidates, weights)
    return order[0] if order else None


def choose(cvip: str, eligible: Iterable[int], *, weights: Mapping[int, float] | None = None,
           claims: Mapping[int, int] | None = None, target: tuple[int, int] | None = None,
           override: int | None = None) -> tuple[int | None, str]:
    """The owner of ``cvip`` from the facts, and why.

    :param eligible: the candidates that may own it now (live, not draining).
    :param weights: node -> weight (default 1).
    :param claims: node -> generation of that director's claim.
    :param target: ``(node, gen)`` of a planned move.
    :param override: a hook's answer (used when eligible).
    :returns: ``(owner, reason)``; reason ``hook``, ``move``, ``sticky``, ``hrw``, or
        ``(None, "none_eligible")``.
    """
    cands = set(eligible)
    if not cands:
        return None, "none_eligible"
    if override is not None and override in cands:
        return override, "hook"
    w = weights or {}
    live_claims = {n: g for n, g in (claims or {}).items() if n in cands}
    if target is not None and target[0] in cands and \
            all(target[1] > g for n, g in live_claims.items() if n != target[0]):
        return target[0], "move"
    if live_claims:
        best = max(live_claims, key=lambda n: (live_claims[n], score(cvip, n, w.get(n, 1.0)), -n))
        return best, "sticky"
    return hrw(cvip, cands, w), "hrw"


@dataclass(frozen=True, slots=True, kw_only=True)
class CvipSpec:
    """One CVIP's static facts.

    :param address: the canonical address (no prefix), the CVIP's key.
    :param directors: the candidate node numbers.
    :param weights: node -> weight (> 0); missing nodes weigh 1.
    """

    address: str
    directors: tuple[int, ...]
    weights: Mapping[int, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The owner of one CVIP changed in this director's view.

    :param cvip: the CVIP.
    :param old: the previous owner (``None``: none).
    :param new: the new owner (``None``: nobody eligible).
    :param reason: why (``hrw``, ``owner_down``, ``move``, ``drain``, ``quorum_lost``,
        ``conflict``, ``hook``, ``sticky``, ...).
    :param claim: this director takes the CVIP: announce a claim with ``gen``.
    :param release: this director held it and must give it up now (priority-0 handoff).
    :param gen: the generation of this director's claim (when ``claim``).
    """

    cvip: str
    old: int | None
    new: int | None
    reason: str
    claim: bool = False
    release: bool = False
    gen: int = 0


@dataclass(slots=True)
class _State:
    spec: CvipSpec
    claims: dict[int, int] = field(default_factory=dict)
    target: tuple[int, int] | None = None
    owner: int | None = None  #: the decision last reported
    gen: int = 0  #: highest generation seen
    #: this director holds it (claimed and not yet released)
    holding: bool = False
    #: it is decided elsewhere, but we wait for the new owner's claim before releasing
    handing_to: int | None = None
    #: why that handoff started (the release reports it)
    handing_reason: str = ""


class Policy:
    """One director's facts and decisions for every configured CVIP.

    :param local: this director's node number.
    :param specs: the CVIPs.
    :param settled: whether this director may claim an unclaimed CVIP already. A director
        that just started does not know the owners yet: it claims nothing until the
        plugin calls :meth:`settle` (it heard its peers, or waited long enough), so a
        restarted former owner does not take back what another holds.
    :param override: ``(cvip, candidates) -> node | None``, the ``clusterbus_cvip_owner``
        hook.
    """

    def __init__(self, *, local: int, specs: Iterable[CvipSpec], settled: bool = True,
                 override: Callable[[str, tuple[int, ...]], int | None] | None = None) -> None:
        self.local = local
        self.cvips: dict[str, _State] = {s.address: _State(spec=s) for s in specs}
        self.live: set[int] = {local}
        self.draining: set[int] = set()
        self.quorate = True
        self.settled = settled
        self.override = override

    # -- queries --------------------------------------------------------------------------

    def eligible(self, cvip: str) -> tuple[int, ...]:
        """The candidates of ``cvip`` that may own it in this director's view."""
        st = self.cvips[cvip]
        out = [n for n in st.spec.directors if n in self.live and n not in self.draining]
        if not self.quorate:
            out = [n for n in out if n != self.local]
        return tuple(sorted(out))

    def owner(self, cvip: str) -> int | None:
        """The owner last decided."""
        return self.cvips[cvip].owner

    def holding(self, cvip: str) -> bool:
        """Whether this director holds ``cvip`` (it claimed it and did not release it)."""
        return self.cvips[cvip].holding

    def rank(self, cvip: str) -> int:
        """This director's place in line after the owner (0: next), for backup priorities:
        the rendezvous order of the eligible candidates without the owner."""
        st = self.cvips[cvip]
        order = [n for n in ranking(cvip, self.eligible(cvip), st.spec.weights) if n != st.owner]
        return order.index(self.local) if self.local in order else len(st.spec.directors)

    def claims(self, cvip: str) -> dict[int, int]:
        """node -> generation of the claims known for ``cvip``."""
        return dict(self.cvips[cvip].claims)

    def target(self, cvip: str) -> tuple[int, int] | None:
        """The planned move pending for ``cvip`` (node, gen), if any."""
        return self.cvips[cvip].target

    def next_gen(self, cvip: str) -> int:
        """The generation a new claim or move of ``cvip`` takes."""
        return self.cvips[cvip].gen + 1

    # -- facts in -------------------------------------------------------------------------

    def director_up(self, node: int) -> list[Decision]:
        """A peer director is alive (it announces its claims itself)."""
        if node == self.local or node in self.live:
            return []
        self.live.add(node)
        return self.decide_all("director_up")

    def director_down(self, node: int) -> list[Decision]:
        """A peer director is gone: its claims and its drain go with it."""
        if node == self.local or node not in self.live:
            return []
        self.live.discard(node)
        self.draining.discard(node)  # a drain lasts while the director stays up
        for st in self.cvips.values():
            st.claims.pop(node, None)
            if st.target is not None and st.target[0] == node:
                st.target = None
        return self.decide_all("owner_down")

    def set_quorum(self, quorate: bool) -> list[Decision]:
        """This director's partition gained or lost quorum (without it: no CVIP here)."""
        if quorate == self.quorate:
            return []
        self.quorate = quorate
        return self.decide_all("quorum" if quorate else "quorum_lost")

    def set_draining(self, node: int, draining: bool) -> list[Decision]:
        """``clusterbus cvip drain NODE`` (or its undo), as every director heard it."""
        if draining == (node in self.draining) or (draining and node not in self.live):
            return []  # a director that is not up cannot be drained (it would not know)
        (self.draining.add if draining else self.draining.discard)(node)
        return self.decide_all("drain" if draining else "undrain")

    def settle(self) -> list[Decision]:
        """This director has heard its peers (or waited long enough): it may claim."""
        if self.settled:
            return []
        self.settled = True
        return self.decide_all("settled")

    def observe(self, cvip: str, *, origin: int, new: int | None, gen: int) -> list[Decision]:
        """A ``cvip.owner`` event (a peer's, or our own coming back from the bus).

        ``new == origin`` is that director's claim; anything else withdraws its claim.
        """
        st = self.cvips.get(cvip)
        if st is None:
            return []
        if origin == self.local:
            return []  # our own facts are set when we decide, not when the echo comes
        if new == origin:
            # kept even while the origin is not (yet) live: its director.up may come later
            st.claims[origin] = gen
            st.gen = max(st.gen, gen)
            if st.target is not None and st.target[0] == origin and gen >= st.target[1]:
                st.target = None  # the move is done
        else:
            st.claims.pop(origin, None)
        return self.decide(cvip, "conflict" if st.holding and new == origin else "announce")

    def move(self, cvip: str, node: int, gen: int, reason: str = "move") -> list[Decision]:
        """A planned move of ``cvip`` to ``node`` (``cvip.command``), generation ``gen``."""
        st = self.cvips.get(cvip)
        if st is None:
            return []
        if st.target is not None and st.target[1] >= gen:
            return []
        st.target = (node, gen)
        st.gen = max(st.gen, gen)
        return self.decide(cvip, reason)

    def reconfigure(self, specs: Iterable[CvipSpec]) -> list[str]:
        """New static facts (a reload): every CVIP that stays keeps its claims, owner,
        generation and handoff (only its candidates and weights change); a new one starts
        unclaimed; a removed one is forgotten. Call :meth:`decide_all` next.

        :returns: the removed CVIPs this director held (the caller withdraws its claims).
        """
        new = {s.address: s for s in specs}
        held = [c for c, st in self.cvips.items() if c not in new and st.holding]
        cvips: dict[str, _State] = {}
        for address, spec in new.items():
            st = self.cvips.get(address)
            if st is None:
                st = _State(spec=spec)
            else:
                st.spec = spec
            cvips[address] = st
        self.cvips = cvips
        return held

    # -- decisions ------------------------------------------------------------------------

    def decide_all(self, reason: str) -> list[Decision]:
        """:meth:`decide` for every CVIP."""
        out: list[Decision] = []
        for cvip in self.cvips:
            out += self.decide(cvip, reason)
        return out

    def decide(self, cvip: str, reason: str) -> list[Decision]:
        """Recompute the owner of ``cvip``; report what changed for this director."""
        st = self.cvips[cvip]
        eligible = self.eligible(cvip)
        override = self.override(cvip, eligible) if self.override and eligible else None
        claims = dict(st.claims)
        if st.holding:
            claims[self.local] = claims.get(self.local, st.gen)
        owner, how = choose(cvip, eligible, weights=st.spec.weights, claims=claims,
                            target=st.target, override=override)
        if how in ("hook", "move") and reason in ("announce", "director_up", "settled"):
            reason = how
        if how == "hrw" and not self.settled:
            # We may not know the owner yet: claim nothing, report nothing.
            return []
        if owner == self.local:
            st.handing_to = None
            if st.holding:
                if st.owner != owner:
                    old, st.owner = st.owner, owner
                    return [Decision(cvip=cvip, old=old, new=owner, reason=reason)]
                return []
            st.gen += 1
            st.holding = True
            st.claims[self.local] = st.gen
            if st.target is not None and st.target[0] == self.local:
                st.target = None
            old, st.owner = st.owner, owner
            return [Decision(cvip=cvip, old=old, new=owner, reason=reason, claim=True,
                             gen=st.gen)]
        if st.holding:
            # Hand over only once the new owner claimed it (it raised its priority), unless
            # we may not hold it at all (no quorum, nobody else eligible).
            if owner is not None and owner not in st.claims and self.quorate:
                if st.handing_to != owner:
                    st.handing_to, st.handing_reason = owner, reason
                return []
            if st.handing_to == owner and st.handing_reason:
                reason = st.handing_reason  # the claim we waited for: report the cause
            st.holding = False
            st.handing_to = None
            st.handing_reason = ""
            st.claims.pop(self.local, None)
            st.owner = owner
            return [Decision(cvip=cvip, old=self.local, new=owner, reason=reason,
                             release=True)]
        if owner != st.owner:
            old, st.owner = st.owner, owner
            return [Decision(cvip=cvip, old=old, new=owner, reason=reason)]
        return []

    def announcements(self) -> list[tuple[str, int]]:
        """``(cvip, gen)`` of every claim this director holds (re-announced when a peer
        comes up, so a director that just started learns the owners)."""
        return [(c, st.claims.get(self.local, st.gen)) for c, st in self.cvips.items()
                if st.holding]

    def release_now(self, cvip: str) -> list[Decision]:
        """Give ``cvip`` up without waiting for the new owner's claim (it never came)."""
        st = self.cvips[cvip]
        if not st.holding or st.handing_to is None:
            return []
        to = st.handing_to
        st.holding = False
        st.handing_to = None
        st.claims.pop(self.local, None)
        st.owner = to
        return [Decision(cvip=cvip, old=self.local, new=to, reason="handoff_timeout",
                         release=True)]

    def handing_over(self) -> dict[str, int]:
        """CVIPs this director holds while it waits for the new owner's claim."""
        return {c: st.handing_to for c, st in self.cvips.items() if st.handing_to is not None}
