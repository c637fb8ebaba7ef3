"""Shared fixtures. Helpers importable by tests live in tests/support (on pythonpath)."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

# Shared, noisy machines: no per-example deadline (speed is measured by bench/, not tests).
settings.register_profile("clusterbus", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("clusterbus")


#: Tests that drive real daemons, kernels and timers on a shared machine may lose a race
#: to the host's load once: they get one rerun (pytest-rerunfailures), and the summary
#: lists every rerun ("RERUN"), so a flaky test stays visible. Unit tests never rerun.
RERUN_DIRS = ("integration", "kernel")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    not_root = os.geteuid() != 0
    rerun = config.pluginmanager.hasplugin("rerunfailures")
    for item in items:
        if (rerun and item.path.parent.name in RERUN_DIRS
                and not item.get_closest_marker("flaky")):
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=2))
        if not_root and item.get_closest_marker("root"):
            item.add_marker(pytest.mark.skip(reason="needs root (network namespaces, raw sockets)"))
        if item.get_closest_marker("keepalived") and not shutil.which("keepalived"):
            item.add_marker(pytest.mark.skip(reason="keepalived is not installed (tests/run installs it)"))
        if item.get_closest_marker("uml") and not shutil.which("linux.uml"):
            item.add_marker(pytest.mark.skip(reason="user-mode-linux is not installed (tests/run installs it)"))


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's daemons save their membership view in a directory of that test, never
    in the machine's /var/lib/clusterbus nor in another test's: in-process daemons through
    the default of ``[daemon] state_dir``, subprocess daemons through $STATE_DIRECTORY
    (which that default reads when clusterbus.config is imported, as systemd sets it)."""
    import dataclasses

    from clusterbus.config import CORE_SECTIONS

    state = str(tmp_path_factory.mktemp("state"))
    monkeypatch.setenv("STATE_DIRECTORY", state)
    schema = CORE_SECTIONS["daemon"].schema
    assert schema is not None
    monkeypatch.setitem(schema, "state_dir", dataclasses.replace(schema["state_dir"], default=state))
