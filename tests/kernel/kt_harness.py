"""The UML harness itself: we are inside a kernel that has IPVS."""

from __future__ import annotations

import os
import subprocess

import pytest


def test_inside_uml_with_ipvs() -> None:
    assert os.environ.get("CLUSTERBUS_IN_UML") == "1"
    assert "User Mode Linux" in open("/proc/cpuinfo").read()
    with open("/proc/net/ip_vs") as f:
        assert f.readline().startswith("IP Virtual Server version")


@pytest.mark.parametrize("sched", ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh",
                                   "sed", "nq", "fo", "ovf", "mh"])
def test_scheduler_module_loaded(sched: str) -> None:
    with open("/proc/modules") as f:
        names = {line.split()[0] for line in f}
    assert f"ip_vs_{sched}" in names


def test_private_run_dir() -> None:
    # /run is a tmpfs inside UML, so namespaces made here never touch the host's /run/netns.
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "/run"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "tmpfs"
