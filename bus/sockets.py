"""ZeroMQ socket constants as plain ints, for the bus's hot paths.

pyzmq's constants are enum members: ``&`` on them and passing them as options run enum
code in Python, several microseconds per message. Every bus module takes them from here.
"""

from __future__ import annotations

import zmq

__all__ = ["EVENTS", "POLLIN", "NOBLOCK", "FD"]

EVENTS, POLLIN, NOBLOCK, FD = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK), int(zmq.FD)
