"""The ``clusterbus`` command line.

Every command that talks to a running daemon takes ``-c FILE`` to find its endpoints (the
embedded default otherwise). Errors are one clear line on stderr and a non-zero exit code:
1 for a runtime failure, 2 for bad arguments or configuration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import ipaddress
import json
import logging
import sys
from typing import Any

import click

from .config import Config, load_config
from .errors import ClusterbusError, ConfigError
from .events import MembershipEvent

__all__ = ["main"]

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


def _config(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise BadConfig(str(exc)) from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


config_option = click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    metavar="FILE", help="TOML configuration (default: the embedded single-node default).",
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
    """


@main.command()
@config_option
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default=None, help="Override [daemon] log_level.")
def run(config_path: str | None, log_level: str | None) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT.

    With no -c it runs the embedded default: node 1, the netlink source (group 22),
    the node map and a publisher on tcp://127.0.0.1:7661.
    """
    from .daemon import run_daemon

    cfg = _config(config_path)
    _setup_logging(log_level or cfg["daemon"]["log_level"])
    sys.exit(run_daemon(cfg))


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate a configuration file, plugins' sections included, and exit.

    Exit code 0 when valid; 2 with a message naming the file and the key when the
    configuration is wrong; 1 when a plugin fails to load.
    """
    from .daemon import Daemon

    cfg = _config(config_path)
    daemon = Daemon(cfg)
    try:
        daemon.plugins.load_entrypoints(file=cfg.file)
        daemon.plugins.configure(cfg, daemon.engine.cluster)
    except ConfigError as exc:
        raise BadConfig(str(exc)) from None
    except ClusterbusError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{cfg.file}: OK (node {cfg.node}; plugins: {', '.join(daemon.plugins.names())})")


def _event_line(event: Any) -> str:
    d = event.to_dict()
    if isinstance(event, MembershipEvent):
        addrs = ",".join(event.addrs) or "-"
        return (f"{event.seq:>8} {event.topic:<16} node={event.node} addrs={addrs} "
                f"view={event.view} origin={event.origin} reason={event.reason}")
    rest = " ".join(f"{k}={v}" for k, v in d.items() if k not in ("seq", "origin", "time"))
    return f"{event.seq:>8} {event.topic:<16} origin={event.origin} {rest}"


@main.command()
@config_option
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
def events(config_path: str | None, prefixes: tuple[str, ...], as_json: bool, initial: bool,
           count: int | None, timeout: float | None, follow: bool) -> None:
    """Print events from a running daemon, live, in order, without gaps.

    Missed events (a restart of this command, a slow terminal) are repaired from the
    daemon's replay endpoint, so seq numbers are continuous. When that is impossible (the
    daemon restarted, or forgot them) the state is re-read: --json prints it as
    {"snapshot": {"nodes": [...], ...}}, the text output as a "snapshot" line.
    """
    from clusterbus.bus.client import Snapshot, Subscriber, item_to_dict

    if count == 0 and not initial:
        raise click.BadParameter("0 (nothing to print) is valid with --snapshot only",
                                 param_hint="'--count'")
    cfg = _config(config_path)

    async def go() -> None:
        n = 0
        async with Subscriber.from_config(cfg, prefixes=prefixes, initial_snapshot=initial,
                                          raise_when_dead=not follow) as sub:
            async for item in sub:
                if isinstance(item, Snapshot):
                    if as_json:
                        click.echo(json.dumps({"snapshot": item.to_dict()},
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
                click.echo(json.dumps(item_to_dict(item), separators=(",", ":"))
                           if as_json else _event_line(item))
                n += 1
                if count is not None and n >= count:
                    return

    try:
        asyncio.run(asyncio.wait_for(go(), timeout))
    except (TimeoutError, asyncio.TimeoutError):
        raise click.ClickException(f"no (more) events within {timeout} s") from None
    except ConfigError as exc:  # e.g. an ephemeral [bus] port nobody can connect to
        raise BadConfig(str(exc)) from None
    except ClusterbusError as exc:
        raise click.ClickException(str(exc)) from None
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
def emit(what: str, node: int, addrs: tuple[str, ...], incarnation: int, via: str,
         pid: int | None, config_path: str | None) -> None:
    """Announce a membership change: WHAT is node-up, node-down, node-coming-up or
    node-going-down.

    \b
    clusterbus emit node-up 3 --addr 10.0.0.3 --addr fd00::3
    clusterbus emit node-down 3 --via zmq
    """
    cfg = _config(config_path)
    topic = MEMBERSHIP_COMMANDS[what]
    try:
        if via == "netlink":
            from .netlink import sender
            from .view import NodeState

            sender.send(NodeState.from_topic(topic), node, addrs, incarnation,
                        group=cfg["netlink"]["group"])
        elif via == "signal":
            from .sources import sigcluster
            from .view import NodeState

            if addrs or incarnation:
                raise click.UsageError("--via signal carries only the state and node number")
            if pid is None:
                pid = int(asyncio.run(_request_status(cfg, 2.0))["pid"])
            signo = sigcluster.parse_signal(cfg["sigcluster"]["signal"])
            sigcluster.sigqueue(pid, signo,
                                sigcluster.encode_payload(NodeState.from_topic(topic), node))
        else:
            from clusterbus.bus.client import connectable
            from clusterbus.bus.client import emit as zmq_emit

            asyncio.run(zmq_emit(connectable(cfg["bus"]["ingest"]), topic, node, addrs,
                                 incarnation))
    except (OSError, ClusterbusError, ValueError, TimeoutError) as exc:
        raise click.ClickException(f"cannot send via {via}: {exc}") from None


async def _request_status(cfg: Config, timeout: float) -> dict[str, Any]:
    from clusterbus.bus.client import connectable, fetch_status

    return await fetch_status(connectable(cfg["bus"]["snapshot"]), timeout=timeout)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option("--timeout", type=float, default=2.0, show_default=True,
              help="Seconds to wait for the daemon.")
def status(config_path: str | None, as_json: bool, timeout: float) -> None:
    """Show a running daemon's view, services (VRRP instances, sources) and counters."""
    cfg = _config(config_path)
    try:
        st = asyncio.run(_request_status(cfg, timeout))
    except (TimeoutError, asyncio.TimeoutError, OSError, ClusterbusError) as exc:
        raise click.ClickException(
            f"no daemon answered on {cfg['bus']['snapshot']} ({str(exc) or 'timeout'})") from None
    if as_json:
        click.echo(json.dumps(st, indent=2, default=str))
        return
    from .statusview import render_status

    render_status(st)


@main.command()
@config_option
@click.option("--timeout", type=float, default=2.0, show_default=True,
              help="Seconds to wait for the daemon's pid.")
def reload(config_path: str | None, timeout: float) -> None:
    """Make a running daemon re-read its configuration file (sends it SIGHUP).

    Services apply what they can at run time (VRRP priorities: a master whose priority
    drops below a peer's hands over at once with a priority-0 advert); a bad file is
    refused by the daemon, which keeps running on its current configuration.
    """
    import os
    import signal

    cfg = _config(config_path)
    try:
        pid = int(asyncio.run(_request_status(cfg, timeout))["pid"])
        os.kill(pid, signal.SIGHUP)
    except (TimeoutError, asyncio.TimeoutError, OSError, ClusterbusError, KeyError) as exc:
        raise click.ClickException(f"cannot reach the daemon: {str(exc) or 'timeout'}") from None
    click.echo(f"sent SIGHUP to clusterbus pid {pid}")


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
        except (TimeoutError, asyncio.TimeoutError, OSError, ClusterbusError):
            rows = None
    if rows is None:
        from .pluginhost import PluginHost

        host = PluginHost(enable=cfg["plugins"]["enable"], disable=cfg["plugins"]["disable"])
        try:
            host.load_entrypoints(file=cfg.file)
        except ConfigError as exc:
            raise BadConfig(str(exc)) from None
        except ClusterbusError as exc:
            raise click.ClickException(str(exc)) from None
        rows = [dataclasses.asdict(p) for p in host.describe()]
        source = "local"
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"clusterbus plugins ({source})")
    for col in ("plugin", "distribution", "failures", "hooks"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["distribution"], str(r["failures"]), "\n".join(r["hooks"]))
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

    Exit code 1 when no node holds it.
    """
    try:
        canon = str(ipaddress.ip_address(addr))
    except ValueError:
        raise click.BadParameter(f"{addr!r} is not an IPv4 or IPv6 address",
                                 param_hint="ADDR") from None
    cfg = _config(config_path)
    table: dict[str, list[str]] | None = None
    if not local:
        try:
            from clusterbus.bus.client import connectable, fetch_snapshot

            snap = asyncio.run(fetch_snapshot(connectable(cfg["bus"]["snapshot"]), timeout=1.0))
            table = {k: list(v) for k, v in snap.nodemap.items()}
        except (TimeoutError, asyncio.TimeoutError, OSError, ClusterbusError, ValueError):
            table = None
    if table is None:
        from clusterbus.plugins.nodemap import config_nodes

        try:
            nodes = config_nodes(cfg)
        except ConfigError as exc:
            raise BadConfig(str(exc)) from None
        table = {str(n): list(a) for n, a in nodes.items()}
    for node, addrs in table.items():
        if canon in addrs:
            click.echo(node)
            return
    click.echo(f"{canon}: no node holds this address", err=True)
    sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
