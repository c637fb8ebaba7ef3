"""Kernel tests: real IPVS inside a User-Mode Linux kernel.

Kernel test modules are named ``kt_*.py`` so the host's pytest never imports them as
ordinary tests. On the host, this conftest collects one item per test function of each
``kt_*.py`` file (found by reading the file, not importing it); when the first of them
runs, one UML kernel is booted that runs pytest on exactly the selected functions and
writes a JUnit XML report to a host file. Each host item then reports its own inner
result: passed, failed (with the inner failure text) or skipped.

Inside UML (``CLUSTERBUS_IN_UML=1``) this file does nothing special: the inner pytest
collects ``kt_*.py`` as normal test modules (``-o python_files=kt_*.py``).
"""

from __future__ import annotations

import ast
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

IN_UML = os.environ.get("CLUSTERBUS_IN_UML") == "1"
#: Seconds the one UML run (every selected kernel test) may take before it is killed.
UML_TIMEOUT = float(os.environ.get("CLUSTERBUS_UML_TIMEOUT", "3000"))


@dataclass
class InnerResult:
    """One inner test case's outcome."""

    name: str
    outcome: str  # passed | failed | skipped
    text: str = ""


@dataclass
class _Run:
    """The session's single UML run (shared by every kernel item)."""

    results: dict[tuple[str, str], list[InnerResult]] = field(default_factory=dict)
    error: str | None = None
    done: bool = False


_RUN_KEY = pytest.StashKey[_Run]()


def _test_functions(path: Path) -> list[tuple[str, int]]:
    """Top-level ``test_*`` functions of a kernel test module, with line numbers."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(n.name, n.lineno) for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_")]


class KernelFile(pytest.File):
    """A ``kt_*.py`` module seen from the host: one item per test function."""

    def collect(self) -> Iterator[pytest.Item]:
        for name, lineno in _test_functions(self.path):
            yield KernelItem.from_parent(self, name=name, lineno=lineno)


class KernelItem(pytest.Item):
    """The host's view of one inner test function (all its parametrized cases)."""

    def __init__(self, *, lineno: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.lineno = lineno
        self.add_marker(pytest.mark.uml)
        self.add_marker(pytest.mark.root)
        self.add_marker(pytest.mark.timeout(UML_TIMEOUT + 120))

    def runtest(self) -> None:
        run = self.session.stash.setdefault(_RUN_KEY, _Run())
        if not run.done:
            _boot_once(self.session, run)
        if run.error:
            raise KernelTestFailure(run.error)
        cases = run.results.get((self.path.stem, self.name), [])
        if not cases:
            raise KernelTestFailure(f"{self.name}: no result from the UML run (not collected "
                                    "inside UML, or the run died; see the console above)")
        failed = [c for c in cases if c.outcome == "failed"]
        if failed:
            raise KernelTestFailure("\n\n".join(f"--- {c.name} (inside UML) ---\n{c.text}"
                                                for c in failed))
        if all(c.outcome == "skipped" for c in cases):
            pytest.skip(f"inside UML: {cases[0].text}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, KernelTestFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.lineno - 1, f"{self.path.name}::{self.name} (in UML)"


class KernelTestFailure(Exception):
    """An inner test failed, or the UML run did not produce results."""


def _boot_once(session: pytest.Session, run: _Run) -> None:
    import uml  # tests/kernel is on sys.path (rootdir-relative conftest import)

    run.done = True
    items = [i for i in session.items if isinstance(i, KernelItem)]
    ids = sorted({f"{i.path.relative_to(uml.ROOT)}::{i.name}" for i in items})
    workdir = Path(tempfile.mkdtemp(prefix="cb-uml-"))
    junit = workdir / "junit.xml"
    argv = [str(uml.PYTHON), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs",
            "-o", "python_files=kt_*.py", f"--junitxml={junit}", *ids]
    try:
        result = uml.boot(argv, timeout=UML_TIMEOUT, workdir=workdir)
    except uml.UmlError as exc:
        run.error = f"UML run failed: {exc}"
        return
    try:
        if not junit.exists():
            run.error = (f"UML run wrote no report (payload exit {result.returncode}); "
                         f"console tail:\n{result.console[-6000:]}")
            return
        _parse_junit(junit, run)
        print(f"\nUML run: {len(ids)} kernel test functions, {result.duration:.1f} s, "
              f"payload exit {result.returncode}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _parse_junit(path: Path, run: _Run) -> None:
    tree = ET.parse(path)
    for case in tree.iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        name = case.get("name", "")
        base = name.split("[", 1)[0]
        outcome, text = "passed", ""
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                outcome = "failed"
                text = (el.get("message") or "") + "\n" + (el.text or "")
        el = case.find("skipped")
        if el is not None and outcome == "passed":
            outcome, text = "skipped", el.get("message") or ""
        run.results.setdefault((module, base), []).append(InnerResult(name, outcome, text))


if not IN_UML:

    def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
        if file_path.suffix == ".py" and file_path.name.startswith("kt_"):
            return KernelFile.from_parent(parent, path=file_path)
        return None

    class _NotOnHost(pytest.File):
        """Stands in for the Python module collector: kt_*.py is never imported on the host."""

        def collect(self) -> list[pytest.Item]:
            return []

    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.File | None:
        # A kt_*.py named on the command line would otherwise also be collected as a module.
        if module_path.name.startswith("kt_"):
            return _NotOnHost.from_parent(parent, path=module_path)
        return None
