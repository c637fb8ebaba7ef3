"""Prometheus metrics: ``[metrics] listen = "127.0.0.1:9661"`` (off when empty, the default).

What a scrape shows is read from the daemon's own ``status()`` at scrape time, so every
counter ``clusterbus status`` shows is a metric, with nothing kept twice. A few things
``status`` cannot show are measured here: hook dispatch time per plugin (a histogram fed
by :meth:`~clusterbus.pluginhost.PluginHost.set_observer`), events by topic, VRRP
transitions and IPVS apply durations (an engine sink), and the loop's lag at scrape time.

The HTTP server is prometheus_client's, in its own thread: the event loop never serves
HTTP. A scrape hands one callback to the loop (``call_soon_threadsafe``), which reads the
status and builds the metric families there (nothing is read across threads while the
loop changes it), and waits for it at most :data:`SCRAPE_TIMEOUT` seconds: a stuck loop
answers ``clusterbus_loop_responsive 0`` instead of hanging the scraper.

Naming (the names are an interface, docs/operations.md lists them): a counter named in
``status`` as ``x.dropped.reason`` (or legacy ``dropped_reason``) is one sample of
``clusterbus_dropped_total{service, stage, reason}``; any other counter of service ``svc``
is ``clusterbus_<svc>_<counter, dots as underscores>_total``; labels carry plugin,
VRRP instance (``vrrp_instance``: Prometheus keeps ``instance`` for the scraped target),
reason and topic, never the metric name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.metadata
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .events import Event, IpvsApplied, VrrpTransition
from .view import NodeState

if TYPE_CHECKING:
    from .config import Config
    from .engine import Engine

__all__ = ["MetricsService", "StatusCollector", "families_from_status", "parse_listen",
           "HOOK_BUCKETS", "SCRAPE_TIMEOUT"]

log = logging.getLogger(__name__)

#: seconds a scrape waits for the event loop before answering "not responsive"
SCRAPE_TIMEOUT = 5.0

#: hook calls take microseconds; a slow plugin shows in the upper buckets
HOOK_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025,
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: an IPVS apply: one netlink batch (milliseconds) up to a full table (seconds)
APPLY_BUCKETS = (1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0)
#: one-hot state gauges list every state, so a dashboard sees the zeros too
VRRP_STATES = ("INIT", "BACKUP", "MASTER", "FAULT")

#: metric names already warned about (a clash is logged once)
_CLASHES: set[str] = set()

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]+")


def _name(*parts: str) -> str:
    return "_".join(p for p in (_UNSAFE.sub("_", part).strip("_").lower() for part in parts)
                    if p)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:9661"`` / ``"[::1]:9661"`` -> (address, port); validated by config."""
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class _Families:
    """Metric families by name, built up sample by sample (one family per name)."""

    def __init__(self) -> None:
        self.by_name: dict[str, Metric] = {}
        self.labels: dict[str, tuple[str, ...]] = {}  #: label names by family key

    def counter(self, name: str, doc: str, value: float, labels: Mapping[str, str] = {}) -> None:
        key = f"{name}_total"  # the exposed name: a counter "x" is "x_total", beside a gauge "x"
        if key not in self.by_name:
            self.by_name[key] = CounterMetricFamily(name, doc, labels=list(labels))
        self._add(key, CounterMetricFamily, labels, value)

    def gauge(self, name: str, doc: str, value: float, labels: Mapping[str, str] = {}) -> None:
        if name not in self.by_name:
            self.by_name[name] = GaugeMetricFamily(name, doc, labels=list(labels))
        self._add(name, GaugeMetricFamily, labels, value)

    def _add(self, key: str, kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
             labels: Mapping[str, str], value: float) -> None:
        # A status counter whose generated name meets a metric of another type or labels
        # (a new counter in some service) is left out: one clash must not fail the scrape.
        fam = self.by_name[key]
        names = self.labels.setdefault(key, tuple(labels))
        if not isinstance(fam, kind) or names != tuple(labels):
            if fam.name not in _CLASHES:
                _CLASHES.add(fam.name)
                log.warning("metrics: %s clashes with another metric of that name; left out",
                            fam.name)
            return
        fam.add_metric([str(v) for v in labels.values()], value)

    def counters(self, service: str, counters: Any) -> None:
        """A ``counters`` dict of ``status``: drops by reason into ``clusterbus_dropped_total``,
        the rest one ``clusterbus_<service>_<counter>_total`` each."""
        if not isinstance(counters, Mapping):
            return
        for key, raw in sorted(counters.items()):
            value = _number(raw)
            if value is None:
                continue
            tokens = [t for t in re.split(r"[._]", str(key)) if t]
            if "dropped" in tokens:
                at = tokens.index("dropped")
                self.counter("clusterbus_dropped",
                             "Input dropped (and counted) instead of acted on, by service, "
                             "stage and reason", value,
                             {"service": service, "stage": "_".join(tokens[:at]),
                              "reason": "_".join(tokens[at + 1:]) or "unspecified"})
            else:
                self.counter(_name("clusterbus", service, str(key)),
                             f"status counter {key!r} of {service}", value)


def families_from_status(st: Mapping[str, Any], *, now: float | None = None) -> list[Metric]:
    """Every counter and gauge a daemon ``status()`` holds, as Prometheus metric families."""
    f = _Families()
    _from_status(f, st, now)
    return list(f.by_name.values())


def _from_status(f: _Families, st: Mapping[str, Any], now: float | None) -> None:
    version = _version()
    f.by_name["clusterbus"] = info = InfoMetricFamily(
        "clusterbus", "The daemon: its node number and version")
    info.add_metric([], {"node": str(st.get("node", "")), "version": version})
    uptime = _number(st.get("uptime"))
    if uptime is not None:
        f.gauge("clusterbus_start_time_seconds", "When the daemon started (UNIX time)",
                (time.time() if now is None else now) - uptime)
    for key, name, doc in (("view", "clusterbus_view_id", "Current membership view id"),
                           ("seq", "clusterbus_last_seq",
                            "Sequence number of the last event this daemon produced")):
        value = _number(st.get(key))
        if value is not None:
            f.gauge(name, doc, value)
    for reason, raw in sorted((st.get("ignored") or {}).items()):
        value = _number(raw)
        if value is not None:
            f.counter("clusterbus_membership_reports_ignored",
                      "Membership reports that changed nothing, by reason", value,
                      {"reason": reason})
    for plugin in st.get("plugins") or ():
        if not isinstance(plugin, Mapping):
            continue
        name = str(plugin.get("name", ""))
        for key, raw in sorted(plugin.items()):
            value = _number(raw)
            if value is None:
                continue
            f.counter(_name("clusterbus_plugin", key),
                      f"Per-plugin {key} (hook calls that raised, for failures)", value,
                      {"plugin": name})
    for name, svc in sorted((st.get("services") or {}).items()):
        if isinstance(svc, Mapping):
            _service(f, name, svc)
    for name, data in sorted((st.get("plugin_status") or {}).items()):
        if isinstance(data, Mapping):
            _plugin_status(f, name, data)
    loop = st.get("loop")
    if isinstance(loop, Mapping):  # the loop monitor's own figures, when the daemon has one
        for key, raw in sorted(loop.items()):
            value = _number(raw)
            if value is not None:
                f.gauge(_name("clusterbus_loop_status", key), f"loop monitor: {key}", value)


def _service(f: _Families, name: str, svc: Mapping[str, Any]) -> None:
    for key in ("listening", "open"):
        if isinstance(svc.get(key), bool) and svc.get("enabled", True) is not False:
            f.gauge("clusterbus_source_open", "1 while a source's socket/FIFO is open",
                    float(svc[key]), {"service": name})
    for key in ("peers", "subscribers"):
        value = _number(svc.get(key))
        if value is None and isinstance(svc.get(key), (list, tuple, Mapping)):
            value = float(len(svc[key]))
        if value is not None:
            f.gauge(_name("clusterbus", name, key), f"{key} of {name}", value)
    pub = svc.get("publisher")
    if isinstance(pub, Mapping):
        _publisher(f, name, pub)
    instances = svc.get("instances")
    if name == "vrrp" and isinstance(instances, (list, tuple)):
        for inst in instances:
            if isinstance(inst, Mapping):
                _vrrp_instance(f, inst)
    elif name == "keepalived" and isinstance(instances, (list, tuple)):
        for inst in instances:
            if isinstance(inst, Mapping):
                _state(f, str(inst.get("name", "")), "keepalived", str(inst.get("state", "")))
                value = _number(inst.get("priority"))
                if value is not None:
                    f.gauge("clusterbus_vrrp_priority", "Current VRRP priority", value,
                            {"vrrp_instance": str(inst.get("name", "")), "source": "keepalived"})
    f.counters(name, svc.get("counters"))  # last: the named metrics above win a clash


def _publisher(f: _Families, service: str, pub: Mapping[str, Any]) -> None:
    subs = pub.get("subscriptions")
    if isinstance(subs, Mapping):
        f.gauge("clusterbus_bus_subscriptions",
                "Live subscriptions on the PUB socket (one per subscriber and topic prefix)",
                float(sum(v for v in subs.values() if _number(v) is not None)))
    for key, value in (("sent_seq", pub.get("sent_seq")), ("send_hwm", pub.get("send_hwm")),
                       ("send_hwm_messages", pub.get("send_hwm_messages"))):
        number = _number(value)
        if number is not None:
            f.gauge(_name("clusterbus_bus", key), f"publisher {key}", number)
    ring = pub.get("ring")
    if isinstance(ring, Mapping):
        for key, name, doc in (("size", "clusterbus_bus_replay_ring_events",
                                "Events held for replay"),
                               ("capacity", "clusterbus_bus_replay_ring_capacity_events",
                                "Events the replay ring can hold")):
            number = _number(ring.get(key))
            if number is not None:
                f.gauge(name, doc, number)
        number = _number(ring.get("breaks"))
        if number is not None:
            f.counter("clusterbus_bus_replay_ring_breaks",
                      "Times the replay ring was restarted (a seq discontinuity)", number)


def _state(f: _Families, instance: str, source: str, state: str) -> None:
    for candidate in sorted({*VRRP_STATES, state} - {""}):
        f.gauge("clusterbus_vrrp_state", "1 for the VRRP state an instance is in, else 0",
                float(candidate == state),
                {"vrrp_instance": instance, "source": source, "state": candidate})


def _vrrp_instance(f: _Families, inst: Mapping[str, Any]) -> None:
    name = str(inst.get("name", ""))
    labels = {"vrrp_instance": name}
    _state(f, name, "speaker", str(inst.get("state", "")))
    for key, metric, doc in (
            ("priority", "clusterbus_vrrp_priority", "Current VRRP priority"),
            ("advert_interval", "clusterbus_vrrp_advert_interval_seconds",
             "Configured advertisement interval"),
            ("master_down_interval", "clusterbus_vrrp_master_down_interval_seconds",
             "Master_Down_Interval (RFC 5798)")):
        value = _number(inst.get(key))
        if value is not None:
            f.gauge(metric, doc, value,
                    {**labels, "source": "speaker"} if key == "priority" else labels)
    holding = inst.get("holding")
    if isinstance(holding, (list, tuple)):
        f.gauge("clusterbus_vrrp_vips_held", "Virtual addresses this instance holds now",
                float(len(holding)), labels)
    for reason, raw in sorted((inst.get("dropped") or {}).items()):
        value = _number(raw)
        if value is not None:
            f.counter("clusterbus_vrrp_adverts_dropped",
                      "VRRP adverts an instance dropped, by reason", value,
                      {**labels, "reason": str(reason)})
    for key, metric, doc in (("address_mismatch", "clusterbus_vrrp_address_mismatch",
                              "Adverts accepted whose address list differs from ours"),
                             ("vetoes", "clusterbus_vrrp_vetoes",
                              "MASTER transitions a plugin vetoed")):
        value = _number(inst.get(key))
        if value is not None:
            f.counter(metric, doc, value, labels)


def _plugin_status(f: _Families, plugin: str, data: Mapping[str, Any]) -> None:
    last = data.get("last")
    if plugin == "ipvs" and isinstance(last, Mapping):
        value = _number(last.get("duration"))
        if value is not None:
            f.gauge("clusterbus_ipvs_last_apply_duration_seconds",
                    "How long the last IPVS apply took", value)
    for key in ("services", "stale"):
        value = _number(data.get(key))
        if plugin == "ipvs" and value is not None:
            f.gauge(_name("clusterbus_ipvs", key), f"IPVS applier: {key}", value)
    f.counters(plugin, data.get("counters"))


def _version() -> str:
    try:
        return importlib.metadata.version("clusterbus")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class StatusCollector(Collector):
    """A prometheus_client collector that reads the daemon's status on its event loop.

    :param build: returns the families; called on ``loop`` with the loop lag measured by
        this scrape (seconds between the request and the loop running it).
    """

    def __init__(self, build: Callable[[float], list[Metric]],
                 timeout: float = SCRAPE_TIMEOUT) -> None:
        self.build = build
        self.timeout = timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timeouts = 0

    def describe(self) -> Iterable[Metric]:
        # nothing up front: registering must not scrape the loop
        return ()

    def collect(self) -> Iterator[Metric]:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        done: concurrent.futures.Future[list[Metric]] = concurrent.futures.Future()
        asked = time.monotonic()

        def on_loop() -> None:
            if not done.set_running_or_notify_cancel():
                return
            try:
                done.set_result(self.build(time.monotonic() - asked))
            except BaseException as exc:  # handed to the scraping thread
                log.exception("metrics: reading the status failed")
                done.set_exception(exc)

        try:
            loop.call_soon_threadsafe(on_loop)
            families = done.result(self.timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):  # stuck loop / loop closed
            done.cancel()
            self.timeouts += 1
            log.warning("metrics: the event loop did not answer a scrape within %.1f s",
                        self.timeout)
            stuck = GaugeMetricFamily("clusterbus_loop_responsive",
                                      "1 when the event loop answered the scrape in time")
            stuck.add_metric([], 0.0)
            yield stuck
            return
        yield from families


class MetricsService:
    """The ``metrics`` service: a Prometheus endpoint on ``[metrics] listen``.

    Built like every other service (``cls(engine, config, status_provider=...)``): it hooks
    the plugin host's observer and an engine sink at once, serves from :meth:`run`.
    """

    def __init__(self, engine: Engine, config: Config, *,
                 status_provider: Callable[[], dict[str, Any]]) -> None:
        self.engine = engine
        self.listen = str(config["metrics"]["listen"])
        self.address, self.port = parse_listen(self.listen)
        self.status_provider = status_provider
        self.counters: dict[str, int] = {"scrapes": 0, "scrape.loop_timeouts": 0}
        self.ready = asyncio.Event()
        self.bound = ""
        self.registry = CollectorRegistry(auto_describe=False)
        self.hook_seconds = Histogram(
            "clusterbus_hook_duration_seconds", "Time one plugin's hook implementation took",
            ["plugin", "hook"], buckets=HOOK_BUCKETS, registry=self.registry)
        self.apply_seconds = Histogram(
            "clusterbus_ipvs_apply_duration_seconds",
            "IPVS applies that changed the kernel table, by duration (ipvs.applied events)",
            buckets=APPLY_BUCKETS, registry=self.registry)
        self.collector = StatusCollector(self._families)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, fds, ...
        self.events: Counter[str] = Counter()
        self.transitions: Counter[tuple[str, str, str]] = Counter()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        engine.sinks.append(self.on_event)
        engine.plugins.set_observer(self.observe_hook)

    def observe_hook(self, plugin: str, hook: str, seconds: float) -> None:
        """The plugin host's observer: one hook call took ``seconds``."""
        self.hook_seconds.labels(plugin, hook).observe(seconds)

    def on_event(self, event: Event) -> None:
        """Engine sink: events by topic, VRRP transitions, IPVS apply durations."""
        self.events[event.topic] += 1
        if isinstance(event, VrrpTransition):
            self.transitions[(event.instance, event.source, event.new)] += 1
        elif isinstance(event, IpvsApplied):
            self.apply_seconds.observe(event.duration)

    async def run(self) -> None:
        """Serve until cancelled.

        :raises OSError: the address cannot be bound (in use, not local).
        """
        self.collector.loop = asyncio.get_running_loop()
        self._server, self._thread = start_http_server(self.port, addr=self.address,
                                                       registry=self.registry)
        host = self.address if ":" not in self.address else f"[{self.address}]"
        self.bound = f"{host}:{self._server.server_port}"
        log.info("metrics: Prometheus endpoint on http://%s/metrics", self.bound)
        self.ready.set()
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self.ready.clear()
            self.close()

    def close(self) -> None:
        """Stop serving and detach from the engine and the plugin host."""
        self.collector.loop = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self.on_event in self.engine.sinks:
            self.engine.sinks.remove(self.on_event)
        if self.engine.plugins.observer == self.observe_hook:
            self.engine.plugins.set_observer(None)

    def status(self) -> dict[str, Any]:
        """Plain data for ``clusterbus status``."""
        self.counters["scrape.loop_timeouts"] = self.collector.timeouts
        return {"listen": self.listen, "bound": self.bound, "counters": dict(self.counters)}

    def _families(self, lag: float) -> list[Metric]:
        # on the loop: nothing else runs while the status is read
        self.counters["scrapes"] += 1
        st = self.status_provider()
        f = _Families()  # what is measured here first: it wins a clash with a status name
        f.gauge("clusterbus_loop_responsive", "1 when the event loop answered the scrape in time",
                1.0)
        f.gauge("clusterbus_loop_lag_seconds",
                "Delay between a scrape's request and the event loop running it", lag)
        for topic, n in sorted(self.events.items()):
            f.counter("clusterbus_events", "Events produced by this daemon, by topic", n,
                      {"topic": topic})
        for (instance, source, state), n in sorted(self.transitions.items()):
            f.counter("clusterbus_vrrp_transitions", "VRRP state changes, by new state", n,
                      {"vrrp_instance": instance, "source": source, "state": state})
        counts = Counter(info.state for info in self.engine.view.nodes.values())
        for node_state in NodeState:
            f.gauge("clusterbus_nodes", "Nodes in the membership view, by state",
                    float(counts.get(node_state, 0)), {"state": node_state.label})
        _from_status(f, st, None)
        return list(f.by_name.values())
