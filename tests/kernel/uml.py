"""Run Python payloads inside a User-Mode Linux kernel that has IPVS (the test suite's side).

The kernel is booted by :mod:`clusterbus.lab.uml` (shared with ``clusterbus lab``): the
host's filesystem as root (hostfs), a private ``/run``, ``ip_vs`` and the schedulers
loaded, the payload run, then ``halt -f``. Here the payload runs in the repository root
with the virtualenv's python (see :data:`PYTHON`). The payload writes its results to a host
file (hostfs is the host filesystem), which the caller reads after the kernel has halted.

The UML process runs in its own session; on timeout it is killed by its process group id
(the PID we started), never by name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from clusterbus.lab import uml as _uml
from clusterbus.lab.uml import UML_BINARY, BootResult, UmlError, kernel_version

__all__ = ["UML_BINARY", "ROOT", "available", "kernel_version", "boot", "BootResult", "UmlError"]

ROOT = Path(__file__).resolve().parents[2]
#: The payload's python: the virtualenv running this code (tests/run's .venv-test for the
#: suite, .venv for the benchmarks), whose packages UML sees through hostfs.
PYTHON = (Path(sys.prefix) if sys.prefix != sys.base_prefix else ROOT / ".venv-test") / "bin" / "python"


def available() -> str | None:
    """``None`` when UML can run here, else the reason why not."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.access(UML_BINARY, os.X_OK):
        return "user-mode-linux is not installed (tests/run installs it)"
    reason = _uml.unavailable()
    if reason:
        return reason
    if not PYTHON.exists():
        return f"no project venv at {PYTHON}"
    return None


def boot(
    argv: Sequence[str],
    *,
    timeout: float = 600,
    mem: str = "768M",
    env: dict[str, str] | None = None,
    workdir: Path | None = None,
    keep: bool = False,
    kernel_args: Sequence[str] = (),
) -> BootResult:
    """Boot UML, run ``argv`` (cwd: the repository root) inside it, wait for the halt.

    :param argv: the payload command; pass :data:`PYTHON` yourself.
    :param timeout: seconds before the UML process group is killed.
    :param mem: the UML kernel's memory.
    :param env: extra environment for the payload (``CLUSTERBUS_IN_UML=1`` is always set).
    :param workdir: where to put the run's files (a new temporary directory by default).
    :param keep: keep ``workdir`` after the run.
    :param kernel_args: more kernel command-line arguments (``ip_vs.conn_tab_bits=18``).
    :returns: the payload's exit status and the console output.
    :raises UmlError: UML is unavailable, or the run timed out (the process is killed).
    """
    reason = available()
    if reason:
        raise UmlError(reason)
    return _uml.boot(argv, timeout=timeout, mem=mem, env=env, workdir=workdir, keep=keep,
                     cwd=ROOT, kernel_args=kernel_args)
