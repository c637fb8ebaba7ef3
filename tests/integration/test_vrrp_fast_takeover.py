"""``fast_takeover = "corosync"``: two directors, each with its own Corosync 3 and a whole
``clusterbus run`` daemon running a VRRP instance (the real speaker), in namespaces.

Node 1 (priority 150) is master, node 2 (priority 100) backup, 1 s adverts: the backup's
RFC 5798 Master_Down_Interval is ``3 * 1 + (256 - 100) / 256`` = 3.61 s. The master's
daemon is killed with SIGKILL (its host and its Corosync stay up): node 2's Corosync sees
the process leave the CPG group (``director.down``, ``corosync.procdown``).

- fast_takeover on: node 2 takes over with reason ``master_gone`` and holds the VIP before
  the RFC timer could have fired: the last advert from node 1 arrived at most one
  Advertisement_Interval before the kill, so the timer cannot fire earlier than
  ``kill + Master_Down_Interval - Advertisement_Interval``.
- fast_takeover off: the same crash waits for the timer (reason ``master_down_timer``,
  not before that bound): the test above can fail.

Both bounds are protocol facts computed from the speaker's own ``master_down_interval``
(status), not speed thresholds. The recorder plugin stamps events with CLOCK_MONOTONIC,
the same clock as the test's.
"""

from __future__ import annotations

from typing import Any

import pytest
from corosync_cluster import (
    PRIORITY,
    SUBNET,
    VIP,
    CorosyncCluster,
    Director,
    director_config,
    have_corosync,
    install_recorder,
)
from keepalived import ns_has_addr, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

_WHY = have_corosync()
if _WHY:
    pytestmark.append(pytest.mark.skip(reason=_WHY))


ADVERT = 1.0
WAIT = 30.0


def instance(d: Director) -> dict[str, Any]:
    st = d.daemon.status()["services"]["vrrp"]["instances"]
    return dict(st[0])


@pytest.fixture(scope="module")
def corosync(tmp_path_factory):
    base = tmp_path_factory.mktemp("fast")
    site = base / "site"
    install_recorder(site)
    with CorosyncCluster(base / "corosync", 2, token=500) as cc:
        cc.start_all()
        yield cc, base, site
    assert all(p.poll() is not None for p in cc.procs.values())
    assert not cc.leftovers(), f"corosync leftovers in /dev/shm: {cc.leftovers()}"


def crash_master(corosync: Any, fast: bool, tag: str) -> tuple[dict[str, Any], float, float]:
    """Start both directors, kill -9 the master's daemon; returns node 2's takeover event,
    the kill time and node 2's Master_Down_Interval."""
    cc, base, site = corosync
    d: dict[int, Director] = {}
    try:
        for i in (1, 2):
            d[i] = Director(i, base / f"{tag}{i}", cc.ns[i], site,
                            director_config(i, advert=ADVERT, fast=fast))
            d[i].daemon.start()
            if i == 1:  # node 1 first: it is master before node 2 listens
                wait_for(lambda: ns_has_addr(cc.ns[1], VIP), WAIT, what="VIP on node 1")
        wait_for(lambda: instance(d[2])["state"] == "BACKUP"
                 and instance(d[2])["master_seen"] == f"{SUBNET}.1", WAIT,
                 what="node 2 backup of node 1")
        wait_for(lambda: d[2].group_size() == 2, WAIT, what="both daemons in the CPG group")
        inst = instance(d[2])
        assert inst["fast_takeover"] == ("corosync" if fast else None)
        mdi = inst["master_down_interval"]
        assert mdi == pytest.approx(3 * ADVERT + (256 - PRIORITY[2]) * ADVERT / 256)
        t0 = d[1].kill9()
        down = d[2].wait_event("director.down", t0, node=1)
        assert down["reason"] == "corosync.procdown"
        e = d[2].wait_event("vrrp.transition", t0, new="MASTER")
        assert ns_has_addr(cc.ns[2], VIP)
        print(f"\nfast_takeover={'on' if fast else 'off'}: director.down after "
              f"{(down['t'] - t0) * 1000:.1f} ms, VIP on node 2 after "
              f"{(e['t'] - t0) * 1000:.0f} ms ({e['reason']}); Master_Down_Interval "
              f"{mdi:.3f} s")
        return e, t0, mdi
    finally:
        for x in d.values():
            x.daemon.stop()


def test_fast_takeover_on_takes_over_before_the_rfc_timer_could_fire(corosync):
    e, t0, mdi = crash_master(corosync, True, "on")
    assert e["reason"] == "master_gone"
    # the RFC timer runs from the last advert heard, at most one interval before the kill
    assert e["t"] - t0 < mdi - ADVERT


def test_fast_takeover_off_waits_for_the_rfc_timer(corosync):
    e, t0, mdi = crash_master(corosync, False, "off")
    assert e["reason"] == "master_down_timer"
    assert e["t"] - t0 >= mdi - ADVERT
