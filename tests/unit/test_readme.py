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


def test_the_two_commands_work_as_written_in_a_root_shell_without_a_venv_on_path():
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    for line in commands:
        assert "sudo" not in line.split(), line  # a root shell on minimal Debian has none
        for word in line.split():
            assert word != "clusterbus", line  # not on PATH: .venv is not activated
    assert "python3-venv" in commands[0]  # `python3 -m venv` needs it on Debian
    assert ".venv/bin/clusterbus run" in commands[0]
    # and the normal user with sudo is told how
    assert "sudo .venv/bin/clusterbus run" in README and "sudo bash tests/run" in README


def test_tests_run_keeps_its_own_venv_apart_from_the_users():
    runner = (Path(__file__).resolve().parents[2] / "tests" / "run").read_text()
    code = "\n".join(line for line in runner.splitlines() if not line.lstrip().startswith("#"))
    assert "VENV=.venv-test" in code
    assert not re.search(r"(^|[\s\"'])\.venv/", code), "tests/run must not touch .venv"
    assert "python3-venv" in code  # a fresh Debian cannot make a venv without it
    gitignore = (Path(__file__).resolve().parents[2] / ".gitignore").read_text().split()
    assert ".venv-test/" in gitignore
