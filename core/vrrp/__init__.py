"""VRRP (RFC 3768 v2, RFC 5798 v3): sans-IO packet codec and state machine, and the speaker."""

from .machine import (
    TRANSITIONS,
    AddAddresses,
    Announce,
    Discarded,
    Effect,
    PrepareMaster,
    RemoveAddresses,
    Router,
    RouterConfig,
    State,
    StateChanged,
    Transmit,
)
from .packet import Advertisement, ChecksumError

__all__ = [
    "Advertisement",
    "ChecksumError",
    "Router",
    "RouterConfig",
    "State",
    "TRANSITIONS",
    "Effect",
    "Transmit",
    "StateChanged",
    "AddAddresses",
    "RemoveAddresses",
    "Announce",
    "Discarded",
    "PrepareMaster",
]
