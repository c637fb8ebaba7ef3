"""``clusterbus ipvs``: one-shot apply and show (registered through ``clusterbus.cli``)."""

from __future__ import annotations

import json
from typing import Any

import click

from clusterbus import ConfigError, NodemapConfig
from clusterbus.cli import (
    CONFIG_ENV,
    SYSTEM_CONFIG,
    BadConfig,
    load_cli_config,
    resolve_config,
)

from .model import IpvsConfig, desired_table, parse
from .table import FORWARD_NAMES, PROTOCOL_NAMES, Entry, Table, diff

__all__ = ["ipvs"]


def _load(path: str | None) -> tuple[IpvsConfig, dict[int, tuple[str, ...]]]:
    cfg = load_cli_config(path)  # -c, $CLUSTERBUS_CONFIG, /etc/..., as every command
    try:
        section = cfg.plugin_sections.get("ipvs")
        if section is None:
            raise BadConfig(f"{cfg.file}: no [ipvs] section")
        nodes = dict(NodemapConfig.from_config(cfg).nodes)
        return parse(section, file=cfg.file, node_addrs=lambda n: nodes.get(n, ())), nodes
    except ConfigError as exc:
        raise BadConfig(str(exc)) from None


def _desired(cfg: IpvsConfig, nodes: dict[int, tuple[str, ...]]) -> Table:
    owner = {a: n for n, addrs in nodes.items() for a in addrs}
    table, problems = desired_table(cfg, node_addrs=lambda n: nodes.get(n, ()),
                                    node_of=owner.get, is_down=lambda n: False)
    for p in problems:
        click.echo(f"warning: {p}", err=True)
    return table


def _kernel() -> Any:
    from .kernel import IpvsKernelError, Kernel

    try:
        return Kernel()
    except (IpvsKernelError, OSError) as exc:
        raise click.ClickException(f"cannot reach kernel IPVS: {exc}") from None


@click.group()
def ipvs() -> None:
    """Kernel IPVS: apply the [ipvs] configuration, show desired vs kernel."""


@ipvs.command()
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False), default=None,
              help=f"configuration file with an [ipvs] section (default: ${CONFIG_ENV}, "
                   f"else {SYSTEM_CONFIG} when it exists)")
@click.option("--dry-run", is_flag=True, help="print the operations, change nothing")
@click.option("--no-prune", is_flag=True, help="keep kernel services that are not configured")
def apply(path: str | None, dry_run: bool, no_prune: bool) -> None:
    """One-shot reconcile: like ``ipvsadm -R``, but only the differences are sent."""
    cfg, nodes = _load(path)
    want = _desired(cfg, nodes)
    with _kernel() as kernel:
        plan = diff(kernel.dump(), want, prune=cfg.prune and not no_prune)
        for op in plan.ops:
            click.echo(op.describe())
        if dry_run or not plan:
            click.echo(f"{len(plan)} operation(s){' (dry run)' if dry_run else ''}")
            return
        result = kernel.apply(plan)
    for err in result.errors:
        click.echo(f"error: {err}", err=True)
    click.echo(f"{plan.added} added, {plan.removed} removed, {plan.changed} changed "
               f"in {result.duration * 1000:.1f} ms")
    if result.errors:
        raise click.ClickException(f"{len(result.errors)} operation(s) refused by the kernel")


def _entry_data(entry: Entry) -> dict[str, Any]:
    s = entry.service
    return {
        "scheduler": s.scheduler, "flags": s.flags, "persistence_timeout": s.timeout,
        "netmask": s.netmask, "pe": s.pe_name,
        "real_servers": {str(d): {"forward": FORWARD_NAMES.get(d.forward, str(d.forward)),
                                  "weight": d.weight, "upper_threshold": d.u_threshold,
                                  "lower_threshold": d.l_threshold}
                         for d in entry.dests.values()},
    }


@ipvs.command()
@click.option("-c", "--config", "path", type=click.Path(dir_okay=False), default=None,
              help=f"configuration file (default: ${CONFIG_ENV}, else {SYSTEM_CONFIG} when "
                   "it exists, else the embedded default, i.e. nothing desired)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def show(path: str | None, as_json: bool) -> None:
    """Desired vs kernel table; differences are marked (+ missing, - extra, ~ differs)."""
    if resolve_config(path)[0] is not None:
        cfg, nodes = _load(path)
        want = _desired(cfg, nodes)
    else:
        want = {}
    with _kernel() as kernel:
        have = kernel.dump()
    rows: list[dict[str, Any]] = []
    for key in sorted(set(want) | set(have)):
        w, h = want.get(key), have.get(key)
        wd = _entry_data(w) if w else None
        hd = _entry_data(h) if h else None
        mark = "+" if hd is None else "-" if wd is None else ("=" if wd == hd else "~")
        rows.append({"service": str(key), "protocol": PROTOCOL_NAMES.get(key.protocol, ""),
                     "mark": mark, "desired": wd, "kernel": hd})
        if not as_json:
            _print_row(str(key), mark, wd, hd)
    if as_json:
        click.echo(json.dumps({"services": rows,
                               "in_sync": all(r["mark"] == "=" for r in rows)}))


def _print_row(service: str, mark: str, wd: dict[str, Any] | None,
               hd: dict[str, Any] | None) -> None:
    """One service and its real servers, each marked (``+`` missing, ``-`` extra, ...)."""
    data = wd if wd is not None else hd
    assert data is not None  # a row exists because one side has the service
    click.echo(f"{mark} {service} {data['scheduler']}")
    kd: dict[str, dict[str, Any]] = hd["real_servers"] if hd is not None else {}
    wr: dict[str, dict[str, Any]] = wd["real_servers"] if wd is not None else {}
    for rs in sorted(set(kd) | set(wr)):
        m = "+" if rs not in kd else "-" if rs not in wr else "=" if kd[rs] == wr[rs] else "~"
        d = wr.get(rs) or kd[rs]
        have_w = f" (kernel weight {kd[rs]['weight']})" if m == "~" else ""
        click.echo(f"  {m} -> {rs} {d['forward']} weight {d['weight']}{have_w}")
