"""[[vrrp.instance]] and [keepalived] configuration."""

from __future__ import annotations

import tomllib

import pytest

from clusterbus.config import CORE_SECTIONS, DEFAULT_NOTIFY_FIFO, Config, check_host, parse_config
from clusterbus.errors import ConfigError
from clusterbus.sources.keepalived import keepalived_settings
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
    k = keepalived_settings(cfg)
    assert k.present and k.enabled and k.notify_fifo == "/run/keepalived/notify.fifo"
    vconf.check_interfaces(cfg)  # "lo" exists everywhere


def test_absent_sections_give_defaults() -> None:
    cfg = parse("")
    assert vconf.instances(cfg) == []
    k = keepalived_settings(cfg)
    assert not k.present and k.notify_fifo == DEFAULT_NOTIFY_FIFO


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


@pytest.mark.parametrize("old,new,key,words", [
    ('["10.77.0.100/24"]', '["127.0.0.2/8"]', "vrrp.instance[0].virtual_ipaddress[0]", "loopback"),
    ('["10.77.0.100/24"]', '["0.0.0.0/0"]', "vrrp.instance[0].virtual_ipaddress[0]",
     "unspecified"),
    ('["10.77.0.100/24"]', '["224.0.0.18"]', "vrrp.instance[0].virtual_ipaddress[0]",
     "multicast"),
    ('["10.77.0.100/24"]', '["10.77.0.100/33"]', "vrrp.instance[0].virtual_ipaddress[0]",
     "prefix length"),
    # an IPv4-mapped address is the IPv4 address: it meets the "twice" check as one
    ('["10.77.0.100/24"]', '["10.77.0.100/24", "::ffff:10.77.0.100/120"]',
     "vrrp.instance[0].virtual_ipaddress", "twice"),
    ('["10.77.0.100/24"]', '["::ffff:10.77.0.100/64"]', "vrrp.instance[0].virtual_ipaddress[0]",
     "prefix length"),
    ('["10.77.0.100/24"]', '[167772161]', "vrrp.instance[0].virtual_ipaddress",
     "array of strings"),
    ("preempt = true", 'preempt = true\nunicast_peer = ["10.77.0.2", "::ffff:10.77.0.2"]',
     "vrrp.instance[0].unicast_peer", "twice"),
    ("preempt = true", 'preempt = true\nunicast_peer = ["127.0.0.1"]',
     "vrrp.instance[0].unicast_peer[0]", "loopback"),
    ("preempt = true", 'preempt = true\nunicast_peer = ["10.77.0.2", "10.77.0.02"]',
     "vrrp.instance[0].unicast_peer[1]", "not an IPv4 or IPv6 address"),
    ("preempt = true", 'preempt = true\nunicast_peer = ["10.77.0.2", "10.77.0.2"]',
     "vrrp.instance[0].unicast_peer", "twice"),
    ("preempt = true", 'preempt = true\nunicast_src_ip = "0.0.0.0"',
     "vrrp.instance[0].unicast_src_ip", "unspecified"),
    ("preempt = true", 'preempt = true\nunicast_src_ip = 167772161',
     "vrrp.instance[0].unicast_src_ip", "expected a string"),
])
def test_addresses_are_node_addresses(old: str, new: str, key: str, words: str) -> None:
    e = error(replace(old, new))
    assert e.key == key and words in str(e), str(e)


def test_addresses_are_canonical() -> None:
    cfg = parse(replace('["10.77.0.100/24"]', '["FD00:77:0::100/64", "fe80::77"]')
                .replace("preempt = true", 'preempt = true\nunicast_peer = ["FD00:77::0:2"]\n'
                         'unicast_src_ip = "FD00:77::1"'))
    (inst,) = vconf.instances(cfg)
    assert inst.virtual_ipaddress == ("fd00:77::100/64", "fe80::77/128")
    assert inst.unicast_peer == ("fd00:77::2",) and inst.unicast_src_ip == "fd00:77::1"


def test_ipv4_mapped_addresses_are_the_ipv4_addresses() -> None:
    cfg = parse(replace('["10.77.0.100/24"]', '["::FFFF:10.77.0.100/120", "::ffff:10.77.0.101"]')
                .replace("preempt = true", 'preempt = true\nunicast_peer = ["::ffff:10.77.0.2"]'))
    (inst,) = vconf.instances(cfg)
    assert inst.family == "inet"
    assert inst.virtual_ipaddress == ("10.77.0.100/24", "10.77.0.101/32")
    assert inst.unicast_peer == ("10.77.0.2",)


def test_sections_are_declared_in_one_table() -> None:
    assert CORE_SECTIONS["vrrp"].parse is vconf.validate_vrrp
    assert CORE_SECTIONS["vrrp"].host is vconf.check_vrrp_host
    assert CORE_SECTIONS["keepalived"].schema is not None
    assert CORE_SECTIONS["vrrp"].optional and CORE_SECTIONS["keepalived"].optional
    cfg = parse("")
    assert "vrrp" not in cfg.core and "keepalived" not in cfg.core  # absent: services off


def test_no_section_is_registered_by_importing_a_module() -> None:
    # A fresh interpreter that imports only clusterbus.config parses [vrrp] and
    # [keepalived]: nothing depends on another module having been imported first.
    import subprocess
    import sys

    code = ("import tomllib; from clusterbus.config import parse_config\n"
            f"c = parse_config(tomllib.loads({GOOD!r}), file='t')\n"
            "import sys; assert 'clusterbus.sources.keepalived' not in sys.modules\n"
            "print(sorted(c.core))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "'keepalived'" in out and "'vrrp'" in out


def test_unknown_interface_is_refused_by_the_host_check() -> None:
    cfg = parse(replace('interface = "lo"', 'interface = "nosuchif0"').replace(
        "/run/keepalived/notify.fifo", "/tmp/cb-test-notify.fifo"))
    with pytest.raises(ConfigError) as info:
        check_host(cfg)
    assert info.value.key == "vrrp.instance[0].interface"


def test_fast_takeover_is_off_by_default_and_validated() -> None:
    assert vconf.instances(parse(GOOD))[0].fast_takeover == ""
    fast = GOOD.replace("preempt = true", 'preempt = true\nfast_takeover = "corosync"')
    on = fast + "\n[corosync]\nenabled = true\n"
    assert vconf.instances(parse(on))[0].fast_takeover == "corosync"
    bad = error(on.replace('"corosync"\n', '"Corosync"\n', 1))
    assert bad.key == "vrrp.instance[0].fast_takeover" and "corosync" in str(bad)
    assert error(on.replace('fast_takeover = "corosync"', "fast_takeover = true")).key == \
        "vrrp.instance[0].fast_takeover"
    # the hint comes from the Corosync source: without it the key cannot work
    off = error(fast)
    assert off.key == "vrrp.instance[0].fast_takeover" and "[corosync] enabled" in str(off)


def test_fast_takeover_change_needs_a_restart() -> None:
    from clusterbus.vrrp.reload import diff

    old = vconf.instances(parse(GOOD))
    new = vconf.instances(parse(GOOD.replace("preempt = true", 'preempt = true\n'
                                             'fast_takeover = "corosync"')
                                + "\n[corosync]\nenabled = true\n"))
    plan = diff({c.name: c for c in old}, new)
    assert plan.changes[0].restart_needed == ("fast_takeover",)


def test_prepare_timeout_defaults_to_one_interval_and_reloads_live() -> None:
    from clusterbus.vrrp.reload import diff

    (inst,) = vconf.instances(parse(GOOD))
    assert inst.prepare_timeout == 0  # the router waits one advert_interval
    slow = GOOD.replace("preempt = true", "preempt = true\nprepare_timeout = 1.5")
    (new,) = vconf.instances(parse(slow))
    assert new.prepare_timeout == 1.5
    for bad in ("-1", "61", '"1s"'):
        err = error(GOOD.replace("preempt = true", f"preempt = true\nprepare_timeout = {bad}"))
        assert err.key == "vrrp.instance[0].prepare_timeout", bad
    (change,) = diff({inst.name: inst}, [new]).changes
    assert change.restart_needed == () and change.router_changed
    assert change.live["prepare_timeout"] == 1.5


def test_the_keys_a_reload_hands_the_router_are_the_ones_it_is_given() -> None:
    """``reload.ROUTER_KEYS`` (swapped into the running router on reload) and the fields
    ``router_live`` builds the RouterConfig's live part from stay in step: changing each
    of those keys changes exactly one of those fields."""
    from dataclasses import fields, replace

    from clusterbus.vrrp import machine
    from clusterbus.vrrp.reload import ROUTER_KEYS
    from clusterbus.vrrp.speaker import router_live

    (inst,) = vconf.instances(parse(GOOD))
    base = router_live(inst)
    assert set(base) <= {f.name for f in fields(machine.RouterConfig)}
    changed = {}
    for key in ROUTER_KEYS:
        value = getattr(inst, key)
        other = (not value) if isinstance(value, bool) else value + 1.5
        diff = {k for k, v in router_live(replace(inst, **{key: other})).items() if v != base[k]}
        assert len(diff) == 1, (key, diff)
        changed[key] = diff.pop()
    assert set(changed.values()) == set(base)
