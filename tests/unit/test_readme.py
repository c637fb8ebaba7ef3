"""Keep README.md true: its example configuration is valid, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from clusterbus.cli import main

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_example_configuration_passes_check_config(tmp_path):
    block = README.split("## Configuration", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    cfg = tmp_path / "readme.toml"
    cfg.write_text(block)
    r = CliRunner().invoke(main, ["check-config", "-c", str(cfg)])
    assert r.exit_code == 0, r.output


def test_the_two_commands_come_first_and_tests_run_calls_pytest():
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert "clusterbus run" in first_block and "bash tests/run" in first_block
    runner = (Path(__file__).resolve().parents[2] / "tests" / "run").read_text()
    assert "pytest" in runner


def test_every_documented_subcommand_exists():
    documented = set(re.findall(r"^clusterbus ([a-z-]+)", README, re.M))
    r = CliRunner().invoke(main, ["--help"])
    for cmd in documented:
        assert f"  {cmd} " in r.output or f"  {cmd}\n" in r.output, cmd
