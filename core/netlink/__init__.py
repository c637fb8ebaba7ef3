"""The clusterbus netlink membership protocol (NETLINK_USERSOCK multicast). See docs/netlink.md."""
