"""Plugins use only the public API: the built-in plugins (and the example plugin, which
authors copy) import from clusterbus nothing but names a module lists in its ``__all__``,
no private (underscore) module or name, and never another plugin's module.

The checker is tested on sources that break each rule, so it is known to be able to fail."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: folder -> the package its files belong to
PLUGIN_PACKAGES = {
    **{d: f"clusterbus.plugins.{d.name}"
       for d in sorted((ROOT / "plugins").iterdir()) if (d / "__init__.py").exists()},
    ROOT / "contrib" / "example-plugin" / "clusterbus_example": "clusterbus_example",
}


def _public(module: str) -> set[str] | None:
    """The names ``module`` exports (its ``__all__``), or None when it declares none."""
    names = getattr(importlib.import_module(module), "__all__", None)
    return None if names is None else set(names)


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def violations(source: str, *, package: str, module: str) -> list[str]:
    """What ``source`` (the file ``module`` of the plugin ``package``) imports that a plugin
    may not: one line per import."""
    out: list[str] = []

    def check_module(name: str, line: int) -> bool:
        """Rules on the module itself; True when it is clusterbus core (names to check)."""
        if name == package or name.startswith(package + "."):
            return False  # the plugin's own modules
        if name == "clusterbus.plugins":
            return False  # the namespace: what is imported from it is checked below
        if name.startswith("clusterbus.plugins."):
            out.append(f"{module}:{line}: imports another plugin's module {name}")
            return False
        if name != "clusterbus" and not name.startswith("clusterbus."):
            return False  # the standard library, third-party packages
        if any(part.startswith("_") for part in name.split(".")):
            out.append(f"{module}:{line}: imports the private module {name}")
            return False
        return True

    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_module(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                is_package = module == package  # an __init__ resolves relative to itself
                base = parts if is_package else parts[:-1]
                base = base[:len(base) - (node.level - 1)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            if not check_module(name, node.lineno):
                if name == "clusterbus.plugins":  # from clusterbus.plugins import other
                    for alias in node.names:
                        if f"clusterbus.plugins.{alias.name}" != package:
                            out.append(f"{module}:{node.lineno}: imports another plugin's "
                                       f"module clusterbus.plugins.{alias.name}")
                continue
            public = _public(name)
            for alias in node.names:
                if alias.name.startswith("_"):
                    out.append(f"{module}:{node.lineno}: imports the private name "
                               f"{name}.{alias.name}")
                elif public is not None and alias.name in public:
                    continue
                elif _is_module(f"{name}.{alias.name}"):
                    check_module(f"{name}.{alias.name}", node.lineno)
                else:
                    out.append(f"{module}:{node.lineno}: imports {name}.{alias.name}, which "
                               f"{name} does not export (not in its __all__)")
        elif isinstance(node, ast.Attribute):
            # clusterbus.x._private used without importing it by name
            chain = []
            cur: ast.expr = node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "clusterbus" and chain[0].startswith("_") \
                    and not chain[0].startswith("__"):
                out.append(f"{module}:{node.lineno}: uses the private name "
                           f"clusterbus.{'.'.join(reversed(chain))}")
    return out


def _plugin_files():
    for folder, package in PLUGIN_PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield path, package, ".".join([package, *parts])


@pytest.mark.parametrize("path,package,module",
                         list(_plugin_files()), ids=lambda v: getattr(v, "name", None))
def test_builtin_plugins_import_only_the_public_api(path, package, module):
    assert violations(path.read_text(), package=package, module=module) == []


def test_every_plugin_package_is_checked():
    names = {p for p in PLUGIN_PACKAGES.values()}
    assert {"clusterbus.plugins.nodemap", "clusterbus.plugins.ipvs", "clusterbus_example"} <= names
    assert sum(1 for _ in _plugin_files()) >= 8


BAD = {
    "another plugin (absolute)": "from clusterbus.plugins.nodemap import config_nodes",
    "another plugin (as a module)": "import clusterbus.plugins.nodemap",
    "another plugin (from the package)": "from clusterbus.plugins import nodemap",
    "another plugin (relative)": "from ..nodemap import plugin",
    "a private name": "from clusterbus.events import _membership_event",
    "a private module": "from clusterbus.vrrp import _internal",
    "a name not in __all__": "from clusterbus.config import EXTRA_SECTIONS",
    "a name not exported by clusterbus": "from clusterbus import PluginInfo",
    "a private attribute": "import clusterbus\nclusterbus._version_hack = 1",
}


@pytest.mark.parametrize("source", BAD.values(), ids=BAD.keys())
def test_the_checker_catches_each_kind_of_violation(source):
    found = violations(source, package="clusterbus.plugins.ipvs",
                       module="clusterbus.plugins.ipvs.model")
    assert len(found) == 1, found


GOOD = [
    "from clusterbus import Cluster, hookimpl, NodemapConfig",
    "import clusterbus",
    "from clusterbus.config import Config, Key, validate_table",
    "from clusterbus.cli import BadConfig",
    "from .table import Dest",
    "from clusterbus.plugins.ipvs.table import Dest",
    "from . import codec",
    "import asyncio\nfrom pyroute2.netlink.exceptions import NetlinkError",
]


@pytest.mark.parametrize("source", GOOD)
def test_the_checker_accepts_the_public_api_and_own_modules(source):
    assert violations(source, package="clusterbus.plugins.ipvs",
                      module="clusterbus.plugins.ipvs.model") == []
