"""Run clusterbus's own VRRP speaker (``clusterbus run -c FILE``) inside a test namespace.

The daemon runs with the bus and the netlink source off, so several can run at once on
one machine; its log (DEBUG) goes to a file in the test's directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from keepalived import VrrpInstance, wait_for
from netns import Topology

__all__ = ["Speaker", "CLUSTERBUS"]

CLUSTERBUS = str(Path(sys.executable).with_name("clusterbus"))


def _toml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


@dataclass
class Speaker:
    """A clusterbus daemon running ``instances`` in namespace ``ns``.

    :param extra: extra TOML appended to the file (e.g. a ``[keepalived]`` section).
    """

    ns: str
    workdir: Path
    instances: list[VrrpInstance]
    node: int = 1
    extra: str = ""
    garp_delay: float = 5.0
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / f"clusterbus-{self.ns}.toml"
        self.logfile = self.workdir / f"clusterbus-{self.ns}.log"

    def render(self) -> str:
        text = (f"[daemon]\nnode = {self.node}\nlog_level = \"info\"\n\n"
                "[bus]\nenabled = false\n\n[netlink]\nenabled = false\n\n")
        for i in self.instances:
            text += (
                "[[vrrp.instance]]\n"
                f'name = "{i.name}"\n'
                f'interface = "{i.interface}"\n'
                f"vrid = {i.vrid}\n"
                f"priority = {i.priority}\n"
                f"advert_interval = {float(i.advert_int)!r}\n"
                f"version = {i.version}\n"
                f"virtual_ipaddress = {_toml_list(i.vips)}\n"
                f"preempt = {'true' if i.preempt else 'false'}\n"
                f"preempt_delay = {float(i.preempt_delay)!r}\n"
                f"unicast_peer = {_toml_list(i.unicast_peers)}\n"
                f"garp_delay = {float(self.garp_delay)!r}\n\n"
            )
        return text + self.extra

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("speaker already running")
        self.conf.write_text(self.render())
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(
                Topology.prefix(self.ns) + [CLUSTERBUS, "run", "-c", str(self.conf)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_running(self, timeout: float = 15) -> None:
        """Wait until the speaker logged that it runs (raise if it exited)."""
        def ready() -> bool:
            if not self.running():
                raise RuntimeError(f"clusterbus exited: {self.log_tail()}")
            return "VRRP speaker running" in self.logfile.read_text(errors="replace")
        wait_for(ready, timeout, what="the clusterbus speaker to start")

    def crash(self) -> None:
        """SIGKILL: nothing is released (VIPs stay on the interface, no priority 0)."""
        if self.running():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM: the speaker sends priority 0 and removes its VIPs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.crash()
        return self.proc.returncode

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""
