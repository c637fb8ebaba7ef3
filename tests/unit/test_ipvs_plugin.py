"""The ipvs plugin through the real plugin host: inert without [ipvs], bad config refused."""

from __future__ import annotations

import pytest

from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.errors import ConfigError
from clusterbus.pluginhost import PluginHost


def _setup(data: dict) -> tuple[PluginHost, Engine]:
    host = PluginHost(enable=["nodemap", "ipvs"])
    host.load_entrypoints()
    engine = Engine(origin=1, plugins=host)
    host.configure(parse_config(data, file="/etc/cb.toml"), engine.cluster)
    return host, engine


def test_inert_without_section() -> None:
    host, engine = _setup({})
    assert "ipvs" in host.names()
    services = dict(host.call_each("clusterbus_services", cluster=engine.cluster))
    assert services["ipvs"] is None  # no service: nothing will touch the kernel


def test_service_with_section_and_node_from_config() -> None:
    host, engine = _setup({
        "nodemap": {"nodes": {"3": ["10.78.0.13"]}},
        "ipvs": {"virtual_server": [{"address": "10.78.0.100:80",
                                     "real_server": [{"node": 3, "port": 80}]}]},
    })
    services = dict(host.call_each("clusterbus_services", cluster=engine.cluster))
    assert services["ipvs"] is not None and len(services["ipvs"]) == 1
    from clusterbus.plugins import ipvs

    assert ipvs.applier is not None
    [entry] = ipvs.applier.desired().values()
    assert list(entry.dests) == [("10.78.0.13", 80)]


@pytest.mark.parametrize(("rs", "key"), [
    ({"node": 9, "port": 80}, "ipvs.virtual_server[0].real_server[0].node"),
    ({"address": "10.78.0.11:99999"}, "ipvs.virtual_server[0].real_server[0].address"),
])
def test_bad_config_refused_at_configure(rs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _setup({"ipvs": {"virtual_server": [{"address": "10.78.0.100:80", "real_server": [rs]}]}})
    assert (info.value.file, info.value.key) == ("/etc/cb.toml", key)
