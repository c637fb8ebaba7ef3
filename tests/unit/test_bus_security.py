"""CURVE keys and the ``[bus]`` security rules: ``clusterbus keygen`` files, the start-up
checks (secure by default) and the clients' key files. Files are real; no daemon."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import zmq.auth
from click.testing import CliRunner

from clusterbus.bus.security import (
    is_loopback_endpoint,
    load_client_keys,
    prepare_ipc_dir,
)
from clusterbus.cli import main
from clusterbus.config import load_config, parse_config
from clusterbus.errors import ConfigError
from clusterbus.keygen import client_key_files, write_certificates

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# -- keygen -------------------------------------------------------------------------------


def test_keygen_writes_zmq_certificates_secret_0600(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    r = CliRunner().invoke(main, ["keygen", "--dir", str(d), "--name", "d1"])
    assert r.exit_code == 0, r.output
    public, secret = d / "d1.key", d / "d1.key_secret"
    pub_key, none = zmq.auth.load_certificate(public)
    pub2, sec_key = zmq.auth.load_certificate(secret)
    assert none is None and sec_key is not None and pub2 == pub_key
    assert r.stdout.strip().splitlines()[-1] == pub_key.decode()  # the public key is printed
    assert zmq.auth.load_certificates(d) == {pub_key: True}  # zmq.auth reads the directory
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []  # no temp leftovers
    # the key pair really is a CURVE pair
    assert zmq.curve_public(sec_key) == pub_key


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = write_certificates(tmp_path, "d1")
    before = first[1].read_bytes()
    r = CliRunner().invoke(main, ["keygen", "--dir", str(tmp_path), "--name", "d1"])
    assert r.exit_code == 1 and "exists" in r.output and "--force" in r.output
    assert first[1].read_bytes() == before
    r = CliRunner().invoke(main, ["keygen", "--dir", str(tmp_path), "--name", "d1", "--force"])
    assert r.exit_code == 0, r.output
    assert first[1].read_bytes() != before
    assert stat.S_IMODE(first[1].stat().st_mode) == 0o600


@pytest.mark.parametrize("args, code, words", [
    (["--name", "../x"], 2, "--name"),
    (["--name", "d1.key"], 2, "--name"),
    (["--name", "ok", "--dir", "/proc/nonexistent/keys"], 1, "cannot write keys"),
])
def test_keygen_errors_are_one_line(tmp_path: Path, args: list[str], code: int,
                                    words: str) -> None:
    if "--dir" not in args:
        args = [*args, "--dir", str(tmp_path)]
    r = CliRunner().invoke(main, ["keygen", *args])
    assert r.exit_code == code and words in r.output, r.output
    assert "Traceback" not in r.output
    assert not list(tmp_path.glob("*.key*"))


def test_keygen_dir_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    r = CliRunner().invoke(main, ["keygen", "--dir", str(f), "--name", "x"])
    assert r.exit_code == 2 and "is a file" in r.output, r.output


# -- start-up rules -------------------------------------------------------------------------


@pytest.fixture()
def certs(tmp_path: Path) -> dict[str, Path]:
    auth = tmp_path / "auth"
    auth.mkdir()
    public, secret = write_certificates(tmp_path, "d1")
    client, _ = write_certificates(auth, "c1")
    return {"public": public, "secret": secret, "auth": auth, "client": client}


def bus_cfg(tmp_path: Path, **bus: str) -> Path:
    lines = "\n".join(f'{k} = "{v}"' for k, v in bus.items())
    p = tmp_path / "c.toml"
    p.write_text(f"[bus]\n{lines}\n")
    return p


def test_default_ingest_is_a_root_only_ipc_socket() -> None:
    cfg = load_config(None)
    assert cfg["bus"]["ingest"] == "ipc:///run/clusterbus/ingest.sock"
    assert cfg["bus"]["certificate"] == "" and cfg["bus"]["authorized_keys"] == ""


@pytest.mark.parametrize("bus, key, words", [
    ({"ingest": "tcp://127.0.0.1:7662"}, "bus.ingest", "clusterbus keygen"),
    ({"ingest": "tcp://0.0.0.0:7662"}, "bus.ingest", "certificate"),
    ({"publish": "tcp://0.0.0.0:7661"}, "bus.publish", "clusterbus keygen"),
    ({"publish": "tcp://*:7661"}, "bus.publish", "non-loopback"),
    ({"snapshot": "tcp://10.1.2.3:7663"}, "bus.snapshot", "non-loopback"),
    ({"snapshot": "tcp://eth0:7663"}, "bus.snapshot", "not a literal IPv4 address"),
    ({"publish": "tcp://[::]:7661"}, "bus.publish", "IPv6 tcp endpoints are not supported"),
])
def test_insecure_endpoints_without_certificate_stop_start_up(
        tmp_path: Path, bus: dict[str, str], key: str, words: str) -> None:
    path = bus_cfg(tmp_path, **bus)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key and info.value.file == str(path)
    assert words in str(info.value)
    r = CliRunner().invoke(main, ["check-config", "-c", str(path)])
    assert r.exit_code == 2 and key in r.output


def test_loopback_publish_and_snapshot_without_certificate_are_fine(tmp_path: Path) -> None:
    cfg = load_config(bus_cfg(tmp_path, publish="tcp://127.0.0.1:7661",
                              snapshot="tcp://127.0.0.2:7663", ingest=f"ipc://{tmp_path}/i"))
    assert cfg["bus"]["certificate"] == ""


def test_with_certificate_tcp_everywhere_is_fine(tmp_path: Path,
                                                 certs: dict[str, Path]) -> None:
    cfg = load_config(bus_cfg(tmp_path, publish="tcp://0.0.0.0:7661", ingest="tcp://*:7662",
                              snapshot="tcp://10.1.2.3:7663", certificate=str(certs["secret"]),
                              authorized_keys=str(certs["auth"])))
    assert cfg["bus"]["certificate"] == str(certs["secret"])


def test_disabled_bus_is_not_checked(tmp_path: Path) -> None:
    parse_config({"bus": {"enabled": False, "ingest": "tcp://0.0.0.0:1"}}, file="t.toml")


@pytest.mark.parametrize("case, key, words", [
    ("missing", "bus.certificate", "no such file"),
    ("directory", "bus.certificate", "not a file"),
    ("garbage", "bus.certificate", "not a ZeroMQ certificate"),
    ("public", "bus.certificate", "not a secret certificate"),
    ("short_key", "bus.certificate", "Z85"),
    ("keys_without_certificate", "bus.authorized_keys", "needs [bus] certificate"),
    ("keys_missing", "bus.authorized_keys", "no such directory"),
    ("keys_not_dir", "bus.authorized_keys", "not a directory"),
    ("keys_empty", "bus.authorized_keys", "no public .key file"),
    ("keys_bad_file", "bus.authorized_keys", "not a ZeroMQ certificate"),
])
def test_bad_key_files_name_file_and_key(tmp_path: Path, certs: dict[str, Path], case: str,
                                         key: str, words: str) -> None:
    bus: dict[str, str] = {"certificate": str(certs["secret"]),
                           "authorized_keys": str(certs["auth"])}
    empty = tmp_path / "empty"
    empty.mkdir()
    if case == "missing":
        bus["certificate"] = str(tmp_path / "nope.key_secret")
    elif case == "directory":
        bus["certificate"] = str(tmp_path)
    elif case == "garbage":
        (tmp_path / "g").write_text("hello\n")
        bus["certificate"] = str(tmp_path / "g")
    elif case == "public":
        bus["certificate"] = str(certs["public"])
    elif case == "short_key":
        (tmp_path / "s").write_text('curve\n    public-key = "abc"\n    secret-key = "def"\n')
        bus["certificate"] = str(tmp_path / "s")
    elif case == "keys_without_certificate":
        del bus["certificate"]
    elif case == "keys_missing":
        bus["authorized_keys"] = str(tmp_path / "nowhere")
    elif case == "keys_not_dir":
        bus["authorized_keys"] = str(certs["public"])
    elif case == "keys_empty":
        bus["authorized_keys"] = str(empty)
    elif case == "keys_bad_file":
        (certs["auth"] / "broken.key").write_text("not a key\n")
    path = bus_cfg(tmp_path, **bus)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key and info.value.file == str(path), info.value
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_certificate_as_nobody() -> None:
    """A key file its reader may not open is "cannot read", not "no such file"."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root (to become nobody) and setpriv")
    d = Path(tempfile.mkdtemp(prefix="cb-keys-"))  # 0700, root's: nobody cannot enter
    try:
        _, secret = write_certificates(d, "d1")
        code = ("from clusterbus.bus.security import check_bus_security as c\n"
                f"c({{'certificate': {str(secret)!r}}}, 't.toml')")
        p = subprocess.run([*NOBODY, sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=60)
        assert "ConfigError" in p.stderr and "cannot read: Permission denied" in p.stderr, \
            p.stderr
        assert "bus.certificate" in p.stderr
    finally:
        shutil.rmtree(d)


@pytest.mark.parametrize("endpoint, loopback", [
    ("ipc:///run/clusterbus/ingest.sock", True), ("inproc://x", True),
    ("tcp://127.0.0.1:1", True), ("tcp://127.1.2.3:1", True), ("tcp://[::1]:1", True),
    ("tcp://localhost:1", True), ("tcp://127.0.0.1:*", True),
    ("tcp://0.0.0.0:1", False), ("tcp://*:1", False), ("tcp://[::]:1", False),
    ("tcp://10.0.0.1:1", False), ("tcp://eth0:1", False), ("tcp://lo:1", False),
    ("tcp://10.0.0.1;127.0.0.1:1", True),
])
def test_is_loopback_endpoint(endpoint: str, loopback: bool) -> None:
    assert is_loopback_endpoint(endpoint) is loopback


def test_prepare_ipc_dir_creates_0700_and_leaves_existing_alone(tmp_path: Path) -> None:
    prepare_ipc_dir(f"ipc://{tmp_path}/clusterbus/ingest.sock")
    assert stat.S_IMODE((tmp_path / "clusterbus").stat().st_mode) == 0o700
    tmp_path.chmod(0o755)
    prepare_ipc_dir(f"ipc://{tmp_path}/sock")
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    prepare_ipc_dir("tcp://127.0.0.1:1")  # nothing to do


# -- clients --------------------------------------------------------------------------------


def test_client_keys(certs: dict[str, Path]) -> None:
    assert load_client_keys(None, None) is None
    keys = load_client_keys(str(certs["secret"]), str(certs["public"]))
    assert keys is not None
    opts = keys.sockopts()
    assert opts[zmq.CURVE_SERVERKEY] == zmq.auth.load_certificate(certs["public"])[0]
    with pytest.raises(ConfigError, match="both"):
        load_client_keys(None, str(certs["public"]))
    with pytest.raises(ConfigError, match="no such file") as info:
        load_client_keys(str(certs["secret"]), "/nonexistent.key")
    assert info.value.file == "/nonexistent.key"


def test_client_key_files_default_to_the_daemons_certificate() -> None:
    assert client_key_files({"certificate": ""}, None, None) == {
        "certificate": None, "server_key": None}
    own = {"certificate": "/etc/cb/d1.key_secret"}
    assert client_key_files(own, None, None) == {"certificate": "/etc/cb/d1.key_secret",
                                                 "server_key": "/etc/cb/d1.key_secret"}
    assert client_key_files(own, "/home/a.key_secret", None) == {
        "certificate": "/home/a.key_secret", "server_key": "/etc/cb/d1.key_secret"}
    assert client_key_files(own, "/a", "/b") == {"certificate": "/a", "server_key": "/b"}


def test_cli_bad_key_file_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[bus]\nsnapshot = "ipc://{tmp_path}/s"\n')
    r = CliRunner().invoke(main, ["status", "-c", str(cfg), "--certificate",
                                  str(tmp_path / "none.key_secret"), "--server-key",
                                  str(tmp_path / "none.key")])
    assert r.exit_code == 2 and "no such file" in r.output, r.output
