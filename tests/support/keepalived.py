"""Run a real keepalived (Debian 2.2.7) inside a test network namespace.

One :class:`Keepalived` per namespace, in the foreground (``-n``), VRRP only (``-P``),
logging to its own file, with its own pid files, so several can run at once and none
touches the host's ``/run/keepalived.pid``. keepalived runs a parent and a VRRP child:
:meth:`Keepalived.crash` stops both with SIGSTOP first and then SIGKILLs them, because a
SIGKILL of the parent alone lets the child notice and send a priority-0 advert (a
graceful handoff, not a crash).

>>> k = Keepalived(ns, workdir, [VrrpInstance(name="VI_1", interface="eth0", vrid=77,
...                priority=100, vips=("10.77.0.100/24",))], notify_fifo=fifo)
>>> k.start(); k.wait_vrrp_child(); ...; k.stop()
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from netns import Topology

__all__ = ["VrrpInstance", "Keepalived", "KEEPALIVED", "ns_has_addr", "wait_for"]

KEEPALIVED = "/usr/sbin/keepalived"


def wait_for(pred, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll ``pred`` until it returns a truthy value; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def ns_has_addr(ns: str, addr: str, ifname: str = "eth0") -> bool:
    """True when ``addr`` (no prefix) is configured on ``ifname`` inside ``ns``."""
    p = subprocess.run(["ip", "netns", "exec", ns, "ip", "-o", "addr", "show", "dev", ifname],
                       capture_output=True, text=True, timeout=10)
    return any(f" {addr}/" in line for line in p.stdout.splitlines())


def holders(nss: list[str], vip: str) -> list[str]:
    """The namespaces among ``nss`` that hold ``vip`` now."""
    return [ns for ns in nss if ns_has_addr(ns, vip)]


@dataclass(frozen=True, slots=True, kw_only=True)
class VrrpInstance:
    """One ``vrrp_instance`` block."""

    name: str = "VI_1"
    interface: str = "eth0"
    vrid: int = 77
    priority: int = 100
    advert_int: float = 1.0
    version: int = 3
    vips: tuple[str, ...] = ("10.77.0.100/24",)
    state: str = "BACKUP"
    preempt: bool = True
    preempt_delay: float = 0
    unicast_peers: tuple[str, ...] = ()
    unicast_src: str = ""
    extra: tuple[str, ...] = ()

    def render(self) -> str:
        is6 = any(":" in v for v in self.vips)
        lines = [
            f"vrrp_instance {self.name} {{",
            f"    state {self.state}",
            f"    interface {self.interface}",
            f"    virtual_router_id {self.vrid}",
            f"    priority {self.priority}",
            f"    advert_int {self.advert_int:g}",
            f"    version {self.version}",
        ]
        if is6:
            lines.append("    native_ipv6")
        if not self.preempt:
            lines.append("    nopreempt")
        if self.preempt_delay:
            lines.append(f"    preempt_delay {self.preempt_delay:g}")
        if self.unicast_src:
            lines.append(f"    unicast_src_ip {self.unicast_src}")
        if self.unicast_peers:
            lines.append("    unicast_peer {")
            lines += [f"        {p}" for p in self.unicast_peers]
            lines.append("    }")
        lines.append("    virtual_ipaddress {")
        lines += [f"        {v} dev {self.interface}" for v in self.vips]
        lines.append("    }")
        lines += [f"    {x}" for x in self.extra]
        lines.append("}")
        return "\n".join(lines) + "\n"


@dataclass
class Keepalived:
    """A keepalived process tree in namespace ``ns``.

    :param ns: the namespace (from :class:`netns.Topology`).
    :param workdir: a directory owned by the test (config, pid files, log).
    :param instances: the vrrp_instance blocks.
    :param notify_fifo: path of the notify FIFO (keepalived creates it), or ``None``.
    :param groups: sync groups: name -> instance names.
    """

    ns: str
    workdir: Path
    instances: list[VrrpInstance]
    notify_fifo: str | None = None
    groups: dict[str, list[str]] = field(default_factory=dict)
    garp_repeat: int = 5
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        tag = self.ns
        self.conf = self.workdir / f"keepalived-{tag}.conf"
        self.pidfile = self.workdir / f"keepalived-{tag}.pid"
        self.vrrp_pidfile = self.workdir / f"vrrp-{tag}.pid"
        self.checkers_pidfile = self.workdir / f"checkers-{tag}.pid"
        self.bfd_pidfile = self.workdir / f"bfd-{tag}.pid"
        self.logfile = self.workdir / f"keepalived-{tag}.log"

    # -- config ---------------------------------------------------------------------------

    def render(self) -> str:
        g = [
            "global_defs {",
            f"    router_id {self.ns}",
            "    enable_script_security",
            "    script_user root",
            f"    vrrp_garp_master_repeat {self.garp_repeat}",
            "    vrrp_garp_master_refresh 0",
        ]
        if self.notify_fifo:
            g.append(f"    notify_fifo {self.notify_fifo}")
        g.append("}")
        text = "\n".join(g) + "\n"
        for name, members in self.groups.items():
            text += f"vrrp_sync_group {name} {{\n    group {{\n"
            text += "".join(f"        {m}\n" for m in members)
            text += "    }\n}\n"
        for inst in self.instances:
            text += inst.render()
        return text

    def write_config(self) -> Path:
        self.conf.write_text(self.render())
        return self.conf

    # -- life cycle -------------------------------------------------------------------------

    def argv(self) -> list[str]:
        return [
            KEEPALIVED, "-n", "-l", "-D", "-P", "-G",
            "-f", str(self.conf),
            "-p", str(self.pidfile), "-r", str(self.vrrp_pidfile),
            "-c", str(self.checkers_pidfile), "-b", str(self.bfd_pidfile),
        ]

    def start(self) -> None:
        """Write the config and start keepalived in the foreground inside the namespace."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("keepalived already running")
        self.write_config()
        for p in (self.pidfile, self.vrrp_pidfile):
            p.unlink(missing_ok=True)
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen(Topology.prefix(self.ns) + self.argv(), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    @property
    def pid(self) -> int | None:
        """PID of the keepalived parent (``ip netns exec`` execs, so the Popen pid is it)."""
        return self.proc.pid if self.proc is not None else None

    def vrrp_pid(self) -> int | None:
        """PID of the VRRP child (from its pid file), or ``None`` when not (yet) running."""
        try:
            pid = int(self.vrrp_pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def wait_vrrp_child(self, timeout: float = 10) -> int:
        """Wait until the VRRP child is running; return its PID."""
        def ready() -> int | None:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"keepalived exited: {self.log_tail()}")
            return self.vrrp_pid()
        return wait_for(ready, timeout, what="keepalived VRRP child")

    def _pids(self) -> list[int]:
        pids = []
        child = self.vrrp_pid()
        if child is not None:
            pids.append(child)
        if self.proc is not None and self.proc.poll() is None:
            pids.append(self.proc.pid)
        return pids

    def crash(self) -> None:
        """Stop every process of this keepalived at once: SIGSTOP both, then SIGKILL both.

        Nothing is released: VIPs stay on the interface, as after a real crash.
        """
        pids = self._pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reap()

    def stop(self, timeout: float = 10) -> None:
        """Graceful stop (SIGTERM to the parent; it sends priority 0 and removes VIPs)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.crash()
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        # The VRRP child is the parent's child; once the parent is gone it is reparented
        # and reaped by init (or the subreaper). Make sure it is gone.
        child = self.vrrp_pid()
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_for(lambda: self.vrrp_pid() is None or _is_zombie(child), 5,
                     what="keepalived VRRP child to exit")
        for p in (self.pidfile, self.vrrp_pidfile):
            p.unlink(missing_ok=True)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> Keepalived:
        return self

    def __exit__(self, *exc: object) -> None:
        self.crash() if self.proc is not None and self.proc.poll() is None else self._reap()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
