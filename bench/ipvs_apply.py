#!/usr/bin/env python3
"""Benchmark: clusterbus IPVS apply vs ``ipvsadm -R`` on a real kernel (inside UML).

Run as root from the repository: ``.venv/bin/python bench/ipvs_apply.py [--json]``.
The script boots one UML kernel (tests/kernel/uml.py) and runs itself inside; there each
method runs in a fresh network namespace (``unshare -n``) with the same table:
N virtual services x 4 real servers. Both results are verified by counting the kernel's
table with ``ipvsadm -Ln``. Also measured: applying one changed weight among the N, a full
dump by clusterbus vs ``ipvsadm -Ln``, and the applier's peak RSS.

``--json`` prints one JSON object as the last line; ``ratio`` is clusterbus apply time /
``ipvsadm -R`` time. Targets: ratio <= 0.1, one change <= 10 ms, RSS <= 150 MB.
Not a test: it prints numbers, it asserts only that both tables are complete.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

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
    for i in range(n):
        vip = f"{addr(i)}:80"
        rules.append(f"-A -t {vip} -s wlc")
        rules.extend(f"-a -t {vip} -r 10.99.{r}.{i % 250 + 1}:{8000 + i // 250} -m -w 1"
                     for r in range(REALS))
    text = "\n".join(rules) + "\n"
    t0 = time.monotonic()
    subprocess.run(["ipvsadm", "-R"], input=text, text=True, check=True)
    apply_s = time.monotonic() - t0
    t0 = time.monotonic()
    services, dests = count_kernel()
    list_s = time.monotonic() - t0
    return {"apply_s": apply_s, "services": services, "dests": dests, "list_s": list_s}


def worker_clusterbus(n: int) -> dict[str, float | int]:
    sys.path.insert(0, str(ROOT))
    from clusterbus.plugins.ipvs.kernel import Kernel
    from clusterbus.plugins.ipvs.table import AF_INET, Dest, Entry, Service, ServiceKey, diff

    want = {}
    for i in range(n):
        key = ServiceKey(AF_INET, 6, addr(i), 80)
        entry = Entry(Service(key=key, scheduler="wlc"))
        for r in range(REALS):
            d = Dest(af=AF_INET, addr=f"10.99.{r}.{i % 250 + 1}", port=8000 + i // 250)
            entry.dests[d.ident] = d
        want[key] = entry
    with Kernel() as k:
        t0 = time.monotonic()
        plan = diff(k.dump(), want)
        result = k.apply(plan)
        apply_s = time.monotonic() - t0
        assert result.ok, result.errors[:3]
        services, dests = count_kernel()
        # one changed weight among n: dump + diff + apply of the whole table
        key = ServiceKey(AF_INET, 6, addr(n // 2), 80)
        d = next(iter(want[key].dests.values()))
        want[key].dests[d.ident] = Dest(af=d.af, addr=d.addr, port=d.port, weight=5)
        t0 = time.monotonic()
        plan = diff(k.dump(), want)
        k.apply(plan)
        change_full_s = time.monotonic() - t0
        assert len(plan) == 1
        # the same, when the caller already knows the kernel state (event-driven path)
        want[key].dests[d.ident] = Dest(af=d.af, addr=d.addr, port=d.port, weight=6)
        have = {kk: Entry(e.service, dict(e.dests)) for kk, e in want.items()}
        have[key].dests[d.ident] = Dest(af=d.af, addr=d.addr, port=d.port, weight=5)
        t0 = time.monotonic()
        k.apply(diff(have, want))
        change_known_s = time.monotonic() - t0
        t0 = time.monotonic()
        dumped = k.dump()
        dump_s = time.monotonic() - t0
        assert dumped == want
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"apply_s": apply_s, "services": services, "dests": dests,
            "one_change_s": change_full_s, "one_change_known_s": change_known_s,
            "dump_s": dump_s, "rss_mb": rss_mb, "messages": result.sent}


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
    print(f"  one changed weight: {cb['one_change_s'] * 1000:.1f} ms with a full dump+diff, "
          f"{cb['one_change_known_s'] * 1000:.2f} ms when the state is known (target <= 10 ms)")
    print(f"  dump: clusterbus {cb['dump_s']:.2f} s, ipvsadm -Ln {ia['list_s']:.2f} s, "
          f"ratio {data['dump_ratio']:.2f}")
    print(f"  applier peak RSS: {cb['rss_mb']:.0f} MB (target <= 150 MB)")
    if args.json:
        print(json.dumps(data))


if __name__ == "__main__":
    main()
