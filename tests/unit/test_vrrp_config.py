"""[[vrrp.instance]] and [keepalived] configuration."""

from __future__ import annotations

import tomllib

import pytest

from clusterbus.config import Config, parse_config
from clusterbus.errors import ConfigError
from clusterbus.vrrp import config as vconf

GOOD = """
[[vrrp.instance]]
name = "VI_1"
interface = "lo"
vrid = 77
priority = 150
advert_interval = 0.05
version = 3
virtual_ipaddress = ["10.77.0.100/24"]
preempt = true

[keepalived]
notify_fifo = "/run/keepalived/notify.fifo"
"""


def parse(text: str) -> Config:
    return parse_config(tomllib.loads(text), file="test.toml")


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.file == "test.toml"
    return info.value


def test_issue_example_parses() -> None:
    cfg = parse(GOOD)
    (inst,) = vconf.instances(cfg)
    assert inst.name == "VI_1" and inst.vrid == 77 and inst.priority == 150
    assert inst.advert_interval == 0.05 and inst.version == 3 and inst.family == "inet"
    assert inst.virtual_ipaddress == ("10.77.0.100/24",)
    assert inst.preempt is True and inst.accept is False and inst.preempt_delay == 0
    assert inst.garp_count == 5 and inst.garp_delay == 5.0
    k = vconf.keepalived_settings(cfg)
    assert k.present and k.enabled and k.notify_fifo == "/run/keepalived/notify.fifo"
    vconf.check_interfaces(cfg)  # "lo" exists everywhere


def test_absent_sections_give_defaults() -> None:
    cfg = parse("")
    assert vconf.instances(cfg) == []
    k = vconf.keepalived_settings(cfg)
    assert not k.present and k.notify_fifo == vconf.DEFAULT_NOTIFY_FIFO


def replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


@pytest.mark.parametrize("old,new,key", [
    ("vrid = 77", "vrid = 0", "vrrp.instance[0].vrid"),
    ("vrid = 77", "vrid = 256", "vrrp.instance[0].vrid"),
    ("priority = 150", "priority = 0", "vrrp.instance[0].priority"),
    ("priority = 150", "priority = 256", "vrrp.instance[0].priority"),
    ("version = 3", "version = 2", "vrrp.instance[0].advert_interval"),  # 0.05 with v2
    ("advert_interval = 0.05", "advert_interval = 0.055", "vrrp.instance[0].advert_interval"),
    ("advert_interval = 0.05", "advert_interval = 41", "vrrp.instance[0].advert_interval"),
    ('["10.77.0.100/24"]', '["10.77.0.300/24"]', "vrrp.instance[0].virtual_ipaddress[0]"),
    ('["10.77.0.100/24"]', '[]', "vrrp.instance[0].virtual_ipaddress"),
    ('["10.77.0.100/24"]', '["10.77.0.100/24", "fd00:77::100/64"]',
     "vrrp.instance[0].virtual_ipaddress"),
    ("preempt = true", "preempt = 1", "vrrp.instance[0].preempt"),
    ("preempt = true", "preempt = true\nbogus = 1", "vrrp.instance[0].bogus"),
    ('name = "VI_1"\n', "", "vrrp.instance[0].name"),
    ('name = "VI_1"', 'name = "VI 1"', "vrrp.instance[0].name"),
    ('interface = "lo"', 'interface = "a-very-long-interface-name"', "vrrp.instance[0].interface"),
    ("preempt = true", 'preempt = true\nunicast_peer = ["fd00::1"]',
     "vrrp.instance[0].unicast_peer[0]"),
    ('notify_fifo = "/run/keepalived/notify.fifo"', 'notify_fifo = "relative"',
     "keepalived.notify_fifo"),
])
def test_bad_values_name_the_key(old: str, new: str, key: str) -> None:
    assert error(replace(old, new)).key == key


def test_v2_whole_seconds_and_ipv6_v3() -> None:
    cfg = parse(replace("version = 3", "version = 2").replace("0.05", "1"))
    assert vconf.instances(cfg)[0].advert_interval == 1.0
    cfg = parse(replace('["10.77.0.100/24"]', '["fd00:77::100/64"]'))
    assert vconf.instances(cfg)[0].family == "inet6"
    e = error(replace('["10.77.0.100/24"]', '["fd00:77::100/64"]')
              .replace("version = 3", "version = 2").replace("0.05", "1"))
    assert e.key == "vrrp.instance[0].version"


def test_duplicates_are_rejected() -> None:
    second = GOOD.split("[keepalived]")[0]
    e = error(GOOD + second)
    assert e.key == "vrrp.instance[1].name"
    e = error(GOOD + second.replace('"VI_1"', '"VI_2"'))
    assert e.key == "vrrp.instance[1].vrid"
    # Same VRID on the same interface is fine for the other family.
    cfg = parse(GOOD + second.replace('"VI_1"', '"VI_6"').replace('"10.77.0.100/24"',
                                                                 '"fd00:77::100/64"'))
    assert [i.family for i in vconf.instances(cfg)] == ["inet", "inet6"]


def test_unknown_interface_is_a_startup_error() -> None:
    cfg = parse(replace('interface = "lo"', 'interface = "nosuchif0"'))  # parses elsewhere
    with pytest.raises(ConfigError) as info:
        vconf.check_interfaces(cfg)
    assert info.value.key == "vrrp.instance[0].interface" and info.value.file == "test.toml"
