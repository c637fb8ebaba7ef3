"""Run clusterbus's own VRRP speaker (``clusterbus run -c FILE``) inside a test namespace.

The daemon runs with the netlink source off and, unless ``bus=True``, the bus off, so
several can run at once on one machine; its log goes to a file in the test's directory.
With ``bus=True`` the bus listens on ``ipc://`` sockets in the test's directory (files cross
network namespaces), so ``clusterbus status``, ``reload`` and ``events`` reach it from the
test: see :meth:`Speaker.cli`, :meth:`Speaker.status`, :meth:`Speaker.reload`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from keepalived import VrrpInstance, wait_for
from cbdaemon import CLUSTERBUS
from netns import Topology

__all__ = ["Speaker", "CLUSTERBUS"]

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
    bus: bool = False
    env: dict[str, str] | None = None
    log_level: str = "info"
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = self.workdir / f"clusterbus-{self.ns}.toml"
        self.logfile = self.workdir / f"clusterbus-{self.ns}.log"

    def _bus(self) -> str:
        if not self.bus:
            return "[bus]\nenabled = false\n\n"
        ep = f"ipc://{self.workdir}/{self.ns}"
        return (f'[bus]\npublish = "{ep}.pub"\ningest = "{ep}.ingest"\n'
                f'snapshot = "{ep}.snap"\nheartbeat_interval = 0.2\n\n')

    def render(self) -> str:
        text = (f"[daemon]\nnode = {self.node}\nlog_level = \"{self.log_level}\"\n"
                f"state_dir = \"{self.workdir}/state-{self.ns}\"\n\n"
                f"{self._bus()}[netlink]\nenabled = false\n\n")
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
                + (f'unicast_src_ip = "{i.unicast_src}"\n' if i.unicast_src else "") +
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
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})})
        finally:
            log.close()

    def cli(self, *args: str, timeout: float = 30,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``clusterbus ARGS -c FILE`` from the test's namespace (needs ``bus=True``)."""
        # A wide terminal for rich, so `status` does not wrap values.
        p = subprocess.run([CLUSTERBUS, *args, "-c", str(self.conf)], capture_output=True,
                           text=True, timeout=timeout,
                           env={**os.environ, "COLUMNS": "250", **(self.env or {})})
        if check and p.returncode != 0:
            raise AssertionError(f"clusterbus {' '.join(args)} -> {p.returncode}: {p.stderr}")
        return p

    def status(self) -> dict[str, Any]:
        """``clusterbus status --json``: the daemon's status (needs ``bus=True``)."""
        return json.loads(self.cli("status", "--json").stdout)

    def instance_status(self, name: str = "VI_1") -> dict[str, Any]:
        """The speaker's status of one instance."""
        for inst in self.status()["services"]["vrrp"]["instances"]:
            if inst["name"] == name:
                return inst
        raise KeyError(name)

    def reconfigure(self, **changes: Any) -> None:
        """Rewrite the configuration file with ``changes`` applied to every instance (no
        signal: see :meth:`reload`)."""
        self.instances = [replace(i, **changes) for i in self.instances]
        self.conf.write_text(self.render())

    def reload(self, **changes: Any) -> None:
        """Rewrite the configuration with ``changes`` and run ``clusterbus reload``."""
        self.reconfigure(**changes)
        out = self.cli("reload").stdout
        assert "sent SIGHUP" in out, out

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
