/*
 * cb-sub: a clusterbus subscriber in C (libzmq + msgpack-c), written from
 * docs/wire-protocol.md alone.
 *
 * Subscribes to a daemon's publish socket, follows its heartbeats, prints every event
 * as one JSON line, detects gaps by seq (and by heartbeats ahead of the last event),
 * repairs them with REPLAY on the snapshot socket, resynchronises from a SNAPSHOT when
 * a replay cannot (too old, daemon restarted, hole, undecodable event), and detects a
 * daemon restart by its epoch.
 *
 * JSON output: one object per line, "topic" first. Events: the body's fields as they
 * are. Bus items use reserved "_" topics: "_hb" (with -H), "_snapshot", "_repair".
 * The epoch (a u64) is always printed as a decimal string, and any other integer
 * outside +-(2^53 - 1) too, so that JSON parsers that use doubles (JavaScript) keep it.
 *
 * Usage: cb-sub -p PUB_ENDPOINT -s SNAPSHOT_ENDPOINT [options]   (see usage())
 */

#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <msgpack.h>
#include <zmq.h>

#define MAX_FRAME 65536
#define JSON_SAFE_MAX 9007199254740991ULL /* 2^53 - 1 */
#define MAX_DROPS 16
#define REPLAY_LIMIT 1000

static const char *prog = "cb-sub";

/* ---------------------------------------------------------------- options, state */

struct options {
    const char *publish, *snapshot;
    long long count;          /* exit 0 after this many delivered events (0: never) */
    double timeout;           /* exit 1 when not done after this many seconds (0: never) */
    double request_timeout;   /* seconds per request attempt */
    int request_retries;
    int rcvhwm;               /* ZMQ_RCVHWM of the SUB socket (0: libzmq default) */
    bool start_snapshot;      /* SNAPSHOT before the first event */
    bool heartbeats;          /* print heartbeats */
    bool exit_when_dead;
    const char *filters[16];
    int nfilters;
    uint64_t drop_from[MAX_DROPS], drop_to[MAX_DROPS]; /* injected losses (testing) */
    int ndrops;
    /* CURVE (both sockets): the daemon's public key, this client's key pair (Z85) */
    char server_key[41], public_key[41], secret_key[41];
};

struct state {
    bool synced;              /* last_seq is meaningful */
    bool have_epoch;
    uint64_t epoch;
    uint64_t last_seq;
    double hb_interval;       /* from the last heartbeat */
    double last_hb;           /* monotonic time of the last heartbeat (0: none yet) */
    bool dead_reported;
    long long delivered, duplicates, unknown, undecodable, replays, replayed, snapshots;
    long long dropped_injected, heartbeats, ignored;
};

static struct options opt;
static struct state st;
static void *zctx;
static volatile sig_atomic_t stop_flag;

static void on_signal(int sig) { (void)sig; stop_flag = 1; }

/* With -K: make `s` a CURVE client of the daemon. 0 on success. */
static int set_curve(void *s)
{
    if (!opt.server_key[0])
        return 0;
    if (zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, opt.server_key, 40) != 0 ||
        zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, opt.public_key, 40) != 0 ||
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, opt.secret_key, 40) != 0) {
        fprintf(stderr, "%s: CURVE: %s\n", prog, zmq_strerror(errno));
        return -1;
    }
    return 0;
}

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void logf_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---------------------------------------------------------------- msgpack helpers */

/* One msgpack value that fills the buffer exactly (trailing bytes are an error). */
static bool unpack_exact(msgpack_unpacked *u, const char *data, size_t len)
{
    size_t off = 0;
    if (len == 0 || len > MAX_FRAME)
        return false;
    if (msgpack_unpack_next(u, data, len, &off) != MSGPACK_UNPACK_SUCCESS)
        return false;
    return off == len;
}

static const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    size_t klen = strlen(key);
    if (map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            memcmp(k->via.str.ptr, key, klen) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static bool get_u64(const msgpack_object *map, const char *key, uint64_t *out)
{
    const msgpack_object *o = map_get(map, key);
    if (o == NULL || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return false;
    *out = o->via.u64;
    return true;
}

static bool get_float(const msgpack_object *map, const char *key, double *out)
{
    const msgpack_object *o = map_get(map, key);
    if (o == NULL)
        return false;
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: *out = o->via.f64; return true;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: *out = (double)o->via.u64; return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = (double)o->via.i64; return true;
    default: return false;
    }
}

static bool str_is(const msgpack_object *o, const char *s)
{
    return o != NULL && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

/* ---------------------------------------------------------------- JSON output */

static void json_str(FILE *f, const char *p, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* A msgpack value as JSON; `quoted` forces an integer into a decimal string (epoch). */
static void json_obj(FILE *f, const msgpack_object *o, bool quoted)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: fputs("null", f); break;
    case MSGPACK_OBJECT_BOOLEAN: fputs(o->via.boolean ? "true" : "false", f); break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (quoted || o->via.u64 > JSON_SAFE_MAX)
            fprintf(f, "\"%" PRIu64 "\"", o->via.u64);
        else
            fprintf(f, "%" PRIu64, o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        if (quoted || o->via.i64 < -(int64_t)JSON_SAFE_MAX)
            fprintf(f, "\"%" PRId64 "\"", o->via.i64);
        else
            fprintf(f, "%" PRId64, o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (isfinite(o->via.f64))
            fprintf(f, "%.17g", o->via.f64);
        else
            fputs("null", f);
        break;
    case MSGPACK_OBJECT_STR: json_str(f, o->via.str.ptr, o->via.str.size); break;
    case MSGPACK_OBJECT_BIN:
        fputc('"', f);
        for (uint32_t i = 0; i < o->via.bin.size; i++)
            fprintf(f, "%02x", (unsigned char)o->via.bin.ptr[i]);
        fputc('"', f);
        break;
    case MSGPACK_OBJECT_ARRAY:
        fputc('[', f);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i)
                fputc(',', f);
            json_obj(f, &o->via.array.ptr[i], false);
        }
        fputc(']', f);
        break;
    case MSGPACK_OBJECT_MAP:
        fputc('{', f);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (i)
                fputc(',', f);
            if (k->type == MSGPACK_OBJECT_STR)
                json_str(f, k->via.str.ptr, k->via.str.size);
            else {
                fputc('"', f);
                if (k->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                    fprintf(f, "%" PRIu64, k->via.u64);
                fputc('"', f);
            }
            fputc(':', f);
            json_obj(f, &o->via.map.ptr[i].val, str_is(k, "epoch"));
        }
        fputc('}', f);
        break;
    default: fputs("null", f); break;
    }
}

/* {"topic":TOPIC, <fields of map except "v" when skip_v>, extra...} */
static void json_line(const char *topic, size_t tlen, const msgpack_object *map, bool skip_v,
                      const char *extra)
{
    FILE *f = stdout;
    fputs("{\"topic\":", f);
    json_str(f, topic, tlen);
    if (map != NULL && map->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < map->via.map.size; i++) {
            const msgpack_object *k = &map->via.map.ptr[i].key;
            if (k->type != MSGPACK_OBJECT_STR || (skip_v && str_is(k, "v")))
                continue;
            fputc(',', f);
            json_str(f, k->via.str.ptr, k->via.str.size);
            fputc(':', f);
            json_obj(f, &map->via.map.ptr[i].val, str_is(k, "epoch"));
        }
    }
    if (extra != NULL)
        fputs(extra, f);
    fputs("}\n", f);
    fflush(f);
}

/* ---------------------------------------------------------------- event layouts */

/* Fields of each known (topic, v = 1), beyond the common v, origin, seq, time. */
struct layout {
    const char *topic;
    const char *fields[12];
};

static const struct layout layouts[] = {
    {"node.up", {"node", "addrs", "view", "joined", "left", "reason", "incarnation"}},
    {"node.down", {"node", "addrs", "view", "joined", "left", "reason", "incarnation"}},
    {"node.coming_up", {"node", "addrs", "view", "joined", "left", "reason", "incarnation"}},
    {"node.going_down", {"node", "addrs", "view", "joined", "left", "reason", "incarnation"}},
    {"vrrp.transition", {"instance", "vrid", "family", "interface", "old", "new", "priority",
                         "reason", "source", "group"}},
    {"vip.acquired", {"instance", "address", "interface"}},
    {"vip.released", {"instance", "address", "interface"}},
    {"nodemap.changed", {"node", "addrs", "reason"}},
    {"nodemap.conflict", {"addr", "owner", "claimant", "reason"}},
    {"ipvs.applied", {"added", "removed", "changed", "duration", "reason"}},
};

static const struct layout *find_layout(const char *topic, size_t n)
{
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++)
        if (strlen(layouts[i].topic) == n && memcmp(layouts[i].topic, topic, n) == 0)
            return &layouts[i];
    return NULL;
}

enum kind { EV_KNOWN, EV_UNKNOWN, EV_BAD };

/* Classify an event body (see "Events" in the wire document); *seq set unless EV_BAD. */
static enum kind classify(const char *topic, size_t tlen, const msgpack_object *body,
                          uint64_t *seq)
{
    uint64_t v, origin;
    double t;
    if (body->type != MSGPACK_OBJECT_MAP)
        return EV_BAD;
    for (uint32_t i = 0; i < body->via.map.size; i++)
        if (body->via.map.ptr[i].key.type != MSGPACK_OBJECT_STR)
            return EV_BAD;
    if (!get_u64(body, "origin", &origin) || origin > UINT32_MAX || !get_u64(body, "seq", seq) ||
        *seq == 0)
        return EV_BAD;
    const struct layout *l = find_layout(topic, tlen);
    if (!get_u64(body, "v", &v) || l == NULL || v != 1)
        return EV_UNKNOWN;
    if (!get_float(body, "time", &t))
        return EV_BAD;
    size_t nfields = 4;
    for (size_t i = 0; l->fields[i] != NULL; i++, nfields++)
        if (map_get(body, l->fields[i]) == NULL)
            return EV_BAD;
    /* an "epoch" in an event body (a daemon that stamps its events) is tolerated */
    if (map_get(body, "epoch") != NULL) {
        uint64_t e;
        if (!get_u64(body, "epoch", &e))
            return EV_BAD;
        nfields++;
    }
    /* every field present; anything beyond them is an unknown field */
    if (body->via.map.size != nfields)
        return EV_BAD;
    return EV_KNOWN;
}

static bool wanted(const char *topic, size_t tlen)
{
    if (opt.nfilters == 0)
        return true;
    for (int i = 0; i < opt.nfilters; i++) {
        size_t n = strlen(opt.filters[i]);
        if (n <= tlen && memcmp(topic, opt.filters[i], n) == 0)
            return true;
    }
    return false;
}

/* ---------------------------------------------------------------- requests */

struct reply {
    zmq_msg_t parts[2 + 2 * REPLAY_LIMIT + 8];
    int n;
};

static void reply_free(struct reply *r)
{
    for (int i = 0; i < r->n; i++)
        zmq_msg_close(&r->parts[i]);
    r->n = 0;
}

/* Send COMMAND [args as msgpack uints] on a fresh DEALER; Lazy Pirate: on no answer
 * within the timeout close the socket, open a new one, retry. 0 = a reply in *r. */
static int request(const char *cmd, const uint64_t *args, int nargs, struct reply *r)
{
    r->n = 0;
    for (int attempt = 0; attempt <= opt.request_retries && !stop_flag; attempt++) {
        void *s = zmq_socket(zctx, ZMQ_DEALER);
        int zero = 0;
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
        if (set_curve(s) != 0 || zmq_connect(s, opt.snapshot) != 0) {
            logf_("connect %s: %s", opt.snapshot, zmq_strerror(errno));
            zmq_close(s);
            return -1;
        }
        bool ok = zmq_send(s, cmd, strlen(cmd), nargs ? ZMQ_SNDMORE : 0) >= 0;
        for (int i = 0; ok && i < nargs; i++) {
            msgpack_sbuffer sb;
            msgpack_packer pk;
            msgpack_sbuffer_init(&sb);
            msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
            msgpack_pack_uint64(&pk, args[i]);
            ok = zmq_send(s, sb.data, sb.size, i + 1 < nargs ? ZMQ_SNDMORE : 0) >= 0;
            msgpack_sbuffer_destroy(&sb);
        }
        zmq_pollitem_t pi = {s, 0, ZMQ_POLLIN, 0};
        if (ok && zmq_poll(&pi, 1, (long)(opt.request_timeout * 1000)) == 1) {
            int more = 1;
            size_t ml = sizeof more;
            const int cap = (int)(sizeof r->parts / sizeof r->parts[0]);
            while (more) {
                zmq_msg_t m;
                zmq_msg_init(&m);
                if (zmq_msg_recv(&m, s, 0) < 0) {
                    zmq_msg_close(&m);
                    break;
                }
                if (r->n < cap)
                    r->parts[r->n++] = m;
                else
                    zmq_msg_close(&m);
                zmq_getsockopt(s, ZMQ_RCVMORE, &more, &ml);
            }
            zmq_close(s);
            if (r->n >= 2 && r->n < cap)
                return 0;
            logf_("%s: malformed reply (%d frames)", cmd, r->n);
            reply_free(r);
            return -1;
        }
        zmq_close(s);
        logf_("%s: no reply within %gs (attempt %d)", cmd, opt.request_timeout, attempt + 1);
    }
    return -1;
}

/* Frame 0 = the command echoed, frame 1 = a header map with v = 1 and epoch. */
static bool reply_header(struct reply *r, const char *cmd, msgpack_unpacked *hdr, uint64_t *epoch)
{
    size_t n = zmq_msg_size(&r->parts[0]);
    if (n == 5 && memcmp(zmq_msg_data(&r->parts[0]), "ERROR", 5) == 0 &&
        unpack_exact(hdr, zmq_msg_data(&r->parts[1]), zmq_msg_size(&r->parts[1]))) {
        const msgpack_object *e = map_get(&hdr->data, "error");
        logf_("%s: ERROR %.*s", cmd, e && e->type == MSGPACK_OBJECT_STR ? (int)e->via.str.size : 1,
              e && e->type == MSGPACK_OBJECT_STR ? e->via.str.ptr : "?");
        return false;
    }
    uint64_t v;
    if (n != strlen(cmd) || memcmp(zmq_msg_data(&r->parts[0]), cmd, n) != 0 ||
        !unpack_exact(hdr, zmq_msg_data(&r->parts[1]), zmq_msg_size(&r->parts[1])) ||
        !get_u64(&hdr->data, "v", &v) || v != 1 || !get_u64(&hdr->data, "epoch", epoch)) {
        logf_("%s: malformed reply header", cmd);
        return false;
    }
    return true;
}

/* ---------------------------------------------------------------- sync logic */

static int resync(const char *reason);

static void deliver(const char *topic, size_t tlen, const msgpack_object *body)
{
    if (!wanted(topic, tlen)) {
        st.ignored++;
        return;
    }
    json_line(topic, tlen, body, false, NULL);
    st.delivered++;
}

/* SNAPSHOT: set (epoch, last_seq) from it and hand it to the application. */
static int resync(const char *reason)
{
    struct reply r;
    msgpack_unpacked hdr;
    uint64_t epoch, seq;
    int rc = -1;
    if (request("SNAPSHOT", NULL, 0, &r) != 0)
        return -1;
    msgpack_unpacked_init(&hdr);
    if (reply_header(&r, "SNAPSHOT", &hdr, &epoch)) {
        if (!get_u64(&hdr.data, "seq", &seq)) {
            logf_("SNAPSHOT: no seq in the header");
        } else {
            char extra[96];
            snprintf(extra, sizeof extra, ",\"reason\":\"%s\"", reason);
            st.epoch = epoch;
            st.have_epoch = true;
            st.last_seq = seq;
            st.synced = true;
            st.snapshots++;
            json_line("_snapshot", 9, &hdr.data, true, extra);
            rc = 0;
        }
    }
    msgpack_unpacked_destroy(&hdr);
    reply_free(&r);
    return rc;
}

/* REPLAY after=last_seq until `more` is false; resync when a replay cannot repair. */
static int repair(void)
{
    uint64_t after0 = st.last_seq;
    long long got = 0;
    for (int round = 0; round < 100000 && !stop_flag; round++) {
        struct reply r;
        msgpack_unpacked hdr;
        uint64_t epoch, args[2] = {st.last_seq, REPLAY_LIMIT};
        if (request("REPLAY", args, 2, &r) != 0)
            return -1; /* try again on the next event or heartbeat */
        msgpack_unpacked_init(&hdr);
        if (!reply_header(&r, "REPLAY", &hdr, &epoch)) {
            msgpack_unpacked_destroy(&hdr);
            reply_free(&r);
            return -1;
        }
        const msgpack_object *status = map_get(&hdr.data, "status");
        const msgpack_object *more = map_get(&hdr.data, "more");
        bool more_b = more && more->type == MSGPACK_OBJECT_BOOLEAN && more->via.boolean;
        const char *why = NULL;
        if (st.have_epoch && epoch != st.epoch)
            why = "restart";
        else if (str_is(status, "too_old"))
            why = "too_old";
        else if (!str_is(status, "ok"))
            why = str_is(status, "ahead") ? "ahead" : "replay_status";
        else if ((r.n - 2) % 2 != 0)
            why = "replay_frames";
        if (why == NULL) {
            st.epoch = epoch; /* learnt here when the first item was an event */
            st.have_epoch = true;
            st.replays++;
        }
        for (int i = 2; why == NULL && i + 1 < r.n; i += 2) {
            const char *topic = zmq_msg_data(&r.parts[i]);
            size_t tlen = zmq_msg_size(&r.parts[i]);
            msgpack_unpacked body;
            uint64_t seq = 0;
            msgpack_unpacked_init(&body);
            enum kind k = EV_BAD;
            if (unpack_exact(&body, zmq_msg_data(&r.parts[i + 1]), zmq_msg_size(&r.parts[i + 1])))
                k = classify(topic, tlen, &body.data, &seq);
            if (k == EV_BAD) {
                why = "undecodable";
                st.undecodable++;
            }
            else if (seq <= st.last_seq)
                ;
            else if (seq != st.last_seq + 1)
                why = "hole";
            else {
                st.last_seq = seq;
                got++;
                st.replayed++;
                if (k == EV_KNOWN)
                    deliver(topic, tlen, &body.data);
                else
                    st.unknown++;
            }
            msgpack_unpacked_destroy(&body);
        }
        msgpack_unpacked_destroy(&hdr);
        reply_free(&r);
        if (why != NULL) {
            logf_("replay after %" PRIu64 " unusable (%s): resynchronising", st.last_seq, why);
            return resync(why);
        }
        if (!more_b)
            break;
    }
    char extra[160];
    snprintf(extra, sizeof extra, ",\"via\":\"replay\",\"after\":%" PRIu64 ",\"events\":%lld,"
             "\"last_seq\":%" PRIu64, after0, got, st.last_seq);
    json_line("_repair", 7, NULL, false, extra);
    return 0;
}

static bool injected_drop(uint64_t seq)
{
    for (int i = 0; i < opt.ndrops; i++)
        if (seq >= opt.drop_from[i] && seq <= opt.drop_to[i])
            return true;
    return false;
}

static void on_event(const char *topic, size_t tlen, const char *data, size_t len)
{
    msgpack_unpacked body;
    uint64_t seq = 0;
    msgpack_unpacked_init(&body);
    enum kind k = EV_BAD;
    if (unpack_exact(&body, data, len))
        k = classify(topic, tlen, &body.data, &seq);
    if (k == EV_BAD) {
        /* its seq is missing: the next event (or heartbeat) shows the gap */
        st.undecodable++;
        logf_("undecodable event on %.*s dropped", (int)(tlen > 64 ? 64 : tlen), topic);
        goto out;
    }
    if (injected_drop(seq)) {
        st.dropped_injected++;
        goto out;
    }
    uint64_t ev_epoch;
    if (st.synced && st.have_epoch && get_u64(&body.data, "epoch", &ev_epoch) &&
        ev_epoch != st.epoch) {
        logf_("daemon restarted (event epoch %" PRIu64 " -> %" PRIu64 ")", st.epoch, ev_epoch);
        if (resync("restart") != 0)
            goto out;
    }
    if (!st.synced) {
        /* first item is an event: everything before it is not ours; learn the epoch
         * with a REPLAY, which also delivers this event (the live copy is then old) */
        st.last_seq = seq - 1;
        st.synced = true;
        if (repair() != 0) {
            st.synced = false;
            goto out;
        }
    }
    for (int pass = 0; pass < 2; pass++) {
        if (seq <= st.last_seq) {
            st.duplicates += pass == 0;
            break;
        }
        if (seq == st.last_seq + 1) {
            st.last_seq = seq;
            if (k == EV_KNOWN)
                deliver(topic, tlen, &body.data);
            else
                st.unknown++;
            break;
        }
        if (pass == 0 && repair() != 0)
            break; /* the gap stays: the next event or heartbeat retries */
    }
out:
    msgpack_unpacked_destroy(&body);
}

static void on_heartbeat(const char *data, size_t len)
{
    msgpack_unpacked hb;
    uint64_t v, epoch, seq;
    double interval = 1.0;
    msgpack_unpacked_init(&hb);
    if (!unpack_exact(&hb, data, len) || !get_u64(&hb.data, "v", &v) || v != 1 ||
        !get_u64(&hb.data, "epoch", &epoch) || !get_u64(&hb.data, "seq", &seq)) {
        logf_("malformed heartbeat ignored");
        goto out;
    }
    if (get_float(&hb.data, "interval", &interval) && interval > 0)
        st.hb_interval = interval;
    st.last_hb = now_mono();
    st.heartbeats++;
    if (st.dead_reported)
        logf_("heartbeats again");
    st.dead_reported = false;
    if (opt.heartbeats)
        json_line("_hb", 3, &hb.data, true, NULL);
    if (!st.synced) {
        st.epoch = epoch;
        st.have_epoch = true;
        st.last_seq = seq;
        st.synced = true;
    } else if (st.have_epoch && epoch != st.epoch) {
        logf_("daemon restarted (epoch %" PRIu64 " -> %" PRIu64 ")", st.epoch, epoch);
        resync("restart");
    } else if (!st.have_epoch) {
        st.epoch = epoch;
        st.have_epoch = true;
    } else if (seq > st.last_seq) {
        repair(); /* lost the tail of a burst */
    }
out:
    msgpack_unpacked_destroy(&hb);
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: %s -p PUBLISH -s SNAPSHOT [options]\n"
        "  -p ENDPOINT   the daemon's publish endpoint ([bus] publish)\n"
        "  -s ENDPOINT   the daemon's snapshot endpoint ([bus] snapshot)\n"
        "  -S            request a SNAPSHOT first (and print it)\n"
        "  -f PREFIX     print only events whose topic starts with PREFIX (repeatable)\n"
        "  -n COUNT      exit 0 after COUNT printed events\n"
        "  -t SECONDS    exit 1 when not done within SECONDS\n"
        "  -H            print heartbeats (topic \"_hb\")\n"
        "  -D            exit 1 when the daemon is dead (no heartbeat for 3 intervals)\n"
        "  -r SECONDS    request timeout (default 1), -R N retries (default 3)\n"
        "  -w N          ZMQ_RCVHWM of the subscriber socket\n"
        "  -x SEQ[-SEQ]  testing: discard these live events, as if lost (repeatable)\n"
        "  -K KEY        CURVE: the daemon's public key (Z85, 40 characters)\n"
        "  -k FILE       CURVE: this client's key pair, a file of two lines: public, secret\n"
        "                (Z85; default: a new key pair for this run)\n",
        prog);
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    int c;
    opt.request_timeout = 1.0;
    opt.request_retries = 3;
    const char *keyfile = NULL;
    while ((c = getopt(argc, argv, "p:s:Sf:n:t:HDr:R:w:x:K:k:h")) != -1) {
        switch (c) {
        case 'p': opt.publish = optarg; break;
        case 's': opt.snapshot = optarg; break;
        case 'S': opt.start_snapshot = true; break;
        case 'f':
            if (opt.nfilters == 16) { usage(stderr); return 2; }
            opt.filters[opt.nfilters++] = optarg;
            break;
        case 'n': opt.count = atoll(optarg); break;
        case 't': opt.timeout = atof(optarg); break;
        case 'H': opt.heartbeats = true; break;
        case 'D': opt.exit_when_dead = true; break;
        case 'r': opt.request_timeout = atof(optarg); break;
        case 'R': opt.request_retries = atoi(optarg); break;
        case 'w': opt.rcvhwm = atoi(optarg); break;
        case 'x': {
            char buf[64], *dash;
            uint64_t a, b;
            snprintf(buf, sizeof buf, "%s", optarg);
            dash = strchr(buf, '-');
            if (dash)
                *dash++ = 0;
            if (opt.ndrops == MAX_DROPS || !parse_u64(buf, &a) ||
                !parse_u64(dash ? dash : buf, &b) || b < a) {
                fprintf(stderr, "%s: -x %s: want SEQ or FROM-TO\n", prog, optarg);
                return 2;
            }
            opt.drop_from[opt.ndrops] = a;
            opt.drop_to[opt.ndrops++] = b;
            break;
        }
        case 'K':
            if (strlen(optarg) != 40) {
                fprintf(stderr, "%s: -K: want a Z85 key of 40 characters\n", prog);
                return 2;
            }
            memcpy(opt.server_key, optarg, 41);
            break;
        case 'k': keyfile = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!opt.publish || !opt.snapshot || optind != argc || opt.request_timeout <= 0) {
        usage(stderr);
        return 2;
    }
    if (keyfile != NULL && !opt.server_key[0]) {
        fprintf(stderr, "%s: -k needs -K\n", prog);
        return 2;
    }
    if (keyfile != NULL) {
        FILE *kf = fopen(keyfile, "r");
        char line[2][128];
        bool ok = kf != NULL && fgets(line[0], sizeof line[0], kf) && fgets(line[1], sizeof line[1], kf);
        if (kf)
            fclose(kf);
        for (int i = 0; ok && i < 2; i++) {
            line[i][strcspn(line[i], "\r\n")] = 0;
            ok = strlen(line[i]) == 40;
        }
        if (!ok) {
            fprintf(stderr, "%s: -k %s: want two lines, the public and the secret key (Z85)\n",
                    prog, keyfile);
            return 2;
        }
        memcpy(opt.public_key, line[0], 41);
        memcpy(opt.secret_key, line[1], 41);
    } else if (opt.server_key[0] && zmq_curve_keypair(opt.public_key, opt.secret_key) != 0) {
        fprintf(stderr, "%s: CURVE: %s\n", prog, zmq_strerror(errno));
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);

    zctx = zmq_ctx_new();
    void *sub = zmq_socket(zctx, ZMQ_SUB);
    int zero = 0;
    zmq_setsockopt(sub, ZMQ_LINGER, &zero, sizeof zero);
    if (opt.rcvhwm > 0)
        zmq_setsockopt(sub, ZMQ_RCVHWM, &opt.rcvhwm, sizeof opt.rcvhwm);
    if (set_curve(sub) != 0)
        return 1;
    /* everything: seq spans all topics, so filtering happens after the seq check */
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0);
    if (zmq_connect(sub, opt.publish) != 0) {
        fprintf(stderr, "%s: connect %s: %s\n", prog, opt.publish, zmq_strerror(errno));
        return 1;
    }
    st.hb_interval = 1.0;
    double start = now_mono();
    int rc = 0;
    if (opt.start_snapshot && resync("start") != 0) {
        logf_("no SNAPSHOT from %s", opt.snapshot);
        rc = 1;
        goto done;
    }
    while (!stop_flag) {
        if (opt.count > 0 && st.delivered >= opt.count)
            break;
        double now = now_mono();
        if (opt.timeout > 0 && now - start > opt.timeout) {
            logf_("timed out after %gs (%lld events)", opt.timeout, st.delivered);
            rc = 1;
            break;
        }
        double ref = st.last_hb > 0 ? st.last_hb : start;
        if (now - ref > 3 * st.hb_interval && !st.dead_reported) {
            logf_("no heartbeat for %.1fs: daemon dead or unreachable", now - ref);
            st.dead_reported = true;
            if (opt.exit_when_dead) {
                rc = 1;
                break;
            }
        }
        zmq_pollitem_t pi = {sub, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&pi, 1, 100);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            logf_("poll: %s", zmq_strerror(errno));
            rc = 1;
            break;
        }
        /* drain what is there, then re-check the bounds */
        for (int i = 0; n > 0 && i < 1000; i++) {
            zmq_msg_t parts[3];
            int np = 0, more = 1;
            size_t ml = sizeof more;
            while (more) {
                zmq_msg_t m;
                zmq_msg_init(&m);
                if (zmq_msg_recv(&m, sub, ZMQ_DONTWAIT) < 0) {
                    zmq_msg_close(&m);
                    break;
                }
                if (np < 3)
                    parts[np++] = m;
                else
                    zmq_msg_close(&m);
                zmq_getsockopt(sub, ZMQ_RCVMORE, &more, &ml);
            }
            if (np == 0)
                break;
            if (np >= 2) { /* frames after the second: none today; ignored */
                const char *topic = zmq_msg_data(&parts[0]);
                size_t tlen = zmq_msg_size(&parts[0]);
                const char *data = zmq_msg_data(&parts[1]);
                size_t len = zmq_msg_size(&parts[1]);
                if (tlen == 3 && memcmp(topic, "_hb", 3) == 0)
                    on_heartbeat(data, len);
                else if (tlen > 0 && topic[0] == '_')
                    ; /* _batch and other bus frames: not subscribed to on purpose */
                else
                    on_event(topic, tlen, data, len);
            } else {
                st.undecodable++;
            }
            for (int j = 0; j < np; j++)
                zmq_msg_close(&parts[j]);
            if (opt.count > 0 && st.delivered >= opt.count)
                break;
        }
    }
done:
    fprintf(stderr, "%s: %lld events, %lld duplicates, %lld unknown, %lld undecodable, "
            "%lld heartbeats, %lld replays (%lld events), %lld snapshots, %lld dropped (-x)\n",
            prog, st.delivered, st.duplicates, st.unknown, st.undecodable, st.heartbeats,
            st.replays, st.replayed, st.snapshots, st.dropped_injected);
    zmq_close(sub);
    zmq_ctx_term(zctx);
    return rc;
}
