"""The VRRP Router state machine, driven on a fake link with a fake clock
(:mod:`clusterbus.testing.vrrp`, the one plugin authors get).

No sockets and no sleeps: time only moves when the simulation moves it (to the next
router deadline or packet delivery). Each multicast ``Transmit`` reaches every other
running router after ``FakeLink.delay`` seconds; a unicast one only the router with that
address. Timings are asserted against the RFC 5798 §6.1 / RFC 3768 §6.1 formulas computed
here, independently of the machine.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterbus.errors import ConfigError, LocalProtocolError
from clusterbus.testing.vrrp import FakeLink
from clusterbus.vrrp import (
    TRANSITIONS,
    AddAddresses,
    Advertisement,
    Announce,
    Discarded,
    Effect,
    PrepareMaster,
    RemoveAddresses,
    Router,
    RouterConfig,
    State,
    StateChanged,
    Transmit,
)

VIP = "10.77.0.100/24"
ADDR = {"A": "10.77.0.1", "B": "10.77.0.2", "C": "10.77.0.3"}


def cfg(name: str, priority: int, **kw: object) -> RouterConfig:
    kw.setdefault("primary_address", ADDR[name])
    kw.setdefault("virtual_addresses", (VIP,))
    return RouterConfig(name=name, vrid=77, priority=priority, **kw)  # type: ignore[arg-type]


# RFC formulas, written out here so the test does not trust the machine's own arithmetic.
def skew_v3(priority: int, master_adver_interval: float) -> float:
    return ((256 - priority) * master_adver_interval) / 256  # RFC 5798 §6.1


def mdi_v3(priority: int, master_adver_interval: float) -> float:
    return 3 * master_adver_interval + skew_v3(priority, master_adver_interval)


def skew_v2(priority: int) -> float:
    return (256 - priority) / 256  # RFC 3768 §6.1


def mdi_v2(priority: int, advert_interval: float) -> float:
    return 3 * advert_interval + skew_v2(priority)


approx = pytest.approx  # float rounding only: the fake clock lands exactly on deadlines


def became_master(link: FakeLink, name: str) -> list[tuple[float, str]]:
    return [(t, reason) for t, _, _, new, reason in link.changes(name) if new is State.MASTER]


# -- elections ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3])
def test_election_highest_priority_wins_after_its_master_down_interval(version: int) -> None:
    link = FakeLink()
    link.add(cfg("A", 200, version=version))
    link.add(cfg("B", 100, version=version))
    link.start("A")
    link.start("B")
    link.run_for(20)
    assert link.masters() == ["A"]
    mdi = mdi_v2(200, 1) if version == 2 else mdi_v3(200, 1.0)
    assert became_master(link, "A") == [(approx(mdi), "master_down_timer")]
    assert became_master(link, "B") == []
    b = link.routers["B"]
    assert b.state is State.BACKUP and b.master_seen == ADDR["A"]
    assert link.max_masters == 1
    # The master advertises every Advertisement_Interval from the moment it took over.
    times = [t for t, _ in link.adverts("A")]
    assert times == approx([mdi + k for k in range(len(times))])
    assert all(adv.priority == 200 and adv.version == version for _, adv in link.adverts("A"))


def test_v2_and_v3_timers_differ_as_the_rfcs_say() -> None:
    # advert_interval 2: v3 skew scales with the interval, v2 skew does not.
    for version, expected in ((3, mdi_v3(100, 2.0)), (2, mdi_v2(100, 2))):
        link = FakeLink()
        link.add(cfg("A", 100, version=version, advert_interval=2))
        link.start("A")
        assert link.routers["A"].next_deadline() == approx(expected)
        link.run_for(30)
        assert became_master(link, "A") == [(approx(expected), "master_down_timer")]
    assert mdi_v3(100, 2.0) != mdi_v2(100, 2)


def test_address_owner_claims_master_at_once() -> None:
    link = FakeLink()
    link.add(cfg("A", 255))
    link.add(cfg("B", 254))
    link.start("B")
    link.run_for(5.5)
    assert link.masters() == ["B"]
    link.start("A")
    link.run_for(10)
    assert became_master(link, "A") == [(5.5, "address_owner")]
    assert link.masters() == ["A"]
    assert link.changes("B")[-1][2:] == (State.MASTER, State.BACKUP, "higher_priority_seen")


def test_effects_of_becoming_master_are_ordered() -> None:
    r = Router(cfg("A", 100), now=0.0)
    r.start(0.0)
    r.drain()
    r.handle_timer(r.next_deadline())  # type: ignore[arg-type]
    effects = r.drain()
    assert [type(e) for e in effects] == [StateChanged, Transmit, AddAddresses, Announce]
    assert effects[2] == AddAddresses(addrs=(VIP,))
    assert effects[3] == Announce(addrs=("10.77.0.100",))
    tx = effects[1]
    assert isinstance(tx, Transmit) and (tx.src, tx.dst) == ("10.77.0.1", "224.0.0.18")


def test_master_advert_matches_keepalived_vector() -> None:
    # tests/vectors/vrrp/v3_advert.hex: keepalived A, prio 150, 100 cs, VIP 10.77.0.100
    from vectors import VECTORS
    frame = bytes.fromhex((VECTORS / "vrrp" / "v3_advert.hex").read_text().strip())
    r = Router(cfg("A", 150), now=0.0)
    r.start(0.0)
    r.handle_timer(r.next_deadline())  # type: ignore[arg-type]
    tx = [e for e in r.drain() if isinstance(e, Transmit)]
    assert tx[0].data == frame[34:]


# -- preemption ---------------------------------------------------------------------------


def test_higher_priority_preempts_after_its_master_down_interval() -> None:
    link = FakeLink()
    link.add(cfg("A", 100))
    link.add(cfg("B", 200))
    link.start("A")
    link.run_for(10.25)
    assert link.masters() == ["A"]
    link.start("B")
    link.run_for(20)
    # B discards the lower-priority adverts; its Master_Down_Timer (with its own interval,
    # it learned none) expires and it preempts.
    assert became_master(link, "B") == [(approx(10.25 + mdi_v3(200, 1.0)), "preempt")]
    a_changes = link.changes("A")
    assert a_changes[-1][2:] == (State.MASTER, State.BACKUP, "higher_priority_seen")
    assert a_changes[-1][0] == approx(10.25 + mdi_v3(200, 1.0))
    assert link.masters() == ["B"]
    removed = [r for r in link.trace if r.router == "A" and isinstance(r.effect, RemoveAddresses)]
    assert len(removed) == 1


def test_master_hearing_a_lower_master_announces_its_addresses_again() -> None:
    """A backup that missed the master's adverts (a loaded host) took over and sent
    gratuitous ARPs; it steps down when it hears the master, but the hosts it reached
    send to its MAC: the master advertises and announces the addresses again at once."""
    r = Router(cfg("B", 200), now=0.0)
    r.start(0.0)
    r.handle_timer(r.next_deadline())  # type: ignore[arg-type]
    assert r.state is State.MASTER
    r.drain()
    lower = Advertisement(version=3, vrid=77, priority=100, addresses=("10.77.0.100",),
                          max_adver_int_cs=100).to_bytes(src=ADDR["A"], dst="224.0.0.18")
    r.receive(lower, source=ADDR["A"], dst="224.0.0.18", ttl=255, now=5.0)
    effects = r.drain()
    assert [type(e) for e in effects] == [Transmit, Announce], effects
    assert effects[1] == Announce(addrs=("10.77.0.100",))
    assert r.state is State.MASTER and r.next_deadline() == approx(6.0)


def test_preempt_false_does_not_take_over() -> None:
    link = FakeLink()
    link.add(cfg("A", 100))
    link.add(cfg("B", 200, preempt=False))
    link.start("A")
    link.run_for(10.25)
    link.start("B")
    link.run_for(60)
    assert link.masters() == ["A"]
    assert link.routers["B"].master_seen == ADDR["A"]
    assert became_master(link, "B") == []


def test_preempt_delay_waits_then_takes_over() -> None:
    link = FakeLink()
    link.add(cfg("A", 100))
    link.add(cfg("B", 200, preempt_delay=5.0))
    link.start("A")
    link.run_for(10.25)
    link.start("B")
    link.run_for(4.0)
    assert link.masters() == ["A"]  # B follows A for now
    link.run_for(20)
    first_seen = min(t for t, _ in link.adverts("A") if t >= 10.25)
    assert became_master(link, "B") == [(approx(first_seen + 5.0), "preempt")]
    assert link.masters() == ["B"]


def test_owner_always_preempts_even_with_preempt_false() -> None:
    link = FakeLink()
    link.add(cfg("A", 100))
    link.add(cfg("B", 255, preempt=False))
    link.start("A")
    link.run_for(5)
    link.start("B")
    link.run_for(5)
    assert link.masters() == ["B"]


# -- handoff and failure ------------------------------------------------------------------


def test_priority_zero_handoff_takes_skew_time() -> None:
    link = FakeLink()
    link.add(cfg("A", 200, advert_interval=0.5))
    link.add(cfg("B", 100))  # its own interval is 1 s; it learns 0.5 s from A (v3)
    link.start("A")
    link.start("B")
    link.run_for(10)
    assert link.routers["B"].master_adver_interval == 0.5
    t0 = link.now
    link.shutdown("A")
    link.run_for(10)
    assert became_master(link, "B") == [(approx(t0 + skew_v3(100, 0.5)), "priority_zero")]
    stop = [a for t, a in link.adverts("A") if t == t0]
    assert [a.priority for a in stop] == [0]
    assert link.changes("A")[-1][2:] == (State.MASTER, State.INITIALIZE, "shutdown")


def test_priority_zero_handoff_v2_uses_v2_skew() -> None:
    link = FakeLink()
    link.add(cfg("A", 200, version=2))
    link.add(cfg("B", 100, version=2))
    link.start("A")
    link.start("B")
    link.run_for(10)
    t0 = link.now
    link.shutdown("A")
    link.run_for(10)
    assert became_master(link, "B") == [(approx(t0 + skew_v2(100)), "priority_zero")]


@pytest.mark.parametrize("version", [2, 3])
def test_master_crash_takes_master_down_interval(version: int) -> None:
    link = FakeLink()
    interval = 0.5 if version == 3 else 1  # v2 intervals must match (RFC 3768 §7.1)
    link.add(cfg("A", 200, version=version, advert_interval=interval))
    link.add(cfg("B", 100, version=version, advert_interval=1))
    link.start("A")
    link.start("B")
    link.run_for(10.3)
    link.crash("A")
    last = max(t for t, _ in link.adverts("A"))
    link.run_for(10)
    mdi = mdi_v2(100, 1) if version == 2 else mdi_v3(100, 0.5)
    assert became_master(link, "B") == [(approx(last + mdi), "master_down_timer")]


def test_three_routers_failover_in_priority_order() -> None:
    link = FakeLink()
    for name, prio in (("A", 250), ("B", 150), ("C", 50)):
        link.add(cfg(name, prio))
        link.start(name)
    link.run_for(10)
    assert link.masters() == ["A"]
    link.crash("A")
    last = max(t for t, _ in link.adverts("A"))
    link.run_for(10)
    # B's skew is shorter, so it wins; C hears B before its own timer expires.
    assert became_master(link, "B") == [(approx(last + mdi_v3(150, 1.0)), "master_down_timer")]
    assert became_master(link, "C") == []
    assert link.masters() == ["B"]
    link.start("A")  # A restarts with start_listen: listens, then preempts B
    t_restart = link.now
    link.run_for(10)
    assert became_master(link, "A")[-1] == (approx(t_restart + mdi_v3(250, 1.0)), "preempt")
    assert link.masters() == ["A"]


def test_set_priority_below_peer_hands_off_at_once() -> None:
    link = FakeLink()
    link.add(cfg("A", 100))
    link.add(cfg("B", 200))
    link.start("A")
    link.run_for(10.25)
    link.start("B")
    link.run_for(10)
    assert link.masters() == ["B"]  # B preempted A; A heard B's priority 200
    t0 = link.now
    link.set_priority("B", 50)
    link.run_for(10)
    assert link.changes("B")[-1][2:] == (State.MASTER, State.BACKUP, "priority_changed")
    assert became_master(link, "A")[-1] == (approx(t0 + skew_v3(100, 1.0)), "priority_zero")
    assert link.masters() == ["A"]


def test_set_priority_without_a_higher_peer_keeps_master() -> None:
    link = FakeLink()
    link.add(cfg("A", 200))
    link.add(cfg("B", 100))
    link.start("A")
    link.start("B")
    link.run_for(10)
    link.set_priority("A", 150)  # B (100) never advertised: nothing to hand off to
    link.run_for(5)
    assert link.masters() == ["A"]
    assert link.adverts("A")[-1][1].priority == 150


# -- tie-break and start-up ---------------------------------------------------------------


def test_equal_priority_higher_primary_address_wins() -> None:
    link = FakeLink()
    link.add(cfg("A", 100))
    link.add(cfg("B", 100))
    link.start("A")
    link.start("B")
    link.run_for(20)
    # Both timers expire together; each hears the other; the lower address steps down.
    assert link.masters() == ["B"]
    assert link.changes("A")[-1][2:] == (State.MASTER, State.BACKUP, "higher_priority_seen")


def test_equal_priority_backup_does_not_preempt() -> None:
    link = FakeLink()
    link.add(cfg("A", 100))
    link.add(cfg("B", 100))
    link.start("A")
    link.run_for(5)
    link.start("B")
    link.run_for(20)
    assert link.masters() == ["A"]  # only masters break ties; B follows an equal master


def test_start_listen_avoids_two_masters_at_start() -> None:
    # 5 ms of link delay, sub-second adverts: the situation of keepalived's fault.
    for listen, expect_max in ((True, 1), (False, 2)):
        link = FakeLink(delay=0.005)
        link.add(cfg("A", 200, advert_interval=0.05, start_listen=listen))
        link.add(cfg("B", 100, advert_interval=0.05, start_listen=listen))
        link.start("A")
        link.start("B")
        link.run_for(5)
        assert link.masters() == ["A"]
        assert link.max_masters == expect_max


def test_unicast_peers() -> None:
    link = FakeLink()
    link.add(cfg("A", 200, unicast_peers=(ADDR["B"],)))
    link.add(cfg("B", 100, unicast_peers=(ADDR["A"],)))
    link.start("A")
    link.start("B")
    link.run_for(10)
    assert link.masters() == ["A"]
    assert {adv_dst for adv_dst in (r.effect.dst for r in link.trace
                                    if isinstance(r.effect, Transmit))} == {ADDR["B"]}


def test_ipv6_election() -> None:
    link = FakeLink()
    for name, prio, addr in (("A", 200, "fe80::1"), ("B", 100, "fe80::2")):
        link.add(RouterConfig(name=name, vrid=9, priority=prio, family="inet6",
                              primary_address=addr, virtual_addresses=("fd00:77::100/64",)))
        link.start(name)
    link.run_for(10)
    assert link.masters() == ["A"]
    assert link.routers["B"].master_seen == "fe80::1"


# -- receive checks (RFC 5798 §7.1) --------------------------------------------------------


def _backup(**kw: object) -> Router:
    r = Router(cfg("B", 100, **kw), now=0.0)
    r.start(0.0)
    r.drain()
    return r


def _advert(**kw: object) -> bytes:
    fields: dict[str, object] = dict(version=3, vrid=77, priority=200,
                                     addresses=("10.77.0.100",), max_adver_int_cs=100)
    fields.update(kw)
    return Advertisement(**fields).to_bytes(src=ADDR["A"], dst="224.0.0.18")  # type: ignore


@pytest.mark.parametrize(
    ("data", "ttl", "source", "reason"),
    [
        (_advert(), 254, ADDR["A"], "ttl"),
        (_advert(vrid=78), 255, ADDR["A"], "vrid_mismatch"),
        (_advert()[:7], 255, ADDR["A"], "malformed"),
        (_advert()[:6] + b"\x00\x00" + _advert()[8:], 255, ADDR["A"], "checksum"),
        (_advert(), 255, ADDR["B"], "own_advert"),
        (_advert(), 255, "fe80::1", "family_mismatch"),
        (_advert(), 255, "garbage", "bad_address"),
        (Advertisement(version=2, vrid=77, priority=200, addresses=("10.77.0.100",),
                       advert_int_s=1).to_bytes(src=ADDR["A"], dst="224.0.0.18"),
         255, ADDR["A"], "version_mismatch"),
    ],
)
def test_receive_checks_discard_and_count(data: bytes, ttl: int, source: str, reason: str) -> None:
    r = _backup()
    deadline = r.next_deadline()
    r.receive(data, source=source, dst="224.0.0.18", ttl=ttl, now=1.0)
    effects = r.drain()
    assert [(type(e), e.reason, e.source) for e in effects  # type: ignore[attr-defined]
            ] == [(Discarded, reason, source)]
    assert r.counters == {reason: 1}
    assert r.next_deadline() == deadline  # a discarded advert does not reset the timer
    assert r.master_seen is None


def test_discarded_effect_carries_reason_and_source() -> None:
    r = _backup()
    r.receive(_advert(vrid=5), source=ADDR["A"], dst="224.0.0.18", ttl=255, now=1.0)
    (effect,) = r.drain()
    assert isinstance(effect, Discarded)
    assert (effect.reason, effect.source) == ("vrid_mismatch", ADDR["A"])
    assert "5" in effect.detail


def test_v2_checks_interval_and_auth() -> None:
    r = _backup(version=2)
    v2 = dict(version=2, vrid=77, priority=200, addresses=("10.77.0.100",))
    for fields, reason in ((dict(advert_int_s=2), "interval_mismatch"),
                           (dict(advert_int_s=1, auth_type=1, auth_data=b"secret"),
                            "auth_mismatch")):
        data = Advertisement(**{**v2, **fields}).to_bytes(src=ADDR["A"], dst="224.0.0.18")
        r.receive(data, source=ADDR["A"], dst="224.0.0.18", ttl=255, now=1.0)
        assert r.counters[reason] == 1
    assert r.master_seen is None


def test_address_list_mismatch_is_counted_but_accepted() -> None:
    r = _backup()
    r.receive(_advert(addresses=("10.77.0.101",)), source=ADDR["A"], dst="224.0.0.18",
              ttl=255, now=1.0)
    assert r.counters == {"address_mismatch": 1}
    assert r.master_seen == ADDR["A"]
    assert r.next_deadline() == approx(1.0 + mdi_v3(100, 1.0))
    assert not [e for e in r.drain() if isinstance(e, Discarded)]


def test_unicast_ignores_ttl_but_requires_a_known_peer() -> None:
    r = _backup(unicast_peers=(ADDR["A"],))
    data = Advertisement(version=3, vrid=77, priority=200, addresses=("10.77.0.100",),
                         max_adver_int_cs=100).to_bytes(src=ADDR["A"], dst=ADDR["B"])
    r.receive(data, source=ADDR["A"], dst=ADDR["B"], ttl=3, now=1.0)
    assert r.master_seen == ADDR["A"]
    r.receive(data, source=ADDR["C"], dst=ADDR["B"], ttl=255, now=1.0)
    assert r.counters == {"unknown_peer": 1}


def test_not_running_router_discards() -> None:
    r = Router(cfg("B", 100), now=0.0)
    r.receive(_advert(), source=ADDR["A"], dst="224.0.0.18", ttl=255, now=1.0)
    assert r.counters == {"not_running": 1} and r.state is State.INITIALIZE


def test_receive_never_raises_on_non_bytes() -> None:
    r = _backup()
    r.receive(None, source=ADDR["A"], dst="224.0.0.18", ttl=255, now=1.0)  # type: ignore
    assert r.counters == {"malformed": 1}


# -- transitions table --------------------------------------------------------------------


def test_illegal_transition_raises_and_leaves_state() -> None:
    r = Router(cfg("A", 100), now=0.0)
    r.start(0.0)
    with pytest.raises(LocalProtocolError):
        r.start(1.0)
    assert r.state is State.BACKUP
    r.handle_timer(r.next_deadline())  # type: ignore[arg-type]
    assert r.state is State.MASTER
    r.drain()
    with pytest.raises(LocalProtocolError):
        r.start(5.0)
    assert r.state is State.MASTER and r.drain() == []


def test_shutdown_is_idempotent_and_restart_works() -> None:
    r = Router(cfg("A", 100), now=0.0)
    r.shutdown(0.0)
    assert r.drain() == [] and r.next_deadline() is None
    r.start(1.0)
    r.shutdown(2.0)
    assert r.state is State.INITIALIZE and r.next_deadline() is None
    r.start(3.0)
    assert r.state is State.BACKUP


def test_every_state_changed_reason_is_in_the_table() -> None:
    reasons = {reason for (_, reason) in TRANSITIONS}
    assert {"startup", "master_down_timer", "higher_priority_seen", "priority_zero",
            "preempt", "shutdown", "priority_changed"} <= reasons
    assert set(TRANSITIONS.values()) <= set(State)
    for (old, reason), new in TRANSITIONS.items():
        # the veto is the one transition that keeps its state (reported, not a change)
        assert old is not new or (old, reason) == (State.BACKUP, "vetoed"), reason


def test_config_validation_names_the_key() -> None:
    cases = [
        (dict(vrid=0), "vrid"),
        (dict(priority=0), "priority"),
        (dict(version=2, advert_interval=0.5), "advert_interval"),
        (dict(advert_interval=0.005), "advert_interval"),
        (dict(advert_interval=41), "advert_interval"),
        (dict(version=2, family="inet6", primary_address="fe80::1",
              virtual_addresses=("fd00::1",)), "version"),
        (dict(primary_address="fe80::1"), "primary_address"),
        (dict(virtual_addresses=()), "virtual_addresses"),
        (dict(virtual_addresses=("nope",)), "virtual_addresses"),
        (dict(unicast_peers=("fe80::1",)), "unicast_peers"),
        (dict(preempt_delay=-1), "preempt_delay"),
    ]
    for kw, key in cases:
        fields: dict[str, object] = dict(name="VI_1", vrid=77, priority=100,
                                         primary_address=ADDR["A"], virtual_addresses=(VIP,))
        fields.update(kw)
        with pytest.raises(ConfigError) as info:
            RouterConfig(**fields)  # type: ignore[arg-type]
        assert info.value.key == key, kw


# -- property tests -----------------------------------------------------------------------


@st.composite
def router_configs(draw: st.DrawFn, name: str = "B") -> RouterConfig:
    version = draw(st.sampled_from([2, 3]))
    interval = 1 if version == 2 else draw(st.sampled_from([0.05, 1.0, 2.5]))
    return cfg(name, draw(st.integers(1, 255)), version=version, advert_interval=interval,
               preempt=draw(st.booleans()), preempt_delay=draw(st.sampled_from([0.0, 0.5, 3.0])),
               start_listen=draw(st.booleans()), ask_prepare=draw(st.booleans()))


def advert_bytes(draw: st.DrawFn, source: str) -> bytes:
    version = draw(st.sampled_from([2, 3]))
    common = dict(vrid=draw(st.sampled_from([77, 77, 77, 78])), priority=draw(st.integers(0, 255)),
                  addresses=draw(st.sampled_from([("10.77.0.100",), ("10.77.0.101",)])))
    if version == 3:
        adv = Advertisement(version=3, max_adver_int_cs=draw(st.sampled_from([5, 100, 250, 4095])),
                            **common)  # type: ignore[arg-type]
    else:
        adv = Advertisement(version=2, advert_int_s=draw(st.sampled_from([1, 2])),
                            **common)  # type: ignore[arg-type]
    return adv.to_bytes(src=source, dst="224.0.0.18")


OPS = ("start", "shutdown", "timer", "bytes", "advert", "priority", "answer")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=router_configs(), data=st.data())
def test_any_input_sequence_keeps_the_machine_consistent(config: RouterConfig,
                                                         data: st.DataObject) -> None:
    r = Router(config, now=0.0)
    now = 0.0
    state = r.state
    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(st.sampled_from(OPS))
        before = r.state
        if op == "start":
            if r.state is State.INITIALIZE:
                r.start(now)
            else:
                with pytest.raises(LocalProtocolError):
                    r.start(now)
                assert r.state is before and r.drain() == []
        elif op == "shutdown":
            r.shutdown(now)
        elif op == "timer":
            target = now + data.draw(st.floats(0, 10))
            for _ in range(10_000):
                d = r.next_deadline()
                if d is None or d > target:
                    break
                now = max(now, d)
                r.handle_timer(now)
            else:
                raise AssertionError("timers never settle")
            now = target
        elif op == "bytes":
            raw = data.draw(st.binary(max_size=40))
            r.receive(raw, source=ADDR["A"], dst="224.0.0.18",
                      ttl=data.draw(st.sampled_from([255, 255, 1])), now=now)
        elif op == "advert":
            source = data.draw(st.sampled_from([ADDR["A"], ADDR["C"]]))
            r.receive(advert_bytes(data.draw, source), source=source, dst="224.0.0.18",
                      ttl=255, now=now)
        elif op == "answer":
            waiting = r.preparing is not None
            assert r.answer_prepare(data.draw(st.sampled_from([None, "no"])), now) is waiting
        else:
            r.set_priority(data.draw(st.integers(1, 255)), now)

        assert isinstance(r.state, State)
        assert r.preparing is None or (r.state is State.BACKUP and config.ask_prepare)
        assert (r.next_deadline() is None) == (r.state is State.INITIALIZE)
        if r.state is State.MASTER:
            assert r.master_seen == config.primary_address
        if r.state is State.INITIALIZE:
            assert r.master_seen is None
        for effect in r.drain():
            assert isinstance(effect, Effect)
            if isinstance(effect, StateChanged):
                assert effect.old is state
                assert TRANSITIONS[(effect.old, effect.reason)] is effect.new
                state = effect.new
            elif isinstance(effect, Transmit):
                adv = Advertisement.from_bytes(effect.data, src=effect.src, dst=effect.dst)
                assert adv.priority in (0, r.priority) and adv.vrid == 77
                assert adv.version == config.version
        assert state is r.state
        assert all(isinstance(v, int) and v > 0 for v in r.counters.values())


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[RouterConfig], float, list[tuple[float, str, str, int]]]:
    n = draw(st.integers(2, 3))
    version = draw(st.sampled_from([2, 3]))
    names = ["A", "B", "C"][:n]
    prios = draw(st.lists(st.integers(1, 254), min_size=n, max_size=n))
    owner = draw(st.sampled_from([None, *names]))  # at most one address owner
    configs = []
    for name, prio in zip(names, prios):
        interval = 1 if version == 2 else draw(st.sampled_from([0.1, 0.5, 1.0]))
        configs.append(cfg(name, 255 if name == owner else prio, version=version,
                           advert_interval=interval, preempt=draw(st.booleans()),
                           preempt_delay=draw(st.sampled_from([0.0, 0.0, 2.0])),
                           start_listen=draw(st.booleans())))
    delay = draw(st.sampled_from([0.0, 0.002]))
    starts = [(draw(st.floats(0, 5)), name, "start", 0) for name in names]
    later = draw(st.lists(st.tuples(st.floats(0, 15), st.sampled_from(names),
                                    st.sampled_from(["start", "crash", "shutdown", "priority"]),
                                    st.integers(1, 254)), max_size=6))
    return configs, delay, sorted(starts + later)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_exactly_one_master_after_convergence(
    scenario: tuple[list[RouterConfig], float, list[tuple[float, str, str, int]]],
) -> None:
    configs, delay, events = scenario
    link = FakeLink(delay=delay)
    for c in configs:
        link.add(c)
    for at, name, action, prio in events:
        link.run_until(at)
        running = name in link.running
        if action == "start" and not running:
            link.start(name)
        elif action == "crash" and running:
            link.crash(name)
        elif action == "shutdown" and running:
            link.shutdown(name)
        elif action == "priority" and running and link.routers[name].priority != 255:
            link.set_priority(name, prio)
    # Lossless link, no more input: a few Master_Down_Intervals (at most ~4 s each, plus
    # a preempt delay) per router is enough for any chain of takeovers to settle.
    link.run_for(40)
    if link.running:
        masters = link.masters()
        assert len(masters) == 1, (masters, link.changes()[-6:])
        link.run_for(20)
        assert link.masters() == masters  # and it stays that way
        for n in link.running - set(masters):
            assert link.routers[n].state is State.BACKUP
    else:
        assert link.masters() == []


# -- the veto: PrepareMaster / answer_prepare ----------------------------------------------


def _asking(name: str, priority: int, **kw: object) -> RouterConfig:
    return cfg(name, priority, ask_prepare=True, advert_interval=0.1, **kw)


def test_prepare_agreed_takes_over_when_it_would_have() -> None:
    link = FakeLink()
    link.add(_asking("B", 100))
    link.start("B")
    link.run_for(1)
    mdi = mdi_v3(100, 0.1)
    assert became_master(link, "B") == [(approx(mdi), "master_down_timer")]
    kinds = [type(r.effect) for r in link.trace if r.router == "B"]
    # asked first; nothing of the takeover before the answer
    i = kinds.index(PrepareMaster)
    assert kinds[i + 1:i + 3] == [StateChanged, Transmit]


def test_veto_stays_backup_sends_priority_zero_and_asks_again() -> None:
    link = FakeLink(prepare=lambda name: "maintenance")
    link.add(_asking("B", 100))
    link.start("B")
    mdi = mdi_v3(100, 0.1)
    link.run_for(mdi * 2.5)
    assert link.masters() == []
    vetoes = [c for c in link.changes("B") if c[4] == "vetoed"]
    assert [(t, old, new) for t, _, old, new, _ in vetoes] == [
        (approx(mdi), State.BACKUP, State.BACKUP), (approx(2 * mdi), State.BACKUP, State.BACKUP)]
    # a vetoed takeover after the master went silent hands over with priority 0 ...
    assert [a.priority for _, a in link.adverts("B")] == [0, 0]
    # ... and no address ever went up
    assert not any(isinstance(r.effect, (AddAddresses, Announce)) for r in link.trace)


def test_vetoed_preemption_sends_nothing() -> None:
    link = FakeLink(prepare=lambda name: "no" if name == "A" else None)
    link.add(cfg("B", 100, advert_interval=0.1))
    link.start("B")
    link.run_for(1)
    assert link.masters() == ["B"]
    link.add(_asking("A", 200))
    link.start("A")
    link.run_for(1)
    assert link.masters() == ["B"]
    assert {c[4] for c in link.changes("A")} == {"startup", "vetoed"}
    assert link.adverts("A") == []  # no priority 0: B would have taken it as leaving
    assert link.max_masters == 1


def test_no_answer_takes_over_at_the_deadline() -> None:
    link = FakeLink(prepare=FakeLink.SILENT)
    link.add(_asking("B", 100, prepare_timeout=0.05))
    link.start("B")
    link.run_for(1)
    assert became_master(link, "B") == [(approx(mdi_v3(100, 0.1) + 0.05), "master_down_timer")]
    assert link.routers["B"].answer_prepare(None, link.now) is False  # too late: ignored


def test_a_master_heard_while_asking_cancels_the_takeover() -> None:
    r = Router(_asking("B", 100), now=0.0)
    r.start(0.0)
    r.handle_timer(r.next_deadline())  # type: ignore[arg-type]
    asked = [e for e in r.drain() if isinstance(e, PrepareMaster)]
    assert len(asked) == 1 and r.preparing == "master_down_timer"
    now = asked[0].deadline - 0.01
    r.receive(_advert(max_adver_int_cs=10), source=ADDR["A"], dst="224.0.0.18", ttl=255,
              now=now)
    assert r.preparing is None and r.master_seen == ADDR["A"]
    assert r.answer_prepare(None, now) is False
    assert r.state is State.BACKUP and r.next_deadline() == approx(now + mdi_v3(100, 0.1))


def test_the_address_owner_never_asks() -> None:
    r = Router(_asking("A", 255), now=0.0)
    r.start(0.0)
    assert r.state is State.MASTER
    assert not any(isinstance(e, PrepareMaster) for e in r.drain())


# -- master_gone: the master's daemon left the Corosync group (fast_takeover) ---------------


def _gone(link: FakeLink, name: str, source: str) -> bool:
    used = link.routers[name].master_gone(source, link.now)
    link._collect(name)
    return used


def test_master_gone_takes_over_after_skew_time_not_master_down_interval() -> None:
    link = FakeLink()
    link.add(cfg("A", 200))
    link.add(cfg("B", 100))
    link.start("A")
    link.start("B")
    link.run_for(10)
    assert link.masters() == ["A"] and link.routers["B"].master_seen == ADDR["A"]
    link.crash("A")
    t0 = link.now
    assert _gone(link, "B", ADDR["A"]) is True
    link.run_for(10)
    assert link.masters() == ["B"]
    assert became_master(link, "B") == [(approx(t0 + skew_v3(100, 1.0)), "master_gone")]
    assert skew_v3(100, 1.0) < mdi_v3(100, 1.0)


def test_without_master_gone_the_rfc_timer_decides() -> None:
    link = FakeLink()
    link.add(cfg("A", 200))
    link.add(cfg("B", 100))
    link.start("A")
    link.start("B")
    link.run_for(10)
    last_advert = link.adverts("A")[-1][0]
    link.crash("A")
    link.run_for(10)
    assert became_master(link, "B") == [(approx(last_advert + mdi_v3(100, 1.0)),
                                         "master_down_timer")]


def test_master_gone_ignores_a_hint_about_another_router_or_in_the_wrong_state() -> None:
    link = FakeLink()
    link.add(cfg("A", 200))
    link.add(cfg("B", 100))
    link.start("A")
    link.start("B")
    link.run_for(10)
    assert _gone(link, "B", ADDR["C"]) is False   # not the master B follows
    assert _gone(link, "B", "not an address") is False
    assert _gone(link, "A", ADDR["B"]) is False   # a MASTER ignores it
    link.run_for(10)
    assert link.masters() == ["A"]
    assert became_master(link, "B") == []
    idle = Router(cfg("C", 100), now=0.0)
    assert idle.master_gone(ADDR["A"], 0.0) is False  # INITIALIZE
    assert idle.drain() == []


def test_master_gone_with_two_backups_keeps_one_master() -> None:
    # Both backups get the hint; the Skew_Time wait lets the higher priority win and the
    # other hear its advert first (as on a priority-0 advert).
    link = FakeLink(delay=0.001)
    link.add(cfg("A", 200))
    link.add(cfg("B", 150))
    link.add(cfg("C", 100))
    for n in "ABC":
        link.start(n)
    link.run_for(10)
    link.crash("A")
    assert _gone(link, "B", ADDR["A"]) and _gone(link, "C", ADDR["A"])
    link.run_for(10)
    assert link.masters() == ["B"]
    assert became_master(link, "C") == []
    assert link.max_masters == 1


def test_master_gone_is_asked_and_a_veto_holds() -> None:
    link = FakeLink(prepare=lambda name: "maintenance" if name == "B" else None)
    link.add(_asking("A", 200))
    link.add(_asking("B", 100))
    link.start("A")
    link.start("B")
    link.run_for(5)
    link.crash("A")
    t0 = link.now
    assert _gone(link, "B", ADDR["A"])
    link.run_for(skew_v3(100, 0.1) * 1.5)
    asked = [r for r in link.trace if r.router == "B" and isinstance(r.effect, PrepareMaster)]
    assert [a.effect.reason for a in asked] == ["master_gone"]
    assert asked[0].time == approx(t0 + skew_v3(100, 0.1))
    assert link.routers["B"].state is State.BACKUP
    assert [c[4] for c in link.changes("B")][-1] == "vetoed"


def test_master_gone_is_in_the_transition_table() -> None:
    assert TRANSITIONS[(State.BACKUP, "master_gone")] is State.MASTER
