"""The VRRP protocol core stays sans-IO: no asyncio, socket, zmq or pyroute2 (docs/architecture.md, "Rooms").

Only ``clusterbus.vrrp.speaker`` (the I/O adapter) may import them. The check reads the
source (AST) and follows imports inside ``clusterbus`` transitively, so a helper module that
pulls in asyncio is caught too. ``sys.modules`` cannot be used: importing any
``clusterbus.vrrp`` module runs ``clusterbus/__init__.py``, which loads the engine and plugin
host (those are allowed to do I/O and are not part of the protocol core).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import clusterbus

FORBIDDEN = {"asyncio", "socket", "zmq", "pyroute2", "selectors", "ssl"}
PKG_ROOT = Path(clusterbus.__file__).resolve().parent  # core/
VRRP = PKG_ROOT / "vrrp"
# The I/O adapter sits beside the core and may do I/O; config.py is not a protocol core
# (it checks that interfaces exist at start-up).
ADAPTERS = {"speaker.py", "config.py", "sockets.py", "addresses.py", "timing.py", "ipc.py",
            "process.py", "worker.py"}


def _module_file(dotted: str) -> Path | None:
    """``clusterbus.a.b`` -> core/a/b.py or core/a/b/__init__.py (None outside the package)."""
    parts = dotted.split(".")
    if parts[0] != "clusterbus":
        return None
    base = PKG_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _dotted(path: Path) -> str:
    if not path.is_relative_to(PKG_ROOT):
        return path.stem  # a stand-alone file (the checker's own test)
    rel = path.relative_to(PKG_ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["clusterbus", *parts])


def _imports(path: Path) -> list[tuple[str, int]]:
    """Absolute names imported by ``path`` (relative imports resolved), with line numbers."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _dotted(path) if path.name == "__init__.py" else _dotted(path).rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno))
            # `from . import x` may name a sub-module
            out.extend((f"{mod}.{alias.name}", node.lineno) for alias in node.names
                       if _module_file(f"{mod}.{alias.name}") is not None)
    return out


def forbidden_imports(start: Path) -> list[str]:
    """Every forbidden import reachable from ``start`` through clusterbus modules."""
    problems: list[str] = []
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name, line in _imports(path):
            top = name.split(".")[0]
            if top in FORBIDDEN:
                problems.append(f"{path.name}:{line} imports {name}")
            target = _module_file(name)
            # Parent packages' __init__ (clusterbus/__init__.py) run on import but are not
            # this module's dependency; clusterbus.vrrp's own __init__ is.
            if target is not None and (
                target.name != "__init__.py" or target.parent.is_relative_to(VRRP)
            ):
                todo.append(target)
    return problems


def core_modules() -> list[Path]:
    return sorted(p for p in VRRP.glob("*.py") if p.name not in ADAPTERS)


def test_the_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    # Guard against a checker that can never fail.
    bad = VRRP / "speaker.py"
    if bad.is_file():
        assert forbidden_imports(bad), "speaker.py should import socket/asyncio"
    fake = tmp_path / "x.py"
    fake.write_text("import os\nfrom asyncio import sleep\nimport zmq.asyncio\n"
                    "from clusterbus import errors\n")
    found = {p.split(" imports ")[1] for p in forbidden_imports(fake)}
    assert found == {"asyncio", "zmq.asyncio"}


@pytest.mark.parametrize("name", [p.name for p in core_modules()])
def test_vrrp_module_is_sans_io(name: str) -> None:
    assert forbidden_imports(VRRP / name) == []


def test_packet_and_machine_import_without_io_modules() -> None:
    # Belt and braces, at run time: load packet.py and machine.py (with errors.py) as
    # stand-alone modules, without clusterbus/__init__.py, and look at sys.modules.
    code = f"""
import importlib.util, sys, types
root = {str(PKG_ROOT)!r}
for pkg in ("clusterbus", "clusterbus.vrrp"):
    m = types.ModuleType(pkg); m.__path__ = []; sys.modules[pkg] = m
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec); sys.modules[name] = mod
    spec.loader.exec_module(mod)
before = set(sys.modules)
load("clusterbus.errors", root + "/errors.py")
load("clusterbus.vrrp.packet", root + "/vrrp/packet.py")
load("clusterbus.vrrp.machine", root + "/vrrp/machine.py")
bad = {{m for m in set(sys.modules) - before if m.split(".")[0] in {sorted(FORBIDDEN)!r}}}
print(sorted(bad))
"""
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


#: Sans-IO modules of the built-in plugins (their I/O adapters live beside them).
PLUGIN_SANS_IO = [
    PKG_ROOT.parent / "plugins" / "connsync" / name
    for name in ("codec.py", "table.py", "relay.py", "ctcodec.py")
] + [PKG_ROOT.parent / "plugins" / "cvip" / "policy.py"]


@pytest.mark.parametrize("path", PLUGIN_SANS_IO, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_plugin_protocol_cores_are_sans_io(path: Path) -> None:
    assert path.is_file()
    assert forbidden_imports(path) == []
