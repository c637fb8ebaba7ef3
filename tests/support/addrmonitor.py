"""``ip -ts -o monitor address`` in a namespace, read back by time (benchmarks only)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

from netns import Topology

__all__ = ["AddrMonitor"]

_LINE = re.compile(r"^\[(\S+)\] (Deleted )?\d+: eth0\s+inet (\S+)/")


class AddrMonitor:
    """Records the address changes of ``eth0`` in namespace ``ns`` into ``path``; answers
    when ``vip`` was first added or deleted after a moment (wall clock)."""

    def __init__(self, ns: str, path: Path, vip: str) -> None:
        self.path, self.vip = path, vip
        self.out = open(path, "wb")
        self.proc = subprocess.Popen(Topology.prefix(ns) + ["ip", "-ts", "-o", "monitor",
                                                            "address"], stdout=self.out)
        time.sleep(0.3)  # bench only: give ip monitor time to subscribe

    def _first_after(self, t0: float, *, deleted: bool) -> float | None:
        for line in self.path.read_text().splitlines():
            m = _LINE.match(line)
            if m and (m.group(2) is not None) == deleted and m.group(3) == self.vip:
                t = datetime.fromisoformat(m.group(1)).timestamp()
                if t >= t0:
                    return t
        return None

    def added_after(self, t0: float) -> float | None:
        """Wall-clock time of the first addition of the VIP after ``t0``, or None."""
        return self._first_after(t0, deleted=False)

    def deleted_after(self, t0: float) -> float | None:
        """Wall-clock time of the first deletion of the VIP after ``t0``, or None."""
        return self._first_after(t0, deleted=True)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        self.out.close()
