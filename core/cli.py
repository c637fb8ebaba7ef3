"""The ``clusterbus`` command line.

Every command that reads the configuration (the daemon, and the clients that find its
endpoints in it) finds it the same way (:func:`resolve_config`): ``-c FILE``, else the
file named by ``$CLUSTERBUS_CONFIG``, else /etc/clusterbus/clusterbus.toml when it
exists, else the embedded default. Errors are one clear line on stderr and a non-zero exit
code: 1 for a runtime failure, 2 for bad arguments or configuration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import ipaddress
import json
import logging
import os
import sys
from typing import Any

import click

from .config import Config, load_config
from .errors import ClusterbusError, ConfigError, PluginError
from .events import MembershipEvent
from .keygen import client_key_files, curve_options, keygen

__all__ = ["main", "BadConfig", "config_option", "resolve_config", "load_cli_config",
           "CONFIG_ENV", "SYSTEM_CONFIG"]

log = logging.getLogger("clusterbus")

MEMBERSHIP_COMMANDS = {
    "node-up": "node.up",
    "node-down": "node.down",
    "node-coming-up": "node.coming_up",
    "node-going-down": "node.going_down",
}


class BadConfig(click.ClickException):
    """A configuration error: exit code 2, like a usage error."""

    exit_code = 2


#: The environment variable naming the configuration file when ``-c`` is not given.
CONFIG_ENV = "CLUSTERBUS_CONFIG"
#: The system-wide configuration, read when it exists and neither ``-c`` nor
#: ``$CLUSTERBUS_CONFIG`` names a file.
SYSTEM_CONFIG = "/etc/clusterbus/clusterbus.toml"


def resolve_config(path: str | None) -> tuple[str | None, str]:
    """Which configuration a command reads: ``(path, origin)``.

    ``path`` (``-c``) wins, then ``$CLUSTERBUS_CONFIG`` (when set and not empty), then
    :data:`SYSTEM_CONFIG` when it exists; ``(None, "default")`` means the embedded default.
    ``origin`` is ``"-c"``, ``"$CLUSTERBUS_CONFIG"``, ``"system"`` or ``"default"``.
    """
    if path:
        return path, "-c"
    env = os.environ.get(CONFIG_ENV)
    if env:
        return env, f"${CONFIG_ENV}"
    if os.path.exists(SYSTEM_CONFIG):
        return SYSTEM_CONFIG, "system"
    return None, "default"


def load_cli_config(path: str | None, *, host_checks: bool = False) -> Config:
    """Resolve (:func:`resolve_config`) and load the configuration for a command.

    :param host_checks: also check this host (``run`` and ``check-config``: one
        validation path, so they cannot disagree).
    :raises BadConfig: unreadable or invalid (exit code 2); names the file, and
        ``$CLUSTERBUS_CONFIG`` when the name came from there.
    """
    resolved, origin = resolve_config(path)
    try:
        return load_config(resolved, host_checks=host_checks)
    except ConfigError as exc:
        note = f" (named by {origin})" if origin.startswith("$") else ""
        raise BadConfig(f"{exc}{note}") from None


_config = load_cli_config


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    metavar="FILE",
    help=f"TOML configuration. Default: ${CONFIG_ENV} when set, else {SYSTEM_CONFIG} when "
         "it exists, else the embedded single-node default.",
)


class _Main(click.Group):
    """Adds the sub-commands that installed plugins register (entry-point group clusterbus.cli)."""

    def _extra(self) -> dict[str, click.Command]:
        out: dict[str, click.Command] = {}
        for ep in importlib.metadata.entry_points(group="clusterbus.cli"):
            try:
                cmd = ep.load()
            except Exception as exc:  # a broken plugin must not break the whole CLI
                log.warning("cannot load CLI command %s from %s: %r", ep.name, ep.value, exc)
                continue
            if isinstance(cmd, click.Command):
                out[ep.name] = cmd
        return out

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._extra()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return super().get_command(ctx, name) or self._extra().get(name)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clusterbus")
def main() -> None:
    """clusterbus: cluster-membership events for LVS/IPVS directors.

    One daemon takes node up/down and VRRP transitions from its sources (netlink,
    keepalived's notify FIFO, its own VRRP speaker, the ZeroMQ ingest), lets plugins react
    in order (node map, IPVS, ...) and publishes every event on ZeroMQ.

    \b
    Start:      clusterbus run [-c FILE]
    Watch:      clusterbus events --json
    Test:       clusterbus emit node-down 3
    Inspect:    clusterbus status | plugins | nodemap lookup ADDR
    Validate:   clusterbus check-config -c FILE

    \b
    Configuration, for every command (daemon and clients alike):
      -c FILE, else $CLUSTERBUS_CONFIG, else /etc/clusterbus/clusterbus.toml
      when it exists, else the embedded default (see `clusterbus run --help`).
    """


@main.command()
@config_option
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default=None, help="Override [daemon] log_level.")
def run(config_path: str | None, log_level: str | None) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT.

    Without -c, $CLUSTERBUS_CONFIG or /etc/clusterbus/clusterbus.toml it runs the
    embedded default: node 1, the netlink source (group 22), the node map and a publisher
    on tcp://127.0.0.1:7661.

    "running" is logged once every endpoint is bound and every source open. Exit code 0
    after SIGTERM/SIGINT; 2 when the configuration is wrong or cannot work; 1 for a
    runtime failure (e.g. a port already in use). The cluster signal (SIGRTMIN+2 or
    [sigcluster] signal) is ignored unless [sigcluster] reads it: it never kills the daemon.
    """
    from .daemon import run_daemon
    from .sources import sigcluster

    # first: a stray cluster signal must not kill us while we read the configuration
    sigcluster.ignore(sigcluster.parse_signal(sigcluster.DEFAULT_SIGNAL))
    cfg = _config(config_path, host_checks=True)
    _setup_logging(log_level or cfg["daemon"]["log_level"])
    sys.exit(run_daemon(cfg))


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate a configuration file, plugins' sections included, and exit.

    Exit code 0 when valid; 2 with a message naming the file and the key when the
    configuration is wrong or a plugin fails to load.
    """
    from .daemon import Daemon

    cfg = _config(config_path, host_checks=True)
    daemon = Daemon(cfg)
    try:
        daemon.plugins.load_entrypoints(file=cfg.file)
        daemon.plugins.configure(cfg, daemon.engine.cluster)
    except (ConfigError, PluginError) as exc:
        raise BadConfig(str(exc)) from None
    except ClusterbusError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{cfg.file}: OK (node {cfg.node}; plugins: {', '.join(daemon.plugins.names())})")


def _text(value: Any) -> str:
    """A field value for a terminal: sequences comma-joined (``-`` when empty), tables as
    ``k=v`` pairs, never a Python repr of a tuple."""
    if isinstance(value, dict):
        return ",".join(f"{k}={_text(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(_text(v) for v in value) or "-"
    if value is None:
        return "-"
    return str(value)


def _event_line(event: Any) -> str:
    d = event.to_dict()
    if isinstance(event, MembershipEvent):
        return (f"{event.seq:>8} {event.topic:<16} node={event.node} "
                f"addrs={_text(event.addrs)} view={event.view} origin={event.origin} "
                f"reason={event.reason}")
    rest = " ".join(f"{k}={_text(v)}" for k, v in d.items()
                    if k not in ("seq", "origin", "time"))
    return f"{event.seq:>8} {event.topic:<16} origin={event.origin} {rest}"


main.add_command(keygen)


@main.command()
@config_option
@curve_options
@click.option("--filter", "prefixes", multiple=True, metavar="PREFIX",
              help="Topic prefix to receive (repeatable), e.g. node. or vrrp.; default all.")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object per line; a resync prints {"snapshot": {...}} first.')
@click.option("--snapshot", "initial", is_flag=True,
              help="Start with the daemon's current state (a snapshot record).")
@click.option("--count", type=click.IntRange(min=0), default=None,
              help="Exit after N events (0 with --snapshot: the snapshot alone).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Give up (exit 1) unless the wanted events arrived within this many "
                   "seconds.")
@click.option("--follow", is_flag=True,
              help="Keep waiting when the daemon is silent or restarts (default: exit 1 "
                   "after three missed heartbeats).")
@click.option("--connect", "connect", multiple=True, metavar="PUB[,SNAPSHOT[,KEYFILE]]",
              help="Read this daemon instead of the configured one (repeatable: the "
                   "streams are merged, gaps repaired per daemon). SNAPSHOT defaults to "
                   "PUB's port + 2 (tcp only); KEYFILE is that daemon's public .key "
                   "(default: --server-key).")
def events(config_path: str | None, certificate: str | None, server_key: str | None,
           prefixes: tuple[str, ...], as_json: bool, initial: bool,
           count: int | None, timeout: float | None, follow: bool,
           connect: tuple[str, ...]) -> None:
    """Print events from a running daemon, live, in order, without gaps.

    Missed events (a restart of this command, a slow terminal) are repaired from the
    daemon's replay endpoint, so seq numbers are continuous. When that is impossible (the
    daemon restarted, or forgot them) the state is re-read: --json prints it as
    {"snapshot": {"nodes": [...], ...}}, the text output as a "snapshot" line.
    """
    from clusterbus.bus.client import (
        MultiSubscriber,
        RequestTimeout,
        Snapshot,
        Subscriber,
        item_to_dict,
        split_connect,
    )
    from clusterbus.statusview import json_safe

    if count == 0 and not initial:
        raise click.BadParameter("0 (nothing to print) is valid with --snapshot only",
                                 param_hint="'--count'")
    try:
        daemons = [split_connect(c) for c in connect]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--connect'") from None
    cfg = _config(config_path)

    async def go() -> None:
        n = 0
        options: dict[str, Any] = dict(
            prefixes=prefixes, initial_snapshot=initial, raise_when_dead=not follow,
            **client_key_files(cfg["bus"], certificate, server_key))
        stream: Subscriber | MultiSubscriber = (
            MultiSubscriber(daemons, **options) if daemons
            else Subscriber.from_config(cfg, **options))
        async with stream as sub:
            waiting = False
            while True:
                try:
                    item = await sub.next()
                except RequestTimeout as exc:
                    # The daemon did not answer a repair request (it is down, or was
                    # restarted -- maybe killed -- while answering). --follow keeps
                    # waiting: the next call asks again, the new run's snapshot follows.
                    if not follow:
                        raise
                    if not waiting:
                        click.echo(f"clusterbus events: {exc}; still trying (--follow)",
                                   err=True)
                    waiting = True
                    continue
                waiting = False
                if isinstance(item, Snapshot):
                    if as_json:
                        click.echo(json.dumps({"snapshot": json_safe(item.to_dict())},
                                              separators=(",", ":")))
                    else:
                        click.echo(f"{item.seq:>8} snapshot         nodes={len(item.nodes)} "
                                   f"view={item.view} reason={item.reason}")
                    if item.reason != "initial":
                        click.echo(f"clusterbus events: resynchronised from a snapshot at "
                                   f"seq {item.seq} ({item.reason}): events before it were "
                                   f"lost", err=True)
                    if count == 0:
                        return
                    continue
                click.echo(json.dumps(json_safe(item_to_dict(item)), separators=(",", ":"))
                           if as_json else _event_line(item))
                n += 1
                if count is not None and n >= count:
                    return

    try:
        asyncio.run(asyncio.wait_for(go(), timeout))
    except ConfigError as exc:  # e.g. an ephemeral [bus] port nobody can connect to
        raise BadConfig(str(exc)) from None
    except ClusterbusError as exc:  # before TimeoutError: RequestTimeout is one too
        raise click.ClickException(str(exc)) from None
    except TimeoutError:
        raise click.ClickException(f"no (more) events within {timeout} s") from None
    except KeyboardInterrupt:
        pass


def _addr(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for v in values:
        try:
            out.append(str(ipaddress.ip_address(v)))
        except ValueError:
            raise click.BadParameter(f"{v!r} is not an IPv4 or IPv6 address") from None
    return tuple(out)


@main.command()
@click.argument("what", type=click.Choice(sorted(MEMBERSHIP_COMMANDS)))
@click.argument("node", type=click.IntRange(0, 2**32 - 1))
@click.option("--addr", "addrs", multiple=True, callback=_addr, metavar="ADDR",
              help="An address of the node (repeatable; IPv4 or IPv6).")
@click.option("--incarnation", type=click.IntRange(0, 2**32 - 1), default=0,
              help="The node's incarnation (boot) number; 0 = unknown.")
@click.option("--via", type=click.Choice(["netlink", "zmq", "signal"]), default="netlink",
              show_default=True,
              help="Send on the netlink group, to the daemon's ingest, or as a queued signal.")
@click.option("--pid", type=click.IntRange(min=1), default=None,
              help="With --via signal: the daemon's pid (default: ask the daemon).")
@config_option
@curve_options
def emit(what: str, node: int, addrs: tuple[str, ...], incarnation: int, via: str,
         pid: int | None, config_path: str | None, certificate: str | None,
         server_key: str | None) -> None:
    """Announce a membership change: WHAT is node-up, node-down, node-coming-up or
    node-going-down.

    \b
    clusterbus emit node-up 3 --addr 10.0.0.3 --addr fd00::3
    clusterbus emit node-down 3 --via zmq

    Nothing is sent, and the exit code is 1, when nothing would take the event in:
    --via netlink: no socket of this network namespace is a member of the [netlink]
    group, or this user's uid is not in the daemon's (else the file's) allowed_uids;
    --via signal: the daemon has [sigcluster] off (it ignores the signal) or the process
    would not read the signal.
    """
    cfg = _config(config_path)
    topic = MEMBERSHIP_COMMANDS[what]
    try:
        if via == "netlink":
            from .netlink import sender
            from .view import NodeState

            group = _netlink_receivable(cfg)
            sender.send(NodeState.from_topic(topic), node, addrs, incarnation, group=group)
        elif via == "signal":
            from .sources import sigcluster
            from .view import NodeState

            if addrs or incarnation:
                raise click.UsageError("--via signal carries only the state and node number")
            pid, signo = _signal_target(cfg, pid, certificate, server_key)
            sigcluster.sigqueue(pid, signo,
                                sigcluster.encode_payload(NodeState.from_topic(topic), node))
        else:
            from clusterbus.bus.client import connectable
            from clusterbus.bus.client import emit as zmq_emit

            asyncio.run(zmq_emit(connectable(cfg["bus"]["ingest"]), topic, node, addrs,
                                 incarnation,
                                 **client_key_files(cfg["bus"], certificate, server_key)))
    except ConfigError as exc:
        raise BadConfig(str(exc)) from None
    except (OSError, ClusterbusError, ValueError, TimeoutError) as exc:
        raise click.ClickException(f"cannot send via {via}: {exc}") from None


def _section(item: str) -> str:
    """``"bus"`` -> ``[bus]``; ``"vrrp: VI_1 vrid"`` -> ``[vrrp] VI_1 vrid``."""
    section, _, detail = item.partition(": ")
    return f"[{section}] {detail}" if detail else f"[{section}]"


def _daemon_status(cfg: Config, timeout: float, certificate: str | None = None,
                   server_key: str | None = None) -> dict[str, Any] | None:
    """The daemon's STATUS reply, or None when no daemon answers."""
    try:
        return asyncio.run(_request_status(cfg, timeout, certificate, server_key))
    except (TimeoutError, OSError, ClusterbusError, ValueError):
        return None


def _netlink_members(group: int) -> int | None:
    """Sockets of this network namespace in NETLINK_USERSOCK multicast ``group`` (from
    /proc/net/netlink, whose Groups column holds groups 1..32); None when unreadable."""
    from .netlink.message import NETLINK_USERSOCK

    try:
        with open("/proc/net/netlink") as f:
            rows = [line.split() for line in f][1:]
    except OSError:
        return None
    bit = 1 << (group - 1)
    return sum(1 for r in rows
               if len(r) > 3 and r[1] == str(NETLINK_USERSOCK) and int(r[3], 16) & bit)


def _netlink_receivable(cfg: Config) -> int:
    """The group to send to, once it is known that someone will take the message in.

    :raises click.ClickException: nobody listens, or the listener would drop our uid.
    """
    group = int(cfg["netlink"]["group"])
    allowed = list(cfg["netlink"]["allowed_uids"])
    where = f"[netlink] allowed_uids of {cfg.file}"
    st = _daemon_status(cfg, 0.5) or {}
    nl = (st.get("services") or {}).get("netlink")
    if isinstance(nl, dict) and nl.get("listening") and nl.get("group") == group:
        allowed = list(nl.get("allowed_uids", allowed))
        where = f"the daemon's (pid {st.get('pid')}) [netlink] allowed_uids"
    members = _netlink_members(group)
    if members == 0:
        raise click.ClickException(
            f"nothing sent: no socket in this network namespace listens on netlink group "
            f"{group} (is the daemon running here, with [netlink] enabled and group = "
            f"{group}?)")
    uid = os.getuid()
    if uid not in allowed:
        raise click.ClickException(
            f"nothing sent: the daemon would drop it: uid {uid} is not in {where} "
            f"{sorted(allowed)} (run as root, e.g. with sudo, or add the uid)")
    if members is None:
        click.echo("clusterbus emit: cannot read /proc/net/netlink: whether anyone listens "
                   f"on group {group} is unknown", err=True)
    return group


def _signal_target(cfg: Config, pid: int | None, certificate: str | None = None,
                   server_key: str | None = None) -> tuple[int, int]:
    """The pid and signal for ``emit --via signal``, once it is known that the process
    will read the signal (rather than ignore it or die of it).

    :raises click.ClickException: no daemon to ask and no --pid, [sigcluster] off, or the
        process would not read the signal.
    """
    from .sources import sigcluster

    signo = sigcluster.parse_signal(cfg["sigcluster"]["signal"])
    st = _daemon_status(cfg, 2.0, certificate, server_key)
    if st is None and pid is None:
        raise click.ClickException(
            f"no daemon answered on {cfg['bus']['snapshot']}: its pid is unknown (give --pid)")
    if st is not None and (pid is None or int(st["pid"]) == pid):
        pid = int(st["pid"])
        sc = (st.get("services") or {}).get("sigcluster")
        if not isinstance(sc, dict):
            raise click.ClickException(
                f"nothing sent: the daemon (pid {pid}) has [sigcluster] off, so it ignores "
                f"{sigcluster.signal_name(signo)}; enable [sigcluster] or use --via netlink "
                "or --via zmq")
        signo = int(sc["signal"])
    assert pid is not None
    name = sigcluster.signal_name(signo)
    try:
        how = sigcluster.disposition(pid, signo)
    except OSError:
        raise click.ClickException(f"nothing sent: no process {pid}") from None
    if how == "ignored":
        raise click.ClickException(
            f"nothing sent: pid {pid} ignores {name} (a clusterbus daemon with [sigcluster] "
            "off does)")
    if how == "default":
        raise click.ClickException(
            f"nothing sent: pid {pid} neither reads nor handles {name}; it would die of it")
    return pid, signo


async def _request_status(cfg: Config, timeout: float, certificate: str | None = None,
                          server_key: str | None = None) -> dict[str, Any]:
    from clusterbus.bus.client import connectable, fetch_status

    return await fetch_status(connectable(cfg["bus"]["snapshot"]), timeout=timeout,
                              **client_key_files(cfg["bus"], certificate, server_key))


@main.command()
@config_option
@curve_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option("--timeout", type=float, default=2.0, show_default=True,
              help="Seconds to wait for the daemon.")
def status(config_path: str | None, certificate: str | None, server_key: str | None,
           as_json: bool, timeout: float) -> None:
    """Show a running daemon's view, services (VRRP instances, sources) and counters."""
    cfg = _config(config_path)
    try:
        st = asyncio.run(_request_status(cfg, timeout, certificate, server_key))
    except ConfigError as exc:
        raise BadConfig(str(exc)) from None
    except (TimeoutError, OSError, ClusterbusError) as exc:
        raise click.ClickException(
            f"no daemon answered on {cfg['bus']['snapshot']} ({str(exc) or 'timeout'})") from None
    if as_json:
        from .statusview import json_safe

        click.echo(json.dumps(json_safe(st), indent=2))
        return
    from .statusview import render_status

    render_status(st)


@main.command()
@config_option
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Seconds to wait for the daemon's verdict.")
def reload(config_path: str | None, timeout: float) -> None:
    """Make a running daemon re-read its configuration file (SIGHUP) and print its verdict.

    Services apply what they can at run time (VRRP priorities: a master whose priority
    drops below a peer's hands over at once with a priority-0 advert); sections that apply
    at start-up only are named; a bad file is refused by the daemon, which keeps running on
    its current configuration. The file is checked here first (nothing is sent if it is
    bad).

    \b
    Exit code: 0 applied; 1 applied except sections that need a restart or that a
    service refused, or no verdict within --timeout; 2 refused (a bad file, or a daemon
    running on the embedded default: no file to re-read).
    """
    import signal
    import time

    cfg = _config(config_path)
    try:
        st = asyncio.run(_request_status(cfg, min(timeout, 2.0)))
        pid = int(st["pid"])
        before = int((st.get("reload") or {}).get("generation", 0))
        theirs = st.get("config")
        if theirs is not None and os.path.abspath(str(theirs)) != os.path.abspath(cfg.file):
            click.echo(f"clusterbus reload: note: the daemon re-reads its own file {theirs}, "
                       f"not {cfg.file}", err=True)
        os.kill(pid, signal.SIGHUP)
    except (TimeoutError, OSError, ClusterbusError, KeyError, ValueError) as exc:
        raise click.ClickException(
            f"cannot reach the daemon on {cfg['bus']['snapshot']}: "
            f"{str(exc) or 'timeout'}") from None
    deadline = time.monotonic() + timeout
    verdict: dict[str, Any] | None = None
    while verdict is None and time.monotonic() < deadline:
        time.sleep(0.05)
        now = _daemon_status(cfg, max(0.1, min(1.0, deadline - time.monotonic())))
        got = (now or {}).get("reload") or {}
        if int(got.get("generation", 0)) > before:
            verdict = got
    if verdict is None:
        raise click.ClickException(f"sent SIGHUP to pid {pid}, but the daemon reported no "
                                   f"verdict within {timeout} s")
    file = verdict.get("file")
    if verdict.get("result") != "applied":
        click.echo(f"reload refused by pid {pid}, which keeps its running configuration: "
                   f"{verdict.get('reason')}", err=True)
        sys.exit(2)
    restart = list(verdict.get("restart_needed") or ())
    failed = dict(verdict.get("failed") or {})
    click.echo(f"reloaded {file} (pid {pid}): applied"
               + (" except what follows" if restart or failed else ""))
    for name, why in failed.items():
        click.echo(f"  {name} refused its part: {why}")
    if restart:
        click.echo("  needs a restart to apply: " + ", ".join(_section(s) for s in restart))
    if restart or failed:
        sys.exit(1)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--local", is_flag=True, help="Do not ask a running daemon; load plugins here.")
def plugins(config_path: str | None, as_json: bool, local: bool) -> None:
    """List plugins, the hooks each implements, and their failure counts.

    Asks the running daemon (live failure counts); with --local, or when no daemon answers,
    loads the installed plugins here (counts are then 0).
    """
    cfg = _config(config_path)
    rows: list[dict[str, Any]] | None = None
    source = "daemon"
    if not local:
        try:
            rows = asyncio.run(_request_status(cfg, 1.0)).get("plugins")
        except (TimeoutError, OSError, ClusterbusError):
            rows = None
    if rows is None:
        from .pluginhost import PluginHost

        host = PluginHost(enable=cfg["plugins"]["enable"], disable=cfg["plugins"]["disable"])
        try:
            host.load_entrypoints(file=cfg.file)
        except (ConfigError, PluginError) as exc:
            raise BadConfig(str(exc)) from None
        except ClusterbusError as exc:
            raise click.ClickException(str(exc)) from None
        rows = [dataclasses.asdict(p) for p in host.describe()]
        source = "local"
        if not local:
            click.echo(f"clusterbus plugins: no daemon answered on {cfg['bus']['snapshot']}; "
                       "listing the plugins installed here (failure counts 0)", err=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"clusterbus plugins ({source})")
    for col in ("plugin", "distribution", "calls", "slow", "worst ms", "failures", "hooks"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["distribution"], str(r.get("calls", "-")),
                      str(r.get("slow", "-")), str(r.get("worst_ms", "-")), str(r["failures"]),
                      "\n".join(r["hooks"]))
    Console().print(table)


@main.group()
def nodemap() -> None:
    """Query the node map (node number <-> addresses)."""


@nodemap.command("lookup")
@click.argument("addr")
@config_option
@click.option("--local", is_flag=True, help="Use the configuration file only, not the daemon.")
def nodemap_lookup(addr: str, config_path: str | None, local: bool) -> None:
    """Print the node number that holds ADDR (libcluster's cluster_node_num).

    Asks the running daemon (its node map includes addresses learnt at run time). When no
    daemon answers it says so on stderr and answers from the configuration's
    [nodemap.nodes]; --local uses the file only. Exit code 1 when no node holds ADDR.
    """
    try:
        canon = str(ipaddress.ip_address(addr))
    except ValueError:
        raise click.BadParameter(f"{addr!r} is not an IPv4 or IPv6 address",
                                 param_hint="ADDR") from None
    cfg = _config(config_path)
    table: dict[str, list[str]] | None = None
    source = "the daemon"
    if not local:
        try:
            from clusterbus.bus.client import connectable, fetch_snapshot

            snap = asyncio.run(fetch_snapshot(connectable(cfg["bus"]["snapshot"]), timeout=1.0,
                                              **client_key_files(cfg["bus"], None, None)))
            table = {k: list(v) for k, v in snap.nodemap.items()}
        except (TimeoutError, OSError, ClusterbusError, ValueError):
            table = None
    if table is None:
        from .nodemapconfig import NodemapConfig

        try:
            nodes = NodemapConfig.from_config(cfg).nodes
        except ConfigError as exc:
            raise BadConfig(str(exc)) from None
        table = {str(n): list(a) for n, a in nodes.items()}
        source = f"{cfg.file} only ([nodemap.nodes]; addresses learnt at run time unknown)"
        if not local:
            click.echo(f"clusterbus nodemap: no daemon answered on {cfg['bus']['snapshot']}; "
                       f"answering from {source}", err=True)
    for node, addrs in table.items():
        if canon in addrs:
            click.echo(node)
            return
    click.echo(f"{canon}: no node holds this address (according to {source})", err=True)
    sys.exit(1)


# `clusterbus lab`: the two-director lab (clusterbus.lab, docs/lab.md); imports only click
# and the standard library until a lab command runs.
from .lab.cli import lab as _lab  # noqa: E402

main.add_command(_lab)


if __name__ == "__main__":  # pragma: no cover
    main()
