#!/usr/bin/env python3
"""Fuzz every decoder (issue 12, "Fault and load tests"): random and structured input
into each one for ``--seconds`` per decoder, with hypothesis. Only typed errors may
escape (``clusterbus.errors.ClusterbusError``: DecodeError, FrameError, InvalidEvent,
ConfigError, ...); anything else is a crash, recorded with the input that caused it::

    .venv/bin/python bench/fuzz.py                      # 600 s per decoder
    .venv/bin/python bench/fuzz.py --seconds 20 --json  # last line: one JSON object
    .venv/bin/python bench/fuzz.py --only bus.decode --seconds 60

Decoders: the VRRP packet codec (``Advertisement.from_bytes``, ``split_ipv4_frame``),
the netlink membership messages (``decode``, ``decode_reports``), the IPVS generic
netlink attributes (``decode_service``, ``decode_dest``, ``decode_daemon``), the ZeroMQ
frames (``decode`` of an event, ``decode_batch_epoch``, ``decode_heartbeat``,
``decode_ingest``, ``decode_request``, ``decode_reply``), keepalived notify FIFO lines
(``parse_line``), the SIGCLUSTER payload (``decode_payload``), the config loader
(``load_config`` on random TOML text) and the IPVS sync protocol (conn-sync's
``connsync.codec.decode``, v0 and v1: random bytes, datagrams built field by field with
random options and lying size fields, and mutated captured vectors; whatever decodes must
also re-encode to the same bytes, or it counts as a crash) and conn-sync's conntrack
entries (``CtEntry.from_wire`` on msgpack-shaped maps, ``Conntrack.parse_events`` on
netlink bytes).

Each decoder gets random bytes plus inputs shaped like the real thing (a netlink header
with a matching length, a msgpack map with the right keys and random values, a TOML
file with real section and key names), so the fuzzer gets past the first length check.

``--json``: the last line holds ``{"decoders": {name: {"examples", "crashes",
"typed_errors", "first_crash"}}, "examples", "crashes", "seconds"}``; the exit status
is 1 when anything crashed.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from clusterbus.errors import ClusterbusError

# -- strategies ---------------------------------------------------------------------------

leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**64 - 1),
                 st.floats(allow_nan=True), st.text(max_size=40), st.binary(max_size=40))
values = st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=12), inner, max_size=6)),
    max_leaves=20)

EVENT_KEYS = ["v", "origin", "seq", "time", "node", "addrs", "view", "joined", "left",
              "reason", "incarnation", "instance", "vrid", "family", "interface", "old",
              "new", "priority", "source", "group", "address", "addr", "owner",
              "claimant", "added", "removed", "changed", "duration", "epoch", "events",
              "interval", "batch", "parts", "status", "error", "message", "more"]
TOPICS = [b"node.up", b"node.down", b"node.coming_up", b"node.going_down",
          b"vrrp.transition", b"vip.acquired", b"vip.released", b"nodemap.changed",
          b"nodemap.conflict", b"ipvs.applied", b"_hb", b"_batch", b"x.y", b"", b"\xff"]
COMMANDS = [b"SNAPSHOT", b"REPLAY", b"STATUS", b"ERROR", b"", b"snapshot"]

good_value = st.one_of(
    st.integers(min_value=0, max_value=2**64 - 1), st.sampled_from(
        ["10.0.0.1", "::1", "fe80::1", "10.0.0.1/24", "MASTER", "inet", "zmq", "eth0", ""]),
    st.lists(st.sampled_from(["10.0.0.3", "::ffff:10.0.0.3", "0.0.0.0", "x"]), max_size=4),
    st.lists(st.integers(min_value=-1, max_value=2**32), max_size=4),
    st.floats(), st.booleans(), values)
shaped_map = st.dictionaries(st.sampled_from(EVENT_KEYS), good_value, max_size=14)


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


msgpack_frame = st.one_of(st.binary(max_size=200), shaped_map.map(_pack), values.map(_pack))
frames = st.one_of(
    st.lists(st.binary(max_size=100), max_size=5),
    st.tuples(st.sampled_from(TOPICS), msgpack_frame).map(list),
    st.tuples(st.sampled_from(COMMANDS), msgpack_frame,
              st.lists(msgpack_frame, max_size=3)).map(lambda t: [t[0], t[1], *t[2]]),
    st.tuples(st.sampled_from(COMMANDS),
              st.lists(st.integers(min_value=-1, max_value=2**64).map(
                  lambda i: _pack(i) if -2**63 <= i < 2**64 else b"\xcf"),
                  max_size=3)).map(lambda t: [t[0], *t[1]]),
    st.tuples(st.just(b"_batch"), st.builds(
        lambda epoch, evs: _pack({"v": 1, "epoch": epoch, "events": evs}),
        st.integers(min_value=-1, max_value=2**64 - 1),
        st.lists(st.tuples(st.sampled_from([t.decode("latin-1") for t in TOPICS]),
                           shaped_map).map(list), max_size=4))).map(list),
)


def _nla(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


nlas = st.lists(st.tuples(st.integers(0, 20), st.binary(max_size=24)).map(
    lambda t: _nla(*t)), max_size=6).map(b"".join)


def _nlmsg(kind: int, flags: int, body: bytes, lie: int) -> bytes:
    return struct.pack("=IHHII", max(0, 16 + len(body) + lie), kind, flags, 1, 0) + body


netlink_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.builds(_nlmsg, st.integers(0, 40), st.integers(0, 0xFFFF),
                       st.builds(lambda cmd, rest: bytes([cmd, 1, 0, 0]) + rest,
                                 st.integers(0, 8), nlas),
                       st.sampled_from([0, 0, 0, -1, 1, -16, 4])), max_size=4).map(b"".join))

vrrp_bytes = st.one_of(
    st.binary(max_size=120),
    st.builds(lambda ver, vrid, prio, count, rest: bytes([ver, vrid, prio, count]) + rest,
              st.sampled_from([0x21, 0x31, 0x11, 0x32]), st.integers(0, 255),
              st.integers(0, 255), st.integers(0, 255), st.binary(max_size=80)))


def _valid_then_mutated(vrid: int, prio: int, n: int, pos: int, byte: int, cut: int) -> bytes:
    """A correct v3 advert, one byte changed (or none), maybe cut short, with the checksum
    made right again (for v3 it covers the IPv4 pseudo-header): past the checksum gate."""
    from clusterbus.vrrp import packet

    adv = packet.Advertisement(version=3, vrid=vrid, priority=prio,
                               addresses=tuple(f"10.0.0.{i + 1}" for i in range(n)),
                               family="inet", max_adver_int_cs=100)
    body = bytearray(adv.to_bytes(src="10.0.0.1", dst="224.0.0.18"))
    if pos < len(body) and pos not in (6, 7):
        body[pos] = byte
    if cut:
        del body[-cut:]
    if len(body) >= 8:
        pseudo = packet._pseudo_header("10.0.0.1", "224.0.0.18", len(body))
        body[6:8] = packet._checksum_for(bytes(body), pseudo).to_bytes(2, "big")
    return bytes(body)


vrrp_bytes = st.one_of(vrrp_bytes, st.builds(
    _valid_then_mutated, st.integers(1, 255), st.integers(0, 255), st.integers(1, 20),
    st.integers(0, 100), st.integers(0, 255), st.sampled_from([0, 0, 0, 1, 3, 4, 15])))
ipv4_frame = st.one_of(st.binary(max_size=120), st.builds(
    lambda head, ihl, rest: head + bytes([ihl]) + rest, st.just(b"\x01" * 12 + b"\x08\x00"),
    st.sampled_from([0x45, 0x46, 0x4f, 0x44, 0x65]), st.binary(max_size=100)))

kl_words = st.sampled_from(["INSTANCE", "GROUP", "VS", "RS", "MONITOR", '"VI_1"', '"x y"',
                            "MASTER", "BACKUP", "FAULT", "STOP", "MASTER_PRIORITY", "100",
                            "255", "256", "-1", "", '"', "\t", "\xe9"])
keepalived_line = st.one_of(st.binary(max_size=300), st.lists(kl_words, max_size=6).map(
    lambda ws: " ".join(ws).encode("utf-8", "surrogateescape")))

TOML_TABLES = ["daemon", "bus", "plugins", "vrrp", "keepalived", "netlink", "nodemap",
               "metrics", "ipvs", "corosync", "sigcluster", "vrrp.instance.VI_1", "x"]
TOML_KEYS = ["node", "log_level", "state_dir", "publish", "ingest", "snapshot",
             "heartbeat_interval", "replay_ring", "send_hwm", "enabled", "certificate",
             "authorized_keys", "listen", "notify_fifo", "slow_call_ms", "interface",
             "priority", "vrid", "addresses", "unicast_peers", "group", "uids", "x"]
toml_value = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70).map(str), st.booleans().map(str).map(str.lower),
    st.floats(allow_nan=True).map(lambda f: repr(f).replace("inf", "inf").replace("nan", "nan")),
    st.text(max_size=30).map(json.dumps),
    st.sampled_from(['"tcp://127.0.0.1:7661"', '"ipc:///nonexistent/x"', '"tcp://*:99999"',
                     '"10.0.0.1"', '"::ffff:10.0.0.1"', "[1, 2]", '["a", 1]', "{a = 1}",
                     "[[[[[[[[]]]]]]]]", '"/tmp"', "2024-01-01", '"eth0"']))
toml_text = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.lists(st.one_of(
        st.sampled_from(TOML_TABLES).map(lambda t: f"[{t}]"),
        st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(TOML_KEYS), toml_value)),
        max_size=12).map("\n".join),
)



def _sync_entry(kind: int, proto: int, lie: int, fields: bytes, addrs: bytes,
                opts: list[tuple[int, int, bytes]], pad: int) -> bytes:
    """One IPVS sync v1 entry: header fields, addresses, TLV options (length may lie)."""
    body = fields + addrs + b"".join(bytes([t, n & 255]) + d for t, n, d in opts)
    size = max(0, min(0xFFFF, 4 + len(body) + lie))
    return bytes([kind, proto]) + size.to_bytes(2, "big") + body + b"\0" * pad


sync_option = st.tuples(st.sampled_from([1, 2, 3, 0x41, 0x42, 7, 0]), st.integers(0, 30),
                        st.binary(max_size=30)).map(
    lambda t: (t[0], len(t[2]) if t[1] % 3 else t[1], t[2]))
sync_entry = st.builds(
    _sync_entry, st.sampled_from([0, 0, 1, 2, 0x81]), st.sampled_from([6, 17, 132, 0]),
    st.sampled_from([0, 0, 0, -1, 1, -4, 4, 0x1000, 0x2000]), st.binary(min_size=20, max_size=20),
    st.one_of(st.binary(min_size=12, max_size=12), st.binary(min_size=48, max_size=48)),
    st.lists(sync_option, max_size=4), st.sampled_from([0, 0, 1, 2, 3, 4]))


def _sync_v1(syncid: int, entries: list[bytes], count_lie: int, size_lie: int, version: int,
             spare: int) -> bytes:
    body = b"".join(entries)
    size = max(0, min(0xFFFF, 8 + len(body) + size_lie))
    count = max(0, min(255, len(entries) + count_lie))
    return struct.pack(">BBHBBH", 0, syncid, size, count, version, spare) + body


def _sync_v0(count: int, syncid: int, entries: bytes, size_lie: int) -> bytes:
    size = max(0, min(0xFFFF, 4 + len(entries) + size_lie))
    return struct.pack(">BBH", count, syncid, size) + entries


def _sync_vectors() -> list[bytes]:
    path = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "ipvs_sync" / "sync_v1.hex"
    return [bytes.fromhex(line) for line in path.read_text().split()]


def _mutate(raw: bytes, edits: list[tuple[int, int]], cut: int, fix_size: bool) -> bytes:
    b = bytearray(raw)
    for pos, byte in edits:
        b[pos % len(b)] = byte
    if cut:
        del b[-cut:]
    if fix_size and len(b) >= 4:
        b[2:4] = len(b).to_bytes(2, "big")
    return bytes(b)


ipvs_sync_bytes = st.one_of(
    st.binary(max_size=400),
    st.builds(_sync_v1, st.integers(0, 255), st.lists(sync_entry, max_size=5),
              st.sampled_from([0, 0, 0, 1, -1, 5]), st.sampled_from([0, 0, 0, 1, -1, -3, 8]),
              st.sampled_from([1, 1, 1, 0, 2, 255]), st.sampled_from([0, 0, 0, 1, 0x100])),
    st.builds(_sync_v0, st.integers(0, 20), st.integers(0, 255),
              st.binary(max_size=300), st.sampled_from([0, 0, 0, 1, -1, 24])),
    st.builds(_mutate, st.sampled_from(_sync_vectors()),
              st.lists(st.tuples(st.integers(0, 500), st.integers(0, 255)), max_size=4),
              st.integers(0, 60), st.booleans()),
)


CT_ADDR = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16),
                    st.binary(max_size=20), st.sampled_from(["10.0.0.1", "::1"]))
CT_INT = st.one_of(st.integers(0, 70000), st.integers(-2, 2**33), st.booleans(), st.floats())
ct_tuple = st.one_of(st.tuples(CT_ADDR, CT_ADDR, CT_INT, CT_INT).map(list), values)
ct_wire = st.one_of(values, st.fixed_dictionaries(
    {"f": st.sampled_from([2, 10, 2, 0, 3, True]), "p": st.sampled_from([6, 17, 132, 1, 256]),
     "o": ct_tuple, "r": ct_tuple, "s": CT_INT, "t": CT_INT},
    optional={"m": CT_INT, "z": CT_INT, "x": values,
              "tcp": st.one_of(st.lists(st.integers(-1, 300), max_size=6), values)}))


def _ct_event(kind: int, flags: int, body: bytes, lie: int) -> bytes:
    return struct.pack("=IHHII", max(0, 16 + len(body) + lie), kind, flags, 0, 0) + body


ct_event_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.builds(_ct_event, st.sampled_from([0x100, 0x102, 0x101, 2, 3]),
                       st.sampled_from([0, 0x600, 0x400]),
                       st.builds(lambda fam, rest: bytes([fam, 0, 0, 0]) + rest,
                                 st.sampled_from([2, 10, 0, 7]), nlas),
                       st.sampled_from([0, 0, 0, -1, 1, -16, 4])), max_size=3).map(b"".join))


# -- the decoders -------------------------------------------------------------------------

def _decoders(tmp: Path) -> dict[str, tuple[Any, Callable[[Any], Any]]]:
    from clusterbus.bus import codec
    from clusterbus.config import load_config
    from clusterbus.netlink import message
    from clusterbus.plugins.connsync import codec as connsync
    from clusterbus.plugins.connsync.conntrack import Conntrack, CtEntry
    from clusterbus.plugins.ipvs import codec as ipvs
    from clusterbus.sources.keepalived import parse_line
    from clusterbus.sources.sigcluster import decode_payload
    from clusterbus.vrrp.packet import Advertisement, split_ipv4_frame

    config_file = tmp / "fuzz.toml"

    def config(text: str) -> Any:
        config_file.write_text(text, encoding="utf-8", errors="surrogateescape")
        return load_config(config_file, host_checks=False)

    def ipvs_sync(data: bytes) -> Any:
        msg = connsync.decode(data)
        again = connsync.encode(msg)
        if again != data:  # decode accepts only what encode writes: anything else is a bug
            raise AssertionError(f"re-encoded {again.hex()} differs")
        return msg

    conntrack = Conntrack()

    def ct_entry(obj: Any) -> Any:
        entry = CtEntry.from_wire(obj)
        if CtEntry.from_wire(entry.to_wire()) != entry:
            raise AssertionError("a decoded conntrack entry does not round-trip")
        return entry

    def vrrp(data: bytes) -> Any:
        return Advertisement.from_bytes(data, src="10.0.0.1", dst="224.0.0.18")

    def vrrp6(data: bytes) -> Any:
        return Advertisement.from_bytes(data, src="fe80::1", dst="ff02::12")

    return {
        "vrrp.advertisement": (vrrp_bytes, vrrp),
        "vrrp.advertisement6": (vrrp_bytes, vrrp6),
        "vrrp.ipv4_frame": (ipv4_frame, split_ipv4_frame),
        "netlink.decode": (netlink_bytes, message.decode),
        "netlink.decode_reports": (netlink_bytes, message.decode_reports),
        "ipvs.decode_service": (nlas, lambda b: ipvs.decode_service(memoryview(b))),
        "ipvs.decode_dest": (nlas, lambda b: (ipvs.decode_dest(memoryview(b), 2),
                                              ipvs.decode_dest(memoryview(b), 10))),
        "ipvs.decode_daemon": (nlas, lambda b: ipvs.decode_daemon(memoryview(b))),
        "bus.decode": (frames, codec.decode),
        "bus.decode_batch_epoch": (frames, codec.decode_batch_epoch),
        "bus.decode_heartbeat": (frames, codec.decode_heartbeat),
        "bus.decode_ingest": (frames, codec.decode_ingest),
        "bus.decode_request": (frames, codec.decode_request),
        "bus.decode_reply": (frames, codec.decode_reply),
        "keepalived.parse_line": (keepalived_line, parse_line),
        "sigcluster.decode_payload": (st.integers(min_value=-2**40, max_value=2**40),
                                      decode_payload),
        "config.load": (toml_text, config),
        "connsync.ipvs_sync": (ipvs_sync_bytes, ipvs_sync),
        "connsync.ct_entry": (ct_wire, ct_entry),
        "connsync.ct_events": (ct_event_bytes, conntrack.parse_events),
    }


def fuzz(name: str, strategy: Any, fn: Callable[[Any], Any], seconds: float) -> dict[str, Any]:
    """Run ``fn`` on examples of ``strategy`` for ``seconds``; count what escapes."""
    result: dict[str, Any] = {"examples": 0, "typed_errors": 0, "crashes": 0,
                              "first_crash": None, "crash_kinds": {}}
    deadline = time.monotonic() + seconds

    class Enough(Exception):
        pass

    @settings(max_examples=10**9, deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(data: Any) -> None:
        if time.monotonic() > deadline:
            raise Enough
        result["examples"] += 1
        try:
            fn(data)
        except ClusterbusError:
            result["typed_errors"] += 1
        except Exception as exc:  # the finding: an untyped error escaped
            result["crashes"] += 1
            kind = f"{type(exc).__name__}: {str(exc)[:80]}"
            result["crash_kinds"][kind] = result["crash_kinds"].get(kind, 0) + 1
            if result["first_crash"] is None:
                result["first_crash"] = {
                    "input": repr(data)[:400], "error": kind,
                    "where": traceback.format_exc().strip().splitlines()[-3].strip()}

    while time.monotonic() < deadline:
        try:
            run()
        except Enough:
            break
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600.0, help="per decoder (600)")
    p.add_argument("--only", action="append", default=[], help="fuzz only this decoder")
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cbfuzz.") as tmp:
        decoders = _decoders(Path(tmp))
        unknown = set(args.only) - set(decoders)
        if unknown:
            p.error(f"unknown decoder(s) {sorted(unknown)}; known: {sorted(decoders)}")
        out: dict[str, Any] = {"seconds": args.seconds, "decoders": {}}
        for name, (strategy, fn) in decoders.items():
            if args.only and name not in args.only:
                continue
            r = fuzz(name, strategy, fn, args.seconds)
            out["decoders"][name] = r
            print(f"{name:28} {r['examples']:9d} examples {r['typed_errors']:9d} typed errors "
                  f"{r['crashes']:6d} crashes", file=sys.stderr if args.json else sys.stdout)
            for kind, n in r["crash_kinds"].items():
                print(f"    {n} x {kind}", file=sys.stderr if args.json else sys.stdout)
    out["examples"] = sum(r["examples"] for r in out["decoders"].values())
    out["crashes"] = sum(r["crashes"] for r in out["decoders"].values())
    if args.json:
        print(json.dumps(out))
    return 1 if out["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
