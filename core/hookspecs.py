"""Hook specifications: the plugin author's reference.

Every hook name starts with ``clusterbus_``. Hooks are grouped by phase. Implement them
with :data:`clusterbus.hookimpl` in a module or class registered through the ``clusterbus``
entry-point group (see docs/plugins.md). Any implementation may accept only the arguments
it needs.

General contract:

* Hooks are synchronous and must be fast: they run on the daemon's single asyncio loop.
  A plugin that must wait on I/O returns a service from :func:`clusterbus_services` and
  hands work to it (an ``asyncio.Queue``, for instance).
* Every call is timed: one longer than ``[plugins] slow_call_ms`` (default 50) is counted
  and logged with the plugin's name; ``clusterbus plugins`` and ``clusterbus status`` show
  each plugin's calls, slow calls, failures and worst time.
* Notification hooks are called one implementation at a time: an implementation that
  raises is logged with the plugin's name and counted (``clusterbus plugins`` shows the
  count); the other implementations still run and the daemon keeps going. The log is
  rate-limited: one traceback per plugin and hook per interval, the rest counted. Hook
  wrappers are not supported on notification hooks.
* An implementation of a name that is not a hook here is refused at registration, with
  the closest hook name ("did you mean clusterbus_node_down?").
* Order: pluggy's ``tryfirst``/``trylast``; otherwise the last registered runs first. The
  built-in node map is ``tryfirst`` so every other plugin sees an up-to-date map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from .config import Config
    from .engine import Cluster
    from .events import Event, NodeComingUp, NodeDown, NodeGoingDown, NodeUp, VrrpTransition

hookspec = pluggy.HookspecMarker("clusterbus")


# ---------------------------------------------------------------------------------------
# Start-up and shutdown
# ---------------------------------------------------------------------------------------


@hookspec
def clusterbus_configure(config: Config, section: Mapping[str, Any] | None, cluster: Cluster) -> None:
    """Validate and take the plugin's own configuration, before anything starts.

    Called once per plugin, in the hooks' call order (the last registered first, unless
    ``tryfirst``/``trylast`` say otherwise), before :func:`clusterbus_startup`.

    :param config: the whole validated configuration (``config.file`` names the file).
    :param section: the top-level table named after the plugin (``[nodemap]`` for the
        plugin named ``nodemap``), or ``None`` when the file has none.
    :param cluster: the cluster facade; the view is still empty.
    :returns: nothing.
    :raises clusterbus.ConfigError: the section is invalid; start-up stops and the message
        (which should name ``config.file`` and the key) reaches the operator. Any other
        exception also stops start-up, as a :class:`clusterbus.PluginError`.

    Must not block.
    """


@hookspec(historic=True)
def clusterbus_startup(cluster: Cluster) -> None:
    """The daemon is up: here is the live cluster.

    Historic: a plugin registered later (at run time) is called at once with the same
    ``cluster`` object, so it sees the live view and node map, never a stale copy.

    :param cluster: the live :class:`clusterbus.Cluster` (view, node map, ``emit``).
    :returns: nothing.

    Must not block. Exceptions are logged and counted; the daemon keeps running.
    """


@hookspec
def clusterbus_services(cluster: Cluster) -> list[Callable[[], Awaitable[None]]] | None:
    """Return long-running async services the daemon should run for this plugin.

    Each item is an ``async def`` function taking no arguments. The daemon runs them in its
    ``asyncio.TaskGroup`` and cancels them on shutdown (they must let ``CancelledError``
    propagate). A service that raises is logged with the plugin's name and counted; it is
    not restarted, and the daemon keeps running.

    :param cluster: the live cluster.
    :returns: a list of coroutine functions, or ``None``.

    Called once, after :func:`clusterbus_startup`. Must not block.
    """


@hookspec
def clusterbus_reload(config: Config, section: Mapping[str, Any] | None, cluster: Cluster) -> None:
    """The daemon re-read its configuration file (SIGHUP, ``clusterbus reload``).

    Called once per plugin with its own section of the new file, after the core sections
    were validated and handed to the services that apply them at run time (the VRRP
    speaker; other changed core sections are logged as needing a restart). Apply what can
    change at run time (the IPVS applier swaps
    its desired table and reconciles); a plugin that does not implement this hook keeps
    the configuration it started with, and a changed section is reported as needing a
    restart. A plugin that applies only part of its section puts what it could not apply
    into its :func:`clusterbus_status` as ``restart_needed`` (key -> what changed): the
    reload's verdict lists those.

    :param config: the new, validated configuration (core sections).
    :param section: the plugin's table in the new file, or ``None`` when it has none.
    :param cluster: the live cluster.
    :returns: nothing.
    :raises clusterbus.ConfigError: the new section is invalid: the plugin must keep its
        current configuration; the error is logged with the file and key and the other
        plugins still reload.

    Must not block (hand the work to the plugin's service).
    """


@hookspec
def clusterbus_status(cluster: Cluster) -> dict[str, Any] | None:
    """Report the plugin's state for ``clusterbus status``.

    :param cluster: the live cluster.
    :returns: plain data (dicts, lists, str, int, float, bool, None) that msgpack and JSON
        can carry, shown under the plugin's name; or ``None`` for nothing to report.

    Called on every status request. Must not block.
    """


@hookspec
def clusterbus_shutdown(cluster: Cluster) -> None:
    """The daemon is stopping (SIGTERM/SIGINT); release what the plugin holds.

    :param cluster: the cluster, still readable.
    :returns: nothing.

    Called once, after services are cancelled. May block briefly (up to a second).
    """


# ---------------------------------------------------------------------------------------
# Membership
# ---------------------------------------------------------------------------------------


@hookspec
def clusterbus_node_up(event: NodeUp, cluster: Cluster) -> None:
    """A node became a full member (or came back with a new incarnation or new addresses).

    Called once per real view change, never for a duplicate report.

    :param event: the :class:`clusterbus.NodeUp`; ``event.node``, ``event.addrs``,
        ``event.view``, ``event.seq``, ``event.joined``, ``event.reason``.
    :param cluster: the cluster; its view already includes this change.
    :returns: nothing.

    Must not block.
    """


@hookspec
def clusterbus_node_down(event: NodeDown, cluster: Cluster) -> None:
    """A node left the cluster or died.

    Called once per real view change; a node-down for a node already down calls nothing.

    :param event: the :class:`clusterbus.NodeDown`; ``event.node``, ``event.addrs`` (the
        last addresses known), ``event.view``, ``event.seq``, ``event.left``.
    :param cluster: the cluster; its view already includes this change.
    :returns: nothing.

    Must not block.
    """


@hookspec
def clusterbus_node_coming_up(event: NodeComingUp, cluster: Cluster) -> None:
    """A node is joining but is not a full member yet (prepare, do not route to it).

    :param event: the :class:`clusterbus.NodeComingUp`.
    :param cluster: the cluster; its view already includes this change.
    :returns: nothing.

    Must not block.
    """


@hookspec
def clusterbus_node_going_down(event: NodeGoingDown, cluster: Cluster) -> None:
    """A node announced that it is leaving (drain it: stop sending it new work).

    :param event: the :class:`clusterbus.NodeGoingDown`.
    :param cluster: the cluster; its view already includes this change.
    :returns: nothing.

    Must not block.
    """


@hookspec
def clusterbus_event(event: Event, cluster: Cluster) -> None:
    """Every event the daemon produces, of every topic, after its specific hook.

    :param event: any :class:`clusterbus.Event`; dispatch on ``event.topic``.
    :param cluster: the cluster.
    :returns: nothing.

    Called after the topic's own hook (``clusterbus_node_up`` ...) and before the event is
    published on ZeroMQ. Must not block.
    """


@hookspec(firstresult=True)
def clusterbus_resolve_node(addr: str, cluster: Cluster) -> int | None:
    """Map an address to a node number (libcluster's ``cluster_node_num``).

    Stops at the first implementation that returns a value other than ``None``.

    :param addr: a canonical IPv4 or IPv6 address string.
    :param cluster: the cluster.
    :returns: the node number, or ``None`` when this plugin does not know the address.

    Called by :meth:`clusterbus.Cluster.resolve_node` and by plugins. Must not block.
    """


# ---------------------------------------------------------------------------------------
# VRRP
# ---------------------------------------------------------------------------------------


@hookspec
def clusterbus_vrrp_transition(event: VrrpTransition, cluster: Cluster) -> None:
    """A VRRP instance changed state (the built-in speaker or keepalived's notify FIFO).

    :param event: the :class:`clusterbus.VrrpTransition`; ``instance``, ``vrid``,
        ``interface``, ``old``, ``new``, ``priority``, ``reason``, ``source``.
    :param cluster: the cluster.
    :returns: nothing.

    Must not block.
    """


@hookspec
def clusterbus_vrrp_prepare_master(
        instance: str, vrid: int, cluster: Cluster) -> str | Awaitable[str | None] | None:
    """The speaker is about to become MASTER: prepare, or veto.

    Every implementation is called, each isolated. Before the VIPs go up, plugins that
    must prepare (commit synced connections, program IPVS) do so here.

    **Takeover barrier**: an implementation that must wait for something (conn-sync:
    every synced entry committed in the kernel) returns an *awaitable* (the coroutine of
    an ``async def`` helper) instead of an answer. The daemon awaits every such awaitable
    together, on its loop, within the instance's deadline (below, less a few
    milliseconds for the answer to cross back); the awaitable's result is the answer
    (``None`` or a veto reason). One still running at the deadline is cancelled and
    counts as no veto (a WARNING, rate-limited); one that raises is counted as the
    plugin's failure and counts as no veto. A plugin that must veto when its own wait
    times out has to give up before the deadline (conn-sync's ``barrier_timeout``).

    :param instance: the VRRP instance name.
    :param vrid: its virtual router id.
    :param cluster: the cluster.
    :returns: ``None`` to agree, or a reason string to veto: the instance stays BACKUP;
        or an awaitable that gives one of the two.
        The first veto is logged as ``"plugin: reason"`` and shown as the instance's
        ``vetoed`` in ``clusterbus status``; the event published is a
        ``vrrp.transition`` with ``reason="vetoed"`` and ``new="BACKUP"``. The address
        owner (priority 255) ignores vetoes.

    Deadline: the speaker waits at most **one advertisement interval** of the instance
    (``advert_interval``) for the answers, still BACKUP. No answer by then counts as no
    veto: the takeover goes ahead, counted as ``prepare_master.timeouts`` in the speaker's
    counters (``clusterbus status``) with a rate-limited warning. An answer that arrives
    after the deadline (or after the speaker stopped waiting for another reason: a better
    master was heard, the instance was removed) changes nothing and is counted as
    ``prepare_master.late``. The hook runs on the daemon's event loop, the speaker on its
    own thread: a slow hook (or barrier) delays the takeover by at most that interval.

    Called by the built-in speaker only (keepalived's notify FIFO reports a transition
    after it happened). Must not block: waiting belongs in the returned awaitable.
    """


# ---------------------------------------------------------------------------------------
# CVIP policy
# ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def clusterbus_cvip_owner(cvip: str, candidates: tuple[int, ...], cluster: Cluster) -> int | None:
    """Choose which director owns a cluster virtual IP.

    Stops at the first implementation that returns a value other than ``None``.

    :param cvip: the cluster virtual IP (canonical address string).
    :param candidates: the UP director node numbers that may own it, sorted.
    :param cluster: the cluster.
    :returns: the chosen node number (one of ``candidates``), or ``None`` for no opinion.

    Called by the built-in CVIP policy (``[cvip]``, docs/cvip.md) through
    :meth:`Cluster.cvip_owner <clusterbus.Cluster.cvip_owner>` each time it recomputes a
    CVIP's owner (a director came or went, a claim, a move): an answer replaces the
    built-in decision (rendezvous hashing, sticky claims, planned moves). Every director
    must answer the same from the same facts, or two of them raise their VRRP priority for
    the same CVIP (VRRP then lets one win). Must not block.
    """


#: Topic -> the topic-specific hook called before ``clusterbus_event``.
TOPIC_HOOKS: dict[str, str] = {
    "node.up": "clusterbus_node_up",
    "node.down": "clusterbus_node_down",
    "node.coming_up": "clusterbus_node_coming_up",
    "node.going_down": "clusterbus_node_going_down",
    "vrrp.transition": "clusterbus_vrrp_transition",
}
