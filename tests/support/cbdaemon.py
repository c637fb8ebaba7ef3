"""Run a whole ``clusterbus run`` daemon in a test namespace, reachable from the test.

The bus endpoints are ``ipc://`` sockets in the test's directory: files cross network
namespaces, so the pytest process (and ``clusterbus events``) can talk to a daemon whose
netlink source listens inside its own namespace.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from netns import Topology

__all__ = ["Daemon", "CLUSTERBUS", "status"]

CLUSTERBUS = str(Path(sys.executable).with_name("clusterbus"))


def director_keys(base: Path, nodes: Iterable[int]) -> tuple[Path, Path]:
    """A CURVE key pair ``d<N>`` for every node (``clusterbus keygen``) in ``base/keys``,
    and ``base/authorized_keys`` holding every public key: each director lets the others in.

    :returns: ``(keys, authorized_keys)``.
    """
    keys, auth = base / "keys", base / "authorized_keys"
    auth.mkdir(mode=0o700)
    for n in nodes:
        subprocess.run([CLUSTERBUS, "keygen", "--dir", str(keys), "--name", f"d{n}"],
                       capture_output=True, timeout=30, check=True)
        os.link(keys / f"d{n}.key", auth / f"d{n}.key")
    return keys, auth


def status(snapshot_endpoint: str, timeout: float = 2.0) -> dict[str, Any]:
    from clusterbus.bus.client import fetch_status

    return asyncio.run(fetch_status(snapshot_endpoint, timeout=timeout))


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> int | None:
    """SIGTERM ``proc`` (a daemon or client this test started), SIGKILL after ``timeout``;
    its exit status (``None`` when never started)."""
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def kill9_process(proc: subprocess.Popen[Any] | None) -> None:
    """SIGKILL ``proc`` if it still runs, and reap it."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


class Daemon:
    """``clusterbus run -c FILE`` in namespace ``ns`` (None: this namespace)."""

    def __init__(self, workdir: Path, ns: str | None, *, node: int = 7, extra: str = "",
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.ns = ns
        self.publish = f"ipc://{workdir}/pub"
        self.ingest = f"ipc://{workdir}/ingest"
        self.snapshot = f"ipc://{workdir}/snap"
        self.config = workdir / "clusterbus.toml"
        self.config.write_text(
            f"[daemon]\nnode = {node}\nlog_level = \"debug\"\nstate_dir = \"{workdir}/state\"\n\n"
            f"[bus]\npublish = \"{self.publish}\"\ningest = \"{self.ingest}\"\n"
            f"snapshot = \"{self.snapshot}\"\nheartbeat_interval = 0.2\n\n{extra}\n")
        self.log = workdir / "daemon.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Daemon:
        prefix = Topology.prefix(self.ns) if self.ns else []
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*prefix, CLUSTERBUS, "run", "-c", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                st = status(self.snapshot, timeout=0.5)
                if st.get("services", {}).get("netlink", {}).get("listening", True):
                    return self
            except Exception:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"daemon not ready in {timeout}s:\n{self.log.read_text()}")
            time.sleep(0.1)

    def status(self) -> dict[str, Any]:
        return status(self.snapshot)

    def cli(self, *args: str, ns: bool = False, timeout: float = 20,
            check: bool = True, user: list[str] | None = None,
            config: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``clusterbus ARGS -c FILE`` (inside the namespace when ``ns``; without
        ``-c`` when not ``config``)."""
        prefix = (Topology.prefix(self.ns) if ns and self.ns else []) + (user or [])
        conf = ["-c", str(self.config)] if config else []
        p = subprocess.run([*prefix, CLUSTERBUS, *args, *conf],
                           capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and p.returncode != 0:
            raise AssertionError(f"clusterbus {' '.join(args)} -> {p.returncode}: {p.stderr}")
        return p

    def stop(self, timeout: float = 10.0) -> int | None:
        return stop_process(self.proc, timeout)
