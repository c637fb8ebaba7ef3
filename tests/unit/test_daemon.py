"""The daemon object without running it: what a reload applies and what it reports."""

from __future__ import annotations

import logging

from clusterbus.config import load_config
from clusterbus.daemon import Daemon


def test_reload_reports_core_sections_that_need_a_restart(tmp_path, caplog) -> None:
    conf = tmp_path / "cb.toml"
    conf.write_text("[daemon]\nnode = 3\n")
    d = Daemon(load_config(conf), load_entrypoints=False)
    conf.write_text("[daemon]\nnode = 4\n[bus]\nheartbeat_interval = 2.0\n")
    with caplog.at_level(logging.WARNING, logger="clusterbus.daemon"):
        assert d.reload()
    warned = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("reload: [daemon] changed, but it applies at start-up only")
               for m in warned), warned
    assert any(m.startswith("reload: [bus] changed") for m in warned), warned
    assert not any("[netlink]" in m for m in warned), warned  # unchanged: nothing to say
    # the running daemon is still node 3: its events and its status say so
    assert d.engine.origin == 3 and d.status()["node"] == 3

    # a second reload of the same file still reports what has not been applied
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clusterbus.daemon"):
        assert d.reload()
    assert any("[daemon] changed" in r.getMessage() for r in caplog.records)


def test_reload_records_its_verdict_with_a_generation(tmp_path) -> None:
    conf = tmp_path / "cb.toml"
    conf.write_text("[daemon]\nnode = 3\n")
    d = Daemon(load_config(conf), load_entrypoints=False)
    assert d.status()["reload"] == {"generation": 0, "result": None}
    conf.write_text("[daemon]\nnode = 3\n[bus]\nheartbeat_interval = -1\n")
    assert not d.reload()
    v = d.status()["reload"]
    assert (v["generation"], v["result"], v["file"]) == (1, "refused", str(conf))
    assert "bus.heartbeat_interval" in v["reason"]
    conf.write_text("[daemon]\nnode = 3\n")
    assert d.reload()
    v = d.status()["reload"]
    assert (v["generation"], v["result"], v["restart_needed"], v["failed"]) == (
        2, "applied", [], {})
    conf.write_text("[daemon]\nnode = 4\n[netlink]\ngroup = 9\n")
    assert d.reload()
    assert d.status()["reload"]["restart_needed"] == ["daemon", "netlink"]


def test_a_daemon_on_the_embedded_default_refuses_a_reload_and_says_why() -> None:
    d = Daemon(load_config(None), load_entrypoints=False)
    assert not d.reload()
    v = d.status()["reload"]
    assert v["result"] == "refused" and "embedded default" in v["reason"]


def test_reload_verdict_names_what_a_live_service_could_not_apply(tmp_path) -> None:
    class Speaker:  # a live service (it has reload) whose status reports restart_needed
        counters: dict[str, int] = {}

        def reload(self, config) -> None:
            pass

        def status(self):
            return {"restart_needed": {"VI_9": "added"},
                    "instances": ({"name": "VI_1", "restart_needed": ("vrid",)},
                                  {"name": "VI_2", "restart_needed": ()})}

    conf = tmp_path / "cb.toml"
    conf.write_text("[daemon]\nnode = 3\n")
    d = Daemon(load_config(conf), load_entrypoints=False)
    d.services["vrrp"] = Speaker()
    assert d.reload()
    assert d.status()["reload"]["restart_needed"] == ["vrrp: VI_9 added", "vrrp: VI_1 vrid"]


def test_reload_verdict_names_what_a_plugin_could_not_apply(tmp_path) -> None:
    """A plugin with the reload hook applies its section itself; what it could not apply
    (its status's restart_needed, e.g. connsync's interface) reaches the verdict."""
    from clusterbus import hookimpl

    class Demo:
        pending: dict[str, str] = {}

        @hookimpl
        def clusterbus_reload(self, config, section, cluster) -> None:
            if section and section.get("interface") != "sync0":
                self.pending = {"interface": f"'sync0' -> {section.get('interface')!r}"}
            else:
                self.pending = {}

        @hookimpl
        def clusterbus_status(self, cluster):
            return {"restart_needed": dict(self.pending)}

    conf = tmp_path / "cb.toml"
    conf.write_text('[daemon]\nnode = 3\n[demo]\ninterface = "sync0"\n')
    d = Daemon(load_config(conf), load_entrypoints=False)
    d.plugins.register(Demo(), "demo")
    conf.write_text('[daemon]\nnode = 3\n[demo]\ninterface = "sync1"\n')
    assert d.reload()
    assert d.status()["reload"]["restart_needed"] == ["demo: interface 'sync0' -> 'sync1'"]
    conf.write_text('[daemon]\nnode = 3\n[demo]\ninterface = "sync0"\n')
    assert d.reload()
    assert d.status()["reload"]["restart_needed"] == []
