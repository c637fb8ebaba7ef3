"""Network-namespace helpers for integration tests (root only).

Every name a test creates carries a per-run prefix, so parallel or leftover runs never
collide, and :class:`Topology` removes everything it made. Only addresses inside these
namespaces are used.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Sequence

__all__ = ["is_root", "run", "Topology"]


def is_root() -> bool:
    return os.geteuid() == 0


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """Run a command (list form), capture output, raise with stderr on failure."""
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


class Topology:
    """Hosts (namespaces) on one bridge (in its own namespace).

    >>> with Topology() as t:
    ...     a = t.host("a", "10.77.0.1/24")
    ...     t.exec(a, ["ping", "-c1", "10.77.0.2"])
    """

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.bridge_ns = f"cbbr{self.tag}"
        self.namespaces: list[str] = []
        self._n = 0
        self._bridge = False

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_bridge(self) -> None:
        if self._bridge:
            return
        run(["ip", "netns", "add", self.bridge_ns])
        self.namespaces.append(self.bridge_ns)
        self.exec(self.bridge_ns, ["ip", "link", "add", "br0", "type", "bridge"])
        self.exec(self.bridge_ns, ["ip", "link", "set", "br0", "up"])
        self.exec(self.bridge_ns, ["ip", "link", "set", "lo", "up"])
        self._bridge = True

    def netns(self, name: str) -> str:
        """Create an empty namespace (loopback up) and return its full name."""
        full = f"cb{name}{self.tag}"
        run(["ip", "netns", "add", full])
        self.namespaces.append(full)
        self.exec(full, ["ip", "link", "set", "lo", "up"])
        return full

    def host(self, name: str, *addrs: str, ifname: str = "eth0") -> str:
        """Create a namespace with ``ifname`` attached to the bridge and these addresses."""
        self._ensure_bridge()
        ns = self.netns(name)
        self._n += 1
        peer = f"p{self._n}{self.tag}"
        run(["ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", peer,
             "netns", self.bridge_ns])
        self.exec(self.bridge_ns, ["ip", "link", "set", peer, "master", "br0", "up"])
        for a in addrs:
            self.exec(ns, ["ip", "addr", "add", a, "dev", ifname] +
                      (["nodad"] if ":" in a else []))
        self.exec(ns, ["ip", "link", "set", ifname, "up"])
        return ns

    def exec(self, ns: str, cmd: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """Run a command inside namespace ``ns``."""
        return run(["ip", "netns", "exec", ns, *cmd], **kw)

    @staticmethod
    def prefix(ns: str) -> list[str]:
        """argv prefix that runs a command inside ``ns`` (for Popen)."""
        return ["ip", "netns", "exec", ns]

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()
