"""The signal source with real signals: sigqueue -> signalfd -> engine, in this process."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterbus import Engine, PluginHost
from clusterbus.config import parse_config
from clusterbus.errors import ConfigError, DecodeError
from clusterbus.sources import sigcluster as sc
from clusterbus.view import NodeState

SIG = "SIGRTMIN+5"


@given(st.sampled_from(list(NodeState)), st.integers(1, sc.NODE_MASK))
def test_payload_round_trip(state, node):
    assert sc.decode_payload(sc.encode_payload(state, node)) == (state, node)


def test_bad_payload_and_signal_names():
    with pytest.raises(DecodeError):
        sc.decode_payload(0x7000_0001)
    with pytest.raises(ValueError):
        sc.encode_payload(NodeState.UP, 1 << 28)
    assert sc.parse_signal("SIGRTMIN+2") == signal.SIGRTMIN + 2
    assert sc.parse_signal("sigusr1") == signal.SIGUSR1
    for bad in ("SIGKILL", "SIGNOPE", "SIGRTMIN-1", 0):
        with pytest.raises(ValueError):
            sc.parse_signal(bad)
    with pytest.raises(ConfigError) as info:
        parse_config({"sigcluster": {"signal": "SIGSTOP"}}, file="s.toml")
    assert info.value.key == "sigcluster.signal"


async def _run(source, actions, want_signals):
    task = asyncio.create_task(source.run())
    try:
        await asyncio.sleep(0)
        for act in actions:
            act()
        async with asyncio.timeout(10):
            while source.counters["signals"] < want_signals:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.fixture(autouse=True)
def restore_signal_mask():
    """The source blocks its signal in this process; give pytest its mask back."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, before)


def make(allowed=(0,)):
    cfg = parse_config({"sigcluster": {"enabled": True, "signal": SIG,
                                       "allowed_uids": list(allowed)}}, file="t.toml")
    engine = Engine(origin=1, plugins=PluginHost())
    seen = []
    engine.sinks.append(seen.append)
    return sc.SigclusterSource(engine, cfg), engine, seen


def in_a_fresh_process(case) -> None:
    """Run ``case`` in a new process. A process-directed signal goes to any thread that does
    not block it, and earlier tests leave threads in this process (ZeroMQ, executors) that
    the source's mask, set now, does not cover: one of them would die of the signal."""
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=case)
    child.start()
    child.join(60)
    if child.exitcode is None:
        child.kill()
        child.join(10)
    assert child.exitcode == 0, f"{case.__name__} failed in its process (see its stderr)"


@pytest.mark.root
def test_queued_signals_become_membership_events_in_order():
    in_a_fresh_process(_case_events_in_order)


@pytest.mark.root
def test_sender_uid_must_be_allowed():
    in_a_fresh_process(_case_sender_uid)


def _case_events_in_order():
    source, engine, seen = make()
    signo, me = source.signo, os.getpid()
    acts = [lambda s=s, n=n: sc.sigqueue(me, signo, sc.encode_payload(s, n))
            for s, n in [(NodeState.UP, 3), (NodeState.UP, 4), (NodeState.DOWN, 3),
                         (NodeState.DOWN, 3)]]
    acts.append(lambda: os.kill(me, signo))  # no payload: dropped
    acts.append(lambda: sc.sigqueue(me, signo, 0x7000_0000))  # bad command: dropped
    asyncio.run(_run(source, acts, 6))
    assert [(e.topic, e.node, e.seq) for e in seen] == [
        ("node.up", 3, 1), ("node.up", 4, 2), ("node.down", 3, 3)]
    assert seen[0].reason == "sigcluster"
    c = source.counters
    assert (c["reported"], c["changes"], c["no_payload"], c["malformed"]) == (4, 3, 1, 1)


def _case_sender_uid():
    source, engine, seen = make(allowed=(65534,))
    me = os.getpid()
    asyncio.run(_run(source, [lambda: sc.sigqueue(me, source.signo,
                                                  sc.encode_payload(NodeState.DOWN, 1))], 1))
    assert seen == [] and source.counters["unauthorised_sender"] == 1
    assert engine.view.view_id == 0
