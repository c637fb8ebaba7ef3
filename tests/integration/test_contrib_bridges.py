"""contrib/pacemaker/clusterbus-alert and contrib/serf/clusterbus-serf-handler, run the way
Pacemaker and Serf run them (environment, stdin), against a real daemon.

The daemon listens on ``ipc://`` endpoints in the test's directory (netlink off, so it
hears nothing from the host); ``clusterbus events --json --count N`` receives what the
bridges reported. The netlink variant runs the daemon and the agent in a namespace (root).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cbdaemon import CLUSTERBUS, Daemon
from loopbus import dead_endpoint
from netns import Topology

ROOT = Path(__file__).resolve().parents[2]
ALERT = ROOT / "contrib" / "pacemaker" / "clusterbus-alert"
SERF = ROOT / "contrib" / "serf" / "clusterbus-serf-handler"
BIN = str(Path(CLUSTERBUS).parent)


def _wait(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _subscribers(d: Daemon) -> int:
    c = d.status()["services"]["bus"]["counters"]
    return c.get("subscribe", 0) - c.get("unsubscribe", 0)


class Events:
    """``clusterbus events --json --filter node. --count N`` started before the bridge runs."""

    def __init__(self, d: Daemon, count: int, prefix: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*(prefix or []), CLUSTERBUS, "events", "--json", "--filter", "node.", "--count",
             str(count), "--timeout", "60", "-c", str(d.config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait(lambda: _subscribers(d) >= 1, what="the events subscriber")

    def result(self) -> list[dict]:
        out, err = self.proc.communicate(timeout=90)
        assert self.proc.returncode == 0, err
        return [json.loads(line) for line in out.splitlines()]


def _env(**kw: str) -> dict[str, str]:
    """The process environment Pacemaker/Serf would give: PATH finds ``clusterbus``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CRM_", "SERF_", "clusterbus_"))}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(kw)
    return env


def alert(prefix: list[str] | None = None, **kw: str) -> subprocess.CompletedProcess[str]:
    base = {"CRM_alert_version": "2.1.5", "CRM_alert_timestamp": "01:02:03.456789",
            "CRM_alert_node_sequence": "7"}
    return subprocess.run([*(prefix or []), str(ALERT)], env=_env(**{**base, **kw}),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def serf(event: str, stdin: str, *args: str, **kw: str) -> subprocess.CompletedProcess[str]:
    env = _env(SERF_EVENT=event, SERF_SELF_NAME="lvs1", SERF_SELF_ROLE="director", **kw)
    return subprocess.run([str(SERF), *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture()
def daemon(tmp_path):
    d = Daemon(tmp_path, None, extra="[netlink]\nenabled = false\n").start()
    try:
        yield d
    finally:
        assert d.stop() == 0, d.log.read_text()


def test_pacemaker_alerts_reach_the_daemon(daemon: Daemon):
    d = daemon
    ev = Events(d, 5)
    to = f"zmq:{d.config}"
    # node alerts: member -> node.up, lost -> node.down; the node number is CRM_alert_nodeid
    p = alert(CRM_alert_kind="node", CRM_alert_node="lvs3", CRM_alert_nodeid="3",
              CRM_alert_desc="member", CRM_alert_recipient=to)
    assert (p.returncode, p.stderr) == (0, "")
    # ignored with exit 0, nothing sent: resource and attribute alerts, failed fencing, "on"
    for kw in ({"CRM_alert_kind": "resource", "CRM_alert_rsc": "vip", "CRM_alert_task": "start",
                "CRM_alert_rc": "0", "CRM_alert_desc": "ok", "CRM_alert_node": "lvs3",
                "CRM_alert_interval": "0", "CRM_alert_target_rc": "0", "CRM_alert_status": "0"},
               {"CRM_alert_kind": "attribute", "CRM_alert_node": "lvs3",
                "CRM_alert_attribute_name": "x", "CRM_alert_attribute_value": "1"},
               {"CRM_alert_kind": "fencing", "CRM_alert_node": "lvs3",
                "CRM_alert_task": "st_notify_fence", "CRM_alert_rc": "1",
                "CRM_alert_desc": "Operation reboot of lvs3 by lvs1 for x@lvs1: Error"},
               {"CRM_alert_kind": "fencing", "CRM_alert_node": "lvs3",
                "CRM_alert_task": "st_notify_fence", "CRM_alert_rc": "0",
                "CRM_alert_desc": "Operation on of lvs3 by lvs1 for x@lvs1: OK (ref=1)"},
               ):
        p = alert(CRM_alert_recipient=to, **kw)
        assert (p.returncode, p.stderr) == (0, ""), kw
    # no recipient: the options decide; a duplicate member alert is sent, the view ignores it
    p = alert(CRM_alert_kind="node", CRM_alert_node="lvs3", CRM_alert_nodeid="3",
              CRM_alert_desc="member", clusterbus_via="zmq", clusterbus_config=str(d.config))
    assert (p.returncode, p.stderr) == (0, "")
    # a successful fencing of a node: node.down, its number from the name's trailing digits
    # (what Pacemaker 2.1 sets: the action is only in the description)
    p = alert(CRM_alert_kind="fencing", CRM_alert_node="lvs3.example.net",
              CRM_alert_task="st_notify_fence", CRM_alert_rc="0",
              CRM_alert_desc="Operation off of lvs3.example.net by a human for "
                             "stonith_admin.356@lvs1: OK (ref=651876df)",
              CRM_alert_recipient=str(d.config), clusterbus_via="zmq")
    assert (p.returncode, p.stderr) == (0, "")
    # the clusterbus_nodes map wins over the nodeid
    p = alert(CRM_alert_kind="node", CRM_alert_node="beta", CRM_alert_nodeid="2",
              CRM_alert_desc="member", CRM_alert_recipient=to, clusterbus_nodes="alpha=4, beta=5")
    assert (p.returncode, p.stderr) == (0, "")
    p = alert(CRM_alert_kind="node", CRM_alert_node="beta", CRM_alert_nodeid="2",
              CRM_alert_desc="lost", CRM_alert_recipient=to, clusterbus_nodes="beta=5")
    assert (p.returncode, p.stderr) == (0, "")
    # a Pacemaker Remote node (its id is its name): the name's digits
    p = alert(CRM_alert_kind="node", CRM_alert_node="remote8", CRM_alert_nodeid="remote8",
              CRM_alert_desc="member", CRM_alert_recipient=to)
    assert (p.returncode, p.stderr) == (0, "")
    got = ev.result()
    assert [(e["topic"], e["node"], e["reason"]) for e in got] == [
        ("node.up", 3, "zmq"), ("node.down", 3, "zmq"), ("node.up", 5, "zmq"),
        ("node.down", 5, "zmq"), ("node.up", 8, "zmq")]
    assert [e["seq"] for e in got] == sorted(e["seq"] for e in got)
    # the duplicate member alert changed nothing
    assert d.status()["ignored"]["duplicate"] == 1


def test_pacemaker_alert_errors_are_one_line_and_an_exit_code(tmp_path: Path):
    cfg = tmp_path / "cb.toml"
    cfg.write_text(f'[bus]\ningest = "{dead_endpoint()}"\n')
    # no daemon: exit 1, one line naming the node and the failure
    p = alert(CRM_alert_kind="node", CRM_alert_node="lvs3", CRM_alert_nodeid="3",
              CRM_alert_desc="lost", CRM_alert_recipient=f"zmq:{cfg}")
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
    assert p.stderr.startswith("clusterbus-alert: node lvs3 lost: clusterbus node-down 3 via zmq")
    for kw, words in (
            ({}, "CRM_alert_kind is not set"),
            ({"CRM_alert_kind": "node", "CRM_alert_node": "lvs3", "CRM_alert_nodeid": "3",
              "CRM_alert_desc": "member", "CRM_alert_recipient": "mail@example.org"},
             "recipient 'mail@example.org'"),
            ({"CRM_alert_kind": "fencing", "CRM_alert_node": "alpha", "CRM_alert_task": "off",
              "CRM_alert_rc": "0"}, "node 'alpha': no number"),
            ({"CRM_alert_kind": "node", "CRM_alert_node": "x", "CRM_alert_nodeid": "99999999999",
              "CRM_alert_desc": "member"}, "not a node number"),
            # a Pacemaker Remote node: its id is its name, which has no number here
            ({"CRM_alert_kind": "node", "CRM_alert_node": "remote-a", "CRM_alert_nodeid": "remote-a",
              "CRM_alert_desc": "member"}, "node 'remote-a': no number"),
            ({"CRM_alert_kind": "node", "CRM_alert_node": "x", "CRM_alert_nodeid": "3",
              "CRM_alert_desc": "member", "clusterbus_nodes": "x:3"}, "is not NAME=NUMBER")):
        p = alert(**kw)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, (kw, p.stderr)
        assert words in p.stderr, p.stderr
    # the ClusterMon-era names work too
    p = alert(CRM_notify_kind="resource")
    assert (p.returncode, p.stderr) == (0, "")


def test_serf_handler_reports_members(daemon: Daemon):
    d = daemon
    ev = Events(d, 4)
    args = ("--via", "zmq", "-c", str(d.config))
    # two members in one event: a tag names one's node, the other's name does
    p = serf("member-join", "lvs3\t10.0.0.3\tdirector\tclusterbus_node=3,dc=a\n"
                            "web-node\tfd00::9\t\tclusterbus_node=9\n", *args)
    assert (p.returncode, p.stderr) == (0, "")
    # ignored: reap, user events, queries
    for event in ("member-reap", "user", "query"):
        p = serf(event, "lvs3\t10.0.0.3\tdirector\t\n", *args, SERF_USER_EVENT="deploy")
        assert (p.returncode, p.stderr) == (0, ""), event
    # one bad line (no number) does not stop the next member: exit 2, one stderr line
    p = serf("member-failed", "nonumber\t10.0.0.8\t\t\nlvs3\t10.0.0.3\tdirector\t\n", *args)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
    assert "member 'nonumber'" in p.stderr
    p = serf("member-leave", "web-node 10.0.0.9 web clusterbus_node=9\n", *args)
    assert (p.returncode, p.stderr) == (0, "")
    got = ev.result()
    assert [(e["topic"], e["node"], e["addrs"]) for e in got] == [
        ("node.up", 3, ["10.0.0.3"]), ("node.up", 9, ["fd00::9"]), ("node.down", 3, ["10.0.0.3"]),
        ("node.down", 9, ["fd00::9"])]
    assert {e["reason"] for e in got} == {"zmq"}


def test_serf_handler_errors(tmp_path: Path):
    cfg = tmp_path / "cb.toml"
    cfg.write_text(f'[bus]\ningest = "{dead_endpoint()}"\n')
    p = serf("member-join", "lvs3\t10.0.0.3\t\t\n", "--via", "zmq", "-c", str(cfg))
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1, p.stderr
    assert "member-join lvs3: clusterbus node-up 3 via zmq failed" in p.stderr
    p = serf("member-join", "lvs3\tnot-an-ip\t\t\n", "--via", "zmq", "-c", str(cfg))
    assert p.returncode == 2 and "is not an IP address" in p.stderr
    p = subprocess.run([str(SERF)], env=_env(), input="", capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2 and "SERF_EVENT is not set" in p.stderr


@pytest.mark.root
def test_pacemaker_alert_via_netlink(tmp_path: Path):
    """The default delivery: netlink, from the agent running in the daemon's namespace."""
    with Topology() as topo:
        ns = topo.netns("pcmk")
        d = Daemon(tmp_path, ns, extra="[netlink]\ngroup = 22\n").start()
        try:
            ev = Events(d, 2)
            pre = Topology.prefix(ns)
            p = alert(pre, CRM_alert_kind="node", CRM_alert_node="lvs6", CRM_alert_nodeid="6",
                      CRM_alert_desc="member", CRM_alert_recipient="netlink",
                      clusterbus_config=str(d.config))
            assert (p.returncode, p.stderr) == (0, "")
            p = alert(pre, CRM_alert_kind="fencing", CRM_alert_node="lvs6", CRM_alert_rc="0",
                      CRM_alert_task="off", clusterbus_config=str(d.config))
            assert (p.returncode, p.stderr) == (0, "")
            got = ev.result()
        finally:
            assert d.stop() == 0, d.log.read_text()
    assert [(e["topic"], e["node"], e["reason"]) for e in got] == [
        ("node.up", 6, "netlink"), ("node.down", 6, "netlink")]


def _serf_binary() -> str | None:
    return os.environ.get("SERF_BIN") or shutil.which("serf")


@pytest.mark.root
def test_serf_handler_under_real_serf_agents(daemon: Daemon, tmp_path: Path):
    """Two real Serf agents in a namespace; the first runs the handler on its events."""
    serf_bin = _serf_binary()
    if serf_bin is None:
        pytest.skip("no serf binary (apt-get install serf, or SERF_BIN=/path/to/serf)")
    d = daemon
    ev = Events(d, 3)
    handler = f"{SERF} --via zmq -c {d.config} --clusterbus {CLUSTERBUS}"
    agents: list[subprocess.Popen] = []
    logs = []
    with Topology() as topo:
        ns = topo.netns("serf")
        try:
            for i, extra in ((1, ["-event-handler", f"member-join,member-leave,member-failed={handler}"]),
                             (2, ["-join", "127.0.0.1:7946"])):
                log = open(tmp_path / f"serf{i}.log", "w")
                logs.append(log)
                agents.append(subprocess.Popen(
                    [*Topology.prefix(ns), serf_bin, "agent", "-node", f"lvs{i}",
                     "-bind", f"127.0.0.{i}:7946", "-rpc-addr", f"127.0.0.{i}:7373",
                     "-tag", f"clusterbus_node={i}", "-log-level", "debug", *extra],
                    stdout=log, stderr=subprocess.STDOUT, env=_env()))
                if i == 1:
                    _wait(lambda: "Handshaking" in (tmp_path / "serf1.log").read_text() or
                          "serf: EventMemberJoin: lvs1" in (tmp_path / "serf1.log").read_text(),
                          what="serf agent 1")
            # Serf coalesces member events: let the join reach clusterbus before the leave
            _wait(lambda: d.status()["view"] >= 2, timeout=60, what="both joins reported")
            # a graceful leave of lvs2: member-leave on lvs1
            subprocess.run([*Topology.prefix(ns), serf_bin, "leave", "-rpc-addr", "127.0.0.2:7373"],
                           capture_output=True, timeout=30)
            got = ev.result()
        finally:
            for a in agents:
                if a.poll() is None:
                    a.terminate()
                    try:
                        a.wait(10)
                    except subprocess.TimeoutExpired:
                        a.kill()
                        a.wait(5)
            for log in logs:
                log.close()
    assert sorted((e["topic"], e["node"]) for e in got[:2]) == [("node.up", 1), ("node.up", 2)]
    assert (got[2]["topic"], got[2]["node"]) == ("node.down", 2)
    assert {e["node"]: e["addrs"] for e in got[:2]} == {1: ["127.0.0.1"], 2: ["127.0.0.2"]}


# -- under a real Pacemaker -------------------------------------------------------------

COROSYNC_CONF = """totem {{
  version: 2
  cluster_name: cbtest{tag}
  transport: knet
  crypto_cipher: none
  crypto_hash: none
  token: 1000
}}
nodelist {{
  node {{
    ring0_addr: {a1}
    name: lvs1
    nodeid: 1
  }}
  node {{
    ring0_addr: {a2}
    name: lvs2
    nodeid: 2
  }}
}}
quorum {{
  provider: corosync_votequorum
  two_node: 1
  wait_for_all: 0
}}
logging {{
  to_stderr: yes
  to_syslog: no
  to_logfile: no
}}
"""


def _hacluster_clusterbus(world: Path) -> str | None:
    """A ``clusterbus`` command the hacluster user (alert agents' user) can run: this one,
    or the system python3 with this environment's site-packages (same minor version)."""
    import sys
    import sysconfig
    as_hacluster = ["runuser", "-u", "hacluster", "--"]
    candidates = [CLUSTERBUS]
    site = sysconfig.get_paths()["purelib"]
    for py in (f"/usr/bin/python3.{sys.version_info.minor}",):
        if os.path.exists(py):
            wrapper = world / "clusterbus"
            wrapper.write_text(
                "#!/bin/sh\nexec %s -c \"import site, sys; site.addsitedir('%s'); "
                "sys.argv[0] = 'clusterbus'; from clusterbus.cli import main; main()\" \"$@\"\n"
                % (py, site))
            wrapper.chmod(0o755)
            candidates.append(str(wrapper))
    for exe in candidates:
        p = subprocess.run([*as_hacluster, exe, "--help"], capture_output=True, timeout=60)
        if p.returncode == 0:
            return exe
    return None


@pytest.mark.root
def test_pacemaker_alert_under_real_pacemaker(tmp_path: Path):
    """corosync + Pacemaker (node lvs1) in one namespace, corosync alone (lvs2) in another:
    lvs2 joining and leaving makes Pacemaker run the agent with node alerts; a confirmed
    fencing of lvs3 makes it run the agent with a fencing alert."""
    import tempfile
    tools = ("corosync", "pacemakerd", "cibadmin", "stonith_admin", "crm_mon", "runuser",
             "unshare")
    if not all(shutil.which(t) for t in tools):
        pytest.skip("pacemaker and corosync are not installed")
    if subprocess.run(["pgrep", "-x", "pacemakerd"], capture_output=True).returncode == 0:
        pytest.skip("a pacemakerd is running on this host")
    world = Path(tempfile.mkdtemp(prefix="cbpcmk"))  # readable by hacluster
    world.chmod(0o755)
    procs: list[subprocess.Popen] = []
    namespaces: list[str] = []
    d: Daemon | None = None
    topo: Topology | None = None
    try:
        cb = _hacluster_clusterbus(world)
        if cb is None:
            pytest.skip("no clusterbus command the hacluster user can run")
        varlib = world / "varlib"
        for sub in ("cib", "pengine", "blackbox", "cores"):
            (varlib / sub).mkdir(parents=True)
        subprocess.run(["chown", "-R", "hacluster:haclient", str(varlib)], check=True)
        topo = Topology()
        a1, a2 = "10.79.0.1", "10.79.0.2"
        ns1 = topo.host("pcmk1", f"{a1}/24")
        ns2 = topo.host("pcmk2", f"{a2}/24")
        namespaces += [ns1, ns2]
        conf = world / "corosync.conf"
        conf.write_text(COROSYNC_CONF.format(tag=topo.tag, a1=a1, a2=a2))
        # the daemon beside Pacemaker; Pacemaker runs the agent as hacluster, so the ingest
        # socket is opened to it here (a stock install keeps ingest root-only; TCP ingest
        # needs CURVE)
        d = Daemon(world, ns1, extra="[netlink]\nenabled = false\n")
        sock = world / "pcmk-ingest.sock"
        d.config.write_text(d.config.read_text().replace(
            f'ingest = "{d.ingest}"', f'ingest = "ipc://{sock}"'))
        d.config.chmod(0o644)
        d.start()
        sock.chmod(0o666)

        def start(ns: str, argv: list[str], log: str) -> subprocess.Popen:
            with open(world / log, "w") as f:
                p = subprocess.Popen(argv if argv[0] == "unshare" else
                                     [*Topology.prefix(ns), *argv],
                                     stdout=f, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     env={**os.environ, "PCMK_logfile": str(world / "pcmk.log")})
            procs.append(p)
            return p

        start(ns1, ["corosync", "-f", "-c", str(conf)], "corosync1.log")
        # Pacemaker keeps its CIB in /var/lib/pacemaker: a private one, in a mount namespace
        start(ns1, ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    f"mount --bind {varlib} /var/lib/pacemaker && "
                    f"exec ip netns exec {ns1} pacemakerd -f"], "pacemakerd.log")

        def crm_mon() -> str:
            return subprocess.run([*Topology.prefix(ns1), "crm_mon", "-1"],
                                  capture_output=True, text=True, timeout=30).stdout
        _wait(lambda: "partition with quorum" in crm_mon(), timeout=120,
              what="a Pacemaker DC")
        alerts = (f'<alerts><alert id="cb" path="{ALERT}"><instance_attributes id="cb-ia">'
                  f'<nvpair id="cb-bin" name="clusterbus_bin" value="{cb}"/>'
                  f'</instance_attributes>'
                  f'<recipient id="cb-to" value="zmq:{d.config}"/></alert></alerts>')
        subprocess.run([*Topology.prefix(ns1), "cibadmin", "--create", "-o", "configuration",
                        "--xml-text", alerts], check=True, capture_output=True, timeout=30)
        ev = Events(d, 4)
        # node alerts: lvs2's corosync joins, then goes away
        # a second corosync on this host: its own lock file (/run/corosync.pid)
        (world / "corosync2.pid").touch()
        c2 = start(ns2, ["unshare", "-m", "--propagation", "private", "sh", "-c",
                         f"mount --bind {world}/corosync2.pid /run/corosync.pid && "
                         f"exec ip netns exec {ns2} corosync -f -c {conf}"], "corosync2.log")
        _wait(lambda: d.status()["view"] >= 1, timeout=120, what="lvs2 member -> node.up")
        c2.terminate()
        c2.wait(30)
        _wait(lambda: d.status()["view"] >= 2, timeout=120, what="lvs2 lost -> node.down")
        # a fencing alert: lvs3 up (by hand), then its fencing confirmed
        d.cli("emit", "node-up", "3", "--via", "zmq", ns=True)
        subprocess.run([*Topology.prefix(ns1), "stonith_admin", "--confirm", "lvs3"],
                       check=True, capture_output=True, timeout=60)
        got = ev.result()
        assert d.stop() == 0, d.log.read_text()
    finally:
        # Pacemaker's daemons leave pacemakerd's session: end everything in the namespaces
        for ns in namespaces:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in map(int, pids):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        if d is not None:
            d.stop()
        if topo is not None:
            topo.close()
        for log in world.glob("*.log"):  # kept for a failure's report
            shutil.copy(log, tmp_path / log.name)
        shutil.rmtree(world, ignore_errors=True)
    assert [(e["topic"], e["node"], e["reason"]) for e in got] == [
        ("node.up", 2, "zmq"), ("node.down", 2, "zmq"), ("node.up", 3, "zmq"),
        ("node.down", 3, "zmq")]
