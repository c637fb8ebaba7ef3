"""A misspelt hook in an installed plugin: one line naming the plugin, where it comes from,
the bad hook and the closest real hook; exit code 2 from every command that loads plugins."""

from __future__ import annotations

import os
import subprocess

import pytest
from cbdaemon import CLUSTERBUS

import clusterbus
from clusterbus import PluginError, PluginHost

BADPLUG = '''
import clusterbus

class Plugin:
    @clusterbus.hookimpl
    def clusterbus_node_donw(self, event):
        pass

plugin = Plugin()
'''


@pytest.fixture()
def installed_badplug(tmp_path):
    """A distribution ``badplug-dist`` 0.1 with entry point ``badplug = badplug:plugin``,
    importable through PYTHONPATH (a dist-info folder is all importlib.metadata needs)."""
    (tmp_path / "badplug.py").write_text(BADPLUG)
    info = tmp_path / "badplug_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: badplug-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clusterbus]\nbadplug = badplug:plugin\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    config = tmp_path / "c.toml"
    config.write_text("[netlink]\nenabled = false\n[bus]\nenabled = false\n")
    return env, config


def test_register_names_the_hook_and_the_closest_one():
    class Typo:
        @clusterbus.hookimpl
        def clusterbus_node_donw(self, event):
            pass

    host = PluginHost()
    with pytest.raises(PluginError) as info:
        host.register(Typo(), "typo", origin="entry point typo:plugin")
    msg = str(info.value)
    assert msg.startswith("plugin 'typo': clusterbus_node_donw is not a clusterbus hook")
    assert "did you mean clusterbus_node_down?" in msg and "entry point typo:plugin" in msg
    assert " object at 0x" not in msg
    assert info.value.plugin == "typo" and "typo" not in host.names()


def test_a_name_far_from_every_hook_gets_no_guess():
    class Far:
        @clusterbus.hookimpl
        def clusterbus_zzzzzz(self):
            pass

    with pytest.raises(PluginError, match="no hook has a similar name"):
        PluginHost().register(Far(), "far")


def test_a_correct_plugin_still_registers():
    class Fine:
        @clusterbus.hookimpl
        def clusterbus_node_down(self, event):
            pass

    host = PluginHost()
    host.register(Fine(), "fine")
    assert host.names() == ["fine"]


@pytest.mark.parametrize("args", [["check-config"], ["plugins", "--local"], ["run"]])
def test_every_command_exits_2_with_one_line(installed_badplug, args):
    env, config = installed_badplug
    p = subprocess.run([CLUSTERBUS, *args, "-c", str(config)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 2, p.stderr
    assert "plugin 'badplug'" in p.stderr
    assert "clusterbus_node_donw is not a clusterbus hook" in p.stderr
    assert "did you mean clusterbus_node_down?" in p.stderr
    assert "distribution badplug-dist 0.1" in p.stderr
    assert "object at 0x" not in p.stderr and "Traceback" not in p.stderr
