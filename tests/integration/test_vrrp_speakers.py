"""Two clusterbus speakers on one link: started together they never both hold the VIP
(RFC 5798 §6.4.1: listen for Master_Down_Interval before claiming MASTER), and a graceful
stop hands over with priority 0."""

from __future__ import annotations

import re
import signal
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from keepalived import VrrpInstance, ns_has_addr, wait_for
from netns import Topology
from speaker import Speaker

pytestmark = [pytest.mark.root]

VIP = "10.77.0.100"
_LINE = re.compile(r"^\[(\S+)\] (Deleted )?\d+: eth0\s+inet (\S+)/")


class AddrMonitor:
    """``ip -ts monitor address`` in a namespace: a timestamped record of address changes."""

    def __init__(self, topo: Topology, ns: str, path: Path) -> None:
        self.topo, self.ns, self.path = topo, ns, path
        self.out = open(path, "wb")
        self.proc = subprocess.Popen(Topology.prefix(ns) + ["ip", "-ts", "-o", "monitor",
                                                            "address"], stdout=self.out)
        # Make sure it listens before anything happens: a marker address must show up.
        marker = "10.77.0.250"
        def seen() -> bool:
            self.topo.exec(ns, ["ip", "addr", "replace", f"{marker}/32", "dev", "eth0"])
            return marker in path.read_text()
        wait_for(seen, 10, interval=0.1, what=f"ip monitor in {ns}")
        self.topo.exec(ns, ["ip", "addr", "del", f"{marker}/32", "dev", "eth0"])

    def stop(self) -> list[tuple[datetime, bool]]:
        """Stop; return (time, added) for every change of the VIP."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        self.out.close()
        changes = []
        for line in self.path.read_text().splitlines():
            m = _LINE.match(line)
            if m and m.group(3) == VIP:
                changes.append((datetime.fromisoformat(m.group(1)), m.group(2) is None))
        return changes


def held_intervals(changes: list[tuple[datetime, bool]], end: datetime) -> list[tuple[datetime, datetime]]:
    out, since = [], None
    for t, added in changes:
        if added and since is None:
            since = t
        elif not added and since is not None:
            out.append((since, t))
            since = None
    if since is not None:
        out.append((since, end))
    return out


def test_two_speakers_started_together_never_both_hold_the_vip(tmp_path: Path) -> None:
    with Topology() as topo:
        a = topo.host("a", "10.77.0.1/24")
        b = topo.host("b", "10.77.0.2/24")
        common = dict(vrid=77, advert_int=1, version=3, vips=(f"{VIP}/24",))
        sa = Speaker(a, tmp_path, [VrrpInstance(priority=200, **common)], node=1)
        sb = Speaker(b, tmp_path, [VrrpInstance(priority=100, **common)], node=2)
        mons = [AddrMonitor(topo, ns, tmp_path / f"mon-{ns}.txt") for ns in (a, b)]
        try:
            sa.start()
            sb.start()
            wait_for(lambda: ns_has_addr(a, VIP), 30, what="one MASTER")
            # Several advert intervals after convergence nothing moves.
            for _ in range(3):
                subprocess.run(["sleep", "1"], check=True)
                assert ns_has_addr(a, VIP) and not ns_has_addr(b, VIP)

            # Graceful stop of the master: priority 0, the other takes over, the stopped
            # one removed its VIP.
            assert sa.stop() == 0
            assert not ns_has_addr(a, VIP)
            wait_for(lambda: ns_has_addr(b, VIP), 10, what="takeover after priority 0")
            # The speaker logs the transition after the VIP is up (takeover first).
            wait_for(lambda: "-> MASTER (priority_zero, priority 100)" in sb.log_text(), 10,
                     what="b's speaker to log the takeover")
        except BaseException:
            print(f"--- a ---\n{sa.log_tail()}\n--- b ---\n{sb.log_tail()}")
            raise
        finally:
            sa.crash()
            sb.crash()
            end = datetime.now()
            timelines = [m.stop() for m in mons]
        ia, ib = (held_intervals(t, end) for t in timelines)
        assert ia and ib, "both held the VIP at some point in this scenario"
        for s1, e1 in ia:
            for s2, e2 in ib:
                assert e1 <= s2 or e2 <= s1, f"both held {VIP}: a {s1}..{e1}, b {s2}..{e2}"
        # b never claimed MASTER before a's graceful stop.
        masters = [line for line in sb.log_text().splitlines()
                   if "clusterbus.vrrp.speaker" in line and "-> MASTER" in line]
        assert len(masters) == 1 and "priority_zero" in masters[0]
