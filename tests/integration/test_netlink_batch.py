"""Several clusterbus messages per netlink datagram (Sender.send_many, cb-emit with
several messages) through real NETLINK_USERSOCK multicast into NetlinkSource, in a
namespace made by the test."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import Topology, run

pytestmark = pytest.mark.root

PYTHON = sys.executable
EMITTER_SRC = Path(__file__).resolve().parents[2] / "contrib" / "netlink-emitter"

# Sends with Sender.send_many and reads with the source's own socket in one process:
# every datagram goes through NetlinkSource.handle_datagram, as on the daemon's loop.
SCRIPT = r'''
import json, select, subprocess, sys
from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.netlink.sender import Sender
from clusterbus.pluginhost import PluginHost
from clusterbus.sources.netlink import NetlinkSource, RECV_SIZE, _CMSG_SPACE

spec = json.loads(sys.argv[1])
engine = Engine(origin=1, plugins=PluginHost(), clock=lambda: 1000.0)
events, sizes = [], []
engine.sinks.append(events.append)
source = NetlinkSource(engine, parse_config({"netlink": {"group": 9}}, file="<test>"))
sock = source.open()
if "command" in spec:  # a C sender, e.g. cb-emit with several messages
    subprocess.run(spec["command"], check=True, timeout=10)
    sent = 1
else:
    with Sender(9) as sender:
        sent = sender.send_many([tuple(m) for m in spec["messages"]],
                                max_bytes=spec["max_bytes"])
for _ in range(sent):
    if not select.select([sock], [], [], 10)[0]:
        break
    data, anc, flags, _ = sock.recvmsg(RECV_SIZE, _CMSG_SPACE)
    sizes.append(len(data))
    source.handle_datagram(data, anc, flags)
print(json.dumps({"sent": sent, "sizes": sizes, "counters": source.counters,
                  "events": [[e.topic, e.seq, e.node, list(e.addrs)] for e in events]}))
'''


@pytest.fixture
def ns() -> Iterator[str]:
    with Topology() as topo:
        yield topo.netns("nlb")


def batch(ns: str, messages: list[list[object]] | None = None, max_bytes: int = 4096,
          command: list[str] | None = None) -> dict[str, object]:
    spec: dict[str, object] = {"messages": messages or [], "max_bytes": max_bytes}
    if command:
        spec["command"] = command
    p = run([*Topology.prefix(ns), PYTHON, "-c", SCRIPT, json.dumps(spec)], cwd="/")
    out: dict[str, object] = json.loads(p.stdout)
    return out


def test_send_many_packs_datagrams_within_the_bound_and_every_message_arrives(ns: str):
    msgs: list[list[object]] = [["up", n, [f"10.77.0.{n}"], 1] for n in range(1, 101)]
    msgs += [["down", n, [], 0] for n in range(1, 101)]
    out = batch(ns, msgs, 1000)
    sizes = out["sizes"]
    assert isinstance(sizes, list)
    # 44-byte up messages (22 per 1000-byte datagram), then 36-byte downs
    assert out["sent"] == len(sizes) and all(s <= 1000 for s in sizes) and len(sizes) > 1
    events = out["events"]
    assert isinstance(events, list)
    assert [e[1] for e in events] == list(range(1, 201))  # continuous seq
    assert [e[:1] + e[2:] for e in events[:2]] == [["node.up", 1, ["10.77.0.1"]],
                                                    ["node.up", 2, ["10.77.0.2"]]]
    assert events[100][0] == "node.down" and events[100][2] == 1
    c = out["counters"]
    assert isinstance(c, dict)
    assert c["datagrams"] == len(sizes) and c["messages"] == c["changes"] == 200


def test_a_duplicate_inside_a_datagram_makes_no_event(ns: str):
    out = batch(ns, [["up", 3, ["10.77.0.3"], 1], ["up", 3, ["10.77.0.3"], 1],
                     ["down", 3, [], 1]], 4096)
    assert out["sent"] == 1
    assert [e[:2] for e in out["events"]] == [["node.up", 1], ["node.down", 2]]  # type: ignore[union-attr]
    c = out["counters"]
    assert c["messages"] == 3 and c["changes"] == 2  # type: ignore[index]


def test_send_many_refuses_bad_input_before_sending_anything():
    # Nothing is sent, so the host namespace's socket never carries a message.
    from clusterbus.errors import LocalProtocolError
    from clusterbus.netlink.sender import Sender

    with Sender(9) as sender:
        with pytest.raises(LocalProtocolError):
            sender.send_many([("up", 1, (), 0), ("up", 2**32, (), 0)])
        with pytest.raises(LocalProtocolError):
            sender.send_many([("sideways", 1, (), 0)])
        with pytest.raises(LocalProtocolError):
            sender.send_encoded([b"\0" * 36], max_bytes=35)
        assert sender.sent == 0


def test_cb_emit_sends_several_messages_in_one_datagram(ns: str, tmp_path: Path):
    run(["make", "-s", "-C", str(EMITTER_SRC), f"O={tmp_path}", "CC=gcc",
         "CFLAGS=-O2 -Wall -Wextra -Werror -std=gnu11"])
    out = batch(ns, command=[str(tmp_path / "cb-emit"), "-g", "9",
                             "up", "5", "10.77.0.5", "fd00:77::5", "-i", "3", "--",
                             "comingup", "6", "--", "down", "5"])
    assert out["sizes"] == [64 + 36 + 36]  # one datagram, three messages
    got = [e[:3] for e in out["events"]]  # type: ignore[union-attr]
    assert got == [["node.up", 1, 5], ["node.coming_up", 2, 6], ["node.down", 3, 5]]
    assert out["events"][0][3] == ["10.77.0.5", "fd00:77::5"]  # type: ignore[index]
    c = out["counters"]
    assert c["datagrams"] == 1 and c["messages"] == 3  # type: ignore[index]
    bad = run([*Topology.prefix(ns), str(tmp_path / "cb-emit"), "up", "5", "--", "up"],
              check=False)
    assert bad.returncode == 2  # an incomplete second message: nothing is sent
