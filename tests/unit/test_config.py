from __future__ import annotations

import pytest

from clusterbus.config import DEFAULT_FILE, load_config
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
