"""Membership sources: each one turns what it hears into NodeReports or events on the loop.

netlink (NETLINK_USERSOCK multicast), keepalived's notify FIFO, signals (SIGCLUSTER-style).
"""
