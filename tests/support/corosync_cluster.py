"""Real Corosync 3 instances, one per network namespace, for integration tests (root only).

Each node gets a namespace on one bridge (:class:`netns.Topology`), a directory with its
``corosync.conf``, ``state/`` and ``run/``, and runs
``sh -c "mount --bind DIR/run /run && exec corosync -f -c DIR/corosync.conf"`` inside
``ip netns exec`` (which gives a private mount namespace): Corosync's pid file path is fixed
in the binary, so each instance needs its own ``/run``. Corosync's IPC sockets are abstract
unix sockets, private to the network namespace: a client in the node's namespace finds
its own Corosync without any setting.

Only processes started here are killed, by pid. ``kill -9`` of Corosync leaves
``/dev/shm/qb-<corosync pid>-*`` files (3 MiB each) and ``qb-corosync-<pid>-blackbox-*``
behind: :meth:`CorosyncCluster.close` removes the ones of the pids it started.

The daemons on top (the Corosync tests and bench/cluster.py): :func:`install_recorder`
puts the :data:`RECORDER` plugin on a path, :func:`director_config` writes a director's
``[corosync]`` (and VRRP) configuration, and :class:`Director` runs a whole
``clusterbus run`` daemon in a node's namespace and reads what its recorder wrote.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

from cbdaemon import Daemon
from netns import Topology

__all__ = ["CorosyncCluster", "have_corosync", "RECORDER", "SUBNET", "VIP", "PRIORITY",
           "install_recorder", "director_config", "Director"]

SUBNET = "10.79.0"
#: The VRRP instance of :func:`director_config`: its VIP and each director's priority.
VIP = f"{SUBNET}.100"
PRIORITY = {1: 150, 2: 100}
#: Bound on the waits of :class:`Director` (Corosync detection takes ~1 s with token 500).
WAIT = 30.0

CONF = """\
totem {{
    version: 2
    cluster_name: {name}
    transport: knet
    crypto_cipher: none
    crypto_hash: none
    token: {token}
    token_coefficient: 0
}}
logging {{
    to_stderr: yes
    to_logfile: no
    to_syslog: no
    timestamp: hires
}}
quorum {{
    provider: corosync_votequorum
}}
system {{
    state_dir: {state}
}}
nodelist {{
{nodes}
}}
"""


def have_corosync() -> str | None:
    """Why Corosync tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("corosync") is None:
        return "corosync is not installed (apt-get install corosync libcpg4 libquorum5)"
    for lib in ("libcpg.so.4", "libquorum.so.5"):
        try:
            import ctypes

            ctypes.CDLL(lib)
        except OSError:
            return f"{lib} is missing (apt-get install libcpg4 libquorum5)"
    return None


class CorosyncCluster:
    """``n`` nodes (ids 1..n) at ``SUBNET.<id>/24``, each with a Corosync it can (re)start.

    :param workdir: a directory for the nodes' files (``node<id>/``).
    :param token: totem token in ms (token_coefficient 0): 500 detects a dead node in ~1 s.
    """

    def __init__(self, workdir: Path, n: int = 3, *, token: int = 500) -> None:
        self.workdir = workdir
        self.topo = Topology()
        self.ids = list(range(1, n + 1))
        self.ns: dict[int, str] = {}
        self.dirs: dict[int, Path] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.pids: set[int] = set()  # every corosync pid started (for /dev/shm cleanup)
        nodes = "\n".join(f"    node {{\n        name: n{i}\n        nodeid: {i}\n"
                          f"        ring0_addr: {SUBNET}.{i}\n    }}" for i in self.ids)
        for i in self.ids:
            self.ns[i] = self.topo.host(f"c{i}", f"{SUBNET}.{i}/24")
            d = workdir / f"node{i}"
            (d / "run").mkdir(parents=True)
            (d / "state").mkdir()
            (d / "corosync.conf").write_text(CONF.format(
                name=f"cb{self.topo.tag}", token=token, state=d / "state", nodes=nodes))
            self.dirs[i] = d

    def __enter__(self) -> CorosyncCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, i: int) -> int:
        """Start node ``i``'s Corosync; returns its pid."""
        d = self.dirs[i]
        with open(d / "corosync.log", "ab") as log:
            proc = subprocess.Popen(
                [*Topology.prefix(self.ns[i]), "sh", "-c",
                 f"mount --bind {d}/run /run && exec corosync -f -c {d}/corosync.conf"],
                stdout=log, stderr=subprocess.STDOUT)
        self.procs[i] = proc
        self.pids.add(proc.pid)  # ip netns exec and sh both exec: this is corosync's pid
        return proc.pid

    def wait_ready(self, i: int, timeout: float = 20.0) -> None:
        """Wait until node ``i``'s Corosync answers ``corosync-quorumtool``."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.procs[i]
            if proc.poll() is not None:
                raise RuntimeError(f"corosync {i} exited {proc.returncode}:\n{self.log(i)}")
            p = subprocess.run([*Topology.prefix(self.ns[i]), "corosync-quorumtool", "-s"],
                               capture_output=True, text=True, timeout=10)
            if "Quorum provider" in p.stdout:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"corosync {i} not ready in {timeout}s:\n{self.log(i)}")
            time.sleep(0.2)

    def start_all(self) -> None:
        for i in self.ids:
            self.start(i)
        for i in self.ids:
            self.wait_ready(i)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Signal node ``i``'s Corosync (by the pid this object started) and reap it."""
        proc = self.procs.get(i)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def link(self, i: int, up: bool) -> None:
        """Take node ``i``'s only interface down (isolate it) or up again."""
        self.topo.exec(self.ns[i], ["ip", "link", "set", "eth0", "up" if up else "down"])

    def log(self, i: int) -> str:
        try:
            return (self.dirs[i] / "corosync.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def close(self) -> None:
        for i in list(self.procs):
            self.kill(i, signal.SIGTERM)
        self.topo.close()
        self.cleanup_shm()

    def leftovers(self) -> list[str]:
        """The /dev/shm files left by the Corosync pids this object started."""
        return [p for pid in self.pids for p in glob.glob(f"/dev/shm/qb-*{pid}-*")]

    def cleanup_shm(self) -> None:
        """Remove the /dev/shm files of the Corosync pids this object started."""
        for pid in self.pids:
            for path in (glob.glob(f"/dev/shm/qb-{pid}-*")
                         + glob.glob(f"/dev/shm/qb-corosync-{pid}-*")):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)  # libqb makes directories too
                else:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass


#: A plugin module (write it as ``cb_recorder.py`` on the daemon's path) that appends every
#: event it sees, with a monotonic time and ``cluster.directors()`` at that moment, to the
#: JSON-lines file named by $CB_RECORD.
RECORDER = '''
import json, os, time
import clusterbus

class Recorder:
    @clusterbus.hookimpl
    def clusterbus_event(self, event, cluster):
        with open(os.environ["CB_RECORD"], "a") as f:
            f.write(json.dumps({"topic": event.topic, "t": time.monotonic(),
                                "directors": list(cluster.directors()),
                                **event.to_dict()}) + "\\n")

plugin = Recorder()
'''


def install_recorder(site: Path) -> None:
    """Make ``site`` (a new directory) hold the :data:`RECORDER` plugin, installed: put it
    on the daemon's ``PYTHONPATH`` and set ``CB_RECORD``."""
    site.mkdir()
    (site / "cb_recorder.py").write_text(RECORDER)
    info = site / "cb_recorder-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cb-recorder\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clusterbus]\nrecorder = cb_recorder:plugin\n")


def director_config(i: int, *, advert: float | None = None, fast: bool = True) -> str:
    """Director ``i``'s daemon configuration: no netlink, ``[corosync]`` on; with
    ``advert`` (s) also a node map with every director's address and VRRP instance VI_1
    on eth0 (vrid 51, :data:`VIP`, priority :data:`PRIORITY`), ``fast_takeover =
    "corosync"`` when ``fast``."""
    text = "[netlink]\nenabled = false\n\n[corosync]\nenabled = true\n"
    if advert is None:
        return text
    return text + textwrap.dedent(f"""
        [nodemap.nodes]
        1 = ["{SUBNET}.1"]
        2 = ["{SUBNET}.2"]

        [[vrrp.instance]]
        name = "VI_1"
        interface = "eth0"
        vrid = 51
        priority = {PRIORITY[i]}
        advert_interval = {advert}
        virtual_ipaddress = ["{VIP}/24"]
        garp_delay = 0.0
        {'fast_takeover = "corosync"' if fast else ''}
        """)


class Director:
    """Director ``i``: a ``clusterbus run`` daemon in namespace ``ns`` (config ``extra``,
    :func:`director_config` by default) with the recorder plugin from ``site``, and the
    events the recorder wrote (CLOCK_MONOTONIC times, the same clock as the caller's)."""

    def __init__(self, i: int, workdir: Path, ns: str, site: Path,
                 extra: str | None = None) -> None:
        self.i = i
        workdir.mkdir(exist_ok=True)
        self.record = workdir / "events.jsonl"
        self.daemon = Daemon(workdir, ns, node=i,
                             extra=director_config(i) if extra is None else extra,
                             env={"PYTHONPATH": str(site), "CB_RECORD": str(self.record)})

    def events(self) -> list[dict[str, Any]]:
        try:
            text = self.record.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def event_after(self, topic: str, since: float, **fields: Any) -> dict[str, Any] | None:
        """The first event of ``topic`` with these fields seen at ``since`` or later."""
        for e in self.events():
            if e["topic"] == topic and e["t"] >= since and \
                    all(e.get(k) == v for k, v in fields.items()):
                return e
        return None

    def wait_event(self, topic: str, since: float, timeout: float = WAIT,
                   **fields: Any) -> dict[str, Any]:
        """:meth:`event_after`, waited for; AssertionError with what was seen after
        ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            e = self.event_after(topic, since, **fields)
            if e is not None:
                return e
            if time.monotonic() > deadline:
                seen = [(e["topic"], e.get("node"), e.get("reason"), e.get("quorate"))
                        for e in self.events() if e["t"] >= since]
                raise AssertionError(f"node {self.i}: no {topic} {fields} in {timeout}s; saw "
                                     f"{seen}\n{self.daemon.log.read_text()[-3000:]}")
            time.sleep(0.02)

    def corosync_status(self) -> dict[str, Any]:
        # through JSON: the status arrives with tuples for lists
        st: dict[str, Any] = json.loads(json.dumps(self.daemon.status()["services"]["corosync"]))
        return st

    def group_size(self) -> int:
        """How many daemons are in the CPG group (0: no answer)."""
        try:
            return len(self.corosync_status()["directors"])
        except Exception:
            return 0

    def wait_status(self, pred: Any, what: str, timeout: float = WAIT) -> dict[str, Any]:
        """Wait until ``pred`` holds for the ``[corosync]`` status; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = self.corosync_status()
            except Exception:
                st = {}
            if st and pred(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"node {self.i}: {what} not reached in {timeout}s: {st}")
            time.sleep(0.05)

    def kill9(self) -> float:
        """SIGKILL the daemon and reap it; returns the time of the kill."""
        p = self.daemon.proc
        assert p is not None
        t0 = time.monotonic()
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        return t0
