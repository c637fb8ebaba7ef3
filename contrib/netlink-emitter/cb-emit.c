/*
 * cb-emit: send clusterbus node-status messages to a NETLINK_USERSOCK multicast group.
 *
 *   cb-emit [-g GROUP] up|down|comingup|goingdown NODE [ADDR ...] [-i INCARNATION]
 *           [-- up|down|comingup|goingdown NODE [ADDR ...] [-i INCARNATION] ...]
 *
 * Several messages (separated by "--") go back to back in one datagram, as the format
 * allows: the receiver accepts or rejects the datagram as a whole.
 *
 * Plain libc and the kernel's uapi headers, no libnl: it shows that any C program (or,
 * with netlink_broadcast(), a kernel module) can feed clusterbus. The byte layout is in
 * docs/netlink.md; clusterbus.netlink.message is the reference codec.
 *
 * Exit status: 0 sent, 1 system error, 2 usage error.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <linux/netlink.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CB_MSG_TYPE 0x4342 /* "CB": clusterbus messages, >= NLMSG_MIN_TYPE */
#define CB_VERSION 1

enum { CB_CMD_NODE_UP = 1, CB_CMD_NODE_DOWN, CB_CMD_NODE_COMINGUP, CB_CMD_NODE_GOINGDOWN };
enum { CB_ATTR_UNSPEC, CB_ATTR_NODE, CB_ATTR_ADDR, CB_ATTR_INCARNATION };

#define CB_MAX_ADDRS 256
#define CB_MAX_DATAGRAM 65536 /* well below the receiver's 128 KiB and the default sndbuf */

struct cb_famhdr { /* same layout as struct genlmsghdr */
	uint8_t cmd;
	uint8_t version;
	uint16_t reserved;
};

static void usage(const char *prog)
{
	fprintf(stderr,
		"usage: %s [-g GROUP] up|down|comingup|goingdown NODE [ADDR ...] [-i INCARNATION]\n"
		"          [-- up|down|comingup|goingdown NODE [ADDR ...] [-i INCARNATION] ...]\n"
		"  GROUP: NETLINK_USERSOCK multicast group 1..32 (default 22)\n"
		"  several messages, separated by --, go in one datagram\n",
		prog);
	exit(2);
}

static int parse_u32(const char *s, uint32_t *out)
{
	char *end;
	unsigned long long v;

	if (*s == '\0' || *s == '-' || *s == '+')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end != '\0' || v > UINT32_MAX)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

static int parse_cmd(const char *s)
{
	if (!strcmp(s, "up"))
		return CB_CMD_NODE_UP;
	if (!strcmp(s, "down"))
		return CB_CMD_NODE_DOWN;
	if (!strcmp(s, "comingup"))
		return CB_CMD_NODE_COMINGUP;
	if (!strcmp(s, "goingdown"))
		return CB_CMD_NODE_GOINGDOWN;
	return -1;
}

/* Append one attribute at buf + *len, padded to NLA_ALIGNTO. */
static void put_attr(unsigned char *buf, size_t *len, uint16_t type, const void *data,
		     uint16_t size)
{
	struct nlattr nla = { .nla_len = (uint16_t)(NLA_HDRLEN + size), .nla_type = type };

	memcpy(buf + *len, &nla, sizeof(nla));
	memcpy(buf + *len + NLA_HDRLEN, data, size);
	memset(buf + *len + NLA_HDRLEN + size, 0, NLA_ALIGN(nla.nla_len) - nla.nla_len);
	*len += NLA_ALIGN(nla.nla_len);
}

/*
 * Append one message at buf + *len from its arguments pos[0..npos-1] (command, node,
 * addresses). Returns 0, or 2 after a message on stderr (usage error).
 */
static int put_msg(const char *prog, unsigned char *buf, size_t *len, const char **pos,
		   int npos, uint32_t incarnation, uint32_t seq)
{
	size_t start = *len, need;
	struct nlmsghdr nlh = { .nlmsg_type = CB_MSG_TYPE, .nlmsg_seq = seq };
	struct cb_famhdr fam = { .version = CB_VERSION };
	uint32_t node;
	int cmd, i;

	if (npos < 2)
		usage(prog);
	cmd = parse_cmd(pos[0]);
	if (cmd < 0 || parse_u32(pos[1], &node) < 0)
		usage(prog);
	if (npos - 2 > CB_MAX_ADDRS) {
		fprintf(stderr, "%s: at most %d addresses per message\n", prog, CB_MAX_ADDRS);
		return 2;
	}
	need = NLMSG_HDRLEN + sizeof(fam) + (NLA_HDRLEN + 4) * 2 +
	       (size_t)(npos - 2) * (NLA_HDRLEN + 16);
	if (start + need > CB_MAX_DATAGRAM) {
		fprintf(stderr, "%s: the messages do not fit one %d-byte datagram\n", prog,
			CB_MAX_DATAGRAM);
		return 2;
	}
	*len += NLMSG_HDRLEN;
	fam.cmd = (uint8_t)cmd;
	memcpy(buf + *len, &fam, sizeof(fam));
	*len += sizeof(fam);
	put_attr(buf, len, CB_ATTR_NODE, &node, sizeof(node)); /* host byte order */
	for (i = 2; i < npos; i++) {
		unsigned char a[16];

		/* addresses in network byte order, 4 or 16 bytes: the length tells the family */
		if (inet_pton(AF_INET, pos[i], a) == 1) {
			put_attr(buf, len, CB_ATTR_ADDR, a, 4);
		} else if (inet_pton(AF_INET6, pos[i], a) == 1) {
			put_attr(buf, len, CB_ATTR_ADDR, a, 16);
		} else {
			fprintf(stderr, "%s: %s is not an IPv4 or IPv6 address\n", prog, pos[i]);
			return 2;
		}
	}
	put_attr(buf, len, CB_ATTR_INCARNATION, &incarnation, sizeof(incarnation));
	nlh.nlmsg_len = (uint32_t)(*len - start); /* a multiple of 4: no padding follows */
	memcpy(buf + start, &nlh, sizeof(nlh));
	return 0;
}

int main(int argc, char **argv)
{
	static unsigned char buf[CB_MAX_DATAGRAM];
	static const char *pos[2 + CB_MAX_ADDRS + 1];
	int npos = 0, fd, i, rc;
	uint32_t group = 22, incarnation = 0, seq = 0;
	size_t len = 0, off;
	uint32_t mlen;
	struct sockaddr_nl local = { .nl_family = AF_NETLINK };
	struct sockaddr_nl dest = { .nl_family = AF_NETLINK, .nl_pid = 0 };
	socklen_t alen = sizeof(local);

	for (i = 1; i <= argc; i++) {
		if (i == argc || !strcmp(argv[i], "--")) { /* end of one message */
			rc = put_msg(argv[0], buf, &len, pos, npos, incarnation, ++seq);
			if (rc)
				return rc;
			npos = 0;
			incarnation = 0;
		} else if (!strcmp(argv[i], "-g") || !strcmp(argv[i], "-i")) {
			uint32_t *target = argv[i][1] == 'g' ? &group : &incarnation;

			if (i + 1 >= argc || parse_u32(argv[i + 1], target) < 0)
				usage(argv[0]);
			i++;
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(argv[0]);
		} else {
			if (npos == (int)(sizeof(pos) / sizeof(pos[0]))) {
				fprintf(stderr, "%s: at most %d addresses per message\n", argv[0],
					CB_MAX_ADDRS);
				return 2;
			}
			pos[npos++] = argv[i];
		}
	}
	if (group < 1 || group > 32)
		usage(argv[0]);

	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_USERSOCK);
	if (fd < 0) {
		perror("socket(AF_NETLINK, NETLINK_USERSOCK)");
		return 1;
	}
	/* autobind: the kernel picks our port id, which we put in every nlmsg_pid */
	if (bind(fd, (struct sockaddr *)&local, sizeof(local)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&local, &alen) < 0) {
		perror("bind");
		close(fd);
		return 1;
	}
	for (off = 0; off < len; off += mlen) { /* memcpy: buf need not be 4-aligned */
		memcpy(&mlen, buf + off + offsetof(struct nlmsghdr, nlmsg_len), sizeof(mlen));
		memcpy(buf + off + offsetof(struct nlmsghdr, nlmsg_pid), &local.nl_pid,
		       sizeof(local.nl_pid));
	}

	dest.nl_groups = 1u << (group - 1);
	if (sendto(fd, buf, len, 0, (struct sockaddr *)&dest, sizeof(dest)) < 0 &&
	    errno != ECONNREFUSED) {
		/* ECONNREFUSED is the unicast to the absent kernel socket (port id 0): the
		 * multicast to the group was already delivered. */
		perror("sendto");
		close(fd);
		return 1;
	}
	close(fd);
	return 0;
}
