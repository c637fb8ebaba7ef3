"""[metrics] listen: off by default, "ADDRESS:PORT" otherwise, a bad value names the key."""

from __future__ import annotations

import pytest

from clusterbus.config import load_config, parse_config
from clusterbus.daemon import Daemon
from clusterbus.errors import ConfigError


def test_off_by_default_no_metrics_service():
    cfg = load_config(None)
    assert cfg["metrics"]["listen"] == ""
    d = Daemon(parse_config({"netlink": {"enabled": False}, "bus": {"enabled": False}},
                            file="t.toml"), load_entrypoints=False)
    d.setup()
    assert "metrics" not in d.services


@pytest.mark.parametrize("value", ["127.0.0.1:9661", "[::1]:9661", "0.0.0.0:0", "[::]:65535"])
def test_good_addresses(value):
    assert parse_config({"metrics": {"listen": value}}, file="t.toml")["metrics"]["listen"] == value


@pytest.mark.parametrize("value", ["9661", "localhost:9661", "127.0.0.1", "127.0.0.1:x",
                                   "127.0.0.1:70000", "::1:9661", "[::1]", 9661])
def test_bad_addresses_name_the_key(value):
    with pytest.raises(ConfigError) as err:
        parse_config({"metrics": {"listen": value}}, file="t.toml")
    assert "metrics.listen" in str(err.value) and "t.toml" in str(err.value)


def test_enabled_metrics_is_a_service_with_its_status():
    cfg = parse_config({"netlink": {"enabled": False}, "bus": {"enabled": False},
                        "metrics": {"listen": "127.0.0.1:0"}}, file="t.toml")
    d = Daemon(cfg, load_entrypoints=False)
    d.setup()
    st = d.status()["services"]["metrics"]
    assert st["listen"] == "127.0.0.1:0" and st["counters"]["scrapes"] == 0
    d.services["metrics"].close()  # never ran: detaches from engine and plugin host
    assert d.plugins.observer is None and not d.engine.sinks
