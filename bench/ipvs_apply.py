#!/usr/bin/env python3
"""Benchmark: clusterbus IPVS apply vs ``ipvsadm -R`` on a real kernel (inside UML).

Run as root from the repository: ``.venv/bin/python bench/ipvs_apply.py [--json]``.
The script boots one UML kernel (tests/kernel/uml.py) and runs itself inside; there each
method runs in a fresh network namespace (``unshare -n``) with the same table:
N virtual services x 4 real servers. Both results are verified by counting the kernel's
table with ``ipvsadm -Ln``. Also measured: one changed weight among the N along the path a
node.down really takes (a real engine and plugin host: ``engine.report`` -> hook ->
applier service -> kernel ack -> ``ipvs.applied`` at a sink), beside ``ipvsadm -e`` for
the same change and a one-shot full dump+diff+apply; a full dump by clusterbus vs
``ipvsadm -Ln``; and the applier's peak RSS.

``--json`` prints one JSON object as the last line; ``ratio`` is clusterbus apply time /
``ipvsadm -R`` time. Targets: ratio <= 0.1, one change <= 10 ms, RSS <= 150 MB.
Not a test: it prints numbers, it asserts only that both tables are complete.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REALS = 4


def addr(i: int) -> str:
    return f"10.{80 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"


def count_kernel() -> tuple[int, int]:
    out = subprocess.run(["ipvsadm", "-Ln"], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    return (sum(line.startswith("TCP") for line in lines),
            sum(line.startswith("  -> ") for line in lines) - 1)  # minus the header line


def worker_ipvsadm(n: int) -> dict[str, float | int]:
    rules = []
    for vs in bench_config(n)["ipvs"]["virtual_server"]:
        vip = vs["address"]
        rules.append(f"-A -t {vip} -s wlc")
        for rs in vs["real_server"]:
            real = rs.get("address") or f"{NODE_ADDR}:{rs['port']}"
            rules.append(f"-a -t {vip} -r {real} -m -w 1")
    text = "\n".join(rules) + "\n"
    t0 = time.monotonic()
    subprocess.run(["ipvsadm", "-R"], input=text, text=True, check=True)
    apply_s = time.monotonic() - t0
    t0 = time.monotonic()
    services, dests = count_kernel()
    list_s = time.monotonic() - t0
    return {"apply_s": apply_s, "services": services, "dests": dests, "list_s": list_s}


#: node whose down/up the one-change figure measures; it serves one real server of one
#: service among the N (an address no other real server uses)
NODE, NODE_ADDR = 1, "10.98.0.1"
CYCLES = 25
ONE_CHANGE_TARGET_S = 0.010


def bench_config(n: int) -> dict[str, Any]:
    """The [ipvs] (+ [nodemap]) configuration of the benchmark table, as TOML data."""
    vss = []
    for i in range(n):
        reals: list[dict[str, Any]] = [
            {"address": f"10.99.{r}.{i % 250 + 1}:{8000 + i // 250}"} for r in range(REALS)]
        if i == n // 2:
            reals[0] = {"node": NODE, "port": 8000 + i // 250}
        vss.append({"address": f"{addr(i)}:80", "scheduler": "wlc", "real_server": reals})
    return {"nodemap": {"nodes": {str(NODE): [NODE_ADDR]}},
            "ipvs": {"reconcile_interval": 0, "virtual_server": vss}}


async def node_event_path(n: int) -> dict[str, Any]:
    """The real path of a node.down: engine.report -> hooks -> applier -> kernel ack.

    A real engine and plugin host (nodemap + ipvs, from their entry points) with the
    N-service configuration; its applier service runs on this loop. Each cycle reports the
    node down, then up; the time is taken from just before ``engine.report`` to the
    ``ipvs.applied`` event reaching a sink (emitted once the kernel acked the batch).
    """
    from clusterbus.config import parse_config
    from clusterbus.engine import Engine
    from clusterbus.events import Event, IpvsApplied
    from clusterbus.pluginhost import PluginHost
    from clusterbus.plugins import ipvs
    from clusterbus.view import NodeReport, NodeState

    host = PluginHost(enable=["nodemap", "ipvs"])
    host.load_entrypoints()
    engine = Engine(origin=9, plugins=host)
    host.configure(parse_config(bench_config(n), file="bench.toml"), engine.cluster)
    host.call_historic("clusterbus_startup", cluster=engine.cluster)
    [service] = [s for _, ss in host.call_each("clusterbus_services", cluster=engine.cluster)
                 if ss for s in ss]
    applier = ipvs.plugin.applier(engine.cluster)
    assert applier is not None
    got: asyncio.Queue[tuple[float, IpvsApplied]] = asyncio.Queue()

    def sink(event: Event) -> None:
        if isinstance(event, IpvsApplied):
            got.put_nowait((time.perf_counter(), event))

    engine.sinks.append(sink)
    key = next(vs.service.key for vs in applier.config.virtual_servers
               if any(rs.node == NODE for rs in vs.real_servers))
    ident = (NODE_ADDR, 8000 + (n // 2) // 250)
    out: dict[str, Any] = {}
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(service())
        t0 = time.perf_counter()
        while applier.counters["reconciles"] == 0:  # start-up: dump + diff of everything
            await asyncio.sleep(0.01)
        out["startup_reconcile_s"] = time.perf_counter() - t0
        while not got.empty():  # start-up's own ipvs.applied, if it changed anything
            got.get_nowait()
        assert applier.known is not None and len(applier.known) == n, "start-up failed"
        kernel = applier._kernel
        assert kernel is not None
        down: list[float] = []
        up: list[float] = []
        inner: list[float] = []
        for _ in range(CYCLES):
            for state, times, weight in ((NodeState.DOWN, down, 0), (NodeState.UP, up, 1)):
                t0 = time.perf_counter()
                engine.report(NodeReport(state=state, node=NODE,
                                         addrs=(NODE_ADDR,) if state is NodeState.UP else (),
                                         reason="bench"))
                async with asyncio.timeout(30):
                    t1, ev = await got.get()
                assert (ev.changed, ev.added, ev.removed) == (1, 0, 0), ev
                times.append(t1 - t0)
                inner.append(ev.duration)
                # verified on the kernel (not timed): the node's real server has the weight
                entry = kernel.entry(key)
                assert entry is not None
                assert entry.dests[ident].weight == weight
        task.cancel()
    out.update(node_down_s=down, node_up_s=up, applier_inner_s=inner,
               full_reconciles=applier.counters["reconciles"],
               targeted=applier.counters["targeted"])
    return out


def worker_clusterbus(n: int) -> dict[str, Any]:
    from clusterbus.config import parse_config
    from clusterbus.plugins.ipvs import model
    from clusterbus.plugins.ipvs.kernel import Kernel
    from clusterbus.plugins.ipvs.table import Dest, diff

    data = parse_config(bench_config(n), file="bench.toml")
    cfg = model.parse(data.plugin_sections["ipvs"], file="bench.toml",
                      node_addrs=lambda node: (NODE_ADDR,) if node == NODE else ())
    want, problems = model.desired_table(
        cfg, node_addrs=lambda node: (NODE_ADDR,) if node == NODE else (),
        node_of=lambda a: None, is_down=lambda node: False)
    assert not problems
    with Kernel() as k:
        t0 = time.monotonic()
        plan = diff(k.dump(), want)
        result = k.apply(plan)
        apply_s = time.monotonic() - t0
        assert result.ok, result.errors[:3]
        services, dests = count_kernel()
        # one changed weight, the way a one-shot `clusterbus ipvs apply` (or a full
        # reconcile) does it: dump + diff of the whole table + apply
        key = sorted(want)[n // 3]
        d = next(iter(want[key].dests.values()))
        want[key].dests[d.ident] = Dest(af=d.af, addr=d.addr, port=d.port, weight=5)
        t0 = time.monotonic()
        plan = diff(k.dump(), want)
        k.apply(plan)
        change_full_s = time.monotonic() - t0
        assert len(plan) == 1
        want[key].dests[d.ident] = d
        assert k.apply(diff(k.dump(), want)).ok  # back to the configured table
        # reference: the same one-weight change by hand with ipvsadm (one process, one op)
        vip = f"{key.addr}:{key.port}"
        ipvsadm_one: list[float] = []
        for w in (5, 1) * 5:
            t0 = time.monotonic()
            subprocess.run(["ipvsadm", "-e", "-t", vip, "-r", str(d), "-m", "-w", str(w)],
                           check=True)
            ipvsadm_one.append(time.monotonic() - t0)
        t0 = time.monotonic()
        dumped = k.dump()
        dump_s = time.monotonic() - t0
        assert dumped == want
    # the daemon path below builds its own tables, as the daemon would
    del want, dumped, plan, cfg
    events = asyncio.run(node_event_path(n))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"apply_s": apply_s, "services": services, "dests": dests,
            "one_change_full_s": change_full_s, "ipvsadm_one_change_s": ipvsadm_one,
            "dump_s": dump_s, "rss_mb": rss_mb, "messages": result.sent, **events}


def inside(n: int) -> dict[str, object]:
    out: dict[str, object] = {"services": n, "reals": REALS}
    for method in ("clusterbus", "ipvsadm"):
        # lo must be up: with no local routes the kernel refuses IPv4 real servers (EINVAL)
        p = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "-",
                            sys.executable, __file__, "--worker", method, "--services", str(n)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"{method} worker failed:\n{p.stderr}")
        out[method] = json.loads(p.stdout.strip().splitlines()[-1])
    cb, ia = out["clusterbus"], out["ipvsadm"]
    assert isinstance(cb, dict) and isinstance(ia, dict)
    for m, r in (("clusterbus", cb), ("ipvsadm", ia)):
        if (r["services"], r["dests"]) != (n, n * REALS):
            raise SystemExit(f"{m}: kernel has {r['services']} services, {r['dests']} dests")
    out["ratio"] = cb["apply_s"] / ia["apply_s"]
    out["dump_ratio"] = cb["dump_s"] / ia["list_s"]
    # the one-change figure is the node.down path (event -> hook -> applier -> kernel ack)
    down = sorted(cb["node_down_s"])
    out["one_change_s"] = statistics.median(down)
    out["one_change_max_s"] = down[-1]
    out["one_change_target_s"] = ONE_CHANGE_TARGET_S
    out["one_change_ratio"] = out["one_change_s"] / ONE_CHANGE_TARGET_S
    out["ipvsadm_one_change_s"] = statistics.median(cb["ipvsadm_one_change_s"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--json", action="store_true", help="one JSON object as the last line")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--worker", choices=("clusterbus", "ipvsadm"), help=argparse.SUPPRESS)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        fn = worker_clusterbus if args.worker == "clusterbus" else worker_ipvsadm
        print(json.dumps(fn(args.services)))
        return
    if args.inside or os.environ.get("CLUSTERBUS_IN_UML") == "1":
        print(json.dumps(inside(args.services)))
        return
    sys.path.insert(0, str(ROOT / "tests" / "kernel"))
    import uml

    result_file = Path(f"/tmp/cb-bench-ipvs-{os.getpid()}.json")
    cmd = ["sh", "-c", f"{uml.PYTHON} {Path(__file__).resolve()} --inside "
           f"--services {args.services} > {result_file}"]
    try:
        run = uml.boot(cmd, timeout=args.timeout, mem="1536M")
        if run.returncode != 0 or not result_file.exists():
            raise SystemExit(f"UML run failed (exit {run.returncode}):\n{run.console[-4000:]}")
        data = json.loads(result_file.read_text().strip().splitlines()[-1])
    finally:
        result_file.unlink(missing_ok=True)
    cb, ia = data["clusterbus"], data["ipvsadm"]
    print(f"{data['services']} services x {data['reals']} real servers, inside UML "
          f"(boot+run {run.duration:.1f} s)")
    print(f"  apply: clusterbus {cb['apply_s']:.2f} s ({cb['messages']} messages), "
          f"ipvsadm -R {ia['apply_s']:.2f} s, ratio {data['ratio']:.3f} (target <= 0.1)")
    ms = 1000.0
    print(f"  one changed weight, node.down -> hook -> applier -> kernel ack "
          f"({len(cb['node_down_s'])} cycles): median {data['one_change_s'] * ms:.2f} ms, "
          f"max {data['one_change_max_s'] * ms:.2f} ms (target <= "
          f"{data['one_change_target_s'] * ms:.0f} ms, ratio {data['one_change_ratio']:.2f}); "
          f"node.up median {statistics.median(cb['node_up_s']) * ms:.2f} ms")
    print(f"    inside the applier (entries + diff + apply): median "
          f"{statistics.median(cb['applier_inner_s']) * ms:.2f} ms; "
          f"references: ipvsadm -e (one process, one op) "
          f"{data['ipvsadm_one_change_s'] * ms:.1f} ms, full dump+diff+apply "
          f"{cb['one_change_full_s'] * ms:.0f} ms, daemon start-up reconcile "
          f"{cb['startup_reconcile_s']:.2f} s")
    print(f"  dump: clusterbus {cb['dump_s']:.2f} s, ipvsadm -Ln {ia['list_s']:.2f} s, "
          f"ratio {data['dump_ratio']:.2f}")
    print(f"  applier peak RSS: {cb['rss_mb']:.0f} MB (target <= 150 MB)")
    if args.json:
        print(json.dumps(data))


if __name__ == "__main__":
    main()
