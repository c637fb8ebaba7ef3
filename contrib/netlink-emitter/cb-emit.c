/*
 * cb-emit: send clusterbus node-status messages to a NETLINK_USERSOCK multicast group.
 *
 *   cb-emit [-g GROUP] up|down|comingup|goingdown NODE [ADDR ...] [-i INCARNATION]
 *           [-- up|down|comingup|goingdown NODE [ADDR ...] [-i INCARNATION] ...]
 *   cb-emit -d [-g GROUP]
 *
 * Several messages (separated by "--") go back to back in one datagram, as the format
 * allows: the receiver accepts or rejects the datagram as a whole.
 *
 * -d (keep state): read one message per line from stdin ("up 3 10.0.0.3 -i 4"), send
 * each, remember the last one per node, and answer the daemon's dump requests (command 5,
 * sent after its receive buffer overran) with the whole table, unicast to the requester,
 * ending with DUMP_DONE (command 6). After the end of stdin it keeps answering until
 * SIGTERM or SIGINT. See docs/netlink.md, "Overrun recovery".
 *
 * Plain libc and the kernel's uapi headers, no libnl: it shows that any C program (or,
 * with netlink_broadcast(), a kernel module) can feed clusterbus. The byte layout is in
 * docs/netlink.md; clusterbus.netlink.message is the reference codec.
 *
 * Exit status: 0 sent, 1 system error, 2 usage error.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE /* struct ucred, SCM_CREDENTIALS */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <linux/netlink.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define CB_MSG_TYPE 0x4342 /* "CB": clusterbus messages, >= NLMSG_MIN_TYPE */
#define CB_VERSION 1

/* the command byte: clusterbus.events.NodeState codes 1..4, then the dump messages */
enum { CB_CMD_NODE_UP = 1, CB_CMD_NODE_DOWN, CB_CMD_NODE_COMINGUP, CB_CMD_NODE_GOINGDOWN,
       CB_CMD_DUMP, CB_CMD_DUMP_DONE };
enum { CB_ATTR_UNSPEC, CB_ATTR_NODE, CB_ATTR_ADDR, CB_ATTR_INCARNATION, CB_ATTR_COOKIE,
       CB_ATTR_COUNT };

#define CB_MAX_ADDRS 16 /* clusterbus.events.MAX_NODE_ADDRS: addresses per node */
#define CB_MAX_DATAGRAM 65536 /* well below the receiver's 128 KiB and the default sndbuf */
#define CB_MAX_MSG 512 /* one message: 16 + 4 + 3 * 8 + 16 * 20 = 364 bytes at most */
#define CB_ANSWER_DATAGRAM 4096 /* answers go in one-page datagrams */
#define SOL_NETLINK_ 270

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
		"       %s -d [-g GROUP]    (messages from stdin, one per line; answers dump requests)\n"
		"  GROUP: NETLINK_USERSOCK multicast group 1..32 (default 22)\n"
		"  several messages, separated by --, go in one datagram\n",
		prog, prog);
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
 * addresses). Returns 0, 2 after a message on stderr (usage error), or 3 when the
 * command or node is bad (the caller shows the usage).
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
		return 3;
	cmd = parse_cmd(pos[0]);
	if (cmd < 0 || parse_u32(pos[1], &node) < 0 || node == 0)
		return 3;
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

/* -- -d: keep state, answer dump requests ------------------------------------------- */

struct entry {
	uint32_t node;
	size_t len;
	unsigned char msg[CB_MAX_MSG];
};

static struct entry *table;
static size_t ntable, cap;
static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int remember(const unsigned char *msg, size_t len)
{
	uint32_t node;
	size_t i;

	memcpy(&node, msg + NLMSG_HDRLEN + 4 + NLA_HDRLEN, sizeof(node)); /* NODE comes first */
	for (i = 0; i < ntable && table[i].node != node; i++)
		;
	if (i == ntable) {
		if (ntable == cap) {
			struct entry *t = realloc(table, (cap ? cap * 2 : 256) * sizeof(*t));

			if (!t)
				return -1;
			table = t;
			cap = cap ? cap * 2 : 256;
		}
		ntable++;
	}
	table[i].node = node;
	table[i].len = len;
	memcpy(table[i].msg, msg, len);
	return 0;
}

static int flush(int fd, unsigned char *buf, size_t *len, const struct sockaddr_nl *to)
{
	if (*len && sendto(fd, buf, *len, 0, (const struct sockaddr *)to, sizeof(*to)) < 0 &&
	    errno != ECONNREFUSED)
		return -1;
	*len = 0;
	return 0;
}

/* The whole table, each message with the COOKIE attribute, then DUMP_DONE with COUNT. */
static int answer(int fd, uint32_t cookie, uint32_t port, uint32_t my_port, uint32_t *seq)
{
	static unsigned char buf[CB_ANSWER_DATAGRAM];
	struct sockaddr_nl to = { .nl_family = AF_NETLINK, .nl_pid = port };
	size_t len = 0, i;
	uint32_t count = (uint32_t)ntable;

	for (i = 0; i <= ntable; i++) {
		unsigned char m[CB_MAX_MSG + 16];
		size_t mlen;
		struct nlmsghdr nlh;

		if (i < ntable) {
			mlen = table[i].len;
			memcpy(m, table[i].msg, mlen);
		} else { /* DUMP_DONE */
			struct cb_famhdr fam = { .cmd = CB_CMD_DUMP_DONE, .version = CB_VERSION };

			mlen = NLMSG_HDRLEN;
			memcpy(m + mlen, &fam, sizeof(fam));
			mlen += sizeof(fam);
			put_attr(m, &mlen, CB_ATTR_COUNT, &count, sizeof(count));
		}
		put_attr(m, &mlen, CB_ATTR_COOKIE, &cookie, sizeof(cookie));
		memset(&nlh, 0, sizeof(nlh));
		nlh.nlmsg_len = (uint32_t)mlen;
		nlh.nlmsg_type = CB_MSG_TYPE;
		nlh.nlmsg_seq = ++*seq;
		nlh.nlmsg_pid = my_port;
		memcpy(m, &nlh, sizeof(nlh));
		if (len + mlen > sizeof(buf) && flush(fd, buf, &len, &to) < 0)
			return -1;
		memcpy(buf + len, m, mlen);
		len += mlen;
	}
	return flush(fd, buf, &len, &to);
}

/* Read what arrived on the group; answer each dump request from root or from our uid. */
static int serve(int fd, uint32_t my_port, uint32_t *seq)
{
	static unsigned char buf[1 << 17];
	char cbuf[CMSG_SPACE(sizeof(struct ucred))];
	struct sockaddr_nl from;
	struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
	struct msghdr mh = { .msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &iov,
			     .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c;
	struct ucred cred = { .uid = (uid_t)-1 };
	ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT);
	size_t off;

	if (n < 0)
		return (errno == EAGAIN || errno == EINTR || errno == ENOBUFS) ? 0 : -1;
	for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS)
			memcpy(&cred, CMSG_DATA(c), sizeof(cred));
	if (cred.uid != 0 && cred.uid != getuid())
		return 0;
	for (off = 0; off + NLMSG_HDRLEN + 4 <= (size_t)n;) {
		struct nlmsghdr nlh;
		size_t end, a;

		memcpy(&nlh, buf + off, sizeof(nlh));
		if (nlh.nlmsg_len < NLMSG_HDRLEN + 4 || off + nlh.nlmsg_len > (size_t)n)
			break;
		end = off + nlh.nlmsg_len;
		if (nlh.nlmsg_type == CB_MSG_TYPE && buf[off + NLMSG_HDRLEN] == CB_CMD_DUMP &&
		    buf[off + NLMSG_HDRLEN + 1] == CB_VERSION) {
			for (a = off + NLMSG_HDRLEN + 4; a + NLA_HDRLEN <= end;) {
				struct nlattr nla;

				memcpy(&nla, buf + a, sizeof(nla));
				if (nla.nla_len < NLA_HDRLEN || a + nla.nla_len > end)
					break;
				if ((nla.nla_type & NLA_TYPE_MASK) == CB_ATTR_COOKIE && nla.nla_len == 8) {
					uint32_t cookie;

					memcpy(&cookie, buf + a + NLA_HDRLEN, sizeof(cookie));
					if (answer(fd, cookie, from.nl_pid, my_port, seq) < 0)
						return -1;
					break;
				}
				a += NLA_ALIGN(nla.nla_len);
			}
		}
		off += NLMSG_ALIGN(nlh.nlmsg_len);
	}
	return 0;
}

static int keep_state(const char *prog, uint32_t group)
{
	struct sockaddr_nl local = { .nl_family = AF_NETLINK };
	struct sockaddr_nl dest = { .nl_family = AF_NETLINK, .nl_groups = 1u << (group - 1) };
	socklen_t alen = sizeof(local);
	struct timeval tv = { .tv_sec = 5 }; /* an answer waits this long for a full receiver */
	struct pollfd pfd[2];
	int fd, one = 1, in_open = 1;
	uint32_t seq = 0, g = group;
	char line[8192];
	size_t have = 0;

	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	signal(SIGPIPE, SIG_IGN);
	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_USERSOCK);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
	    bind(fd, (struct sockaddr *)&local, sizeof(local)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&local, &alen) < 0 ||
	    setsockopt(fd, SOL_NETLINK_, NETLINK_ADD_MEMBERSHIP, &g, sizeof(g)) < 0) {
		perror("netlink socket");
		return 1;
	}
	while (!stop) {
		pfd[0] = (struct pollfd){ .fd = fd, .events = POLLIN };
		pfd[1] = (struct pollfd){ .fd = in_open ? 0 : -1, .events = POLLIN };
		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("poll");
			return 1;
		}
		if (pfd[0].revents & POLLIN && serve(fd, local.nl_pid, &seq) < 0) {
			perror("dump answer");
		}
		if (in_open && pfd[1].revents & (POLLIN | POLLHUP)) {
			ssize_t n = read(0, line + have, sizeof(line) - 1 - have);
			char *nl;

			if (n <= 0) {
				in_open = 0;
				continue;
			}
			have += (size_t)n;
			line[have] = '\0';
			while ((nl = strchr(line, '\n')) != NULL) {
				const char *pos[2 + CB_MAX_ADDRS + 1];
				unsigned char msg[CB_MAX_MSG];
				size_t len = 0, used = (size_t)(nl - line) + 1;
				uint32_t inc = 0;
				int npos = 0, bad = 0;
				char *tok, *save;

				*nl = '\0';
				for (tok = strtok_r(line, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
					if (!strcmp(tok, "-i")) {
						tok = strtok_r(NULL, " \t", &save);
						if (!tok || parse_u32(tok, &inc) < 0)
							bad = 1;
					} else if (npos < (int)(sizeof(pos) / sizeof(pos[0]))) {
						pos[npos++] = tok;
					} else {
						bad = 1;
					}
				}
				if (npos && (bad || put_msg(prog, msg, &len, pos, npos, inc, ++seq))) {
					fprintf(stderr, "%s: bad line ignored\n", prog);
				} else if (npos) {
					memcpy(msg + offsetof(struct nlmsghdr, nlmsg_pid), &local.nl_pid,
					       sizeof(local.nl_pid));
					if (sendto(fd, msg, len, 0, (struct sockaddr *)&dest, sizeof(dest)) < 0 &&
					    errno != ECONNREFUSED)
						perror("sendto");
					if (remember(msg, len) < 0) {
						fprintf(stderr, "%s: out of memory\n", prog);
						return 1;
					}
				}
				memmove(line, line + used, have - used + 1);
				have -= used;
			}
			if (have == sizeof(line) - 1) {
				fprintf(stderr, "%s: line too long\n", prog);
				have = 0;
			}
		}
	}
	close(fd);
	free(table);
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

	if (argc >= 2 && !strcmp(argv[1], "-d")) {
		if (argc == 4 && !strcmp(argv[2], "-g") && parse_u32(argv[3], &group) == 0 &&
		    group >= 1 && group <= 32)
			return keep_state(argv[0], group);
		if (argc == 2)
			return keep_state(argv[0], group);
		usage(argv[0]);
	}
	for (i = 1; i <= argc; i++) {
		if (i == argc || !strcmp(argv[i], "--")) { /* end of one message */
			rc = put_msg(argv[0], buf, &len, pos, npos, incarnation, ++seq);
			if (rc == 3)
				usage(argv[0]);
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
