"""The Corosync source against three real Corosync 3 instances, one per namespace.

Each namespace (node 1..3, on one bridge) runs its own Corosync (own ``/run``, see
tests/support/corosync_cluster.py) and a whole ``clusterbus run`` daemon with
``[corosync] enabled = true``. A recorder plugin in each daemon appends every event it is
handed (``clusterbus_event``) to a JSON-lines file with the ``CLOCK_MONOTONIC`` time it saw
it: that clock is the same for every process on the machine, so the latencies printed
below are measured from the moment the test acted. They are printed, never asserted.

The tests run in order on one cluster (module fixture): each leaves it as it found it.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from corosync_cluster import CorosyncCluster, Director, have_corosync, install_recorder

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

_WHY = have_corosync()
if _WHY:
    pytestmark.append(pytest.mark.skip(reason=_WHY))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("corosync")
    site = base / "site"
    install_recorder(site)
    nodes: dict[int, Director] = {}
    with CorosyncCluster(base / "corosync", 3, token=500) as cc:
        cc.start_all()
        try:
            for i in cc.ids:
                nodes[i] = Director(i, base / f"daemon{i}", cc.ns[i], site)
                nodes[i].daemon.start()
            for n in nodes.values():
                n.wait_status(lambda s: s["connected"] and len(s["directors"]) == 3,
                              "connected with 3 directors")
            yield cc, nodes
        finally:
            for n in nodes.values():
                n.daemon.stop()
    # every corosync this test started is gone, and so are its /dev/shm files
    assert all(p.poll() is not None for p in cc.procs.values())
    assert not cc.leftovers(), f"corosync leftovers in /dev/shm: {cc.leftovers()}"


def _latency(label: str, since: float, event: dict[str, Any]) -> float:
    ms = (event["t"] - since) * 1000
    print(f"\n{label}: {ms:.1f} ms")
    return ms


def test_nodes_directors_and_quorum_at_start(cluster):
    cc, nodes = cluster
    for i, n in nodes.items():
        st = n.wait_status(lambda s: s["quorate"] is True and s["members"] == [1, 2, 3],
                           "quorate with 3 members")
        assert st["local_node"] == i
        assert st["members"] == [1, 2, 3]
        assert st["quorate"] is True and st["quorum_members"] == [1, 2, 3]
        assert sorted(d["node"] for d in st["directors"]) == [1, 2, 3]
        assert st["counters"]["connect.ok"] == 1
        for node in (1, 2, 3):
            n.wait_event("node.up", 0, node=node, reason="corosync")
        for peer in set(nodes) - {i}:
            e = n.wait_event("director.up", 0, node=peer)
            # the CPG group counts for Cluster.directors(), already at its director.up
            assert i in e["directors"] and peer in e["directors"], e
        last = [e for e in n.events() if e["topic"] == "director.up"][-1]
        assert last["directors"] == [1, 2, 3], last
        n.wait_event("cluster.quorum", 0, quorate=True)
        # never itself a peer director
        assert not [e for e in n.events() if e["topic"] == "director.up" and e["node"] == i]


def test_killed_daemon_is_director_down_on_the_others(cluster):
    cc, nodes = cluster
    d3 = nodes[3].daemon
    t0 = nodes[3].kill9()
    for i in (1, 2):
        e = nodes[i].wait_event("director.down", t0, node=3)
        assert e["reason"] == "corosync.procdown"
        assert e["directors"] == [1, 2], e  # gone from Cluster.directors() at its event
        _latency(f"daemon 3 kill -9 -> director.down on node {i}", t0, e)
    # the node itself is still up: no node.down for it
    assert not [e for e in nodes[1].events() if e["t"] >= t0 and e["topic"] == "node.down"]
    # restarted: director.up again
    t1 = time.monotonic()
    d3.start()
    for i in (1, 2):
        e = nodes[i].wait_event("director.up", t1, node=3)
        assert e["reason"] == "corosync.join"
        assert e["directors"] == [1, 2, 3], e
    nodes[3].wait_status(lambda s: s["connected"] and len(s["directors"]) == 3, "rejoined")


def test_stopped_daemon_leaves_the_group(cluster):
    cc, nodes = cluster
    t0 = time.monotonic()
    assert nodes[2].daemon.stop() == 0
    e = nodes[1].wait_event("director.down", t0, node=2)
    assert e["reason"] == "corosync.leave"
    _latency("daemon 2 SIGTERM -> director.down on node 1", t0, e)
    nodes[2].daemon.start()
    nodes[1].wait_event("director.up", t0, node=2)
    nodes[2].wait_status(lambda s: s["connected"] and len(s["directors"]) == 3, "rejoined")


def test_killed_corosync_is_node_down_and_the_source_reconnects(cluster):
    cc, nodes = cluster
    t0 = time.monotonic()
    old_pid = cc.procs[3].pid
    cc.kill(3, signal.SIGKILL)
    for i in (1, 2):
        e = nodes[i].wait_event("node.down", t0, node=3)
        assert e["reason"] == "corosync"
        _latency(f"corosync 3 kill -9 -> node.down on node {i}", t0, e)
        e = nodes[i].wait_event("director.down", t0, node=3)
        assert e["reason"] == "corosync.nodedown"
    # node 3's daemon lost its corosync: quorum lost, not connected, still running
    e = nodes[3].wait_event("cluster.quorum", t0, quorate=False)
    _latency("corosync 3 kill -9 -> cluster.quorum false on node 3 (own daemon)", t0, e)
    st = nodes[3].wait_status(lambda s: not s["connected"], "disconnected")
    assert st["counters"]["dispatch.failed"] >= 1
    assert nodes[3].daemon.proc is not None and nodes[3].daemon.proc.poll() is None
    # restart corosync 3: the source reconnects by itself
    t1 = time.monotonic()
    cc.start(3)
    assert cc.procs[3].pid != old_pid
    st = nodes[3].wait_status(lambda s: s["connected"] and s["reconnects"] == 1
                              and len(s["directors"]) == 3, "reconnected")
    print(f"\ncorosync 3 restart -> source reconnected within {time.monotonic() - t1:.2f} s "
          f"(incl. corosync start-up)")
    assert st["counters"]["connect.ok"] == 2
    for i in (1, 2):
        nodes[i].wait_event("node.up", t1, node=3, reason="corosync")
        nodes[i].wait_event("director.up", t1, node=3)
    nodes[3].wait_event("cluster.quorum", t1, quorate=True)


def test_isolated_node_reports_quorum_lost(cluster):
    cc, nodes = cluster
    t0 = time.monotonic()
    cc.link(3, False)
    try:
        e = nodes[3].wait_event("cluster.quorum", t0, quorate=False)
        assert e["members"] == [3]
        _latency("node 3 isolated -> cluster.quorum false on node 3", t0, e)
        nodes[3].wait_event("node.down", t0, node=1, reason="corosync")
        for i in (1, 2):
            e = nodes[i].wait_event("node.down", t0, node=3, reason="corosync")
            _latency(f"node 3 isolated -> node.down 3 on node {i}", t0, e)
        # the majority keeps quorum: no cluster.quorum false on nodes 1 and 2
        for i in (1, 2):
            assert nodes[i].corosync_status()["quorate"] is True
        # CPG ignores quorum: node 3's source is still connected to its own corosync
        assert nodes[3].corosync_status()["connected"] is True
    finally:
        t1 = time.monotonic()
        cc.link(3, True)
    nodes[3].wait_event("cluster.quorum", t1, quorate=True)
    for i in (1, 2):
        nodes[i].wait_event("node.up", t1, node=3)
        nodes[i].wait_event("director.up", t1, node=3)


def test_frozen_corosync_blocks_neither_the_loop_nor_the_exit(cluster):
    cc, nodes = cluster
    n3 = nodes[3]
    cc.kill(3, signal.SIGSTOP)  # a cpg_leave now waits for ever
    try:
        time.sleep(0.5)
        for _ in range(3):  # the daemon's loop still answers
            assert n3.corosync_status()["connected"] is True
        t0 = time.monotonic()
        assert n3.daemon.stop(timeout=20) == 0, n3.daemon.log.read_text()[-3000:]
        print(f"\ndaemon 3 stopped in {time.monotonic() - t0:.2f} s with its corosync frozen")
        assert "leave/finalize did not return" in n3.daemon.log.read_text()
    finally:
        cc.kill(3, signal.SIGCONT)
    t1 = time.monotonic()
    n3.daemon.start()
    n3.wait_status(lambda s: s["connected"] and len(s["directors"]) == 3, "rejoined")
    for i in (1, 2):
        nodes[i].wait_event("director.up", t1, node=3)
