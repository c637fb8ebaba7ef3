"""VRRP (RFC 3768 v2, RFC 5798 v3): sans-IO packet codec and state machine, and the speaker."""

from .packet import Advertisement, ChecksumError

__all__ = ["Advertisement", "ChecksumError"]
