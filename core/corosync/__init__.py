"""Corosync 3 as a membership engine: a ctypes binding and a sans-IO membership core.

- :mod:`clusterbus.corosync.binding`: ctypes against ``libcpg.so.4`` and ``libquorum.so.5``
  (there is no Python binding for Corosync). Only what the source needs.
- :mod:`clusterbus.corosync.membership`: turns the callbacks' lists into decisions
  (node up/down, director up/down, quorum), without I/O; unit-tested without Corosync.

The source that runs them on the daemon's loop is :mod:`clusterbus.sources.corosync`.
"""
