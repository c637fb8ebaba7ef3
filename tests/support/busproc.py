"""A real BusService (with an Engine) in a child process on 127.0.0.1 ephemeral ports, for
tests that measure the service from outside: its memory (RSS), whether its loop keeps
sending heartbeats under a flood, replies bigger than one frame."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

__all__ = ["BusProcess"]

CHILD = r'''
import asyncio, json, shutil, sys, tempfile
from clusterbus.bus.service import BusService
from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.pluginhost import PluginHost

options = json.loads(sys.argv[1])

async def main():
    tmp = tempfile.mkdtemp(prefix="busproc-")  # ingest on TCP needs CURVE: ipc here
    cfg = parse_config({"bus": {"publish": "tcp://127.0.0.1:*", "ingest": f"ipc://{tmp}/ingest",
                                "snapshot": "tcp://127.0.0.1:*", **options}}, file="<child>")
    svc = BusService(Engine(origin=1, plugins=PluginHost()), cfg,
                     status_provider=lambda: {"bus": svc.status()})
    task = asyncio.create_task(svc.run())
    await svc.ready.wait()
    print(json.dumps(svc.endpoints), flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await stdin.read()  # until the test closes our stdin
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    shutil.rmtree(tmp, ignore_errors=True)

asyncio.run(main())
'''


class BusProcess:
    """``with BusProcess(heartbeat_interval=0.05) as svc:`` -- ``svc.endpoints``,
    ``svc.rss()``; the child exits when the block ends (stdin closed, then killed)."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.proc: subprocess.Popen[str] | None = None
        self.endpoints: dict[str, str] = {}

    def __enter__(self) -> BusProcess:
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(self.options)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.__exit__()
            raise RuntimeError("the bus child process did not start")
        self.endpoints = json.loads(line)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def rss(self) -> int:
        """The child's resident set size in bytes (VmRSS)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

