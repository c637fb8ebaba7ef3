"""Packaging guard: every folder with an __init__.py is listed in pyproject's packages.

Editable installs hide a missing entry (the folders are importable anyway); a wheel would
silently lack the sub-package.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _declared():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = data["tool"]["setuptools"]
    return data, tool["packages"], tool["package-dir"]


def test_package_dir_mapping_is_fixed():
    _, _, pdir = _declared()
    assert pdir == {"clusterbus": "core", "clusterbus.bus": "bus",
                    "clusterbus.plugins": "plugins"}


def test_every_sub_package_is_listed():
    _, packages, pdir = _declared()
    found = set()
    for pkg, folder in pdir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([pkg, *rel.parts]) if rel.parts else pkg
            if "__pycache__" not in rel.parts:
                found.add(name)
    missing = sorted(found - set(packages))
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
    stale = sorted(set(packages) - found)
    assert not stale, f"listed but no __init__.py: {stale}"


def test_builtin_plugins_use_the_public_entry_point_group():
    data, _, _ = _declared()
    eps = data["project"]["entry-points"]["clusterbus"]
    assert "nodemap" in eps
    for name, target in eps.items():
        assert target.startswith("clusterbus.plugins."), name


def test_py_typed_ships():
    assert (ROOT / "core" / "py.typed").exists()
    data, _, _ = _declared()
    assert "py.typed" in data["tool"]["setuptools"]["package-data"]["clusterbus"]
