"""A whole ``clusterbus run`` daemon with CURVE, and the secure default ingest socket.

* CURVE: keys from ``clusterbus keygen``; the daemon binds TCP on loopback (allowed only
  with a certificate); ``clusterbus events|emit|status`` with ``--certificate`` and
  ``--server-key`` work, an unknown key gets nothing and ``auth_denied`` counts it.
* The default ingest endpoint (``ipc:///run/clusterbus/ingest.sock``): the daemon runs in
  a private mount namespace with its own tmpfs on /run, so the test never touches the
  host's /run; root can emit through it, ``nobody`` cannot.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cbdaemon import CLUSTERBUS
from cbdaemon import stop_process as stop
from loopbus import dead_endpoint

from clusterbus.bus.client import fetch_snapshot, fetch_status

pytestmark = pytest.mark.root

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
LIMIT = 20.0


def keygen(d: Path, name: str) -> str:
    p = subprocess.run([CLUSTERBUS, "keygen", "--dir", str(d), "--name", name],
                       capture_output=True, text=True, timeout=LIMIT, check=True)
    return p.stdout.strip()


def wait_status(snapshot: str, log: Path, proc: subprocess.Popen[bytes],
                **keys: str) -> dict[str, Any]:
    deadline = time.monotonic() + LIMIT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}:\n{log.read_text()}")
        try:
            return asyncio.run(fetch_status(snapshot, timeout=0.5, **keys))
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon not ready:\n{log.read_text()}") from None
            time.sleep(0.1)


class CurveDaemon:
    def __init__(self, tmp: Path) -> None:
        self.keys = tmp / "keys"
        self.auth = tmp / "authorized_keys"
        self.public = {n: keygen(self.keys if n != "alice" else self.auth, n)
                       for n in ("d1", "alice", "mallory")}
        self.publish, self.ingest, self.snapshot = (dead_endpoint() for _ in range(3))
        self.config = tmp / "clusterbus.toml"
        self.config.write_text(
            f'[daemon]\nnode = 7\nlog_level = "debug"\n\n'
            f'[bus]\npublish = "{self.publish}"\ningest = "{self.ingest}"\n'
            f'snapshot = "{self.snapshot}"\nheartbeat_interval = 0.2\n'
            f'certificate = "{self.keys}/d1.key_secret"\nauthorized_keys = "{self.auth}"\n\n'
            f'[netlink]\nenabled = false\n')
        self.log = tmp / "daemon.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([CLUSTERBUS, "run", "-c", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)

    def client(self, who: str) -> dict[str, str]:
        d = self.auth if who == "alice" else self.keys
        return {"certificate": f"{d}/{who}.key_secret", "server_key": f"{self.keys}/d1.key"}

    def cli(self, *args: str, who: str | None = "alice",
            timeout: float = LIMIT) -> subprocess.CompletedProcess[str]:
        keys = [] if who is None else [f"--{k.replace('_', '-')}={v}"
                                       for k, v in self.client(who).items()]
        return subprocess.run([CLUSTERBUS, *args, "-c", str(self.config), *keys],
                              capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict[str, Any]:
        return wait_status(self.snapshot, self.log, self.proc, **self.client("alice"))


@pytest.fixture()
def curve(tmp_path: Path) -> Iterator[CurveDaemon]:
    d = CurveDaemon(tmp_path)
    try:
        d.status()
        yield d
    finally:
        stop(d.proc)


def test_cli_with_keys_talks_to_a_curve_daemon(curve: CurveDaemon) -> None:
    st = json.loads(curve.cli("status", "--json").stdout)
    bus = st["services"]["bus"]
    assert bus["security"] == {"curve": True, "authorized_keys": 2,  # alice + its own
                               "public_key": curve.public["d1"]}
    # root on the daemon's host: no options, the configuration's certificate is used
    assert json.loads(curve.cli("status", "--json", who=None).stdout)["node"] == 7
    events = subprocess.Popen(
        [CLUSTERBUS, "events", "--json", "--count", "1", "--timeout", str(LIMIT), "-c",
         str(curve.config), *[f"--{k.replace('_', '-')}={v}"
                              for k, v in curve.client("alice").items()]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + LIMIT
        while curve.status()["services"]["bus"]["counters"].get("subscribe", 0) < 1:
            assert time.monotonic() < deadline and events.poll() is None
            time.sleep(0.05)
        p = curve.cli("emit", "node-up", "3", "--addr", "10.9.0.3", "--via", "zmq")
        assert p.returncode == 0, p.stderr
        out, err = events.communicate(timeout=LIMIT)
    finally:
        if events.poll() is None:
            events.kill()
            events.wait(5)
    assert events.returncode == 0, err
    ev = json.loads(out.strip().splitlines()[-1])
    assert (ev["topic"], ev["node"], ev["reason"]) == ("node.up", 3, "zmq")
    snap = asyncio.run(fetch_snapshot(curve.snapshot, timeout=2.0, **curve.client("alice")))
    assert [n["node"] for n in snap.nodes] == [3]
    assert curve.status()["services"]["bus"]["counters"]["auth_denied"] == 0


def test_unknown_key_and_plain_client_get_nothing_and_are_counted(curve: CurveDaemon) -> None:
    # timeouts long enough for the handshake to be refused on a loaded machine (a client
    # that gives up first only drops its handshake: counted as handshake_dropped)
    p = curve.cli("status", "--timeout", "3", who="mallory")
    assert p.returncode == 1 and "no daemon answered" in p.stderr, p.stderr
    p = curve.cli("emit", "node-up", "5", "--via", "zmq", who="mallory")
    assert p.returncode == 1 and "cannot send via zmq" in p.stderr, p.stderr
    p = subprocess.run([CLUSTERBUS, "events", "--count", "1", "--timeout", "1", "-c",
                        str(curve.config), f"--certificate={curve.keys}/mallory.key_secret",
                        f"--server-key={curve.keys}/d1.key"],
                       capture_output=True, text=True, timeout=LIMIT)
    assert p.returncode == 1 and p.stdout == "", (p.stdout, p.stderr)
    # a client without CURVE (a stock clusterbus configuration pointing at the daemon)
    plain = curve.config.with_name("plain.toml")
    plain.write_text(f'[bus]\nsnapshot = "{curve.snapshot}"\n')
    p = subprocess.run([CLUSTERBUS, "status", "-c", str(plain), "--timeout", "3"],
                       capture_output=True, text=True, timeout=LIMIT)
    assert p.returncode == 1, p.stderr
    counters = curve.status()["services"]["bus"]["counters"]
    assert counters["ingest.received"] == 0
    assert counters.get("requests.snapshot", 0) == 0
    for name in ("snapshot", "ingest", "publish"):  # mallory's key, refused by ZAP
        assert counters[f"auth_denied.{name}"] >= 1, counters
    # the plain client: refused (mechanism mismatch) or, when it noticed the mismatch
    # first and closed, a dropped handshake
    dropped = sum(v for k, v in counters.items() if k.startswith("handshake_dropped."))
    assert counters["auth_denied"] + dropped >= 4, counters
    snap = asyncio.run(fetch_snapshot(curve.snapshot, timeout=2.0, **curve.client("alice")))
    assert snap.nodes == ()
    text = curve.log.read_text()
    refused = [line for line in text.splitlines() if "refused CURVE client key" in line]
    assert len(refused) == 1 and curve.public["mallory"] in refused[0], refused
    assert "does not speak CURVE" in text
    assert "Traceback" not in text


def test_default_ingest_is_root_only(tmp_path: Path) -> None:
    """The embedded default ingest endpoint in a private /run: root may emit, nobody not."""
    snapshot = f"ipc://{tmp_path}/snap"
    cfg = tmp_path / "clusterbus.toml"
    cfg.write_text(f'[daemon]\nnode = 7\n[bus]\npublish = "ipc://{tmp_path}/pub"\n'
                   f'snapshot = "{snapshot}"\n[netlink]\nenabled = false\n')
    log = tmp_path / "daemon.log"
    host_run = os.path.exists("/run/clusterbus")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs -o mode=0755 clusterbus-test /run && exec "$0" run -c "$1"',
             CLUSTERBUS, str(cfg)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_status(snapshot, log, proc)
        enter = ["nsenter", f"--mount=/proc/{proc.pid}/ns/mnt"]
        mode = subprocess.run([*enter, "stat", "-c", "%a %U", "/run/clusterbus"],
                              capture_output=True, text=True, timeout=LIMIT, check=True)
        assert mode.stdout.split() == ["700", "root"]
        emit = [CLUSTERBUS, "emit", "node-up", "3", "--via", "zmq"]  # the embedded default
        p = subprocess.run([*enter, *NOBODY, *emit], capture_output=True, text=True,
                           timeout=LIMIT)
        assert p.returncode == 1 and "cannot send via zmq" in p.stderr, p.stderr
        st = asyncio.run(fetch_status(snapshot, timeout=2.0))
        assert st["services"]["bus"]["counters"]["ingest.received"] == 0
        assert st["services"]["bus"]["endpoints"]["ingest"] == "ipc:///run/clusterbus/ingest.sock"
        p = subprocess.run([*enter, *emit], capture_output=True, text=True, timeout=LIMIT)
        assert p.returncode == 0, p.stderr
        deadline = time.monotonic() + LIMIT
        while not asyncio.run(fetch_snapshot(snapshot, timeout=2.0)).nodes:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert [n["node"] for n in asyncio.run(fetch_snapshot(snapshot)).nodes] == [3]
    finally:
        stop(proc)
    assert os.path.exists("/run/clusterbus") == host_run  # the host's /run is untouched
