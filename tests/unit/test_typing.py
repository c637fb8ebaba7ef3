"""``mypy --strict`` on the clusterbus package, as docs/architecture.md asks.

mypy maps folders to module names by their own names and has no equivalent of
setuptools' ``package-dir``, and the default editable install is an import hook that
static tools cannot see. So the check builds a throw-away link tree laid out exactly as
``pip install .`` would install the package (``clusterbus/`` from ``core/``,
``clusterbus/bus/`` from ``bus/``, ...), read from pyproject's ``[tool.setuptools]``
``packages`` and ``package-dir``, and runs mypy on that with the ``[tool.mypy]`` settings
from pyproject. Paths in mypy's report are mapped back to the repository's folders.

By hand: ``.venv/bin/python tests/unit/test_typing.py [module ...]`` prints the report
for the whole package (or for the given modules).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"

#: modules that must stay clean: mypy reports only errors inside these
#: (``-p`` = the package and all its sub-modules). Every module of the package is here
#: (test_every_module_is_in_the_clean_list): a new module is added when it is written.
CLEAN = [
    "-m", "clusterbus",
    "-m", "clusterbus.addresses",
    "-m", "clusterbus.cli",
    "-m", "clusterbus.config",
    "-m", "clusterbus.daemon",
    "-m", "clusterbus.engine",
    "-m", "clusterbus.errors",
    "-m", "clusterbus.events",
    "-m", "clusterbus.hookspecs",
    "-m", "clusterbus.keygen",
    "-m", "clusterbus.looplag",
    "-m", "clusterbus.metrics",
    "-m", "clusterbus.nodemap",
    "-m", "clusterbus.nodemapconfig",
    "-m", "clusterbus.peers",
    "-m", "clusterbus.pluginhost",
    "-m", "clusterbus.ratelimit",
    "-m", "clusterbus.schema",
    "-m", "clusterbus.sdnotify",
    "-m", "clusterbus.statusview",
    "-m", "clusterbus.view",
    "-p", "clusterbus.bus",  # client, codec, publisher, ring, security, sequencer, ...
    "-p", "clusterbus.corosync",
    "-p", "clusterbus.lab",  # uml, scenario, app, cli (clusterbus lab)
    "-p", "clusterbus.netlink",
    "-p", "clusterbus.sources",  # corosync, keepalived, netlink, sigcluster
    "-p", "clusterbus.testing",  # bus, vrrp
    "-p", "clusterbus.vrrp",  # machine, packet, speaker, sockets, addresses, ...
    "-p", "clusterbus.plugins",  # nodemap, ipvs
]


def _package_dirs() -> dict[str, Path]:
    """Where each installed package's files come from, as setuptools sees it.

    :returns: package name -> source folder, for every package pyproject installs
    """
    setuptools = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]
    roots: dict[str, str] = setuptools.get("package-dir", {})
    dirs = {}
    for package in setuptools["packages"]:
        # the longest package-dir entry that is this package or one of its parents
        parts = package.split(".")
        for n in range(len(parts), 0, -1):
            base = ".".join(parts[:n])
            if base in roots:
                dirs[package] = REPO / roots[base] / Path(*parts[n:])
                break
        else:
            dirs[package] = REPO / Path(*parts)
    return dirs


def _link_tree(into: Path) -> dict[str, str]:
    """Lay the package out under *into* as an install would, with symlinks.

    :param into: an empty folder
    :returns: link-tree path prefix -> repository path prefix, longest first, to
        translate mypy's report
    """
    prefixes = {}
    for package, src in _package_dirs().items():
        dst = into.joinpath(*package.split("."))
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and (f.suffix in (".py", ".pyi") or f.name == "py.typed"):
                (dst / f.name).symlink_to(f)
        prefixes[package.replace(".", "/") + "/"] = str(src.relative_to(REPO)) + "/"
    return dict(sorted(prefixes.items(), key=lambda kv: -len(kv[0])))


def run_mypy(*targets: str, follow_imports: str = "normal") -> tuple[int, str]:
    """Run ``mypy --strict`` on *targets* (``-m``/``-p`` arguments) of the link tree.

    :param targets: mypy's module/package arguments
    :param follow_imports: ``silent`` checks imported modules but reports only errors in
        the targets
    :returns: mypy's exit code and its report, with repository paths
    """
    with tempfile.TemporaryDirectory(prefix="clusterbus-mypy-") as tmp:
        prefixes = _link_tree(Path(tmp))
        env = dict(os.environ, MYPYPATH=tmp)
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(PYPROJECT), "--strict",
               f"--follow-imports={follow_imports}", "--cache-dir", os.devnull,
               "--no-color-output", "--show-error-codes", *targets]
        out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                             timeout=300)
    report = out.stdout + out.stderr
    lines = []
    for line in report.splitlines():
        for linked, real in prefixes.items():
            if line.startswith(linked):
                line = real + line[len(linked):]
                break
        lines.append(line)
    return out.returncode, "\n".join(lines)


needs_mypy = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed (it is in the 'test' extra: pip install -e '.[test]')")


@needs_mypy
@pytest.mark.parametrize("targets, follow_imports", [
    pytest.param(CLEAN, "silent", id="clean-modules"),
    pytest.param(["-p", "clusterbus"], "normal", id="whole-package"),
])
def test_mypy_strict(targets: list[str], follow_imports: str) -> None:
    code, report = run_mypy(*targets, follow_imports=follow_imports)
    assert code == 0, f"mypy --strict failed (exit {code}):\n{report}"


def _modules() -> set[str]:
    """Every module the package installs (``clusterbus.bus.codec``, ...)."""
    found = set()
    for package, src in _package_dirs().items():
        for f in src.glob("*.py"):
            found.add(package if f.stem == "__init__" else f"{package}.{f.stem}")
    return found


def test_every_module_is_in_the_clean_list() -> None:
    named = {CLEAN[i + 1] for i in range(0, len(CLEAN), 2) if CLEAN[i] == "-m"}
    trees = tuple(CLEAN[i + 1] for i in range(0, len(CLEAN), 2) if CLEAN[i] == "-p")
    modules = _modules()
    assert {"clusterbus.looplag", "clusterbus.bus.sequencer",
            "clusterbus.testing.vrrp"} <= modules  # the discovery finds nested modules
    missing = sorted(m for m in modules
                     if m not in named and not any(m == t or m.startswith(t + ".")
                                                   for t in trees))
    assert not missing, f"add to CLEAN in tests/unit/test_typing.py: {missing}"
    assert named <= modules, f"CLEAN names modules that do not exist: {named - modules}"


@needs_mypy
def test_the_check_can_fail() -> None:
    # the link tree must really put the package where mypy looks: a module that does not
    # exist in it is an error, and a real one is found and checked
    code, report = run_mypy("-m", "clusterbus.no_such_module")
    assert code != 0 and "no_such_module" in report
    code, report = run_mypy("-m", "clusterbus.errors", follow_imports="silent")
    assert code == 0, report


if __name__ == "__main__":
    args = sys.argv[1:]
    targets = [a for m in args for a in ("-m", m)] if args else ["-p", "clusterbus"]
    code, report = run_mypy(*targets)
    print(report)
    sys.exit(code)
