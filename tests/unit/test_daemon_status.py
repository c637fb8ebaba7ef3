"""Daemon.status(): what ``clusterbus status`` shows, plugins' own status included."""

from __future__ import annotations

import clusterbus
from clusterbus.config import parse_config
from clusterbus.daemon import Daemon


class Reporter:
    @clusterbus.hookimpl
    def clusterbus_status(self, cluster):
        return {"view_seen": cluster.view_id, "ok": True}


class Quiet:
    @clusterbus.hookimpl
    def clusterbus_status(self):
        return None


class Broken:
    @clusterbus.hookimpl
    def clusterbus_status(self):
        raise RuntimeError("status failed")


def test_plugin_status_is_reported_isolated_and_quiet_plugins_are_left_out():
    cfg = parse_config({"netlink": {"enabled": False}, "bus": {"enabled": False}}, file="t.toml")
    d = Daemon(cfg, load_entrypoints=False)
    for name, p in (("reporter", Reporter()), ("quiet", Quiet()), ("broken", Broken())):
        d.plugins.register(p, name)
    d.setup()
    st = d.status()
    assert st["plugin_status"] == {"reporter": {"view_seen": 0, "ok": True}}
    assert {p["name"]: p["failures"] for p in st["plugins"]}["broken"] == 1
    assert st["services"] == {} and st["node"] == 1
