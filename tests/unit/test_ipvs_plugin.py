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

    applier = ipvs.plugin.applier(engine.cluster)
    assert applier is not None
    [entry] = applier.desired().values()
    assert list(entry.dests) == [("10.78.0.13", 80)]


@pytest.mark.parametrize(("rs", "key"), [
    ({"node": 9, "port": 80}, "ipvs.virtual_server[0].real_server[0].node"),
    ({"address": "10.78.0.11:99999"}, "ipvs.virtual_server[0].real_server[0].address"),
])
def test_bad_config_refused_at_configure(rs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _setup({"ipvs": {"virtual_server": [{"address": "10.78.0.100:80", "real_server": [rs]}]}})
    assert (info.value.file, info.value.key) == ("/etc/cb.toml", key)


CONFIG_TWO = {
    "nodemap": {"nodes": {"1": ["10.78.0.11"], "2": ["10.78.0.12"]}},
    "ipvs": {"virtual_server": [
        {"address": "10.78.0.100:80", "real_server": [{"node": 1, "port": 80}]},
        {"address": "10.78.0.100:81", "real_server": [{"address": "10.78.0.12:81"}]},
        {"address": "10.78.0.100:82", "real_server": [{"address": "10.78.0.99:82"}]},
    ]},
}


def test_two_engines_in_one_process_do_not_share_state() -> None:
    from clusterbus.plugins import ipvs

    host1, engine1 = _setup(CONFIG_TWO)
    host2, engine2 = _setup({})
    s1 = dict(host1.call_each("clusterbus_services", cluster=engine1.cluster))
    s2 = dict(host2.call_each("clusterbus_services", cluster=engine2.cluster))
    assert s1["ipvs"] is not None and s2["ipvs"] is None
    a1 = ipvs.plugin.applier(engine1.cluster)
    assert a1 is not None and a1.cluster is engine1.cluster
    assert ipvs.plugin.applier(engine2.cluster) is None


def test_node_event_selects_only_the_services_it_serves() -> None:
    from clusterbus.plugins import ipvs
    from clusterbus.view import NodeReport, NodeState

    host, engine = _setup(CONFIG_TWO)
    host.call_each("clusterbus_services", cluster=engine.cluster)
    applier = ipvs.plugin.applier(engine.cluster)
    assert applier is not None
    applier.desired()  # resolves literal addresses: 10.78.0.12 belongs to node 2
    ports = lambda vss: [vs.service.key.port for vs in vss]  # noqa: E731
    assert ports(applier.services_of([1])) == [80]    # by node number
    assert ports(applier.services_of([2])) == [81]    # by an address the node map gives
    assert ports(applier.services_of([7])) == []
    # the hook records the node, it does not reconcile everything
    engine.report(NodeReport(state=NodeState.DOWN, node=2, reason="test"))
    assert applier._nodes == {2: "node.down"} and applier._full == ["startup"]


def test_reload_refuses_a_bad_section_naming_file_and_key() -> None:
    import copy

    from clusterbus.plugins import ipvs

    host, engine = _setup(CONFIG_TWO)
    host.call_each("clusterbus_services", cluster=engine.cluster)
    applier = ipvs.plugin.applier(engine.cluster)
    assert applier is not None
    before = applier.config
    bad = copy.deepcopy(CONFIG_TWO)
    bad["ipvs"]["virtual_server"][0]["real_server"][0]["node"] = 9  # not in the node map
    result = host.reload(parse_config(bad, file="/etc/cb.toml"), engine.cluster)
    assert result["ipvs"] is not None
    assert result["ipvs"].startswith("/etc/cb.toml: key 'ipvs.virtual_server[0].real_server[0].node'")
    assert applier.config is before and applier.counters["reloads"] == 0
