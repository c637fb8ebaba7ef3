"""Run Python payloads inside a User-Mode Linux kernel that has IPVS.

The host kernel has no IPVS; Debian's ``user-mode-linux`` package is a Linux kernel that
runs as a process and ships the IPVS modules. :func:`boot` starts it with the host's
filesystem as root (hostfs), a per-run init script that mounts ``/proc``, ``/sys`` and a
private ``/run`` (so ``ip netns`` inside UML never writes into the host's ``/run/netns``),
loads ``ip_vs`` and the schedulers from a depmod'ed module root in a temporary directory,
runs the payload with the virtualenv's python (see :data:`PYTHON`), and ends with ``halt -f``. The
payload writes its results to a host file (hostfs is the host filesystem), which the
caller reads after the kernel has halted.

The UML process runs in its own session; on timeout it is killed by its process group id
(the PID we started), never by name.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["UML_BINARY", "ROOT", "available", "kernel_version", "boot", "BootResult", "UmlError"]

UML_BINARY = shutil.which("linux.uml") or "/usr/bin/linux.uml"
MODULES_BASE = Path("/usr/lib/uml/modules")
ROOT = Path(__file__).resolve().parents[2]
#: The payload's python: the virtualenv running this code (tests/run's .venv-test for the
#: suite, .venv for the benchmarks), whose packages UML sees through hostfs.
PYTHON = (Path(sys.prefix) if sys.prefix != sys.base_prefix else ROOT / ".venv-test") / "bin" / "python"

#: Modules loaded before the payload runs (dependencies such as nf_conntrack come along).
MODULES = (
    "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_lblc", "ip_vs_lblcr",
    "ip_vs_dh", "ip_vs_sh", "ip_vs_sed", "ip_vs_nq", "ip_vs_fo", "ip_vs_ovf", "ip_vs_mh",
    "ipv6", "veth", "bridge", "ipip", "ip6_tunnel", "dummy",
)


class UmlError(RuntimeError):
    """The UML kernel could not be booted or did not finish in time."""


@dataclass(frozen=True, slots=True)
class BootResult:
    """What a UML run left behind.

    :param returncode: the payload's exit status (``None`` when it never wrote one).
    :param console: the kernel console and payload output.
    :param duration: seconds from start to halt.
    :param workdir: the run's temporary directory (removed by :func:`boot` unless ``keep``).
    """

    returncode: int | None
    console: str
    duration: float
    workdir: Path


def kernel_version() -> str | None:
    """The UML module version directory (e.g. ``6.1.176``), ``None`` when not installed."""
    if not MODULES_BASE.is_dir():
        return None
    versions = sorted(p.name for p in MODULES_BASE.iterdir() if (p / "kernel").is_dir())
    return versions[-1] if versions else None


def available() -> str | None:
    """``None`` when UML can run here, else the reason why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.access(UML_BINARY, os.X_OK):
        return "user-mode-linux is not installed (tests/run installs it)"
    if kernel_version() is None:
        return f"no UML modules under {MODULES_BASE}"
    if not shutil.which("depmod"):
        return "kmod (depmod/modprobe) is not installed"
    if not PYTHON.exists():
        return f"no project venv at {PYTHON}"
    return None


def _module_root(workdir: Path, version: str) -> Path:
    """A module root ``ROOT/lib/modules/VERSION`` that depmod can write to.

    The ``kernel`` tree is a symlink into the package's modules (read-only use); the
    ``modules.*`` index files are written here by depmod, never into /usr/lib/uml.
    """
    root = workdir / "modroot"
    moddir = root / "lib" / "modules" / version
    moddir.mkdir(parents=True)
    src = MODULES_BASE / version
    (moddir / "kernel").symlink_to(src / "kernel")
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (src / name).exists():
            shutil.copy(src / name, moddir / name)
    subprocess.run(["depmod", "-b", str(root), version], check=True, capture_output=True,
                   timeout=60)
    return root


def _init_script(workdir: Path, modroot: Path, argv: Sequence[str], env: dict[str, str]) -> Path:
    rc_file = workdir / "rc"
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())
    modprobes = "\n".join(
        f"modprobe -d {shlex.quote(str(modroot))} {m} || echo 'uml: modprobe {m} failed'"
        for m in MODULES
    )
    script = f"""#!/bin/sh
# clusterbus UML init (generated per run)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# A private /run: `ip netns add` inside UML must not create files in the host's /run.
mount -t tmpfs tmpfs /run
mkdir -p /run/netns
ip link set lo up
{modprobes}
{exports}
cd {shlex.quote(str(ROOT))}
{shlex.join(argv)}
echo $? > {shlex.quote(str(rc_file))}
sync
halt -f
"""
    path = workdir / "init.sh"
    path.write_text(script)
    path.chmod(0o755)
    return path


def boot(
    argv: Sequence[str],
    *,
    timeout: float = 600,
    mem: str = "768M",
    env: dict[str, str] | None = None,
    workdir: Path | None = None,
    keep: bool = False,
) -> BootResult:
    """Boot UML, run ``argv`` (cwd: the repository root) inside it, wait for the halt.

    :param argv: the payload command; ``{python}`` is not substituted, pass
        :data:`PYTHON` yourself.
    :param timeout: seconds before the UML process group is killed.
    :param mem: the UML kernel's memory.
    :param env: extra environment for the payload (``CLUSTERBUS_IN_UML=1`` is always set).
    :param workdir: where to put the run's files (a new temporary directory by default).
    :param keep: keep ``workdir`` after the run.
    :returns: the payload's exit status and the console output.
    :raises UmlError: UML is unavailable, or the run timed out (the process is killed).
    """
    reason = available()
    if reason:
        raise UmlError(reason)
    version = kernel_version()
    assert version is not None
    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="cb-uml-")) if workdir is None else workdir
    wd.mkdir(parents=True, exist_ok=True)
    try:
        modroot = _module_root(wd, version)
        full_env = {"CLUSTERBUS_IN_UML": "1", "HOME": "/root", "PYTHONDONTWRITEBYTECODE": "1"}
        full_env.update(env or {})
        init = _init_script(wd, modroot, argv, full_env)
        console_path = wd / "console.log"
        cmd = [UML_BINARY, f"mem={mem}", "root=/dev/root", "rootfstype=hostfs", "rootflags=/",
               "rw", f"init={init}", "con=null", "con0=fd:0,fd:1", "quiet"]
        start = time.monotonic()
        with open(console_path, "wb") as console:
            # Own session: the kernel forks helper processes; on timeout the whole group goes.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                text = console_path.read_text(errors="replace")
                raise UmlError(f"UML run exceeded {timeout:.0f} s and was killed; "
                               f"console tail:\n{text[-4000:]}") from None
            finally:
                if proc.poll() is None:
                    _kill_group(proc)
        duration = time.monotonic() - start
        rc_text = (wd / "rc").read_text().strip() if (wd / "rc").exists() else ""
        return BootResult(
            returncode=int(rc_text) if rc_text.lstrip("-").isdigit() else None,
            console=console_path.read_text(errors="replace"),
            duration=duration,
            workdir=wd,
        )
    finally:
        if own_dir and not keep:
            shutil.rmtree(wd, ignore_errors=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the UML process group we started (its pgid is our child's PID)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
