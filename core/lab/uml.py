"""Boot a User-Mode Linux kernel that has IPVS, with the host's filesystem as its root.

The host kernel may lack IPVS (or the right to touch it); Debian's ``user-mode-linux``
package is a Linux kernel that runs as a process and ships the IPVS modules. :func:`spawn`
starts it with the host's filesystem as root (hostfs), a per-run init script that mounts
``/proc``, ``/sys`` and a private ``/run`` (so ``ip netns`` inside UML never writes into
the host's ``/run/netns``), loads ``ip_vs`` and the schedulers from a depmod'ed module root
in the run's directory, runs the payload and ends with ``halt -f``. The payload writes its
results to host files (hostfs is the host filesystem), which the caller reads.

The UML process runs in its own session; it is stopped by its process group id (the PID
this module started and the caller recorded), never by name. Used by ``clusterbus lab``
and by the kernel test suite (tests/kernel/uml.py).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["UML_BINARY", "MODULES_BASE", "MODULES", "UmlError", "BootResult", "kernel_version",
           "unavailable", "spawn", "wait", "boot", "kill_group", "pid_alive"]

UML_BINARY = shutil.which("linux.uml") or "/usr/bin/linux.uml"
MODULES_BASE = Path("/usr/lib/uml/modules")

#: Modules loaded before the payload runs (dependencies such as nf_conntrack come along).
MODULES = (
    "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_lblc", "ip_vs_lblcr",
    "ip_vs_dh", "ip_vs_sh", "ip_vs_sed", "ip_vs_nq", "ip_vs_fo", "ip_vs_ovf", "ip_vs_mh",
    "ipv6", "veth", "bridge", "ipip", "ip6_tunnel", "dummy", "udp_diag",
)


class UmlError(RuntimeError):
    """The UML kernel could not be booted or did not finish in time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BootResult:
    """What a UML run left behind.

    :param returncode: the payload's exit status (``None`` when it never wrote one).
    :param console: the kernel console and payload output.
    :param duration: seconds from start to halt.
    :param workdir: the run's directory (removed by :func:`boot` unless kept).
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


def unavailable() -> str | None:
    """``None`` when UML can run here, else the reason why not (one line)."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.access(UML_BINARY, os.X_OK):
        return "user-mode-linux is not installed (apt-get install user-mode-linux)"
    if kernel_version() is None:
        return f"no UML modules under {MODULES_BASE} (apt-get install user-mode-linux)"
    if not shutil.which("depmod"):
        return "kmod (depmod/modprobe) is not installed (apt-get install kmod)"
    return None


def _module_root(workdir: Path, version: str) -> Path:
    """A module root ``ROOT/lib/modules/VERSION`` that depmod can write to.

    The ``kernel`` tree is a symlink into the package's modules (read-only use); the
    ``modules.*`` index files are written here by depmod, never into /usr/lib/uml.
    """
    root = workdir / "modroot"
    moddir = root / "lib" / "modules" / version
    moddir.mkdir(parents=True, exist_ok=True)
    src = MODULES_BASE / version
    if not (moddir / "kernel").exists():
        (moddir / "kernel").symlink_to(src / "kernel")
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (src / name).exists():
            shutil.copy(src / name, moddir / name)
    subprocess.run(["depmod", "-b", str(root), version], check=True, capture_output=True,
                   timeout=60)
    return root


def _init_script(workdir: Path, modroot: Path, argv: Sequence[str], env: dict[str, str],
                 cwd: Path) -> Path:
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
cd {shlex.quote(str(cwd))}
{shlex.join(argv)}
echo $? > {shlex.quote(str(rc_file))}
sync
halt -f
"""
    path = workdir / "init.sh"
    path.write_text(script)
    path.chmod(0o755)
    return path


def spawn(argv: Sequence[str], *, workdir: Path, mem: str = "768M",
          env: dict[str, str] | None = None, cwd: Path = Path("/"),
          kernel_args: Sequence[str] = (), netns: str | None = None) -> subprocess.Popen[bytes]:
    """Start UML running ``argv`` inside; return at once (the caller waits or records the PID).

    The console goes to ``workdir/console.log``; the payload's exit status to
    ``workdir/rc``. The process is a session leader: :func:`kill_group` stops it with all
    the helper processes UML forks.

    :param kernel_args: more UML command-line arguments, e.g. a network device on a host
        interface: ``vec0:transport=raw,ifname=veth0`` (the kernel sees ``vec0``).
    :param netns: run the UML process in this host network namespace (where the
        interfaces named in ``kernel_args`` are), through ``ip netns exec``.
    :raises UmlError: UML cannot run here.
    """
    reason = unavailable()
    if reason:
        raise UmlError(reason)
    version = kernel_version()
    assert version is not None
    workdir.mkdir(parents=True, exist_ok=True)
    modroot = _module_root(workdir, version)
    full_env = {"CLUSTERBUS_IN_UML": "1", "HOME": "/root", "PYTHONDONTWRITEBYTECODE": "1"}
    full_env.update(env or {})
    init = _init_script(workdir, modroot, argv, full_env, cwd)
    cmd = [UML_BINARY, f"mem={mem}", "root=/dev/root", "rootfstype=hostfs", "rootflags=/",
           "rw", f"init={init}", "con=null", "con0=fd:0,fd:1", "quiet", *kernel_args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    with open(workdir / "console.log", "wb") as console:
        # Own session: the kernel forks helper processes; stopping it takes the whole group.
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait(proc: subprocess.Popen[bytes], workdir: Path, *, timeout: float,
         start: float | None = None) -> BootResult:
    """Wait for a :func:`spawn`'ed kernel to halt; kill its group after ``timeout`` seconds.

    :raises UmlError: the run timed out (the process group is killed).
    """
    start = time.monotonic() if start is None else start
    console_path = workdir / "console.log"
    try:
        proc.wait(timeout=max(0.0, timeout - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        kill_group(proc.pid, proc)
        text = console_path.read_text(errors="replace")
        raise UmlError(f"UML run exceeded {timeout:.0f} s and was killed; "
                       f"console tail:\n{text[-4000:]}") from None
    finally:
        if proc.poll() is None:
            kill_group(proc.pid, proc)
    rc_text = (workdir / "rc").read_text().strip() if (workdir / "rc").exists() else ""
    return BootResult(
        returncode=int(rc_text) if rc_text.lstrip("-").isdigit() else None,
        console=console_path.read_text(errors="replace"),
        duration=time.monotonic() - start,
        workdir=workdir,
    )


def boot(argv: Sequence[str], *, timeout: float = 600, mem: str = "768M",
         env: dict[str, str] | None = None, workdir: Path | None = None, keep: bool = False,
         cwd: Path = Path("/"), kernel_args: Sequence[str] = ()) -> BootResult:
    """Boot UML, run ``argv`` (in ``cwd``) inside it, wait for the halt.

    :param timeout: seconds before the UML process group is killed.
    :param kernel_args: more kernel command-line arguments (see :func:`spawn`), e.g. a
        module parameter such as ``ip_vs.conn_tab_bits=18`` (modprobe applies those).
    :param env: extra environment for the payload (``CLUSTERBUS_IN_UML=1`` is always set).
    :param workdir: where to put the run's files (a new temporary directory by default).
    :param keep: keep ``workdir`` after the run.
    :raises UmlError: UML is unavailable, or the run timed out (the process is killed).
    """
    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="cb-uml-")) if workdir is None else workdir
    try:
        start = time.monotonic()
        proc = spawn(argv, workdir=wd, mem=mem, env=env, cwd=cwd, kernel_args=kernel_args)
        return wait(proc, wd, timeout=timeout, start=start)
    finally:
        if own_dir and not keep:
            shutil.rmtree(wd, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (and is not a zombie we could reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_group(pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Kill the UML process group we started (its pgid is the PID we started)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc is not None:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
