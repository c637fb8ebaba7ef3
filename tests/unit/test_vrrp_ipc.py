"""The link to the speaker's own process (clusterbus.vrrp.ipc, clusterbus.vrrp.process) and
the ``[vrrp] isolation`` key: framing, a full socket, errors that keep their type."""

from __future__ import annotations

import errno
import socket
import tomllib

import msgpack
import pytest

from clusterbus.config import parse_config
from clusterbus.errors import ConfigError, DecodeError
from clusterbus.vrrp.config import instances, isolation
from clusterbus.vrrp.ipc import MAX_QUEUED, Channel, SpeakerProcessError, decode_error, encode_error
from clusterbus.vrrp.process import config_from_wire, config_to_wire

CONF = """
[vrrp]
isolation = "%s"

[[vrrp.instance]]
name = "VI_1"
interface = "lo"
vrid = 51
priority = 120
virtual_ipaddress = ["10.79.0.100/24", "10.79.0.101"]
unicast_peer = ["10.79.0.2"]
"""


def pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(a), Channel(b)


def drain(ch: Channel) -> list[list]:
    out: list[list] = []
    while True:
        msgs, closed = ch.receive_blocking(0.2)
        out += msgs
        if closed or not msgs:
            return out


def test_messages_arrive_whole_and_in_order() -> None:
    a, b = pair()
    sent = [["event", "VrrpTransition", {"instance": "VI_1", "vrid": 7}],
            ["call", "_call_prepare", ["VI_1", 7, 3]], ["log", "x", 20, "é" * 5000, None, 1.5]]
    for m in sent:
        a.send(m)
    assert drain(b) == sent
    assert a.counters["ipc.sent"] == 3 and b.counters["ipc.received"] == 3
    a.close()
    assert b.receive_blocking(1) == ([], True)


def test_a_full_socket_queues_and_never_blocks_then_flushes() -> None:
    a, b = pair()
    big = ["log", "x", 20, "y" * 100_000, None, 0.0]
    for _ in range(200):  # ~20 MB: far beyond the socket buffers
        a.send(big)
    assert a._out or a._pending, "the socket took everything: the test proves nothing"
    got = 0
    for _ in range(10_000):  # bounded
        a.flush_some()
        msgs, _ = b.receive_blocking(0.5)
        got += len(msgs)
        if got == 200:
            break
    assert got == 200


def test_the_queue_is_bounded_and_drops_are_counted() -> None:
    a, b = pair()
    big = ["log", "x", 20, "y" * 100_000, None, 0.0]
    for _ in range(1000):  # bounded: until the socket is full
        a.send(big)
        if a._out or a._pending:
            break
    for _ in range(MAX_QUEUED + 100):
        a.send(["stopped"])
    assert len(a._out) == MAX_QUEUED
    assert a.counters["ipc.dropped.queue_full"] > 0
    a.close()
    b.close()


def test_garbage_on_the_link_is_a_decode_error() -> None:
    raw, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ch = Channel(b)
    raw.send(msgpack.packb({"not": "an array"}))
    with pytest.raises(DecodeError):
        ch.receive_blocking(1)


def test_errors_cross_with_their_type() -> None:
    err = decode_error(encode_error(ConfigError("no address", file="f.toml", key="vrrp.x")))
    assert isinstance(err, ConfigError) and str(err) == "f.toml: key 'vrrp.x': no address"
    err = decode_error(encode_error(OSError(errno.EPERM, "Operation not permitted")))
    assert isinstance(err, OSError) and err.errno == errno.EPERM
    err = decode_error(encode_error(ZeroDivisionError("x")))
    assert isinstance(err, SpeakerProcessError) and "ZeroDivisionError: x" in str(err)


def test_the_configuration_crosses_as_plain_data() -> None:
    config = parse_config(tomllib.loads(CONF % "thread"), file="t.toml")
    wire = msgpack.unpackb(msgpack.packb(config_to_wire(config)), raw=False)
    back = config_from_wire(wire)
    assert back.file == "t.toml"
    assert instances(back) == instances(config)
    assert isolation(back) == "thread"
    with pytest.raises(DecodeError):
        config_from_wire({"file": 1})


def test_isolation_defaults_to_process_and_is_checked() -> None:
    assert isolation(parse_config(tomllib.loads(CONF % "process"), file="t.toml")) == "process"
    default = CONF.replace('isolation = "%s"\n', "")
    assert isolation(parse_config(tomllib.loads(default), file="t.toml")) == "process"
    with pytest.raises(ConfigError) as exc:
        parse_config(tomllib.loads(CONF % "fork"), file="t.toml")
    assert exc.value.key == "vrrp.isolation"


def test_messages_read_with_init_are_kept_for_the_speaker() -> None:
    """The daemon sends the priorities a policy set before the process existed right
    behind ``init``; one read may return them all: none may be dropped."""
    from clusterbus.vrrp.worker import _read_init

    daemon, worker = pair()
    daemon.send(["init", {"config": None}])
    daemon.send(["call", "_set_priority", ["VI_1", 200, False]])
    init, early = _read_init(worker)
    assert init == {"config": None}
    assert early == [["call", "_set_priority", ["VI_1", 200, False]]]
