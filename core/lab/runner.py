"""The host side of ``clusterbus lab``: requirements, booting the lab's UML kernel, results.

Two ways to run the lab (both boot one UML kernel, see :mod:`clusterbus.lab.uml`):

* :func:`run_scenario` (``failover``, ``handoff``): a self-contained run. Boot, build the
  topology, start the directors and the clients, play the scenario, halt. Nothing is left
  running; the outcome is read from the run's directory.
* :func:`up` / :func:`status` / :func:`down`: a long-lived lab. ``up`` boots the kernel in
  the background (its own session) and records its PID in :data:`LAB_DIR`; the lab inside
  refreshes ``status.json`` there every second (hostfs: the host's filesystem is UML's
  root). ``down`` asks it to stop (a ``stop`` file), waits, and kills the recorded process
  group if it did not halt in time, after checking that the PID is still our kernel.

Nothing is installed: :func:`missing` names the Debian packages to install by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import uml

__all__ = ["LabError", "Requirement", "REQUIREMENTS", "LAB_DIR", "missing", "run_scenario",
           "up", "status", "down"]

#: The long-lived lab's directory (visible inside UML through hostfs, unlike /run).
LAB_DIR = Path("/var/tmp/clusterbus-lab")
#: Seconds a whole lab run (boot, scenario, halt) may take before its kernel is killed.
TIMEOUT = float(os.environ.get("CLUSTERBUS_LAB_TIMEOUT", "600"))
MEM = "768M"


class LabError(RuntimeError):
    """The lab cannot run here or failed; the message is one line for the user."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Requirement:
    """A program the lab needs and the Debian package that ships it."""

    program: str
    package: str
    paths: tuple[str, ...] = ()


REQUIREMENTS = (
    Requirement(program="linux.uml", package="user-mode-linux",
                paths=("/usr/bin/linux.uml",)),
    Requirement(program="ipvsadm", package="ipvsadm"),
    Requirement(program="ip", package="iproute2"),
    Requirement(program="depmod", package="kmod"),
    Requirement(program="modprobe", package="kmod"),
    Requirement(program="sysctl", package="procps"),
)


def missing() -> list[Requirement]:
    """The requirements not met on this host (programs looked up on PATH and in sbin)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin"
    out = []
    for r in REQUIREMENTS:
        if shutil.which(r.program, path=path) or any(os.access(p, os.X_OK) for p in r.paths):
            continue
        out.append(r)
    if not out and uml.kernel_version() is None:
        out.append(Requirement(program=f"UML modules in {uml.MODULES_BASE}",
                               package="user-mode-linux"))
    return out


def check() -> None:
    """Raise :class:`LabError` naming what to do when the lab cannot run here."""
    gone = missing()
    if gone:
        pkgs = sorted({r.package for r in gone})
        raise LabError(f"missing {', '.join(r.program for r in gone)}; install with: "
                       f"apt-get install {' '.join(pkgs)}")
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces and IPVS inside a UML "
                       "kernel): run it with sudo")


def _payload(workdir: Path, mode: str, sync: bool) -> list[str]:
    argv = [sys.executable, "-m", "clusterbus.lab.scenario", str(workdir), mode]
    return argv + ([] if sync else ["--no-sync"])


class _Tail:
    """New lines of the lab's progress file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0

    def lines(self) -> list[str]:
        try:
            with open(self.path) as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind("\n") + 1
        self.pos += len(data[:end].encode())
        return data[:end].splitlines()


def _error(workdir: Path, result: uml.BootResult | None, what: str) -> LabError:
    tail = ""
    if result is not None:
        tail = "\n" + "\n".join(result.console.strip().splitlines()[-15:])
    return LabError(f"{what} (run directory kept: {workdir}){tail}")


def run_scenario(mode: str, *, sync: bool, progress: Callable[[str], None],
                 timeout: float = TIMEOUT, keep: bool = False) -> dict[str, Any]:
    """Boot a lab, play ``mode`` (``failover`` or ``handoff``), halt; return its result.

    :raises LabError: the lab cannot run here, or it failed (the run directory is kept).
    """
    check()
    workdir = Path(tempfile.mkdtemp(prefix="clusterbus-lab-", dir="/var/tmp"))
    tail = _Tail(workdir / "progress.log")
    progress(f"booting a User-Mode Linux kernel (run directory {workdir})")
    start = time.monotonic()
    try:
        proc = uml.spawn(_payload(workdir, mode, sync), workdir=workdir, mem=MEM)
    except uml.UmlError as exc:
        raise LabError(str(exc)) from None
    result = None
    try:
        while proc.poll() is None and time.monotonic() - start < timeout:
            for line in tail.lines():
                progress(line)
            time.sleep(0.2)
        result = uml.wait(proc, workdir, timeout=timeout, start=start)
    except uml.UmlError as exc:
        raise _error(workdir, None, str(exc).splitlines()[0]) from None
    for line in tail.lines():
        progress(line)
    try:
        data: dict[str, Any] = json.loads((workdir / "result.json").read_text())
    except (OSError, ValueError):
        raise _error(workdir, result, "the lab wrote no result") from None
    if "error" in data:
        raise _error(workdir, result, f"the lab failed: {data['error']}")
    data["duration"] = round(result.duration, 1)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return data


def _recorded_pid() -> int | None:
    try:
        pid = int((LAB_DIR / "uml.pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # still our kernel: a recycled PID never matches the run's init script
    if f"init={LAB_DIR}/init.sh".encode() in cmdline and uml.pid_alive(pid):
        return pid
    return None


def up(*, sync: bool, progress: Callable[[str], None], timeout: float = 300) -> dict[str, Any]:
    """Boot the long-lived lab in the background; return its first status.

    :raises LabError: already up, cannot run here, or it failed to come up (it is stopped).
    """
    check()
    pid = _recorded_pid()
    if pid is not None:
        raise LabError(f"a lab is already up (UML PID {pid}); `clusterbus lab down` first")
    shutil.rmtree(LAB_DIR, ignore_errors=True)
    LAB_DIR.mkdir(parents=True)
    tail = _Tail(LAB_DIR / "progress.log")
    progress(f"booting a User-Mode Linux kernel in the background (lab directory {LAB_DIR})")
    try:
        proc = uml.spawn(_payload(LAB_DIR, "up", sync), workdir=LAB_DIR, mem=MEM)
    except uml.UmlError as exc:
        raise LabError(str(exc)) from None
    (LAB_DIR / "uml.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in tail.lines():
            progress(line)
        if proc.poll() is not None:
            res = LAB_DIR / "result.json"
            why = json.loads(res.read_text()).get("error", "?") if res.exists() else "no result"
            raise LabError(f"the lab stopped while coming up: {why}")
        if (LAB_DIR / "status.json").exists():
            return status()
        time.sleep(0.2)
    uml.kill_group(proc.pid, proc)
    raise LabError(f"the lab did not come up within {timeout:.0f} s (killed)")


def status() -> dict[str, Any]:
    """The running lab's status (``{"up": False}`` when none is)."""
    pid = _recorded_pid()
    if pid is None:
        return {"up": False}
    try:
        data: dict[str, Any] = json.loads((LAB_DIR / "status.json").read_text())
    except (OSError, ValueError):
        data = {}
    age = time.time() - (LAB_DIR / "status.json").stat().st_mtime if data else None
    return {"up": True, "pid": pid, "directory": str(LAB_DIR),
            "age": None if age is None else round(age, 1), **data}


def down(*, timeout: float = 60) -> str:
    """Stop the running lab: ask it, wait up to ``timeout`` s, then kill its process group."""
    pid = _recorded_pid()
    if pid is None:
        shutil.rmtree(LAB_DIR, ignore_errors=True)
        return "no lab is up"
    (LAB_DIR / "stop").touch()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and uml.pid_alive(pid):
        time.sleep(0.2)
    how = "stopped"
    if uml.pid_alive(pid):
        uml.kill_group(pid)
        how = "killed (it did not halt in time)"
    for _ in range(50):  # our own child only when `up` ran in this process (tests)
        try:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                break
        except ChildProcessError:
            break
        time.sleep(0.1)
    shutil.rmtree(LAB_DIR, ignore_errors=True)
    return f"lab {how} (UML PID {pid})"
