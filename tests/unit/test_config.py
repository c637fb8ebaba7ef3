from __future__ import annotations

import pytest

from clusterbus.config import (
    CORE_SECTIONS,
    DEFAULT_FILE,
    MAX_DEPTH,
    Endpoint,
    check_host,
    load_config,
    parse_config,
    parse_endpoint,
)
from clusterbus.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "cb.toml"
    p.write_text(text)
    return p


def test_embedded_default_is_valid():
    cfg = load_config(None)
    assert cfg.file == DEFAULT_FILE and cfg.node == 1
    assert cfg["netlink"]["enabled"] and cfg["bus"]["publish"].startswith("tcp://127.0.0.1")


@pytest.mark.parametrize("text,key,words", [
    ("[daemon]\nnode = -1\n", "daemon.node", "from 0"),
    ("[daemon]\nnode = true\n", "daemon.node", "expected an integer"),
    ("[daemon]\nnodes = 1\n", "daemon.nodes", "unknown key"),
    ("[netlink]\ngroup = 33\n", "netlink.group", "from 1 to 32"),
    ("[netlink]\nallowed_uids = ['root']\n", "netlink.allowed_uids", "numeric uids"),
    ("[bus]\npublish = 'http://x'\n", "bus.publish", "ZeroMQ endpoint"),
    ("[plugins]\nenable = ['a']\ndisable = ['a']\n", "plugins", "both"),
    ("daemon = 3\n", "daemon", "expected a table"),
    ("stray = 3\n", "stray", "must be tables"),
])
def test_errors_name_file_key_and_expectation(tmp_path, text, key, words):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    err = info.value
    assert err.file == str(p) and err.key == key
    assert words in str(err) and str(p) in str(err)


def test_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[daemon\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_integers_are_accepted_where_numbers_are_expected(tmp_path):
    cfg = load_config(write(tmp_path, "[bus]\nheartbeat_interval = 2\n"))
    assert cfg["bus"]["heartbeat_interval"] == 2.0


# -- endpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize("text,canonical", [
    ("tcp://127.0.0.1:7661", "tcp://127.0.0.1:7661"),
    ("tcp://*:07661", "tcp://*:7661"),
    ("tcp://0.0.0.0:1", "tcp://0.0.0.0:1"),
    ("tcp://127.0.0.1:*", "tcp://127.0.0.1:*"),
    ("tcp://10.0.0.1:65535", "tcp://10.0.0.1:65535"),
    ("ipc:///run/clusterbus//pub", "ipc:///run/clusterbus/pub"),
    ("ipc:///run/./clusterbus/pub", "ipc:///run/clusterbus/pub"),
    ("ipc://@clusterbus-pub", "ipc://@clusterbus-pub"),
    ("inproc://bus", "inproc://bus"),
])
def test_good_endpoints_are_canonical(text, canonical):
    assert str(parse_endpoint(text)) == canonical


@pytest.mark.parametrize("text,words", [
    ("tcp://127.0.0.1:notaport", "not a number"),
    ("tcp://127.0.0.1:99999", "from 1 to 65535"),
    ("tcp://127.0.0.1:65536", "from 1 to 65535"),
    ("tcp://127.0.0.1:0", "ephemeral"),
    ("tcp://127.0.0.1:-1", "not a number"),
    ("tcp://127.0.0.1:", "not a number"),
    ("tcp://127.0.0.1", "HOST:PORT"),
    ("tcp://localhost:7661", "not a literal IPv4"),
    ("tcp://eth0:7661", "not a literal IPv4"),
    ("tcp://[::1]:7661", "IPv6"),
    ("tcp://224.0.0.1:7661", "unicast"),
    ("tcp://127.0.0.01:7661", "not a literal IPv4"),
    ("ipc://relative/path", "absolute"),
    ("ipc:///" + "x" * 120, "longer than"),
    ("ipc://", "ZeroMQ endpoint"),
    ("http://x", "ZeroMQ endpoint"),
    ("tcp://127.0.0.1:7661\n", "ZeroMQ endpoint"),
])
def test_bad_endpoints_say_why(text, words):
    with pytest.raises(ValueError, match=words):
        parse_endpoint(text)


def test_overlapping_endpoints():
    a, b = parse_endpoint("tcp://*:7661"), parse_endpoint("tcp://127.0.0.1:7661")
    assert a.overlaps(b) and b.overlaps(a)
    assert not b.overlaps(parse_endpoint("tcp://127.0.0.2:7661"))
    eph = parse_endpoint("tcp://127.0.0.1:*")
    assert not eph.overlaps(eph)  # every ephemeral bind gets its own port
    assert parse_endpoint("ipc:///a/b").overlaps(parse_endpoint("ipc:///a//b"))
    assert isinstance(a, Endpoint) and a.wildcard


def test_bus_endpoints_are_stored_canonical_and_bound_once(tmp_path):
    cfg = parse_config({"bus": {"publish": "ipc:///run//cb/pub"}}, file="t")
    assert cfg["bus"]["publish"] == "ipc:///run/cb/pub"
    with pytest.raises(ConfigError) as info:
        parse_config({"bus": {"publish": "ipc:///run/cb/x", "snapshot": "ipc:///run/cb//x"}},
                     file="t")
    assert info.value.key == "bus.snapshot" and "bus.publish" in str(info.value)


def test_ephemeral_ports_may_repeat():
    eph = "tcp://127.0.0.1:*"
    cfg = parse_config({"bus": {"publish": eph, "snapshot": eph}}, file="t")
    assert cfg["bus"]["publish"] == cfg["bus"]["snapshot"] == eph


# -- host checks -------------------------------------------------------------------------

def test_host_checks_only_what_is_enabled(tmp_path):
    away = "tcp://198.51.100.77:7661"
    cfg = parse_config({"bus": {"enabled": False, "publish": away}}, file="t")
    check_host(cfg)  # not bound: nothing to check
    cfg = parse_config({"keepalived": {"enabled": False,
                                       "notify_fifo": f"{tmp_path}/no/fifo"}}, file="t")
    check_host(cfg)


def test_host_checks_ipc_and_fifo_paths(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("keep me")
    cfg = parse_config({"bus": {"publish": f"ipc://{plain}"}}, file="t")
    with pytest.raises(ConfigError, match="not a socket") as info:
        check_host(cfg)
    assert info.value.key == "bus.publish"
    cfg = parse_config({"keepalived": {"notify_fifo": str(plain)}}, file="t")
    with pytest.raises(ConfigError, match="not a FIFO"):
        check_host(cfg)
    cfg = parse_config({"keepalived": {"notify_fifo": str(tmp_path / "fifo")},
                        "bus": {"publish": f"ipc://{tmp_path}/pub", "ingest": f"ipc://{tmp_path}/in",
                                "snapshot": "tcp://127.0.0.1:17663"}}, file="t")
    check_host(cfg)  # missing FIFO in an existing directory: made when the source starts
    assert plain.read_text() == "keep me"


def test_local_addresses_pass_the_bind_check():
    # (a wildcard or non-loopback bind needs CURVE: tests/unit/test_bus_security.py)
    cfg = parse_config({"bus": {"publish": "tcp://127.0.0.1:17661",
                                "snapshot": "tcp://127.0.0.2:17661"}}, file="t")
    check_host(cfg)


# -- reading -----------------------------------------------------------------------------

def test_not_utf8_names_line_and_key(tmp_path):
    p = tmp_path / "cb.toml"
    p.write_bytes(b'[daemon]\nnode = 1\n\n[bus]\npublish = "tcp://\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.key == "bus.publish"
    assert "not UTF-8" in str(info.value) and "line 5" in str(info.value)


@pytest.mark.parametrize("nesting,key", [
    ("[" * 5000 + "]" * 5000, "daemon.node"),
    ("{a=" * 40 + "1" + "}" * 40, "daemon.node.a"),  # parses; refused with 3 levels named
    ("[" * 40 + "]" * 40, "daemon.node[0]"),
])
def test_deep_nesting_is_refused(tmp_path, nesting, key):
    p = write(tmp_path, f"[daemon]\nnode = {nesting}\n")
    with pytest.raises(ConfigError, match=f"more than {MAX_DEPTH} deep") as info:
        load_config(p)
    assert info.value.key == key


def test_brackets_in_strings_and_comments_are_not_nesting(tmp_path):
    text = ('[nodemap]  # [[[[' + "[" * 40 + '\nlearn = true\n[nodemap.nodes]\n'
            '1 = ["10.0.0.1"] # ' + "[" * 40 + '\n'
            '[example]\nlog_file = """' + "[" * 40 + '\n]"""\n')
    cfg = load_config(write(tmp_path, text))
    assert cfg.plugin_sections["nodemap"]["learn"] is True
    assert cfg.plugin_sections["example"]["log_file"].startswith("[[")


def test_nesting_within_the_limit_is_kept(tmp_path):
    depth = MAX_DEPTH - 3  # [example] and its key take levels too
    cfg = load_config(write(tmp_path, "[example]\nx = " + "[" * depth + "]" * depth + "\n"))
    assert isinstance(cfg.plugin_sections["example"]["x"], list)


def test_toml_syntax_error_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(write(tmp_path, '[bus]\nheartbeat_interval = 1\nreplay_ring = 1x0\n'))
    assert info.value.key == "bus.replay_ring"


def test_unprintable_keys_are_refused_on_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[nodemap]\n"a\\nb" = 1\n'))
    assert "\n" not in str(info.value) and info.value.key == "nodemap"


def test_plugins_slow_call_ms():
    assert parse_config({}, file="t")["plugins"]["slow_call_ms"] == 50
    assert parse_config({"plugins": {"slow_call_ms": 5}}, file="t")["plugins"]["slow_call_ms"] == 5
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError) as info:
            parse_config({"plugins": {"slow_call_ms": bad}}, file="t")
        assert info.value.key == "plugins.slow_call_ms"


def test_every_core_section_is_declared_once():
    assert set(CORE_SECTIONS) == {"daemon", "plugins", "bus", "netlink", "sigcluster",
                                  "keepalived", "vrrp", "corosync", "cluster", "metrics"}
    for name, section in CORE_SECTIONS.items():
        assert (section.schema is None) != (section.parse is None), name
