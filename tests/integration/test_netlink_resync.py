"""Overrun recovery end to end: a real flood overruns the source's receive buffer
(SO_RCVBUF 64 KiB, receiver stopped while the emitter floods), the source asks for a dump,
the emitter that keeps state (the Python sender, then cb-emit -d) answers with its table,
and the view ends right, with a ``membership.resync`` event. The events before the resync
show that without it the view would have stayed wrong.

Uses the receiver and namespace helpers of test_netlink_source.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
from netns import Topology
from test_netlink_source import PYTHON, Receiver, cb_emit, ns, receiver_script  # noqa: F401

pytestmark = pytest.mark.root

FIRST = range(1, 201)  # up with an address, then down during the flood
FLOOD = range(1000, 4000)  # up during the flood

STATEFUL = r'''
import json, select, sys
from clusterbus.netlink.sender import Sender
spec = json.loads(sys.argv[1])
with Sender(spec["group"], keep_state=True) as s:
    s.send_many([("up", n, [f"10.9.{n >> 8}.{n & 255}"], 1) for n in spec["first"]])
    print("phase1", flush=True)
    sys.stdin.readline()
    for n in spec["first"]:
        s.send("down", n, (), 1)
    for n in spec["flood"]:
        s.send("up", n, (), 1)
    print("phase2", flush=True)
    for _ in range(600):  # bounded: at most about two minutes of answering
        if select.select([sys.stdin], [], [], 0)[0]:
            break
        if s.answer_dumps(timeout=0.2):
            print("answered", flush=True)
'''


def truth() -> dict[int, str]:
    return {**{n: "down" for n in FIRST}, **{n: "up" for n in FLOOD}}


def view_from(events: list[dict]) -> dict[int, str]:
    """The states the membership events give, in order (what a subscriber would hold)."""
    states: dict[int, str] = {}
    for e in events:
        if e["event"].startswith("node."):
            states[e["node"]] = e["event"][len("node."):]
    return states


def settled(r: Receiver, first_overran: bool | None = None) -> dict:
    """Wait (bounded) until the first phase is over: every FIRST node up and no dump
    request due or unanswered. On a loaded machine the 200 first reports can overrun the
    buffer too (157 datagrams fit), and their resync comes when it comes: without this
    wait, check_recovered took that resync (43 changes) for the flood's (3200 nodes lost).
    Everything the receiver printed so far is read then (the status line comes after),
    so the next ``membership.resync`` read is the flood's.

    :param first_overran: assert whether the first phase overran (None: either way).
    """
    want = {n: "up" for n in FIRST}
    for _ in range(300):
        st = r.status()
        nodes = {n["node"]: n["state"] for n in st["snapshot"]["nodes"]}
        if nodes == want and not st["status"]["resync_pending"]:
            break
        time.sleep(0.1)
    assert nodes == want and not st["status"]["resync_pending"], st["status"]
    counters = st["status"]["counters"]
    if first_overran is not None:
        assert (counters["overrun"] > 0) == first_overran, counters
    if counters["overrun"]:
        assert counters["resync.done"] >= 1, counters
    return st


def check_recovered(r: Receiver) -> None:
    """The flood overran the buffer and the resync after it made the view right (call
    after :func:`settled`)."""
    resync = r.expect(lambda m: m.get("event") == "membership.resync", timeout=60)
    # the resync's own repairs are the `changed` events right before it
    before = r.events[:r.events.index(resync) - resync["changed"]]
    lost = {n for n, s in truth().items() if view_from(before).get(n) != s}
    # the flood did overrun: without the resync, the view would stay wrong for these
    assert lost, "the flood did not overrun: nothing to recover"
    # the emitter may still be sending when the first resync is done (a loaded machine),
    # and what it sends then may overrun the socket again: a later resync repairs that.
    # Wait (bounded) for the view to settle, then it must be the truth.
    for _ in range(100):
        st = r.status()
        nodes = {n["node"]: n["state"] for n in st["snapshot"]["nodes"]}
        if nodes == truth():
            break
        time.sleep(0.1)
    assert st["status"]["counters"]["overrun"] >= 1
    assert st["status"]["counters"]["resync.requests"] >= 1
    assert st["status"]["counters"]["resync.done"] >= 1
    assert nodes == truth()
    # and a subscriber following the events (resync included) holds the same view
    assert {n: s for n, s in view_from(r.events).items()} == truth()
    assert resync["source"] == "netlink" and resync["changed"] >= len(lost)
    assert resync["reported"] == len(truth())
    seqs = [e["seq"] for e in r.events]
    assert seqs == list(range(1, len(seqs) + 1))


def test_python_sender_answers_the_dump_and_the_view_ends_right(ns: str,  # noqa: F811
                                                                receiver_script: Path) -> None:  # noqa: F811
    r = Receiver(ns, receiver_script, group=22, allowed_uids=[0], rcvbuf=65536)
    spec = {"group": 22, "first": list(FIRST), "flood": list(FLOOD)}
    sender = subprocess.Popen([*Topology.prefix(ns), PYTHON, "-c", STATEFUL, json.dumps(spec)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    assert sender.stdin and sender.stdout
    try:
        assert sender.stdout.readline().strip() == "phase1"
        r.event_for(FIRST[-1], "node.up")
        settled(r)
        os.kill(r.proc.pid, signal.SIGSTOP)  # a stopped receiver cannot drain
        try:
            sender.stdin.write("go\n")
            sender.stdin.flush()
            assert sender.stdout.readline().strip() == "phase2"
        finally:
            os.kill(r.proc.pid, signal.SIGCONT)
        check_recovered(r)
    finally:
        if sender.poll() is None:
            sender.stdin.close()
            try:
                sender.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sender.kill()
                sender.wait(timeout=10)
        r.close()


def _pending(pipe_fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(pipe_fd, termios.FIONREAD, b"\0" * 4))[0]


def _stopped_while(r: Receiver, pipe_fd: int, lines: list[str], stdin) -> None:  # noqa: ANN001
    """Write ``lines`` to cb-emit while the receiver is stopped (it cannot drain: its
    buffer overruns), until cb-emit has read and sent them."""
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        stdin.write("".join(lines).encode())
        stdin.flush()
        for _ in range(300):  # until cb-emit has read every line (bounded)
            if _pending(pipe_fd) == 0:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # the last chunk read is being sent
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)


@pytest.mark.parametrize("first_overruns", [False, True], ids=["first-fits", "first-overruns"])
def test_c_emitter_keeping_state_answers_the_dump(ns: str, receiver_script: Path,  # noqa: F811
                                                  cb_emit: Path,  # noqa: F811
                                                  first_overruns: bool) -> None:
    """``first-overruns``: the first 200 reports overrun the buffer too (as a loaded machine
    made them do inside the full suite), so the second overrun comes (here, about 0.5 s)
    less than RESYNC_INTERVAL after the first dump request: it must be asked for again
    once the interval has passed, though no datagram arrives any more. That retry used to
    be lost: nodes 158..200 (the downs beyond the 157 datagrams 64 KiB hold) stayed up.
    tests/unit/test_netlink_resync_retry.py has the timing-independent case."""
    r = Receiver(ns, receiver_script, group=22, allowed_uids=[0], rcvbuf=65536)
    emitter = subprocess.Popen([*Topology.prefix(ns), str(cb_emit), "-d", "-g", "22"],
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    assert emitter.stdin
    fd = emitter.stdin.fileno()
    try:
        first = [f"up {n} 10.9.{n >> 8}.{n & 255} -i 1\n" for n in FIRST]
        if first_overruns:
            _stopped_while(r, fd, first, emitter.stdin)
        else:
            emitter.stdin.write("".join(first).encode())
            emitter.stdin.flush()
        r.event_for(FIRST[-1], "node.up")
        # first-fits may overrun too on a loaded machine (then it is like first-overruns)
        settled(r, first_overran=True if first_overruns else None)
        _stopped_while(r, fd, [f"down {n} -i 1\n" for n in FIRST]
                       + [f"up {n} -i 1\n" for n in FLOOD], emitter.stdin)
        check_recovered(r)
    finally:
        emitter.terminate()
        try:
            emitter.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emitter.kill()
            emitter.wait(timeout=10)
        r.close()
    assert emitter.returncode == 0, emitter.stderr.read() if emitter.stderr else ""
