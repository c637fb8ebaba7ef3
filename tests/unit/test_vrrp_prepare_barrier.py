"""The takeover barrier on the daemon's side of the PrepareMaster crossing: an
implementation of ``clusterbus_vrrp_prepare_master`` may return an awaitable; every one is
awaited, together, within the router's remaining wait, and the answer crosses back once
(no sockets: the speaker is not started)."""

from __future__ import annotations

import asyncio
import time
import tomllib
from typing import Any

import clusterbus
from clusterbus.config import parse_config
from clusterbus.engine import Engine
from clusterbus.pluginhost import PluginHost
from clusterbus.vrrp.speaker import VrrpSpeaker

CONF = """
[[vrrp.instance]]
name = "VI_1"
interface = "lo"
vrid = 51
virtual_ipaddress = ["10.79.0.100/24"]
"""


class Waits:
    """A plugin whose barrier takes ``delay`` seconds, then answers ``answer``."""

    def __init__(self, delay: float, answer: str | None = None, fail: bool = False) -> None:
        self.delay, self.answer, self.fail = delay, answer, fail
        self.finished = False
        self.cancelled = False

    @clusterbus.hookimpl
    def clusterbus_vrrp_prepare_master(self, instance: str, vrid: int) -> Any:
        async def barrier() -> str | None:
            try:
                await asyncio.sleep(self.delay)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
            if self.fail:
                raise RuntimeError("boom")
            self.finished = True
            return self.answer
        return barrier()


class Plain:
    def __init__(self, answer: str | None) -> None:
        self.answer = answer

    @clusterbus.hookimpl
    def clusterbus_vrrp_prepare_master(self, instance: str) -> str | None:
        return self.answer


def ask(plugins: dict[str, object], timeout: float) -> tuple[list[tuple[Any, ...]], float,
                                                             Engine]:
    host = PluginHost()
    for name, p in plugins.items():
        host.register(p, name)
    engine = Engine(origin=1, plugins=host)
    sp = VrrpSpeaker(engine, parse_config(tomllib.loads(CONF), file="t.toml"))
    answers: list[tuple[Any, ...]] = []

    async def main() -> float:
        done = asyncio.Event()

        def to_speaker(fn: Any, *args: Any) -> None:
            answers.append((fn.__name__, *args))
            done.set()

        sp._to_speaker = to_speaker  # type: ignore[method-assign]
        start = time.monotonic()
        sp._call_prepare("VI_1", 51, 7, timeout)
        await asyncio.wait_for(done.wait(), 10)
        took = time.monotonic() - start
        await asyncio.sleep(0.05)  # a second answer would show up here
        return took

    took = asyncio.run(main())
    return answers, took, engine


def test_an_awaiting_plugin_is_awaited_before_the_answer() -> None:
    w = Waits(0.1)
    answers, took, _ = ask({"w": w}, timeout=2.0)
    assert answers == [("_answered", "VI_1", 7, None)]
    assert w.finished and took >= 0.1


def test_an_awaited_veto_vetoes() -> None:
    answers, _, _ = ask({"w": Waits(0.01, "not committed"), "p": Plain(None)}, timeout=2.0)
    assert answers == [("_answered", "VI_1", 7, "w: not committed")]


def test_a_plain_veto_still_wins_while_barriers_run() -> None:
    w = Waits(0.05)
    answers, _, _ = ask({"w": w, "p": Plain("maintenance")}, timeout=2.0)
    assert answers == [("_answered", "VI_1", 7, "p: maintenance")]
    assert w.finished  # every barrier was awaited, each isolated


def test_a_barrier_past_the_deadline_is_cancelled_and_means_no_veto() -> None:
    w = Waits(5.0, "too late")
    answers, took, engine = ask({"w": w}, timeout=0.2)
    assert answers == [("_answered", "VI_1", 7, None)]
    assert took < 5.0 and not w.finished and w.cancelled
    assert engine.plugins.hook_stats()["w"]["late"] == 1  # seen in `clusterbus status`
    assert engine.plugins.failures["w"] == 0


def test_a_failing_barrier_is_counted_and_means_no_veto() -> None:
    answers, _, engine = ask({"w": Waits(0.0, fail=True)}, timeout=1.0)
    assert answers == [("_answered", "VI_1", 7, None)]
    assert engine.plugins.failures["w"] == 1


def test_without_awaitables_the_answer_is_immediate() -> None:
    answers, _, _ = ask({"p": Plain("no")}, timeout=1.0)
    assert answers == [("_answered", "VI_1", 7, "p: no")]


def test_prepare_timeout_sets_the_routers_wait() -> None:
    """``prepare_timeout`` is the router's wait for the answer; 0 leaves it at one
    advert_interval (None in the router's configuration)."""
    from clusterbus.vrrp import config as vconf

    for extra, want in (("", None), ("prepare_timeout = 1.5\n", 1.5)):
        cfg = parse_config(tomllib.loads(CONF + extra), file="t.toml")
        sp = VrrpSpeaker(Engine(origin=1, plugins=PluginHost()), cfg)
        (inst,) = vconf.instances(cfg)
        rc = sp._router_config(inst, "127.0.0.1", True)
        assert rc.prepare_timeout == want and rc.ask_prepare
