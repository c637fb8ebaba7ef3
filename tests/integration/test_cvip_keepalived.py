"""keepalived track_file mode: two directors run the real keepalived (Debian 2.2.7) as the
VRRP speaker and the clusterbus daemon with the CVIP policy beside it, which writes its
decision to the file keepalived's ``track_file`` reads (1 on the owner, 0 elsewhere,
times ``weight 100``). The CVIP lands on the director the policy chose, and
``clusterbus cvip move`` moves it to the other through keepalived's own priorities."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cbdaemon import CLUSTERBUS, director_keys
from keepalived import Keepalived, VrrpInstance, ns_has_addr, wait_for
from netns import Topology, is_root

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not is_root(), reason="network namespaces need root"),
              pytest.mark.skipif(not os.path.exists("/usr/sbin/keepalived"),
                                 reason="keepalived is not installed")]

VIP = "10.78.0.100"


class TrackedKeepalived(Keepalived):
    """keepalived with one ``track_file`` block named ``cvip``."""

    track: str = ""

    def render(self) -> str:
        # before the vrrp_instance that refers to it (keepalived reads the file in order)
        return (f'track_file cvip {{\n    file "{self.track}"\n    weight 100\n}}\n'
                + super().render())


def daemon_config(tmp: Path, ns: dict[int, str], n: int, keys: Path, auth: Path,
                  track: Path) -> Path:
    ep = f"ipc://{tmp}/{ns[n]}"
    peer = 2 if n == 1 else 1
    text = (f'[daemon]\nnode = {n}\nstate_dir = "{tmp}/state{n}"\n\n'
            f'[bus]\npublish = "{ep}.pub"\ningest = "{ep}.ingest"\nsnapshot = "{ep}.snap"\n'
            f'heartbeat_interval = 0.2\ncertificate = "{keys}/d{n}.key_secret"\n'
            f'authorized_keys = "{auth}"\n\n[netlink]\nenabled = false\n\n'
            f'[cvip]\nsettle_time = 1.0\ncontrol = "{tmp}/{ns[n]}.cvip"\n\n'
            f'[[cvip.vip]]\naddress = "{VIP}/24"\ninterface = "eth0"\nvrid = 61\n'
            f'directors = [1, 2]\ntrack_file = "{track}"\n\n'
            f'[[cluster.peer]]\nnode = {peer}\npublish = "ipc://{tmp}/{ns[peer]}.pub"\n'
            f'snapshot = "ipc://{tmp}/{ns[peer]}.snap"\npublic_key = "{keys}/d{peer}.key"\n')
    path = tmp / f"clusterbus{n}.toml"
    path.write_text(text)
    return path


def cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([CLUSTERBUS, *args, "-c", str(conf)], capture_output=True, text=True,
                       timeout=60)
    if p.returncode != 0:
        raise AssertionError(f"clusterbus {' '.join(args)}: {p.returncode} {p.stderr}")
    return p


def show(conf: Path) -> dict[str, Any]:
    """``clusterbus cvip show --json`` (a loaded machine may need a few tries)."""
    for _ in range(5):
        try:
            out: dict[str, Any] = json.loads(
                cli(conf, "cvip", "show", "--json", "--timeout", "5").stdout)
            return out
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            err = exc
    raise AssertionError(f"cvip show: {err}")


def test_keepalived_follows_the_track_file(tmp_path: Path) -> None:
    keys, auth = director_keys(tmp_path, (1, 2))
    with Topology() as topo:
        ns = {n: topo.host(f"k{n}", f"10.78.0.{n}/24") for n in (1, 2)}
        tracks = {n: tmp_path / f"cvip{n}.track" for n in (1, 2)}
        kas: dict[int, TrackedKeepalived] = {}
        daemons: dict[int, subprocess.Popen[bytes]] = {}
        confs = {n: daemon_config(tmp_path, ns, n, keys, auth, tracks[n]) for n in (1, 2)}
        try:
            for n in (1, 2):
                tracks[n].write_text("0\n")
                ka = TrackedKeepalived(ns[n], tmp_path, [VrrpInstance(
                    vrid=61, priority=100, advert_int=1, vips=(f"{VIP}/24",),
                    extra=("track_file {", "    cvip", "}"))])
                ka.track = str(tracks[n])
                ka.start()
                ka.wait_vrrp_child()
                kas[n] = ka
            for n in (1, 2):
                with open(tmp_path / f"daemon{n}.log", "ab") as log:
                    daemons[n] = subprocess.Popen(
                        Topology.prefix(ns[n]) + [CLUSTERBUS, "run", "-c", str(confs[n])],
                        stdout=log, stderr=subprocess.STDOUT)

            def agreed() -> int | None:
                try:
                    owners = {show(confs[n])["cvips"][0]["owner"] for n in (1, 2)}
                except AssertionError:
                    return None
                return owners.pop() if len(owners) == 1 and None not in owners else None
            owner = wait_for(agreed, 30, interval=0.2, what="both daemons to agree")
            other = 2 if owner == 1 else 1
            wait_for(lambda: tracks[owner].read_text() == "1\n"
                     and tracks[other].read_text() == "0\n", 10, what="the track files")
            wait_for(lambda: ns_has_addr(ns[owner], VIP) and not ns_has_addr(ns[other], VIP),
                     20, interval=0.05, what="keepalived to put the CVIP on the owner")

            p = cli(confs[other], "cvip", "move", VIP, str(other))
            assert f"owned by {other}" in p.stdout
            wait_for(lambda: tracks[other].read_text() == "1\n"
                     and tracks[owner].read_text() == "0\n", 10, what="the files to flip")
            wait_for(lambda: ns_has_addr(ns[other], VIP) and not ns_has_addr(ns[owner], VIP),
                     20, interval=0.05, what="keepalived to move the CVIP")
            time.sleep(3.5)  # it stays: keepalived's priorities now say so
            assert ns_has_addr(ns[other], VIP) and not ns_has_addr(ns[owner], VIP)
        except BaseException:
            for n in (1, 2):
                print(f"--- daemon {n} ---\n"
                      + (tmp_path / f"daemon{n}.log").read_text()[-4000:])
                if n in kas:
                    print(f"--- keepalived {n} ---\n{kas[n].log_tail()}")
            raise
        finally:
            for proc in daemons.values():
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            for ka in kas.values():
                ka.stop()
        # a daemon that stops claims nothing any more
        assert all(t.read_text() == "0\n" for t in tracks.values())
