"""The Corosync membership core (sans-IO) and the ctypes layouts, without Corosync."""

from __future__ import annotations

import ctypes

import pytest

from clusterbus.config import parse_config
from clusterbus.corosync import binding
from clusterbus.corosync.membership import (
    BadCallback,
    CpgAddress,
    DirectorChange,
    GroupConfchg,
    Membership,
    NodeChange,
    QuorumChange,
    QuorumNotify,
    TotemConfchg,
)
from clusterbus.errors import ConfigError

ME = 4242  # this daemon's pid


def A(node: int, pid: int, reason: int = 0) -> CpgAddress:
    return CpgAddress(nodeid=node, pid=pid, reason=reason)


def connected(node: int = 1) -> Membership:
    m = Membership(group="clusterbus", local_pid=ME)
    assert m.connected(node) == []
    return m


def test_layouts_match_the_corosync_3_headers():
    assert ctypes.sizeof(binding.CpgName) == 132
    assert ctypes.sizeof(binding.CpgAddressC) == 12
    assert ctypes.sizeof(binding.CpgRingId) == 16
    assert binding.CpgRingId.seq.offset == 8
    assert ctypes.sizeof(binding.CpgModelV1Data) == 40
    assert ctypes.sizeof(binding.QuorumModelV1Data) == 24


def test_cpg_name_bounds():
    name = binding.cpg_name("clusterbus")
    assert name.length == 10 and name.value == b"clusterbus"
    with pytest.raises(binding.CorosyncError, match="1..128"):
        binding.cpg_name("x" * 129)
    with pytest.raises(binding.CorosyncError):
        binding.cpg_name("")


def test_totem_lists_become_node_changes_once():
    m = connected()
    assert m.feed(TotemConfchg(ring_seq=4, members=(1, 2, 3))) == [
        NodeChange(node=1, up=True), NodeChange(node=2, up=True), NodeChange(node=3, up=True)]
    # the initial view delivered twice (as Corosync does on connect): nothing new
    assert m.feed(TotemConfchg(ring_seq=4, members=(1, 2, 3))) == []
    assert m.feed(TotemConfchg(ring_seq=8, members=(1, 2))) == [NodeChange(node=3, up=False)]
    # a paused node: down then up again, both reported
    assert m.feed(TotemConfchg(ring_seq=12, members=(1,))) == [NodeChange(node=2, up=False)]
    assert m.feed(TotemConfchg(ring_seq=16, members=(1, 2, 5))) == [
        NodeChange(node=2, up=True), NodeChange(node=5, up=True)]
    assert m.ring_seq == 16 and m.nodes == {1, 2, 5}


def test_group_changes_become_director_changes_with_the_cpg_reason():
    m = connected(1)
    # our own join: the members already in the group are peers that are up
    out = m.feed(GroupConfchg(group="clusterbus", members=(A(1, ME), A(2, 20), A(3, 30)),
                              joined=(A(1, ME, 1),)))
    assert out == [DirectorChange(node=2, up=True, reason="corosync.resync"),
                   DirectorChange(node=3, up=True, reason="corosync.resync")]
    # a peer daemon killed: procdown
    assert m.feed(GroupConfchg(group="clusterbus", members=(A(1, ME), A(2, 20)),
                               left=(A(3, 30, 5),))) == [
        DirectorChange(node=3, up=False, reason="corosync.procdown")]
    # its restart joins
    assert m.feed(GroupConfchg(group="clusterbus", members=(A(1, ME), A(2, 20), A(3, 31)),
                               joined=(A(3, 31, 1),))) == [
        DirectorChange(node=3, up=True, reason="corosync.join")]
    # node 2 dies with its daemon: nodedown
    assert m.feed(GroupConfchg(group="clusterbus", members=(A(1, ME), A(3, 31)),
                               left=(A(2, 20, 3),))) == [
        DirectorChange(node=2, up=False, reason="corosync.nodedown")]
    assert m.directors() == [{"node": 1, "pid": ME}, {"node": 3, "pid": 31}]


def test_own_process_is_never_a_peer_but_another_daemon_on_this_node_is():
    m = connected(1)
    assert m.feed(GroupConfchg(group="clusterbus", members=(A(1, ME),),
                               joined=(A(1, ME, 1),))) == []
    assert m.feed(GroupConfchg(group="clusterbus", members=(A(1, ME), A(1, 77)),
                               joined=(A(1, 77, 1),))) == [
        DirectorChange(node=1, up=True, reason="corosync.join")]
    # a node stays up while one of its processes is in the group
    m2 = connected(1)
    m2.feed(GroupConfchg(group="clusterbus", members=(A(1, ME), A(2, 20), A(2, 21))))
    assert m2.feed(GroupConfchg(group="clusterbus", members=(A(1, ME), A(2, 21)),
                                left=(A(2, 20, 2),))) == []
    assert m2.feed(GroupConfchg(group="clusterbus", members=(A(1, ME),),
                                left=(A(2, 21, 2),))) == [
        DirectorChange(node=2, up=False, reason="corosync.leave")]


def test_other_groups_and_bad_callbacks_are_counted_and_change_nothing():
    m = connected(1)
    assert m.feed(GroupConfchg(group="other", members=(A(2, 20),))) == []
    assert m.feed(BadCallback(what="confchg.too_many_entries")) == []
    assert m.counters["dropped.other_group"] == 1
    assert m.counters["dropped.confchg.too_many_entries"] == 1
    assert m.processes == frozenset()


def test_quorum_flag_changes_only():
    m = connected(1)
    assert m.feed(QuorumNotify(quorate=True, members=(3, 1, 2))) == [
        QuorumChange(quorate=True, members=(1, 2, 3))]
    assert m.feed(QuorumNotify(quorate=True, members=(1, 2))) == []
    assert m.quorum_members == (1, 2) and m.counters["quorum.unchanged"] == 1
    assert m.feed(QuorumNotify(quorate=False, members=(1,))) == [
        QuorumChange(quorate=False, members=(1,))]


def test_losing_corosync_loses_quorum_and_a_reconnection_resyncs():
    m = connected(1)
    m.feed(TotemConfchg(ring_seq=4, members=(1, 2, 3)))
    m.feed(GroupConfchg(group="clusterbus", members=(A(1, ME), A(2, 20), A(3, 30))))
    m.feed(QuorumNotify(quorate=True, members=(1, 2, 3)))
    assert m.disconnected() == [QuorumChange(quorate=False, members=())]
    assert m.disconnected() == []  # already lost
    # reconnected (a new pid in the group for us); node 3 and its daemon went meanwhile
    m.connected(1)
    assert m.feed(TotemConfchg(ring_seq=20, members=(1, 2))) == [NodeChange(node=3, up=False)]
    assert m.feed(GroupConfchg(group="clusterbus", members=(A(1, ME), A(2, 20)),
                               joined=(A(1, ME, 1),))) == [
        DirectorChange(node=3, up=False, reason="corosync.resync")]
    assert m.feed(QuorumNotify(quorate=True, members=(1, 2))) == [
        QuorumChange(quorate=True, members=(1, 2))]


def test_config_section_defaults_and_checks():
    c = parse_config({}, file="t.toml")
    assert c["corosync"] == {"enabled": False, "group": "clusterbus", "quorum": True}
    with pytest.raises(ConfigError, match="corosync.group"):
        parse_config({"corosync": {"group": "g" * 129}}, file="t.toml")
    with pytest.raises(ConfigError, match="corosync.quorum"):
        parse_config({"corosync": {"quorum": "yes"}}, file="t.toml")


def test_the_documented_configuration_is_valid():
    import tomllib
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "corosync.md").read_text()
    block = doc.split("```toml", 1)[1].split("```", 1)[0]
    c = parse_config(tomllib.loads(block), file="docs/corosync.md")
    assert c["corosync"] == {"enabled": True, "group": "clusterbus", "quorum": True}
