"""The CVIP plugin without I/O: configuration, facts from events, VRRP priorities set
through ``Cluster.set_vrrp_priority``, control requests, and the machine's release."""

from __future__ import annotations

from typing import Any

import pytest

from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.errors import ConfigError
from clusterbus.events import ClusterQuorum, DirectorDown, DirectorUp
from clusterbus.pluginhost import PluginHost
from clusterbus.plugins import cvip
from clusterbus.vrrp import machine

VRRP = {"instance": [{"name": "VI_1", "interface": "lo", "vrid": 7, "priority": 100,
                      "virtual_ipaddress": ["10.66.0.100/24"]}]}


def section(**over: Any) -> dict[str, Any]:
    vip = {"address": "10.66.0.100/24", "interface": "lo", "vrid": 7, "directors": [1, 2, 3]}
    vip.update(over.pop("vip", {}))
    return {"settle_time": 0.0, "control": "/tmp/cvip-test.sock", "vip": [vip], **over}


#: engine -> source name -> the directors that source reports up (Cluster.directors())
_SOURCES: dict[Engine, dict[str, set[int]]] = {}


def sources(engine: Engine, *names: str) -> None:
    """Director sources for ``engine``, each a set the tests change (as peers.py and the
    Corosync source do before they publish director.up / director.down)."""
    by_name = _SOURCES.setdefault(engine, {})
    for name in names:
        live = by_name.setdefault(name, set())
        engine.director_sources[name] = lambda live=live: sorted(live)


def up(engine: Engine, node: int, source: str = "peers") -> None:
    _SOURCES[engine][source].add(node)
    engine.publish(DirectorUp, node=node, reason="heartbeat")


def down(engine: Engine, node: int, source: str = "peers") -> None:
    _SOURCES[engine][source].discard(node)
    engine.publish(DirectorDown, node=node, reason="heartbeat_timeout")


def setup(sec: dict[str, Any], node: int = 1, extra: dict[str, Any] | None = None
          ) -> tuple[Engine, list[tuple[str, int, bool]], list[Any]]:
    host = PluginHost(enable=["cvip"])
    host.load_entrypoints()
    engine = Engine(origin=node, plugins=host)
    sources(engine, "peers", "corosync")
    calls: list[tuple[str, int, bool]] = []
    engine.vrrp_priority = lambda i, p, release=False: calls.append((i, p, release))
    published: list[Any] = []
    engine.sinks.append(published.append)
    data = {"daemon": {"node": node}, "vrrp": VRRP, "cvip": sec, **(extra or {})}
    host.configure(parse_config(data, file="/etc/cb.toml"), engine.cluster)
    host.call_historic("clusterbus_startup", cluster=engine.cluster)
    return engine, calls, published


@pytest.mark.parametrize(("over", "key"), [
    ({"vip": {"address": "10.66.0.100"}}, "cvip.vip[0].address"),
    ({"vip": {"address": "nonsense/24"}}, "cvip.vip[0].address"),
    ({"vip": {"vrid": 8}}, "cvip.vip[0].vrid"),
    ({"vip": {"address": "10.66.0.101/24"}}, "cvip.vip[0].address"),
    ({"vip": {"weight": {"9": 2.0}}}, "cvip.vip[0].weight"),
    ({"vip": {"weight": {"2": -1}}}, "cvip.vip[0].weight"),
    ({"vip": {"directors": []}}, "cvip.vip[0].directors"),
    ({"vip": {"track_file": "relative"}}, "cvip.vip[0].track_file"),
    ({"priority_backup": 250}, "cvip.priority_backup"),
    ({"bogus": 1}, "cvip.bogus"),
])
def test_bad_sections_are_one_line_config_errors(over: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        setup(section(**over))
    assert info.value.key == key
    assert "\n" not in str(info.value)


def test_single_director_claims_and_raises_its_priority() -> None:
    engine, calls, published = setup(section())
    st = cvip.plugin.state(engine.cluster)
    assert st is not None and st.policy.holding("10.66.0.100")
    assert calls[-1] == ("VI_1", 200, False)
    [ev] = [e for e in published if e.topic == "cvip.owner"]
    assert (ev.cvip, ev.old, ev.new, ev.gen) == ("10.66.0.100", None, 1, 1)


def test_a_peers_newer_claim_makes_us_hand_over_with_priority_zero() -> None:
    engine, calls, published = setup(section())
    up(engine, 2)
    from clusterbus.plugins.cvip import CvipOwner

    peer = CvipOwner(origin=2, seq=1, time=1.0, cvip="10.66.0.100", old=1, new=2, gen=5,
                     reason="move")
    engine.plugins.notify_event(peer, engine.cluster)
    assert calls[-1] == ("VI_1", 190, True)  # released: the handoff
    st = cvip.plugin.state(engine.cluster)
    assert st is not None and not st.policy.holding("10.66.0.100")
    assert st.policy.owner("10.66.0.100") == 2


def test_move_request_is_a_command_every_director_applies() -> None:
    engine, calls, published = setup(section())
    up(engine, 3)
    st = cvip.plugin.state(engine.cluster)
    assert st is not None
    reply = cvip.plugin.request(st, {"op": "move", "cvip": "10.66.0.100", "node": 3})
    assert reply["ok"], reply
    cmd = [e for e in published if e.topic == "cvip.command"]
    assert [(c.op, c.node) for c in cmd] == [("move", 3)]
    assert st.policy.handing_over() == {"10.66.0.100": 3}  # waits for 3's claim
    assert cvip.plugin.request(st, {"op": "move", "cvip": "10.66.0.100", "node": 2})["ok"] \
        is False  # 2 is not up
    assert cvip.plugin.request(st, {"op": "nope"})["ok"] is False


def test_owner_down_and_quorum() -> None:
    engine, calls, published = setup(section(), node=2,
                                     extra={"corosync": {"enabled": True, "quorum": True}})
    st = cvip.plugin.state(engine.cluster)
    assert st is not None
    up(engine, 1)
    from clusterbus.plugins.cvip import CvipOwner

    engine.plugins.notify_event(CvipOwner(origin=1, seq=1, time=1.0, cvip="10.66.0.100",
                                          old=None, new=1, gen=9), engine.cluster)
    assert st.policy.owner("10.66.0.100") == 1 and not st.policy.holding("10.66.0.100")
    down(engine, 1)
    assert st.policy.holding("10.66.0.100")  # the only one left
    assert calls[-1] == ("VI_1", 200, False)
    engine.publish(ClusterQuorum, quorate=False, members=(2,))
    assert not st.policy.holding("10.66.0.100")
    assert calls[-1][2] is True  # given up at once


def test_hook_decides_instead() -> None:
    class Chooser:
        @cvip.hookimpl
        def clusterbus_cvip_owner(self, cvip: str, candidates: tuple[int, ...]) -> int | None:
            return max(candidates)

    host = PluginHost(enable=["cvip"])
    host.load_entrypoints()
    host.register(Chooser(), "chooser")
    engine = Engine(origin=1, plugins=host)
    sources(engine, "peers")
    engine.vrrp_priority = lambda *a, **k: None
    data = {"daemon": {"node": 1}, "vrrp": VRRP, "cvip": section()}
    host.configure(parse_config(data, file="/etc/cb.toml"), engine.cluster)
    host.call_historic("clusterbus_startup", cluster=engine.cluster)
    up(engine, 3)
    st = cvip.plugin.state(engine.cluster)
    assert st is not None and st.policy.handing_over() == {"10.66.0.100": 3}


def test_track_file_mode_writes_one_on_the_owner(tmp_path: Any) -> None:
    f = tmp_path / "cvip.track"
    engine, calls, published = setup(section(vip={"track_file": str(f), "vrid": 99}))
    assert calls == []  # no speaker involved
    assert f.read_text() == "1\n"
    up(engine, 2)
    from clusterbus.plugins.cvip import CvipOwner

    engine.plugins.notify_event(CvipOwner(origin=2, seq=1, time=1.0, cvip="10.66.0.100",
                                          old=1, new=2, gen=7), engine.cluster)
    assert f.read_text() == "0\n"


def test_router_release_steps_down_without_a_higher_peer() -> None:
    cfg = machine.RouterConfig(name="VI_1", vrid=7, priority=200, version=3, family="inet",
                               advert_interval=1.0, virtual_addresses=("10.66.0.100/24",),
                               preempt=True, preempt_delay=0.0, accept_mode=False,
                               primary_address="10.66.0.1", unicast_peers=(),
                               start_listen=True, interface="lo", ask_prepare=False)
    r = machine.Router(cfg, now=0.0)
    r.start(0.0)
    r.handle_timer(r.next_deadline() or 0.0)
    assert r.state is machine.State.MASTER
    r.drain()
    r.set_priority(100, 5.0)  # nobody heard above 100: stays master
    assert r.state is machine.State.MASTER
    r.set_priority(100, 5.0, release=True)
    assert r.state is machine.State.BACKUP
    sent = [e for e in r.drain() if isinstance(e, machine.Transmit)]
    assert sent and sent[0].data[2] == 0  # the priority-0 advert


def test_drain_and_rebalance_requests() -> None:
    from clusterbus.plugins.cvip import CvipOwner
    from clusterbus.plugins.cvip.policy import hrw

    engine, calls, published = setup(section())
    st = cvip.plugin.state(engine.cluster)
    assert st is not None and st.policy.holding("10.66.0.100")
    up(engine, 2)
    assert cvip.plugin.request(st, {"op": "drain", "node": 9})["ok"] is False  # not up
    assert cvip.plugin.request(st, {"op": "drain", "node": 1})["ok"]
    assert st.policy.draining == {1}
    assert st.policy.handing_over() == {"10.66.0.100": 2}  # waits for 2's claim
    engine.plugins.notify_event(CvipOwner(origin=2, seq=1, time=1.0, cvip="10.66.0.100",
                                          old=1, new=2, gen=st.policy.next_gen("10.66.0.100")),
                                engine.cluster)
    assert not st.policy.holding("10.66.0.100") and calls[-1][2] is True
    releases = [e for e in published if e.topic == "cvip.owner" and e.old == 1 and e.new == 2]
    assert releases[-1].reason == "drain"
    assert cvip.plugin.request(st, {"op": "drain", "node": 1, "undo": True})["ok"]
    assert st.policy.draining == set()
    # rebalance moves the CVIP to its rendezvous choice, or nothing when it is there
    reply = cvip.plugin.request(st, {"op": "rebalance"})
    best = hrw("10.66.0.100", (1, 2))
    assert reply["moves"] == ({} if best == 2 else {"10.66.0.100": 1})
    show = cvip.plugin.request(st, {"op": "show"})["show"]
    assert show["cvips"][0]["owner"] == best and show["live"] == [1, 2]


def test_decisions_follow_the_clusters_live_directors_not_one_sources_event() -> None:
    """Director 2 owns the CVIP; the peer link loses it while Corosync still has it: the
    peers' director.down alone takes nothing over (Cluster.directors() still lists 2);
    once Corosync loses it too, director 1 takes the CVIP."""
    from clusterbus.plugins.cvip import CvipOwner

    engine, calls, published = setup(section(vip={"directors": [1, 2]}), node=1)
    st = cvip.plugin.state(engine.cluster)
    assert st is not None
    up(engine, 2, "corosync")
    up(engine, 2, "peers")
    engine.plugins.notify_event(CvipOwner(origin=2, seq=1, time=1.0, cvip="10.66.0.100",
                                          old=None, new=2, gen=9), engine.cluster)
    if st.policy.holding("10.66.0.100"):  # 1 had claimed first: 2's newer claim wins
        assert calls[-1][2] is True
    assert st.policy.owner("10.66.0.100") == 2 and not st.policy.holding("10.66.0.100")
    down(engine, 2, "peers")
    assert engine.cluster.directors() == (1, 2)
    assert st.policy.live == {1, 2}
    assert st.policy.owner("10.66.0.100") == 2 and not st.policy.holding("10.66.0.100")
    assert st.counters["facts.down_still_live"] == 1
    down(engine, 2, "corosync")
    assert st.policy.live == {1}
    assert st.policy.holding("10.66.0.100") and calls[-1] == ("VI_1", 200, False)
    # the first source that sees it again brings it back (no CVIP moves: sticky)
    up(engine, 2, "corosync")
    assert st.policy.live == {1, 2} and st.policy.holding("10.66.0.100")


VRRP2 = {"instance": [*VRRP["instance"],
                      {"name": "VI_2", "interface": "lo", "vrid": 8, "priority": 100,
                       "virtual_ipaddress": ["10.66.0.101/24"]}]}


def reload(engine: Engine, sec: dict[str, Any], vrrp: dict[str, Any] = VRRP,
           node: int = 1) -> dict[str, str | None]:
    data = {"daemon": {"node": node}, "vrrp": vrrp, "cvip": sec}
    return engine.plugins.reload(parse_config(data, file="/etc/cb.toml"), engine.cluster)


def test_reload_applies_weights_directors_priorities_and_new_cvips() -> None:
    engine, calls, published = setup(section())
    st = cvip.plugin.state(engine.cluster)
    assert st is not None and st.policy.holding("10.66.0.100")
    up(engine, 2)
    # the speaker's own reload reset VI_1 to its configured priority: ours is set again
    calls.clear()
    assert reload(engine, section()) == {"cvip": None}
    assert calls == [("VI_1", 200, False)]
    # new priorities, weights and a second CVIP (with its [[vrrp.instance]])
    new = section(priority_owner=220)
    new["vip"][0]["weight"] = {"2": 5.0}
    new["vip"].append({"address": "10.66.0.101/24", "interface": "lo", "vrid": 8,
                       "directors": [1]})
    assert reload(engine, new, VRRP2) == {"cvip": None}
    assert st.config.priority_owner == 220 and len(st.config.vips) == 2
    assert st.policy.cvips["10.66.0.100"].spec.weights == {2: 5.0}
    assert st.policy.holding("10.66.0.100")  # sticky: a weight alone moves nothing
    assert ("VI_1", 220, False) in calls
    assert st.policy.holding("10.66.0.101") and ("VI_2", 220, False) in calls
    # this director no longer a candidate: it hands 10.66.0.100 over to 2 (once 2 claims)
    new["vip"][0]["directors"] = [2, 3]
    new["vip"][0]["weight"] = {}
    assert reload(engine, new, VRRP2) == {"cvip": None}
    assert st.policy.handing_over() == {"10.66.0.100": 2}
    # a removed CVIP: its claim is withdrawn
    published.clear()
    assert reload(engine, section(priority_owner=220), VRRP2) == {"cvip": None}
    assert [(e.cvip, e.new, e.reason) for e in published if e.topic == "cvip.owner"] == \
        [("10.66.0.101", None, "removed")]
    assert list(st.policy.cvips) == ["10.66.0.100"]
    assert st.counters["reloads"] == 3


def test_reload_with_a_bad_section_keeps_the_running_one(caplog: Any) -> None:
    engine, calls, published = setup(section())
    st = cvip.plugin.state(engine.cluster)
    assert st is not None
    before = st.config
    calls.clear()
    with caplog.at_level("ERROR", logger="clusterbus.pluginhost"):
        verdict = reload(engine, section(vip={"vrid": 9}, priority_owner=150))
    assert verdict["cvip"] is not None and "cvip.vip[0].vrid" in verdict["cvip"]
    assert "\n" not in verdict["cvip"]
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "keeping the old" in line and "/etc/cb.toml" in line and "\n" not in line
    assert st.config is before
    assert calls == [("VI_1", 200, False)]  # still ours, set again after the speaker's reload
    # a control path change needs a restart: the rest applies, the socket stays
    assert reload(engine, section(control="/tmp/elsewhere.sock", priority_owner=150)) == \
        {"cvip": None}
    assert st.config.control == before.control and st.config.priority_owner == 150
    status = cvip.plugin.clusterbus_status(engine.cluster)
    assert status is not None and status["restart_needed"] == {
        "control": f"{before.control!r} -> '/tmp/elsewhere.sock'"}  # the verdict lists it
    assert reload(engine, section(priority_owner=150)) == {"cvip": None}
    status = cvip.plugin.clusterbus_status(engine.cluster)
    assert status is not None and status["restart_needed"] == {}


def test_the_next_in_line_defaults_just_below_the_owner() -> None:
    """priority_backup defaults to priority_owner - 10 (Skew_Time 26 % of an interval at
    190, not 61 % at 100): the designated successor takes over sooner after a crash."""
    engine, calls, published = setup(section(), node=2)
    st = cvip.plugin.state(engine.cluster)
    assert st is not None and st.config.priority_backup == 190
    up(engine, 1)
    from clusterbus.plugins.cvip import CvipOwner

    engine.plugins.notify_event(CvipOwner(origin=1, seq=1, time=1.0, cvip="10.66.0.100",
                                          old=None, new=1, gen=9), engine.cluster)
    assert not st.policy.holding("10.66.0.100")
    assert calls[-1][1] == 190 - cvip.PRIORITY_STEP * st.policy.rank("10.66.0.100")
    engine, *_ = setup(section(priority_owner=150))
    st = cvip.plugin.state(engine.cluster)
    assert st is not None and st.config.priority_backup == 140
    with pytest.raises(ConfigError) as info:
        setup(section(priority_backup=0))
    assert info.value.key == "cvip.priority_backup"
