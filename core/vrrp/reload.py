"""What a configuration reload changes for the running VRRP instances, sans-IO.

:func:`diff` compares the running instances with a re-read configuration, matched by
name, and says what applies at once and what needs a restart; the speaker carries it out.
Standard library only (instances are read through their attributes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["LIVE_KEYS", "RESTART_KEYS", "ROUTER_KEYS", "InstanceChange", "ReloadPlan", "diff"]

#: instance keys a reload applies to the running router (see VrrpSpeaker.reload)
LIVE_KEYS = ("priority", "preempt", "preempt_delay", "accept", "garp_count", "garp_delay",
             "prepare_timeout")
#: live keys the router itself reads at each use (RouterConfig: preempt, preempt_delay,
#: accept_mode, prepare_timeout); the others are the speaker's (garp_*) or go through
#: set_priority
ROUTER_KEYS = ("preempt", "preempt_delay", "accept", "prepare_timeout")
#: instance keys that only a restart applies: sockets, adverts, addresses
RESTART_KEYS = ("interface", "vrid", "version", "family", "advert_interval",
                "virtual_ipaddress", "unicast_peer", "unicast_src_ip", "fast_takeover")


class _Named(Protocol):
    @property
    def name(self) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceChange:
    """One running instance against its new configuration.

    :param name: the instance.
    :param restart_needed: keys of :data:`RESTART_KEYS` that changed (not applied).
    :param live: the new values of :data:`LIVE_KEYS` (all of them, changed or not).
    :param router_changed: one of :data:`ROUTER_KEYS` changed: the router's
        configuration must be swapped.
    """

    name: str
    restart_needed: tuple[str, ...]
    live: Mapping[str, object]
    router_changed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadPlan:
    """What :func:`diff` found.

    :param added: instances in the new file only (a restart applies them).
    :param removed: running instances missing from the new file (idem).
    :param changes: one per instance in both, in the running order.
    """

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changes: tuple[InstanceChange, ...]

    @property
    def restart_needed(self) -> dict[str, str]:
        """``name -> "added" | "removed"`` for the instances only a restart applies."""
        return {**{n: "added" for n in self.added}, **{n: "removed" for n in self.removed}}


def diff(running: Mapping[str, _Named], new: Sequence[_Named]) -> ReloadPlan:
    """Compare running instance configurations (by name) with a re-read list.

    :param running: name -> the instance's current configuration.
    :param new: the instances of the re-read file.
    """
    by_name = {c.name: c for c in new}
    changes = []
    for name, old in running.items():
        cfg = by_name.get(name)
        if cfg is None:
            continue
        changes.append(InstanceChange(
            name=name,
            restart_needed=tuple(k for k in RESTART_KEYS
                                 if getattr(cfg, k) != getattr(old, k)),
            live={k: getattr(cfg, k) for k in LIVE_KEYS},
            router_changed=any(getattr(cfg, k) != getattr(old, k) for k in ROUTER_KEYS),
        ))
    return ReloadPlan(added=tuple(sorted(set(by_name) - set(running))),
                      removed=tuple(sorted(set(running) - set(by_name))),
                      changes=tuple(changes))
