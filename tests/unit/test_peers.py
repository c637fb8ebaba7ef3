"""[[cluster.peer]] configuration and the peer-liveness rules (sans-IO)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clusterbus.config import parse_config
from clusterbus.errors import ConfigError
from clusterbus.peers import PeerLiveness, Transition

KEYGEN = [str(Path(sys.executable).with_name("clusterbus")), "keygen"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    for name in ("d1", "d2"):
        subprocess.run([*KEYGEN, "--dir", str(d), "--name", name], check=True,
                       capture_output=True, timeout=30)
    return d


def conf(keys: Path, *, cert: bool = True, **peer: object) -> dict[str, object]:
    p: dict[str, object] = {"node": 2, "publish": "tcp://10.0.0.2:7661",
                            "snapshot": "tcp://10.0.0.2:7663",
                            "public_key": str(keys / "d2.key")}
    p.update(peer)
    p = {k: v for k, v in p.items() if v is not None}
    bus = {"certificate": str(keys / "d1.key_secret")} if cert else {}
    return {"daemon": {"node": 1}, "bus": bus, "cluster": {"peer": [p]}}


def test_a_peer_is_parsed(keys: Path) -> None:
    c = parse_config(conf(keys), file="f.toml")
    assert c["cluster"]["peer"] == [{"node": 2, "publish": "tcp://10.0.0.2:7661",
                                     "snapshot": "tcp://10.0.0.2:7663",
                                     "public_key": str(keys / "d2.key")}]


def test_no_peers_by_default() -> None:
    assert parse_config({}, file="f.toml")["cluster"] == {"peer": []}


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"node": "2"}, "cluster.peer[0].node", "expected an integer"),
    ({"node": None}, "cluster.peer[0].node", "missing"),
    ({"node": 1}, "cluster.peer[0].node", "is this director"),
    ({"publish": "tcp://*:7661"}, "cluster.peer[0].publish", "connect to"),
    ({"snapshot": "tcp://10.0.0.2:*"}, "cluster.peer[0].snapshot", "connect to"),
    ({"snapshot": "tcp://10.0.0.2:7661"}, "cluster.peer[0].snapshot", "same endpoint"),
    ({"publish": "http://x"}, "cluster.peer[0].publish", "ZeroMQ endpoint"),
    ({"public_key": "d2.key"}, "cluster.peer[0].public_key", "absolute path"),
    ({"public_key": "/nonexistent/d2.key"}, "cluster.peer[0].public_key", "no such file"),
    ({"colour": "red"}, "cluster.peer[0].colour", "unknown key"),
])
def test_bad_peer_names_file_and_key(keys: Path, change: dict[str, object], key: str,
                                     words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(conf(keys, **change), file="f.toml")
    assert err.value.file == "f.toml" and err.value.key == key
    assert words in err.value.msg


def test_a_peer_needs_the_certificate(keys: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(conf(keys, cert=False), file="f.toml")
    assert err.value.key == "cluster.peer" and "clusterbus keygen" in err.value.msg


def test_duplicate_peer_and_bad_tables(keys: Path) -> None:
    c = conf(keys)
    peers = c["cluster"]["peer"]  # type: ignore[index]
    c["cluster"] = {"peer": [peers[0], dict(peers[0])]}  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"already used by cluster.peer\[0\]"):
        parse_config(c, file="f.toml")
    with pytest.raises(ConfigError, match="array of tables"):
        parse_config({"cluster": {"peer": {"node": 2}}}, file="f.toml")
    with pytest.raises(ConfigError, match="known keys here: peer"):
        parse_config({"cluster": {"peers": []}}, file="f.toml")


def test_liveness_first_heartbeat_then_timeout_then_back() -> None:
    lv = PeerLiveness()
    assert lv.observe(alive=False, epoch=None) == []
    assert lv.observe(alive=True, epoch=5) == [Transition(up=True, reason="heartbeat")]
    assert lv.observe(alive=True, epoch=5) == []
    assert lv.observe(alive=False, epoch=5) == [Transition(up=False,
                                                           reason="heartbeat_timeout")]
    assert lv.observe(alive=False, epoch=5) == []
    assert lv.observe(alive=True, epoch=5) == [Transition(up=True, reason="heartbeat")]
    assert lv.counters == {"up": 2, "down": 1, "restarts": 0}


def test_liveness_restart_while_up_is_down_then_up() -> None:
    lv = PeerLiveness()
    lv.observe(alive=True, epoch=5)
    assert lv.observe(alive=True, epoch=6) == [Transition(up=False, reason="restarted"),
                                               Transition(up=True, reason="restarted")]
    assert lv.up and lv.epoch == 6 and lv.counters["restarts"] == 1


def test_liveness_restart_after_timeout_is_up_restarted() -> None:
    lv = PeerLiveness()
    lv.observe(alive=True, epoch=5)
    lv.observe(alive=False, epoch=5)
    assert lv.observe(alive=True, epoch=7) == [Transition(up=True, reason="restarted")]


def test_split_connect() -> None:
    from clusterbus.bus.client import split_connect

    assert split_connect("tcp://10.0.0.1:7661") == ("tcp://10.0.0.1:7661",
                                                     "tcp://10.0.0.1:7663", None)
    assert split_connect("tcp://10.0.0.1:7661,,/k/d1.key") == (
        "tcp://10.0.0.1:7661", "tcp://10.0.0.1:7663", "/k/d1.key")
    assert split_connect("ipc:///a,ipc:///b") == ("ipc:///a", "ipc:///b", None)
    for bad in ("ipc:///a", ",x", "a,b,c,d", "tcp://h:65535"):
        with pytest.raises(ValueError):
            split_connect(bad)


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    @__import__("clusterbus").hookimpl
    def clusterbus_event(self, event: object) -> None:
        self.seen.append((event.topic, event.origin, event.seq))  # type: ignore[attr-defined]


def test_peer_events_reach_hooks_not_the_view_nor_the_sinks(keys: Path) -> None:
    from clusterbus.engine import Engine
    from clusterbus.events import NodeUp
    from clusterbus.peers import PeersService
    from clusterbus.pluginhost import PluginHost

    host = PluginHost()
    rec = _Recorder()
    host.register(rec, "rec")
    engine = Engine(origin=1, plugins=host)
    sunk: list[object] = []
    engine.sinks.append(sunk.append)
    service = PeersService(engine, parse_config(conf(keys), file="f.toml"))
    link = service.links[2]
    try:
        up = NodeUp(origin=2, seq=5, time=1.0, node=42, addrs=(), view=3, joined=(42,),
                    left=(), reason="test")
        link.deliver(up)
        link.deliver(NodeUp(origin=3, seq=6, time=1.0, node=43, addrs=(), view=4,
                            joined=(43,), left=(), reason="test"))
        assert rec.seen == [("node.up", 2, 5)]
        assert engine.view.state(42) is None and sunk == []
        assert link.counters["events.delivered"] == 1
        assert link.counters["dropped.wrong_origin"] == 1
        # liveness: a heartbeat makes the peer a live director, published locally
        assert engine.cluster.directors() == (1,)
        link.liveness.observe(alive=True, epoch=9)
        assert engine.cluster.directors() == (1, 2)
        st = service.status()
        assert st["alive"] == [2] and st["peers"]["2"]["counters"]["events.delivered"] == 1
    finally:
        link.sub.close()


def test_liveness_new_epoch_seen_while_dead_is_still_a_restart() -> None:
    lv = PeerLiveness()
    lv.observe(alive=True, epoch=5)
    lv.observe(alive=False, epoch=5)
    assert lv.observe(alive=False, epoch=8) == []
    assert lv.observe(alive=True, epoch=8) == [Transition(up=True, reason="restarted")]
    assert lv.counters == {"up": 2, "down": 1, "restarts": 1}
