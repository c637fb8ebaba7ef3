"""Three directors, each running the real daemon with its VRRP speaker and the CVIP policy,
linked by ``[[cluster.peer]]`` (CURVE over ipc://), one network namespace each:

* the CVIP settles on one director, the one all three name;
* kill -9 its owner: exactly one other director takes it, and it is the one all agree on;
* the old owner comes back and does not take it back;
* ``clusterbus cvip move`` hands it back with a priority-0 handoff: the ``ip monitor``
  timelines of the three namespaces never show two holders at once.
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cbdaemon import CLUSTERBUS, director_keys
from keepalived import VrrpInstance, ns_has_addr, wait_for
from netns import Topology, is_root
from speaker import AddrMonitor, CurveSpeaker, held_intervals

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root(), reason="network namespaces need root")]

VIP = "10.77.0.100"
NODES = (1, 2, 3)


class Director(CurveSpeaker):
    """A :class:`CurveSpeaker` that reads its CVIP owners through ``clusterbus cvip show``."""

    def show(self) -> dict[str, Any]:
        """``clusterbus cvip show --json`` (a loaded machine may need a few tries)."""
        for _ in range(5):
            p = self.cli("cvip", "show", "--json", "--timeout", "5", check=False)
            if p.returncode == 0:
                out: dict[str, Any] = json.loads(p.stdout)
                return out
        raise AssertionError(f"cvip show: {p.stderr}\n{self.log_tail()}")

    def owner(self) -> int | None:
        [c] = self.show()["cvips"]
        owner: int | None = c["owner"]
        return owner


def test_three_directors_crash_return_and_move(tmp_path: Path) -> None:
    keys, auth = director_keys(tmp_path, NODES)
    with Topology() as topo:
        ns = {n: topo.host(f"d{n}", f"10.77.0.{n}/24") for n in NODES}
        inst = VrrpInstance(vrid=51, priority=100, advert_int=1, version=3,
                            vips=(f"{VIP}/24",))
        ds: dict[int, Director] = {}
        for n in NODES:
            peers = "".join(
                f'[[cluster.peer]]\nnode = {p}\npublish = "ipc://{tmp_path}/{ns[p]}.pub"\n'
                f'snapshot = "ipc://{tmp_path}/{ns[p]}.snap"\n'
                f'public_key = "{keys}/d{p}.key"\n\n' for p in NODES if p != n)
            extra = (f'[cvip]\nsettle_time = 1.5\ncontrol = "{tmp_path}/{ns[n]}.cvip"\n\n'
                     f'[[cvip.vip]]\naddress = "{VIP}/24"\ninterface = "eth0"\nvrid = 51\n'
                     f"directors = [1, 2, 3]\n\n{peers}")
            d = Director(ns[n], tmp_path, [inst], node=n, extra=extra, bus=True,
                         garp_delay=0.0)
            d.keys, d.auth = keys, auth
            ds[n] = d
        mons = {n: AddrMonitor(topo, ns[n], tmp_path / f"mon-{n}.txt", VIP) for n in NODES}

        def holders() -> list[int]:
            return [n for n in NODES if ns_has_addr(ns[n], VIP)]

        def logs() -> str:
            return "\n".join(f"--- d{n} ---\n{d.log_tail(60)}" for n, d in ds.items())

        try:
            for d in ds.values():
                d.start()
            for d in ds.values():
                d.wait_running(60)
            # 1. one owner, named by all three, holds the CVIP
            def converged() -> int | None:
                owners = {d.owner() for d in ds.values()}
                if len(owners) != 1 or None in owners:
                    return None
                owner = owners.pop()
                return owner if holders() == [owner] else None
            first = wait_for(converged, 30, interval=0.2, what="one agreed owner holding it")
            t_converged = datetime.now()
            others = [n for n in NODES if n != first]
            for d in ds.values():
                assert d.show()["cvips"][0]["holding"] == (d.node == first)

            # 2. kill -9 the owner (its host is gone: its address goes with it)
            ds[first].crash()
            topo.exec(ns[first], ["ip", "addr", "del", f"{VIP}/24", "dev", "eth0"],
                      check=False)
            second = wait_for(lambda: (h := holders()) and len(h) == 1 and h[0], 30,
                              interval=0.05, what="a survivor to take the CVIP")
            assert second in others
            wait_for(lambda: all(ds[n].owner() == second for n in others), 10, interval=0.2,
                     what="both survivors to name the new owner")
            time.sleep(2.5)  # beyond any straggling takeover
            assert holders() == [second]

            # 3. the old owner comes back and does not take it back
            ds[first].start()
            ds[first].wait_running(60)
            wait_for(lambda: ds[first].show()["settled"] and ds[first].owner() == second, 20,
                     interval=0.2, what="the returning director to learn the owner")
            t_back = datetime.now()
            time.sleep(4.5)  # longer than Master_Down_Interval (3 x 1 s + skew)
            assert holders() == [second]
            assert all(d.owner() == second for d in ds.values())

            # 4. a planned move back: priority-0 handoff, never two holders
            t_move = datetime.now()
            p = ds[second].cli("cvip", "move", VIP, str(first), "--socket",
                               f"{tmp_path}/{ns[second]}.cvip")
            assert f"owned by {first}" in p.stdout, p.stdout
            wait_for(lambda: holders() == [first], 10, interval=0.02, what="the move")
            time.sleep(2.0)
            assert holders() == [first]
            assert all(d.owner() == first for d in ds.values())
            assert "(priority_changed" in ds[second].log_text()
            assert "MASTER (priority_zero" in ds[first].log_text()

            # 5. only root changes owners: another user is refused, nothing changes
            nobody = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", CLUSTERBUS,
                 "cvip", "drain", str(first), "--socket", f"{tmp_path}/{ns[first]}.cvip"],
                capture_output=True, text=True, timeout=60)
            assert nobody.returncode == 1 and "needs root" in nobody.stderr, nobody
            assert ds[first].show()["draining"] == []
        except BaseException:
            print(logs())
            raise
        finally:
            for d in ds.values():
                d.stop()
            end = datetime.now()
            timelines = {n: m.stop() for n, m in mons.items()}
        held = {n: [(s, e) for s, e in held_intervals(t, end) if e > t_converged]
                for n, t in timelines.items()}
        # nobody but `second` held it between the crash and the move, `first` not after
        # it came back, and after the move `first` alone
        assert not any(t_back < s < t_move for s, _ in held[first]), held
        assert [s for s, _ in held[first] if s > t_move], held  # it took it after the move
        for a in NODES:
            for b in NODES:
                if a >= b:
                    continue
                for s1, e1 in held[a]:
                    for s2, e2 in held[b]:
                        assert e1 <= s2 or e2 <= s1, f"{a} and {b} both held {VIP}: {held}"
        assert not held[[n for n in others if n != second][0]], held
