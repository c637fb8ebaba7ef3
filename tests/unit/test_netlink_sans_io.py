"""The netlink codec is sans-IO: importing it loads no asyncio, socket, zmq or pyroute2.

``clusterbus/__init__.py`` (engine, plugin host) is replaced by a bare package whose
``__path__`` is the real folder, so the check sees only what ``message.py`` itself pulls in.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import clusterbus

PKG_ROOT = Path(clusterbus.__file__).resolve().parent
FORBIDDEN = ["asyncio", "pyroute2", "selectors", "socket", "ssl", "zmq"]

CODE = """
import sys, types
root = {root!r}
for name, path in (("clusterbus", root), ("clusterbus.netlink", root + "/netlink")):
    m = types.ModuleType(name); m.__path__ = [path]; sys.modules[name] = m
before = set(sys.modules)
import {module}
print(sorted({{m for m in set(sys.modules) - before if m.split(".")[0] in {forbidden!r}}}))
"""


def _loaded(module: str) -> str:
    code = CODE.format(root=str(PKG_ROOT), module=module, forbidden=FORBIDDEN)
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_message_codec_imports_no_io_modules():
    assert _loaded("clusterbus.netlink.message") == "[]"


def test_the_check_can_fail():
    # the sender does I/O: the same check must see it
    assert "socket" in _loaded("clusterbus.netlink.sender")
