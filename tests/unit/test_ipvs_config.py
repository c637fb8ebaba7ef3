"""[ipvs] configuration: validation errors name the file and key; the desired table."""

from __future__ import annotations

import tomllib

import pytest

from clusterbus.errors import ConfigError
from clusterbus.plugins.ipvs import model
from clusterbus.plugins.ipvs.table import (
    AF_INET6,
    FORWARD,
    SVC_F_PERSISTENT,
    SVC_F_SCHED1,
    SVC_F_SCHED2,
    ServiceKey,
)

GOOD = """
[[ipvs.virtual_server]]
address = "10.78.0.100:80"
protocol = "tcp"
scheduler = "mh"
scheduler_flags = ["mh-fallback", "mh-port"]
persistence_timeout = 300
on_node_down = "quiesce"

  [[ipvs.virtual_server.real_server]]
  address = "10.78.0.11:80"
  weight = 1
  forward = "nat"

  [[ipvs.virtual_server.real_server]]
  node = 3
  port = 8080
  weight = 2

[[ipvs.virtual_server]]
fwmark = 10
family = "inet6"
scheduler = "rr"
on_node_down = "remove"

  [[ipvs.virtual_server.real_server]]
  address = "[fd00:77::11]:80"
  forward = "dr"
"""

NODES = {3: ("10.78.0.13", "fd00:77::13")}


def parse(text: str, nodes: dict[int, tuple[str, ...]] | None = None) -> model.IpvsConfig:
    section = tomllib.loads(text)["ipvs"]
    n = NODES if nodes is None else nodes
    return model.parse(section, file="/etc/cb.toml", node_addrs=lambda node: n.get(node, ()))


def test_good_config() -> None:
    cfg = parse(GOOD)
    vs, fw = cfg.virtual_servers
    assert vs.service.key == ServiceKey(2, 6, "10.78.0.100", 80)
    assert vs.service.flags == SVC_F_PERSISTENT | SVC_F_SCHED1 | SVC_F_SCHED2
    assert (vs.service.timeout, vs.service.netmask) == (300, 32)
    assert vs.real_servers[1].node == 3 and vs.real_servers[1].port == 8080
    assert fw.service.key == ServiceKey(AF_INET6, fwmark=10)
    assert fw.service.netmask == 128
    # direct routing keeps the virtual port (0 for fwmark services), as ipvsadm does
    assert fw.real_servers[0].port == 0 and fw.real_servers[0].forward == "dr"


@pytest.mark.parametrize(("text", "key", "words"), [
    (GOOD.replace('scheduler = "rr"', 'scheduler = "nope"'),
     "ipvs.virtual_server[1].scheduler", "expected one of"),
    (GOOD.replace("10.78.0.100:80", "10.78.0.100:70000"),
     "ipvs.virtual_server[0].address", "out of range"),
    (GOOD.replace("port = 8080", "port = 65536"),
     "ipvs.virtual_server[0].real_server[1].port", "from 0 to 65535"),
    (GOOD.replace("node = 3", "node = 9"),
     "ipvs.virtual_server[0].real_server[1].node", "no IPv4 address"),
    (GOOD.replace('"mh-fallback", ', '"sh-fallback", '),
     "ipvs.virtual_server[0].scheduler_flags[0]", "needs scheduler sh"),
    (GOOD.replace('protocol = "tcp"', 'protocol = "icmp"'),
     "ipvs.virtual_server[0].protocol", "tcp, udp, sctp"),
    (GOOD.replace('address = "10.78.0.11:80"', 'address = "[fd00::1]:80"'),
     "ipvs.virtual_server[0].real_server[0].address", "families differ"),
    (GOOD.replace('weight = 2', 'weight = 2\n  colour = "red"'),
     "ipvs.virtual_server[0].real_server[1].colour", "unknown key"),
    (GOOD + '\n[[ipvs.virtual_server]]\naddress = "10.78.0.100:80"\n',
     "ipvs.virtual_server[2]", "already defined"),
    (GOOD.replace('forward = "nat"', 'forward = "masq"'),
     "ipvs.virtual_server[0].real_server[0].forward", "nat, dr, tunnel"),
])
def test_bad_config_names_file_and_key(text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.file == "/etc/cb.toml"
    assert info.value.key == key
    assert words in info.value.msg
    assert "/etc/cb.toml" in str(info.value) and key in str(info.value)


def test_node_with_only_the_other_family_is_refused() -> None:
    with pytest.raises(ConfigError, match="no IPv4 address"):
        parse(GOOD, {3: ("fd00:77::13",)})


def test_desired_table_quiesce_and_remove() -> None:
    cfg = parse(GOOD)
    owner = {"10.78.0.11": 1, "fd00:77::11": 1}

    def table(down: set[int]):
        t, problems = model.desired_table(
            cfg, node_addrs=lambda n: NODES.get(n, ()), node_of=owner.get,
            is_down=lambda n: n in down)
        assert problems == []
        return t

    up = table(set())
    vs_key = ServiceKey(2, 6, "10.78.0.100", 80)
    fw_key = ServiceKey(AF_INET6, fwmark=10)
    assert {d: x.weight for d, x in up[vs_key].dests.items()} == {
        ("10.78.0.11", 80): 1, ("10.78.0.13", 8080): 2}
    assert up[fw_key].dests[("fd00:77::11", 0)].forward == FORWARD["dr"]
    down1 = table({1})
    assert down1[vs_key].dests[("10.78.0.11", 80)].weight == 0  # quiesced, still there
    assert down1[vs_key].dests[("10.78.0.13", 8080)].weight == 2
    assert down1[fw_key].dests == {}  # on_node_down = "remove"
    down3 = table({3})
    assert down3[vs_key].dests[("10.78.0.13", 8080)].weight == 0


@pytest.mark.parametrize(("text", "addr", "port"), [
    ("10.0.0.1:80", "10.0.0.1", 80), ("[fd00::1]:443", "fd00::1", 443),
    ("10.0.0.1", "10.0.0.1", None), ("fd00::1", "fd00::1", None),
])
def test_split_hostport(text: str, addr: str, port: int | None) -> None:
    assert model.split_hostport(text) == (addr, port)
