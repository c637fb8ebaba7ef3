"""clusterbus.metrics: a status dict -> Prometheus families, exposed and parsed back."""

from __future__ import annotations

import asyncio
import re
import threading

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clusterbus.metrics import StatusCollector, families_from_status, parse_listen

STATUS = {
    "node": 4, "pid": 1, "uptime": 10.0, "view": 7, "seq": 42,
    "ignored": {"duplicate": 3, "stale_incarnation": 0},
    "services": {
        "bus": {"counters": {"published": 42, "ingest.dropped.bad_frame": 2,
                             "request.dropped.status_failed": 1, "requests.status": 5},
                "publisher": {"sent_seq": 42, "send_hwm": 10, "send_hwm_messages": 1,
                              "subscriptions": {"": 2, "node.": 1},
                              "ring": {"size": 42, "capacity": 100, "breaks": 0}}},
        "netlink": {"enabled": True, "listening": True,
                    "counters": {"dropped.short_packet": 6, "datagrams": 9}},
        "keepalived": {"enabled": True, "open": False, "counters": {},
                       "instances": [{"type": "INSTANCE", "name": "VI_K", "state": "BACKUP",
                                      "priority": 90}]},
        "vrrp": {"counters": {"dropped_bad_ttl": 1, "sent": 100},
                 "instances": [{"name": "VI_1", "state": "MASTER", "priority": 150,
                                "advert_interval": 0.05, "master_down_interval": 0.19,
                                "holding": ["10.0.0.1/24"], "dropped": {"bad_auth": 2},
                                "address_mismatch": 1, "vetoes": 0}]},
    },
    "plugins": [{"name": "ipvs", "hooks": ["x"], "failures": 2, "distribution": "d"}],
    "plugin_status": {"ipvs": {"counters": {"reconciles": 3, "kernel_failures": 0},
                               "last": {"duration": 0.25}, "services": 5, "stale": 0}},
}


def L(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _scrape(families) -> dict[str, dict]:
    """Expose through a real registry, parse back: name -> {labels tuple: value}."""

    class Fixed:
        def collect(self):
            return families

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Fixed())
    text = generate_latest(reg).decode()
    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_every_counter_of_the_status_is_a_metric_with_labels_not_names():
    m = _scrape(families_from_status(STATUS, now=1000.0))
    (labels, value), = m["clusterbus_info"].items()
    assert dict(labels)["node"] == "4" and dict(labels)["version"] and value == 1
    assert m["clusterbus_start_time_seconds"][()] == 990.0
    assert m["clusterbus_view_id"][()] == 7 and m["clusterbus_last_seq"][()] == 42
    assert m["clusterbus_membership_reports_ignored_total"][L(reason="duplicate")] == 3
    assert m["clusterbus_plugin_failures_total"][L(plugin="ipvs")] == 2
    assert m["clusterbus_bus_published_total"][()] == 42
    assert m["clusterbus_bus_requests_status_total"][()] == 5
    drops = m["clusterbus_dropped_total"]
    assert drops[L(reason="bad_frame", service="bus", stage="ingest")] == 2
    assert drops[L(reason="status_failed", service="bus", stage="request")] == 1
    assert drops[L(reason="short_packet", service="netlink", stage="")] == 6
    assert drops[L(reason="bad_ttl", service="vrrp", stage="")] == 1
    assert m["clusterbus_vrrp_adverts_dropped_total"][L(vrrp_instance="VI_1",
                                                        reason="bad_auth")] == 2
    assert m["clusterbus_netlink_datagrams_total"][()] == 9
    assert m["clusterbus_source_open"] == {L(service="keepalived"): 0.0,
                                           L(service="netlink"): 1.0}
    assert m["clusterbus_bus_subscriptions"][()] == 3
    assert m["clusterbus_bus_replay_ring_events"][()] == 42
    state = m["clusterbus_vrrp_state"]
    assert state[L(vrrp_instance="VI_1", source="speaker", state="MASTER")] == 1
    assert state[L(vrrp_instance="VI_1", source="speaker", state="BACKUP")] == 0
    assert state[L(vrrp_instance="VI_K", source="keepalived", state="BACKUP")] == 1
    assert m["clusterbus_vrrp_priority"][L(vrrp_instance="VI_1", source="speaker")] == 150
    assert m["clusterbus_vrrp_vips_held"][L(vrrp_instance="VI_1")] == 1
    assert m["clusterbus_vrrp_address_mismatch_total"][L(vrrp_instance="VI_1")] == 1
    assert m["clusterbus_vrrp_advert_interval_seconds"][L(vrrp_instance="VI_1")] == 0.05
    assert m["clusterbus_ipvs_reconciles_total"][()] == 3
    assert m["clusterbus_ipvs_last_apply_duration_seconds"][()] == 0.25
    assert m["clusterbus_ipvs_services"][()] == 5


def test_names_follow_prometheus_conventions():
    m = _scrape(families_from_status(STATUS))
    for name in m:
        assert re.fullmatch(r"clusterbus_[a-z0-9_]+", name), name
        assert "__" not in name and not name.endswith("_"), name


def test_odd_status_values_are_skipped_not_fatal():
    odd = {"node": 1, "services": {"x": {"counters": {"ok": 1, "text": "no", "flag": True,
                                                       "weird key!": 2}},
                                   "y": "not a dict"},
           "plugins": ["nope", {"name": "p", "failures": None}], "plugin_status": {"p": 3}}
    m = _scrape(families_from_status(odd))
    assert m["clusterbus_x_ok_total"][()] == 1
    assert m["clusterbus_x_weird_key_total"][()] == 2
    assert not any(n.startswith(("clusterbus_x_text", "clusterbus_x_flag")) for n in m)


def test_listen_is_parsed():
    assert parse_listen("127.0.0.1:9661") == ("127.0.0.1", 9661)
    assert parse_listen("[::1]:0") == ("::1", 0)


def test_collector_reads_on_the_loop_and_reports_a_stuck_loop():
    loop = asyncio.new_event_loop()
    seen: list[tuple[int, float]] = []

    def build(lag):
        seen.append((threading.get_ident(), lag))
        return families_from_status({"node": 1, "view": 2})

    collector = StatusCollector(build, timeout=0.2)
    collector.loop = loop
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        names = [f.name for f in collector.collect()]
        assert "clusterbus_view_id" in names
        assert seen and seen[0][0] == thread.ident and seen[0][1] >= 0
        # a loop that does not turn: the scrape answers instead of hanging
        release = threading.Event()
        loop.call_soon_threadsafe(release.wait, 10)
        stuck = list(collector.collect())
        release.set()
        assert [f.name for f in stuck] == ["clusterbus_loop_responsive"]
        assert stuck[0].samples[0].value == 0 and collector.timeouts == 1
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_every_metric_docs_operations_names_is_produced():
    """docs/operations.md stays true: each metric named in it exists."""
    from pathlib import Path

    from clusterbus.config import parse_config
    from clusterbus.daemon import Daemon

    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    table = doc.split("### What is exported", 1)[1].split("**Every other counter", 1)[0]
    documented = set(re.findall(r"`(clusterbus_[a-z0-9_]+)`", table))
    cfg = parse_config({"netlink": {"enabled": False}, "bus": {"enabled": False},
                        "metrics": {"listen": "127.0.0.1:0"}}, file="t.toml")
    d = Daemon(cfg, load_entrypoints=False)
    d.setup()
    service = d.services["metrics"]
    try:
        from clusterbus.events import IpvsApplied, VrrpTransition

        d.engine.publish(VrrpTransition, instance="VI_1", vrid=1, family="inet",
                         interface="eth0", old="BACKUP", new="MASTER", priority=100,
                         reason="test", source="speaker")
        d.engine.publish(IpvsApplied, added=1, removed=0, changed=0, duration=0.1,
                         reason="test")
        d.plugins.call_each("clusterbus_startup", cluster=d.engine.cluster)
        service.observe_hook("p", "clusterbus_event", 0.001)
        families = (families_from_status(STATUS) + families_from_status(d.status())
                    + service._families(0.0))
        names = {s.name for f in families for s in f.samples}
        names |= {s.name for m in service.registry.collect() if m.name != "clusterbus"
                  for s in m.samples if not m.name.startswith("clusterbus_loop")}
        names |= {n.removesuffix("_bucket").removesuffix("_count") for n in set(names)}
    finally:
        service.close()
    missing = sorted(n for n in documented
                     if n not in names and f"{n}_total" not in names and n != "clusterbus_info")
    assert not missing, f"documented but never produced: {missing}"


def test_a_generated_name_that_clashes_is_left_out_not_fatal(caplog):
    # service "vrrp" counter "priority" would be a counter beside the priority gauge: fine;
    # a counter named like an explicit labelled counter is left out, the scrape still works
    st = {"node": 1, "services": {"vrrp": {
        "counters": {"vetoes": 5},
        "instances": [{"name": "VI_1", "state": "MASTER", "vetoes": 2}]}}}
    m = _scrape(families_from_status(st))
    assert m["clusterbus_vrrp_vetoes_total"] == {L(vrrp_instance="VI_1"): 2}
    assert "clashes" in caplog.text
