"""``[cvip]`` reload with the real daemon and speaker (one director in a namespace):

* a changed ``priority_owner`` reaches the speaker's instance (``clusterbus reload``);
* a reload that changes the instance's own ``priority`` in ``[[vrrp.instance]]`` (the
  speaker resets it) leaves the CVIP policy's priority in force;
* a bad ``[cvip]`` (SIGHUP) keeps the running one, with one line in the log.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from keepalived import VrrpInstance, ns_has_addr, wait_for
from netns import Topology, is_root
from speaker import Speaker

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root(), reason="network namespaces need root")]

VIP = "10.77.0.100"


def cvip_section(tmp: Path, *, owner: int = 200, vrid: int = 51) -> str:
    return (f'[cvip]\nsettle_time = 0.0\npriority_owner = {owner}\n'
            f'control = "{tmp}/cvip.sock"\n\n'
            f'[[cvip.vip]]\naddress = "{VIP}/24"\ninterface = "eth0"\nvrid = {vrid}\n'
            f"directors = [1]\n")


def show(d: Speaker) -> dict[str, Any]:
    p = d.cli("cvip", "show", "--json", "--timeout", "5", check=False)
    assert p.returncode == 0, p.stderr
    row: dict[str, Any] = json.loads(p.stdout)["cvips"][0]
    return row


def test_cvip_reload_applies_and_a_bad_section_keeps_the_old(tmp_path: Path) -> None:
    with Topology() as topo:
        ns = topo.host("d1", "10.77.0.1/24")
        inst = VrrpInstance(vrid=51, priority=100, advert_int=1, version=3,
                            vips=(f"{VIP}/24",))
        d = Speaker(ns, tmp_path, [inst], node=1, extra=cvip_section(tmp_path), bus=True,
                    garp_delay=0.0)
        try:
            d.start()
            d.wait_running(60)
            wait_for(lambda: ns_has_addr(ns, VIP) and d.instance_status()["priority"] == 200,
                     60, interval=0.2, what="the CVIP held at priority 200")
            # a new owner priority applies at run time
            d.extra = cvip_section(tmp_path, owner=220)
            d.reload()
            wait_for(lambda: d.instance_status()["priority"] == 220, 30, interval=0.2,
                     what="priority 220 after the reload")
            assert show(d)["priority"] == 220 and show(d)["holding"]
            # the speaker's reload sets [[vrrp.instance]] priority 110; the policy's stays
            d.reload(priority=110)
            assert "reload: VI_1: priority 220 -> 110" in d.log_text()
            wait_for(lambda: d.log_text().count("priority 110 -> 220") >= 1, 30,
                     interval=0.2, what="the policy's priority set again")
            assert d.instance_status()["priority"] == 220
            # a bad [cvip] (no [[vrrp.instance]] with vrid 9): the running one stays
            d.extra = cvip_section(tmp_path, owner=150, vrid=9)
            d.conf.write_text(d.render())
            assert d.pid is not None
            os.kill(d.pid, signal.SIGHUP)
            wait_for(lambda: "refused its new section" in d.log_text(), 30, interval=0.2,
                     what="the refusal")
            [line] = [ln for ln in d.log_text().splitlines() if "refused its new section" in ln]
            assert "cvip.vip[0].vrid" in line and "keeping the old" in line
            assert d.instance_status()["priority"] == 220
            assert show(d)["priority"] == 220 and ns_has_addr(ns, VIP)
            assert d.running()
        finally:
            d.stop()
