"""The Prometheus endpoint of a real ``clusterbus run``, scraped over loopback.

The daemon gets its events through its real ZeroMQ ingest (``clusterbus emit --via zmq``),
its plugins are the installed ones (node map, ipvs, the example plugin); every scrape is
parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import urllib.request

import pytest
from cbdaemon import CLUSTERBUS, Daemon
from prometheus_client.parser import text_string_to_metric_families

from clusterbus.bus.client import emit

EXTRA = '[netlink]\nenabled = false\n\n[metrics]\nlisten = "{listen}"\n'


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def L(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
def test_scrape_a_running_daemon_counters_move_with_events(tmp_path, listen):
    if listen.startswith("[") and not socket.has_ipv6:
        pytest.skip("no IPv6")
    d = Daemon(tmp_path, None, extra=EXTRA.format(listen=listen)).start()
    try:
        bound = d.status()["services"]["metrics"]["bound"]
        assert bound.rsplit(":", 1)[1] != "0"
        url = f"http://{bound}/metrics"
        before = scrape(url)
        assert before[("clusterbus_loop_responsive", ())] == 1
        info = [dict(labels) for name, labels in before if name == "clusterbus_info"]
        assert len(info) == 1 and info[0]["node"] == "7" and info[0]["version"]
        assert before.get(("clusterbus_events_total", L(topic="node.up")), 0) == 0
        published = before[("clusterbus_bus_published_total", ())]

        # the first through the CLI, as an operator would; the others from here (quicker)
        d.cli("emit", "node-up", "3", "--via", "zmq")
        for topic, node in (("node.up", 4), ("node.down", 3)):
            asyncio.run(emit(d.ingest, topic, node, (), 0))
        deadline = time.monotonic() + 20
        while True:  # the ingest is asynchronous: bounded wait for the third event
            after = scrape(url)
            if after.get(("clusterbus_events_total", L(topic="node.down")), 0) == 1:
                break
            assert time.monotonic() < deadline, "events never reached the metrics"
            time.sleep(0.1)

        assert after[("clusterbus_events_total", L(topic="node.up"))] == 2
        assert after[("clusterbus_bus_published_total", ())] == published + 3
        assert after[("clusterbus_bus_ingest_accepted_total", ())] >= 3
        assert after[("clusterbus_nodes", L(state="up"))] == 1
        assert after[("clusterbus_nodes", L(state="down"))] == 1
        assert after[("clusterbus_view_id", ())] == 3
        hook = ("clusterbus_hook_duration_seconds_count",
                L(plugin="nodemap", hook="clusterbus_node_up"))
        assert after[hook] == before.get(hook, 0) + 2
        assert after[("clusterbus_plugin_failures_total", L(plugin="nodemap"))] == 0
        assert after[("clusterbus_metrics_scrapes_total", ())] > before[
            ("clusterbus_metrics_scrapes_total", ())]
        assert after[("process_resident_memory_bytes", ())] > 0
        assert all(name.startswith(("clusterbus_", "process_")) for name, _ in after)
    finally:
        assert d.stop() == 0


def test_a_metrics_address_in_use_stops_start_up_with_one_clear_line(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    d = Daemon(tmp_path, None, extra=EXTRA.format(listen=f"127.0.0.1:{port}"))
    try:
        p = subprocess.run([CLUSTERBUS, "run", "-c", str(d.config)], capture_output=True,
                           text=True, timeout=60)
    finally:
        taken.close()
    assert p.returncode == 1, p.stderr
    errors = [line for line in p.stderr.splitlines() if " ERROR " in line]
    assert errors and "metrics" in errors[0] and "in use" in errors[0], p.stderr
