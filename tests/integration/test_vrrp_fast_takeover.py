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

import glob
import json
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from cbdaemon import Daemon
from corosync_cluster import RECORDER, SUBNET, CorosyncCluster, have_corosync
from keepalived import ns_has_addr, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

_WHY = have_corosync()
if _WHY:
    pytestmark.append(pytest.mark.skip(reason=_WHY))


VIP = f"{SUBNET}.100"
ADVERT = 1.0
PRIORITY = {1: 150, 2: 100}
WAIT = 30.0


def _install_recorder(site: Path) -> None:
    site.mkdir()
    (site / "cb_recorder.py").write_text(RECORDER)
    info = site / "cb_recorder-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cb-recorder\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clusterbus]\nrecorder = cb_recorder:plugin\n")


def director_config(i: int, fast: bool) -> str:
    """The daemon configuration of director ``i``: Corosync, a node map with every
    director's VRRP source address, one VRRP instance."""
    return textwrap.dedent(f"""
        [netlink]
        enabled = false

        [corosync]
        enabled = true

        [nodemap.nodes]
        1 = ["{SUBNET}.1"]
        2 = ["{SUBNET}.2"]

        [[vrrp.instance]]
        name = "VI_1"
        interface = "eth0"
        vrid = 51
        priority = {PRIORITY[i]}
        advert_interval = {ADVERT}
        virtual_ipaddress = ["{VIP}/24"]
        garp_delay = 0.0
        {'fast_takeover = "corosync"' if fast else ''}
        """)


def events(record: Path) -> list[dict[str, Any]]:
    try:
        text = record.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def wait_event(record: Path, topic: str, since: float, **fields: Any) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for e in events(record):
            if e["topic"] == topic and e["t"] >= since and all(
                    e.get(k) == v for k, v in fields.items()):
                return e
        return None
    return wait_for(found, WAIT, what=f"{topic} {fields} in {record}")


def instance(d: Daemon) -> dict[str, Any]:
    st = d.status()["services"]["vrrp"]["instances"]
    return dict(st[0])


@pytest.fixture(scope="module")
def corosync(tmp_path_factory):
    base = tmp_path_factory.mktemp("fast")
    site = base / "site"
    _install_recorder(site)
    with CorosyncCluster(base / "corosync", 2, token=500) as cc:
        cc.start_all()
        yield cc, base, site
    assert all(p.poll() is not None for p in cc.procs.values())
    left = [p for pid in cc.pids for p in glob.glob(f"/dev/shm/qb-*{pid}-*")]
    assert not left, f"corosync leftovers in /dev/shm: {left}"


def crash_master(corosync: Any, fast: bool, tag: str) -> tuple[dict[str, Any], float, float]:
    """Start both directors, kill -9 the master's daemon; returns node 2's takeover event,
    the kill time and node 2's Master_Down_Interval."""
    cc, base, site = corosync
    daemons: dict[int, Daemon] = {}
    records: dict[int, Path] = {}
    try:
        for i in (1, 2):
            wd = base / f"{tag}{i}"
            wd.mkdir()
            records[i] = wd / "events.jsonl"
            daemons[i] = Daemon(wd, cc.ns[i], node=i, extra=director_config(i, fast),
                                env={"PYTHONPATH": str(site), "CB_RECORD": str(records[i])})
            daemons[i].start()
            if i == 1:  # node 1 first: it is master before node 2 listens
                wait_for(lambda: ns_has_addr(cc.ns[1], VIP), WAIT, what="VIP on node 1")
        d1, d2 = daemons[1], daemons[2]
        wait_for(lambda: instance(d2)["state"] == "BACKUP"
                 and instance(d2)["master_seen"] == f"{SUBNET}.1", WAIT,
                 what="node 2 backup of node 1")
        wait_for(lambda: len(d2.status()["services"]["corosync"]["directors"]) == 2, WAIT,
                 what="both daemons in the CPG group")
        inst = instance(d2)
        assert inst["fast_takeover"] == ("corosync" if fast else None)
        mdi = inst["master_down_interval"]
        assert mdi == pytest.approx(3 * ADVERT + (256 - PRIORITY[2]) * ADVERT / 256)
        assert d1.proc is not None
        t0 = time.monotonic()
        d1.proc.send_signal(signal.SIGKILL)
        d1.proc.wait(10)
        down = wait_event(records[2], "director.down", t0, node=1)
        assert down["reason"] == "corosync.procdown"
        e = wait_event(records[2], "vrrp.transition", t0, new="MASTER")
        assert ns_has_addr(cc.ns[2], VIP)
        print(f"\nfast_takeover={'on' if fast else 'off'}: director.down after "
              f"{(down['t'] - t0) * 1000:.1f} ms, VIP on node 2 after "
              f"{(e['t'] - t0) * 1000:.0f} ms ({e['reason']}); Master_Down_Interval "
              f"{mdi:.3f} s")
        return e, t0, mdi
    finally:
        for d in daemons.values():
            d.stop()


def test_fast_takeover_on_takes_over_before_the_rfc_timer_could_fire(corosync):
    e, t0, mdi = crash_master(corosync, True, "on")
    assert e["reason"] == "master_gone"
    # the RFC timer runs from the last advert heard, at most one interval before the kill
    assert e["t"] - t0 < mdi - ADVERT


def test_fast_takeover_off_waits_for_the_rfc_timer(corosync):
    e, t0, mdi = crash_master(corosync, False, "off")
    assert e["reason"] == "master_down_timer"
    assert e["t"] - t0 >= mdi - ADVERT
