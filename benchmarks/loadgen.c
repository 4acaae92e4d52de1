/* loadgen.c - a fast Gearman load generator that speaks the binary protocol itself.
 *
 * One epoll loop per process over non-blocking TCP_NODELAY sockets; every packet a
 * loop iteration produces for a connection is written with one send(). Every mode
 * checks correctness (each job completes exactly once, payloads intact), so a fast
 * wrong answer cannot pass. Prints one JSON line; exit status 0 only when error-free.
 *
 *   gcc -O2 -o loadgen loadgen.c
 *   loadgen roundtrip --port P [--clients 4 --inflight 100 --workers 32 --jobs 20000]
 *   loadgen latency   --port P [--jobs 2000]           (1 client, 1 job at a time, 1 worker)
 *   loadgen bg        --port P [--unique] [--window 1000 --payload 100]
 *   loadgen drain     --port P [--workers 100]         (pre-submit, then workers drain)
 *   loadgen http      --port P --http-port H [--clients 8 --workers 32 --jobs 20000]
 *           [--http-close]  K HTTP/1.1 connections (--clients), one request in flight
 *           each: POST /<function> with the payload (default 100 bytes); each answer
 *           must be 200 with the payload as its body. Echo workers on the Gearman port.
 *           Keep-alive by default; --http-close sends "Connection: close", waits for
 *           the server to close and opens a new connection for the next request.
 *   roundtrip/latency: --tls [--tls-ca FILE]  every connection over TLS (OpenSSL; only
 *           when compiled with -DLOADGEN_TLS -lssl -lcrypto). The handshake is blocking
 *           at connect time, then SSL_read/SSL_write run non-blocking in the epoll loop.
 *           Without --tls-ca the server's certificate is not verified.
 *   any mode: --idle N [--idle-function idle --idle-batch B]  N more worker connections
 *           that CAN_DO another function, PRE_SLEEP and sit there; any packet they get
 *           but the ECHO_RES they ask for (a NOOP above all) is an error. They connect
 *           B per process at a time (default 32 / procs: the servers' default backlog).
 *   common: --host 127.0.0.1 --procs N --timeout SECONDS --function NAME
 *           --fault K  (inject one fault at job K, to prove the checks can fail)
 *           --server-pid PID  (also report the server's CPU seconds in the timed phase)
 *
 * --procs N forks N load processes (connections dealt round-robin) that share their
 * counters through a MAP_SHARED page; the clock starts when all have connected and all
 * workers' CAN_DO are registered (an ECHO_REQ after CAN_DO came back). CPU seconds
 * reported are the load processes' own (getrusage) over the timed phase.
 *
 * Wire format (spec 1.1): 12-byte header "\0REQ"/"\0RES", type and size as big-endian
 * uint32, then the arguments separated by NUL; the last argument runs to the end.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif

enum {
    CAN_DO = 1, PRE_SLEEP = 4, NOOP = 6, SUBMIT_JOB = 7, JOB_CREATED = 8, GRAB_JOB = 9,
    NO_JOB = 10, JOB_ASSIGN = 11, WORK_COMPLETE = 13, WORK_FAIL = 14, ECHO_REQ = 16,
    ECHO_RES = 17, SUBMIT_JOB_BG = 18, ERROR = 19, WORK_EXCEPTION = 25,
};
enum mode { M_ROUNDTRIP, M_LATENCY, M_BG, M_DRAIN, M_HTTP, M_NMODES };
static const char *mode_names[] = {"roundtrip", "latency", "bg", "drain", "http"};
enum role { R_CLIENT, R_WORKER, R_BG, R_IDLE, R_HTTP };

enum errkind {
    E_MISMATCH, E_UNKNOWN_HANDLE, E_DUPLICATE, E_ERROR_PACKET, E_WORK_FAIL, E_UNEXPECTED,
    E_MISSING, E_DUP_HANDLE, E_BAD_PACKET, E_CLOSED, E_COUNT, E_TIMEOUT, E_IDLE_NOOP,
    E_IDLE_PACKET, E_HTTP_STATUS, E_HTTP_BAD, E_TLS, E_NKINDS
};
static const char *err_names[] = {
    "payload_mismatch", "unknown_handle", "duplicate_completion", "error_packet",
    "work_fail", "unexpected_packet", "missing", "duplicate_handle", "bad_packet",
    "connection_closed", "count_mismatch", "timeout", "noop_to_idle_worker",
    "packet_to_idle_worker", "http_status", "bad_http_response", "tls_error",
};

#define MAXPROCS 64
#define HANDLE_MAX 64
#define MAX_PACKET (64u << 20)
#define READ_CHUNK (256 * 1024)

static struct {
    enum mode mode;
    const char *host;
    int port;
    long jobs;
    int clients, inflight, workers, window, procs;
    long payload;
    int unique;
    double timeout;
    long fault;
    const char *function;
    int server_pid;
    int idle, idle_batch;       /* --idle: sleeping workers of --idle-function */
    const char *idle_function;
    int http_port, http_close; /* http mode: the HTTP listener; a connection per request */
    int tls;                   /* --tls: every connection over TLS */
    const char *tls_ca;        /* --tls-ca: verify the server against this CA (PEM) */
} opt = {M_ROUNDTRIP, "127.0.0.1", 0, 20000, 4, 100, 32, 1000, 1, -1, 0, 120, 0, NULL, 0,
         0, 0, "idle", 0, 0, 0, NULL};
#ifdef LOADGEN_TLS
static SSL_CTX *tls_ctx;
#endif

/* State shared by all processes (MAP_SHARED, mapped before fork). */
struct shared {
    _Atomic long client_done;   /* jobs answered to clients (fg: completed, bg: created) */
    _Atomic long worker_done;   /* JOB_ASSIGNs completed by workers */
    _Atomic long idle_workers;  /* workers whose last GRAB_JOB got NO_JOB */
    _Atomic long ready_procs;
    _Atomic int start, stop, end_set, timed_out, fatal, first_error_set;
    _Atomic long errs[E_NKINDS];
    _Atomic long idle_noops, idle_other; /* packets the idle workers received */
    _Atomic long idle_checked;           /* idle workers whose final ECHO_RES came back */
    long idle_registered;                /* admin `status`: workers of --idle-function */
    double t_start, t_end;
    double server_cpu_start, server_cpu_end; /* --server-pid: its utime+stime, seconds */
    double cpu_user[MAXPROCS], cpu_sys[MAXPROCS];
    char first_error[256];
};
static struct shared *sh;
static double *lat;                 /* per job: submit -> WORK_COMPLETE seconds */
static _Atomic unsigned char *seen; /* drain: times each payload reached a worker */
static char (*handles)[HANDLE_MAX]; /* bg: the handle JOB_CREATED gave each job */
static unsigned char *handle_len;
static double deadline;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* User + system CPU seconds of --server-pid so far (from /proc/PID/stat), or 0. */
static double server_cpu(void) {
    if (!opt.server_pid) return 0;
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", opt.server_pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char *q = strrchr(text, ')');
    unsigned long ut = 0, st = 0;
    if (!q || sscanf(q + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void mark_start(void) {
    sh->server_cpu_start = server_cpu();
    sh->t_start = now();
    atomic_store(&sh->start, 1);
}

static void error_at(enum errkind kind, const char *fmt, ...) {
    atomic_fetch_add(&sh->errs[kind], 1);
    int expected = 0;
    if (atomic_compare_exchange_strong(&sh->first_error_set, &expected, 1)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(sh->first_error, sizeof sh->first_error, fmt, ap);
        va_end(ap);
    }
}

static void die(const char *msg) {
    fprintf(stderr, "loadgen: %s: %s\n", msg, strerror(errno));
    exit(2);
}

/* ---- buffers and the encoder ------------------------------------------------- */

struct buf { char *p; size_t off, len, cap; };

static void buf_reserve(struct buf *b, size_t n) {
    if (b->len + n <= b->cap) return;
    if (b->off) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->len + n <= b->cap) return;
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + n) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) die("realloc");
    b->cap = cap;
}

/* Append one request: nargs (pointer, length) pairs joined by NUL. */
static void put_packet(struct buf *b, uint32_t type, int nargs, ...) {
    va_list ap;
    size_t size = nargs > 1 ? (size_t)(nargs - 1) : 0;
    va_start(ap, nargs);
    for (int i = 0; i < nargs; i++) {
        (void)va_arg(ap, const char *);
        size += va_arg(ap, size_t);
    }
    va_end(ap);
    buf_reserve(b, 12 + size);
    char *w = b->p + b->len;
    uint32_t t = htonl(type), s = htonl((uint32_t)size);
    memcpy(w, "\0REQ", 4);
    memcpy(w + 4, &t, 4);
    memcpy(w + 8, &s, 4);
    w += 12;
    va_start(ap, nargs);
    for (int i = 0; i < nargs; i++) {
        const char *a = va_arg(ap, const char *);
        size_t n = va_arg(ap, size_t);
        if (i) *w++ = '\0';
        memcpy(w, a, n);
        w += n;
    }
    va_end(ap);
    b->len += 12 + size;
}

/* Split a payload into `fixed` NUL-terminated args plus the tail; -1 if a NUL is missing. */
static int split_args(const char *p, size_t len, int fixed, const char **a, size_t *n) {
    for (int i = 0; i < fixed; i++) {
        const char *z = memchr(p, '\0', len);
        if (!z) return -1;
        a[i] = p;
        n[i] = (size_t)(z - p);
        len -= n[i] + 1;
        p = z + 1;
    }
    a[fixed] = p;
    n[fixed] = len;
    return 0;
}

/* Deterministic payloads, so a checker can rebuild what it expects from an index. */
static size_t make_payload(char *dst, long conn, long idx, long size) {
    int n = conn >= 0 ? sprintf(dst, "%ld-%ld-", conn, idx) : sprintf(dst, "%ld-", idx);
    if (n < size) {
        memset(dst + n, 'x', (size_t)(size - n));
        n = (int)size;
    }
    return (size_t)n;
}

/* ---- handle -> job index table (linear probing, backward-shift delete) -------- */

struct hent { uint32_t hash; uint8_t used, len; char h[HANDLE_MAX]; long val; };
struct htab { struct hent *e; size_t mask; };

static uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static void ht_init(struct htab *t, size_t want) {
    size_t cap = 16;
    while (cap < want * 2) cap *= 2;
    t->e = calloc(cap, sizeof *t->e);
    if (!t->e) die("calloc");
    t->mask = cap - 1;
}

static size_t ht_find(struct htab *t, const char *s, size_t n, uint32_t h) {
    size_t i = h & t->mask;
    while (t->e[i].used) {
        if (t->e[i].hash == h && t->e[i].len == n && !memcmp(t->e[i].h, s, n)) return i;
        i = (i + 1) & t->mask;
    }
    return i;
}

/* 0 on insert, -1 when the handle is already present. */
static int ht_put(struct htab *t, const char *s, size_t n, long val) {
    uint32_t h = hash_bytes(s, n);
    size_t i = ht_find(t, s, n, h);
    if (t->e[i].used) return -1;
    t->e[i].used = 1;
    t->e[i].hash = h;
    t->e[i].len = (uint8_t)n;
    memcpy(t->e[i].h, s, n);
    t->e[i].val = val;
    return 0;
}

/* Remove and return the value, or -1 if absent. */
static long ht_pop(struct htab *t, const char *s, size_t n) {
    uint32_t h = hash_bytes(s, n);
    size_t i = ht_find(t, s, n, h);
    if (!t->e[i].used) return -1;
    long val = t->e[i].val;
    for (;;) {
        size_t j = i;
        for (;;) {
            j = (j + 1) & t->mask;
            if (!t->e[j].used) {
                t->e[i].used = 0;
                return val;
            }
            size_t k = t->e[j].hash & t->mask;
            int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
            if (!stays) break;
        }
        t->e[i] = t->e[j];
        i = j;
    }
}

/* ---- connections -------------------------------------------------------------- */

struct conn {
    int fd, role, id, dirty, want_out, idle, ready, checked;
    struct buf in, out;
    long base;   /* global index of this connection's first job */
    long limit;  /* jobs this connection submits */
    long next;   /* next job to submit */
    long answered;
    long *fifo;  /* job indexes awaiting JOB_CREATED, in submit order */
    size_t fifo_head, fifo_len, fifo_mask;
    struct htab ht;
    unsigned char *completed;
    double *t_submit;
    int await_eof;       /* http --http-close: answer complete, the server is to close */
    int read_wants_write, write_wants_read; /* TLS: SSL_read/SSL_write wait on the other */
#ifdef LOADGEN_TLS
    SSL *ssl;
#endif
};

static int ep;
static struct conn **dirty;
static int ndirty;
static long local_ready_workers, local_workers;
static long local_idle, local_idle_ready, local_idle_checked; /* --idle connections */
static int final_phase; /* after the clock stopped: run on past `stop` for the idle check */

static void mark_dirty(struct conn *c) {
    if (!c->dirty) {
        c->dirty = 1;
        dirty[ndirty++] = c;
    }
}

static void fatal_stop(void) {
    atomic_store(&sh->fatal, 1);
    atomic_store(&sh->stop, 1);
}

#ifdef LOADGEN_TLS
static void tls_fail(const char *what) {
    char msg[256] = "";
    unsigned long e = ERR_get_error();
    if (e) ERR_error_string_n(e, msg, sizeof msg);
    fprintf(stderr, "loadgen: %s: %s\n", what, e ? msg : strerror(errno));
    if (sh) { /* a load process: the others and the parent stop too */
        error_at(E_TLS, "%s: %s", what, e ? msg : strerror(errno));
        fatal_stop();
    }
    exit(2);
}
#endif

/* --tls: the client context (before fork: the processes share it copy-on-write). */
static void tls_init(void) {
#ifdef LOADGEN_TLS
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx) tls_fail("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION);
    /* Partial writes; a retried SSL_write may pass the same bytes at a moved address
     * (the output buffer grows by realloc between the tries). */
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (opt.tls_ca) {
        if (SSL_CTX_load_verify_locations(tls_ctx, opt.tls_ca, NULL) != 1)
            tls_fail("SSL_CTX_load_verify_locations");
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
        X509_VERIFY_PARAM *vp = SSL_CTX_get0_param(tls_ctx);
        if (X509_VERIFY_PARAM_set1_ip_asc(vp, opt.host) != 1) tls_fail("set1_ip_asc");
    } else {
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL); /* a benchmark: no check */
    }
#else
    fprintf(stderr, "loadgen: --tls: built without OpenSSL (compile with -DLOADGEN_TLS "
            "-lssl -lcrypto)\n");
    exit(2);
#endif
}

static int open_conn_to(int port, struct conn *c) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, opt.host, &sa.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad host %s (IPv4 address expected)\n", opt.host);
        exit(2);
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);  /* bounds connect() */
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
#ifdef LOADGEN_TLS
    if (opt.tls && c) {
        /* The handshake blocks (bounded by the socket timeouts); the rest does not. */
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        c->ssl = SSL_new(tls_ctx);
        if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) tls_fail("SSL_new");
        if (SSL_connect(c->ssl) != 1) tls_fail("TLS handshake");
    }
#else
    (void)c;
#endif
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) die("fcntl");
    return fd;
}

static void close_conn(struct conn *c) {
#ifdef LOADGEN_TLS
    if (c->ssl) SSL_free(c->ssl); /* no close_notify: the connection just goes */
    c->ssl = NULL;
#endif
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

static void watch_conn(struct conn *c) {
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
}

static struct conn *new_conn(int role, int id) {
    struct conn *c = calloc(1, sizeof *c);
    if (!c) die("calloc");
    c->fd = open_conn_to(role == R_HTTP ? opt.http_port : opt.port, c);
    c->role = role;
    c->id = id;
    watch_conn(c);
    return c;
}

static void want_out(struct conn *c, int on) {
    if (c->want_out == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = on;
}

/* TLS: SSL_write what is pending. 1 = all written, 0 = wait (for EPOLLOUT, or for
 * EPOLLIN when the TLS layer must read first), -1 = the connection failed. */
#ifdef LOADGEN_TLS
static int flush_tls(struct conn *c) {
    c->write_wants_read = 0;
    while (c->out.len > c->out.off) {
        size_t left = c->out.len - c->out.off;
        int n = SSL_write(c->ssl, c->out.p + c->out.off, left > (1 << 30) ? 1 << 30 : (int)left);
        if (n > 0) {
            c->out.off += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_WRITE) {
            want_out(c, 1);
            return 0;
        }
        if (e == SSL_ERROR_WANT_READ) {
            c->write_wants_read = 1; /* retried after the next read (EPOLLIN is on) */
            return 0;
        }
        error_at(E_TLS, "SSL_write on connection %d: error %d", c->id, e);
        return -1;
    }
    return 1;
}
#endif

static void flush_conn(struct conn *c) {
    if (c->fd < 0) return;
#ifdef LOADGEN_TLS
    if (c->ssl) {
        int r = flush_tls(c);
        if (r < 0) fatal_stop();
        if (r <= 0) return;
        c->out.off = c->out.len = 0;
        want_out(c, c->read_wants_write);
        return;
    }
#endif
    while (c->out.len > c->out.off) {
        ssize_t n = send(c->fd, c->out.p + c->out.off, c->out.len - c->out.off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out.off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            want_out(c, 1);
            return;
        }
        error_at(E_CLOSED, "send on connection %d: %s", c->id, strerror(errno));
        fatal_stop();
        return;
    }
    c->out.off = c->out.len = 0;
    want_out(c, 0);
}

static void flush_dirty(void) {
    for (int i = 0; i < ndirty; i++) {
        dirty[i]->dirty = 0;
        flush_conn(dirty[i]);
    }
    ndirty = 0;
}

/* ---- clients --------------------------------------------------------------------- */

static char function_buf[256];
static size_t function_len;

static void client_submit(struct conn *c) {
    char payload[opt.payload + 64];
    long idx = c->next++;
    size_t n = make_payload(payload, c->id, idx, opt.payload);
    c->fifo[(c->fifo_head + c->fifo_len++) & c->fifo_mask] = idx;
    c->t_submit[idx] = now();
    put_packet(&c->out, SUBMIT_JOB, 3, function_buf, function_len, "", (size_t)0, payload, n);
    mark_dirty(c);
}

static void client_finish(struct conn *c) {
    c->answered++;
    atomic_fetch_add(&sh->client_done, 1);
    if (c->next < c->limit) client_submit(c);
}

static void bg_submit_window(struct conn *c) {
    char payload[opt.payload + 64], uniq[32];
    while (c->next < c->limit && c->next - c->answered < opt.window) {
        long g = c->base + c->next++;
        size_t n = make_payload(payload, -1, g, opt.payload);
        /* --fault in drain: job K is stored with a damaged payload, so the worker sees
         * what a server that corrupted it would hand out. */
        if (opt.mode == M_DRAIN && opt.fault == g + 1) payload[n - 1] ^= 1;
        size_t u = opt.unique ? (size_t)sprintf(uniq, "u%ld", g) : 0;
        put_packet(&c->out, SUBMIT_JOB_BG, 3, function_buf, function_len, uniq, u, payload, n);
    }
    mark_dirty(c);
}

static void on_client_packet(struct conn *c, uint32_t type, const char *p, size_t len) {
    const char *a[3];
    size_t n[3];
    switch (type) {
    case JOB_CREATED: {
        if (!c->fifo_len) {
            error_at(E_UNEXPECTED, "JOB_CREATED with no submit pending on connection %d", c->id);
            return;
        }
        long idx = c->fifo[c->fifo_head];
        c->fifo_head = (c->fifo_head + 1) & c->fifo_mask;
        c->fifo_len--;
        if (len >= HANDLE_MAX) {
            error_at(E_BAD_PACKET, "job handle of %zu bytes", len);
            return;
        }
        if (ht_put(&c->ht, p, len, idx) < 0)
            error_at(E_DUP_HANDLE, "handle %.*s given to two jobs in flight", (int)len, p);
        return;
    }
    case WORK_COMPLETE:
    case WORK_FAIL:
    case WORK_EXCEPTION: {
        if (split_args(p, len, type == WORK_FAIL ? 0 : 1, a, n) < 0) {
            error_at(E_BAD_PACKET, "result packet without a NUL");
            return;
        }
        long idx = ht_pop(&c->ht, a[0], n[0]);
        if (idx < 0) {
            error_at(E_UNKNOWN_HANDLE, "result for unknown handle %.*s", (int)n[0], a[0]);
            return;
        }
        if (c->completed[idx]++) {
            error_at(E_DUPLICATE, "job %ld of connection %d completed twice", idx, c->id);
            return;
        }
        lat[c->base + idx] = now() - c->t_submit[idx];
        if (type != WORK_COMPLETE) {
            error_at(E_WORK_FAIL, "job %.*s failed (packet type %u)", (int)n[0], a[0], type);
        } else {
            char want[opt.payload + 64];
            size_t wn = make_payload(want, c->id, idx, opt.payload);
            if (wn != n[1] || memcmp(want, a[1], wn))
                error_at(E_MISMATCH, "job %ld of connection %d: payload %.*s, expected %.*s",
                         idx, c->id, (int)(n[1] > 40 ? 40 : n[1]), a[1],
                         (int)(wn > 40 ? 40 : wn), want);
        }
        client_finish(c);
        return;
    }
    case ERROR:
        /* An ERROR in place of JOB_CREATED (e.g. a full queue): count it and move on. */
        error_at(E_ERROR_PACKET, "ERROR %.*s", (int)(len > 80 ? 80 : len), p);
        if (c->fifo_len) {
            long idx = c->fifo[c->fifo_head];
            c->fifo_head = (c->fifo_head + 1) & c->fifo_mask;
            c->fifo_len--;
            c->completed[idx] = 1;
            client_finish(c);
        }
        return;
    default:
        return; /* WORK_DATA, WORK_STATUS, ... are legal and carry nothing to check */
    }
}

static void on_bg_packet(struct conn *c, uint32_t type, const char *p, size_t len) {
    long g = c->base + c->answered;
    if (type == JOB_CREATED) {
        if (len >= HANDLE_MAX) {
            error_at(E_BAD_PACKET, "job handle of %zu bytes", len);
        } else if (opt.mode == M_BG && opt.fault == g + 1 && g > 0) {
            /* --fault in bg: pretend the server handed out the previous handle again. */
            memcpy(handles[g], handles[g - 1], handle_len[g - 1]);
            handle_len[g] = handle_len[g - 1];
        } else {
            memcpy(handles[g], p, len);
            handle_len[g] = (unsigned char)len;
        }
    } else if (type == ERROR) {
        error_at(E_ERROR_PACKET, "ERROR %.*s", (int)(len > 80 ? 80 : len), p);
    } else {
        error_at(E_UNEXPECTED, "packet type %u in reply to SUBMIT_JOB_BG", type);
        return;
    }
    c->answered++;
    atomic_fetch_add(&sh->client_done, 1);
    if (c->next < c->limit) bg_submit_window(c);
}

/* ---- workers --------------------------------------------------------------------- */

static void on_worker_packet(struct conn *c, uint32_t type, const char *p, size_t len) {
    const char *a[3];
    size_t n[3];
    switch (type) {
    case ECHO_RES: /* CAN_DO is registered: this worker is ready */
        if (!c->ready) {
            c->ready = 1;
            local_ready_workers++;
        }
        return;
    case NO_JOB:
        if (!c->idle) {
            c->idle = 1;
            atomic_fetch_add(&sh->idle_workers, 1);
        }
        put_packet(&c->out, PRE_SLEEP, 0);
        mark_dirty(c);
        return;
    case NOOP:
        put_packet(&c->out, GRAB_JOB, 0);
        mark_dirty(c);
        return;
    case JOB_ASSIGN: {
        if (c->idle) {
            c->idle = 0;
            atomic_fetch_sub(&sh->idle_workers, 1);
        }
        if (split_args(p, len, 2, a, n) < 0) {
            error_at(E_BAD_PACKET, "JOB_ASSIGN without two NULs");
            return;
        }
        long k = atomic_fetch_add(&sh->worker_done, 1) + 1;
        if (opt.mode == M_DRAIN) {
            long g = -1; /* the job index the payload starts with, bounded by its length */
            for (size_t i = 0; i < n[2] && i < 19 && a[2][i] >= '0' && a[2][i] <= '9'; i++)
                g = (g < 0 ? 0 : g * 10) + (a[2][i] - '0');
            char want[opt.payload + 64];
            if (g < 0 || g >= opt.jobs) {
                error_at(E_MISMATCH, "payload %.*s names no job", (int)(n[2] > 40 ? 40 : n[2]),
                         a[2]);
            } else {
                size_t wn = make_payload(want, -1, g, opt.payload);
                if (wn != n[2] || memcmp(want, a[2], wn))
                    error_at(E_MISMATCH, "job %ld: payload damaged", g);
                if (atomic_fetch_add(&seen[g], 1))
                    error_at(E_DUPLICATE, "job %ld handed to a worker twice", g);
            }
            put_packet(&c->out, WORK_COMPLETE, 2, a[0], n[0], "", (size_t)0);
        } else if (opt.fault == k && n[2]) {
            /* --fault in roundtrip/latency: this worker damages the K-th echo. */
            char bad[n[2]];
            memcpy(bad, a[2], n[2]);
            bad[n[2] - 1] ^= 1;
            put_packet(&c->out, WORK_COMPLETE, 2, a[0], n[0], bad, n[2]);
        } else {
            put_packet(&c->out, WORK_COMPLETE, 2, a[0], n[0], a[2], n[2]);
        }
        put_packet(&c->out, GRAB_JOB, 0);
        mark_dirty(c);
        return;
    }
    case ERROR:
        error_at(E_ERROR_PACKET, "worker got ERROR %.*s", (int)(len > 80 ? 80 : len), p);
        return;
    default:
        error_at(E_UNEXPECTED, "worker got packet type %u", type);
        return;
    }
}

/* ---- idle workers (--idle) ------------------------------------------------------ */

/* An idle worker sent CAN_DO <idle function>, PRE_SLEEP and an ECHO_REQ, and does nothing
 * else: the server has no reason to send it anything but the ECHO_RES answers (one when
 * it is registered and asleep, one for the final check after the timed phase). A NOOP
 * means the server woke a worker that cannot do the job. It does not answer a NOOP with
 * GRAB_JOB, so it never takes a job, whatever it was woken for. */
static void on_idle_packet(struct conn *c, uint32_t type, const char *p, size_t len) {
    if (type == ECHO_RES) {
        if (!c->ready) {
            c->ready = 1;
            local_idle_ready++;
        } else if (!c->checked) {
            c->checked = 1;
            local_idle_checked++;
            atomic_fetch_add(&sh->idle_checked, 1);
        }
        return;
    }
    if (type == NOOP) {
        atomic_fetch_add(&sh->idle_noops, 1);
        error_at(E_IDLE_NOOP, "idle worker %d (CAN_DO %s, asleep) got a NOOP", c->id,
                 opt.idle_function);
        return;
    }
    atomic_fetch_add(&sh->idle_other, 1);
    error_at(E_IDLE_PACKET, "idle worker %d (CAN_DO %s) got packet type %u (%zu bytes)", c->id,
             opt.idle_function, type, len);
    (void)p;
}

/* Workers of `fn` in the admin protocol's `status` (function, total, running, workers),
 * 0 if the function is not listed, -1 if the admin connection failed. */
static long admin_workers(const char *fn) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    inet_pton(AF_INET, opt.host, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    size_t cap = 1 << 20, len = 0;
    char *text = malloc(cap + 1);
    long found = -1;
    if (text && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        send(fd, "status\n", 7, MSG_NOSIGNAL) == 7) {
        for (;;) {
            if ((len == 2 && !memcmp(text, ".\n", 2)) ||
                (len >= 3 && !memcmp(text + len - 3, "\n.\n", 3))) {
                found = 0;
                break;
            }
            ssize_t r = len < cap ? read(fd, text + len, cap - len) : -1;
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            len += (size_t)r;
        }
    }
    close(fd);
    if (found == 0) {
        text[len] = '\0';
        size_t fl = strlen(fn);
        for (char *line = text; *line; ) {
            char *end = strchr(line, '\n');
            if (!end) break;
            *end = '\0';
            long total, running, workers;
            if (!strncmp(line, fn, fl) && line[fl] == '\t' &&
                sscanf(line + fl + 1, "%ld\t%ld\t%ld", &total, &running, &workers) == 3) {
                found = workers;
                break;
            }
            line = end + 1;
        }
    }
    free(text);
    return found;
}

/* Before the clock starts: the server's own count of workers for the idle function must
 * show every idle worker (plus the busy ones, if they share the function). */
static void check_idle_registered(void) {
    if (!opt.idle || atomic_load(&sh->stop)) return;
    long want = opt.idle + (strcmp(opt.idle_function, opt.function) ? 0 : opt.workers);
    double until = now() + 10;
    long got;
    while ((got = admin_workers(opt.idle_function)) != want && now() < until && now() < deadline)
        usleep(20000);
    sh->idle_registered = got;
    if (got != want)
        error_at(E_COUNT, "admin status shows %ld workers for %s, expected %ld", got,
                 opt.idle_function, want);
}

static int idle_all_ready(void) { return local_idle_ready == local_idle; }
static int idle_all_checked(void) { return local_idle_checked == local_idle; }

/* ---- the loop ------------------------------------------------------------------- */

/* Read what the socket (or the TLS layer) has into c->in: 1 = read (or nothing there
 * yet), 0 = the server closed the connection, -1 = failed (reported). */
static int read_in(struct conn *c) {
#ifdef LOADGEN_TLS
    if (c->ssl) {
        /* Drain SSL_read until WANT_READ: records OpenSSL already took off the socket
         * would not wake epoll again. After WANT_READ, SSL_pending() is 0. */
        c->read_wants_write = 0;
        int closed = 0;
        for (;;) {
            buf_reserve(&c->in, READ_CHUNK);
            size_t room = c->in.cap - c->in.len;
            int n = SSL_read(c->ssl, c->in.p + c->in.len, room > (1 << 30) ? 1 << 30 : (int)room);
            if (n > 0) {
                c->in.len += (size_t)n;
                continue;
            }
            int e = SSL_get_error(c->ssl, n);
            if (e == SSL_ERROR_WANT_READ) break;
            if (e == SSL_ERROR_WANT_WRITE) { /* e.g. a key update: retried on EPOLLOUT */
                c->read_wants_write = 1;
                want_out(c, 1);
                break;
            }
            if (e == SSL_ERROR_ZERO_RETURN) {
                closed = 1;
                break;
            }
            error_at(E_TLS, "SSL_read on connection %d: error %d (%s)", c->id, e,
                     e == SSL_ERROR_SYSCALL ? "closed without close_notify" : "TLS failure");
            return -1;
        }
        if (c->write_wants_read && c->out.len > c->out.off) flush_conn(c);
        return closed ? 0 : 1;
    }
#endif
    buf_reserve(&c->in, READ_CHUNK);
    ssize_t r = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len);
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) return 1;
        error_at(E_CLOSED, "read on connection %d: %s", c->id, strerror(errno));
        return -1;
    }
    c->in.len += (size_t)r;
    return r > 0;
}

/* ---- HTTP clients (http mode) ------------------------------------------------------ */

static void http_send(struct conn *c) {
    char payload[opt.payload + 64], head[600];
    long idx = c->next++;
    size_t n = make_payload(payload, c->id, idx, opt.payload);
    int hn = snprintf(head, sizeof head,
                      "POST /%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: %zu\r\n%s\r\n",
                      opt.function, opt.host, opt.http_port, n,
                      opt.http_close ? "Connection: close\r\n" : "");
    buf_reserve(&c->out, (size_t)hn + n);
    memcpy(c->out.p + c->out.len, head, (size_t)hn);
    memcpy(c->out.p + c->out.len + hn, payload, n);
    c->out.len += (size_t)hn + n;
    c->t_submit[idx] = now();
    mark_dirty(c);
}

/* The value of header `name` (with its colon) in the head [p, end), or NULL. */
static const char *http_header(const char *p, const char *end, const char *name) {
    size_t nl = strlen(name);
    for (const char *line = p; line < end; ) {
        const char *eol = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (!eol) eol = end;
        if ((size_t)(eol - line) > nl && !strncasecmp(line, name, nl)) {
            const char *v = line + nl;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            return v;
        }
        line = eol + 2;
    }
    return NULL;
}

/* Answers on an HTTP connection: each must be 200 with the request's payload as its
 * body (Content-Length framing). `closed`: the server closed the connection. */
static void on_http_data(struct conn *c, int closed) {
    for (;;) {
        char *start = c->in.p + c->in.off;
        size_t avail = c->in.len - c->in.off;
        if (c->await_eof) {
            if (avail) {
                error_at(E_HTTP_BAD, "%zu bytes after the answer on connection %d", avail, c->id);
                fatal_stop();
                return;
            }
            if (!closed) return;
            /* --http-close: the server closed; the next request on a new connection. */
            close_conn(c);
            c->in.off = c->in.len = 0;
            c->await_eof = c->want_out = 0;
            if (c->next < c->limit) {
                c->fd = open_conn_to(opt.http_port, c);
                watch_conn(c);
                http_send(c);
            }
            return;
        }
        char *end = avail ? memmem(start, avail, "\r\n\r\n", 4) : NULL;
        if (!end) {
            if (closed || avail > 65536) {
                error_at(closed ? E_CLOSED : E_HTTP_BAD, "server closed HTTP connection %d "
                         "after %ld answers%s", c->id, c->answered,
                         closed ? "" : " (or sent a head over 64 KiB)");
                fatal_stop();
            }
            return;
        }
        int status = 0;
        const char *cl = http_header(start, end + 2, "content-length:");
        if (sscanf(start, "HTTP/1.%*d %d", &status) != 1 || !cl ||
            http_header(start, end + 2, "transfer-encoding:")) {
            error_at(E_HTTP_BAD, "connection %d: answer without a status or Content-Length: "
                     "%.*s", c->id, (int)(end - start > 120 ? 120 : end - start), start);
            fatal_stop();
            return;
        }
        size_t head = (size_t)(end + 4 - start), len = (size_t)strtoul(cl, NULL, 10);
        if (avail < head + len) {
            if (closed) {
                error_at(E_CLOSED, "server closed HTTP connection %d inside a body", c->id);
                fatal_stop();
            } else {
                buf_reserve(&c->in, head + len);
            }
            return;
        }
        const char *body = start + head;
        c->in.off += head + len;
        long idx = c->next - 1;
        lat[c->base + idx] = now() - c->t_submit[idx];
        if (status != 200) {
            error_at(E_HTTP_STATUS, "request %ld of connection %d: status %d", idx, c->id,
                     status);
        } else {
            char want[opt.payload + 64];
            size_t wn = make_payload(want, c->id, idx, opt.payload);
            size_t at = 0;
            while (at < wn && at < len && want[at] == body[at]) at++;
            if (wn != len || at < wn)
                error_at(E_MISMATCH, "request %ld of connection %d: body of %zu bytes differs "
                         "from the %zu sent at byte %zu", idx, c->id, len, wn, at);
        }
        c->answered++;
        atomic_fetch_add(&sh->client_done, 1);
        if (c->in.off == c->in.len) c->in.off = c->in.len = 0;
        if (opt.http_close) {
            c->await_eof = 1;
            continue;
        }
        if (c->next < c->limit) {
            if (closed) {
                error_at(E_CLOSED, "server closed keep-alive HTTP connection %d after %ld "
                         "answers", c->id, c->answered);
                fatal_stop();
                return;
            }
            http_send(c);
        }
    }
}

static void on_readable(struct conn *c) {
    if (c->fd < 0) return;
    int r = read_in(c);
    if (r < 0) {
        fatal_stop();
        return;
    }
    if (c->role == R_HTTP) {
        on_http_data(c, r == 0);
        return;
    }
    if (r == 0) {
        error_at(E_CLOSED, "server closed connection %d", c->id);
        fatal_stop();
        return;
    }
    while (c->in.len - c->in.off >= 12) {
        const unsigned char *h = (const unsigned char *)c->in.p + c->in.off;
        uint32_t type, size;
        memcpy(&type, h + 4, 4);
        memcpy(&size, h + 8, 4);
        type = ntohl(type);
        size = ntohl(size);
        if (memcmp(h, "\0RES", 4) || size > MAX_PACKET) {
            error_at(E_BAD_PACKET, "bad packet header on connection %d", c->id);
            fatal_stop();
            return;
        }
        if (c->in.len - c->in.off < 12 + (size_t)size) {
            buf_reserve(&c->in, 12 + (size_t)size);
            break;
        }
        const char *payload = c->in.p + c->in.off + 12;
        c->in.off += 12 + (size_t)size;
        if (c->role == R_WORKER) on_worker_packet(c, type, payload, size);
        else if (c->role == R_IDLE) on_idle_packet(c, type, payload, size);
        else if (c->role == R_BG) on_bg_packet(c, type, payload, size);
        else on_client_packet(c, type, payload, size);
    }
    if (c->in.off == c->in.len) c->in.off = c->in.len = 0;
}

static int global_done(void) {
    if (opt.mode == M_DRAIN)
        return atomic_load(&sh->worker_done) >= opt.jobs &&
               atomic_load(&sh->idle_workers) == opt.workers;
    return atomic_load(&sh->client_done) >= opt.jobs;
}

/* Run the loop until `until()` holds, the shared stop flag is set or the deadline passes. */
static void run_loop(int (*until)(void), int set_end) {
    struct epoll_event evs[256];
    while (final_phase ? !atomic_load(&sh->fatal) && !atomic_load(&sh->timed_out)
                       : !atomic_load(&sh->stop)) {
        flush_dirty();
        if (until()) {
            if (set_end) {
                int expected = 0;
                if (atomic_compare_exchange_strong(&sh->end_set, &expected, 1)) {
                    sh->t_end = now();
                    sh->server_cpu_end = server_cpu();
                }
                atomic_store(&sh->stop, 1);
            }
            return;
        }
        int n = epoll_wait(ep, evs, 256, 20);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if ((evs[i].events & EPOLLOUT) && c->read_wants_write) on_readable(c);
            if (evs[i].events & EPOLLOUT) flush_conn(c);
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
        }
        if (now() > deadline) {
            atomic_store(&sh->timed_out, 1);
            error_at(E_TIMEOUT, "timed out after %.0f s", opt.timeout);
            atomic_store(&sh->stop, 1);
        }
    }
}

static int all_local_workers_ready(void) { return local_ready_workers == local_workers; }
static int started(void) { return atomic_load(&sh->start); }
static struct conn *bg_presubmit;
static int presubmit_done(void) { return bg_presubmit->answered == bg_presubmit->limit; }

static void cpu_now(double *user, double *sys) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6;
    *sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

/* Split `total` items over `parts` as evenly as possible; the share of part i. */
static long share(long total, int parts, int i) { return total / parts + (i < total % parts); }

/* One process's part of the run: clients/workers i with i % procs == p. */
static void run_proc(int p, int self_start) {
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    int nconn = opt.clients + opt.workers + opt.idle + 1;
    struct conn **conns = calloc((size_t)nconn, sizeof *conns);
    struct conn **idle = calloc((size_t)opt.idle + 1, sizeof *idle);
    dirty = calloc((size_t)nconn, sizeof *dirty);
    int nc = 0;
    /* Idle workers first, --idle-batch at a time: each batch is registered and asleep
     * (its ECHO_RES came back, so the server accepted and read it) before the next
     * connects, so the listen backlog never holds more than a batch per process. */
    for (int i = p; i < opt.idle && !atomic_load(&sh->stop); i += opt.procs) {
        struct conn *c = new_conn(R_IDLE, i);
        put_packet(&c->out, CAN_DO, 1, opt.idle_function, strlen(opt.idle_function));
        put_packet(&c->out, PRE_SLEEP, 0);
        put_packet(&c->out, ECHO_REQ, 1, "asleep", (size_t)6);
        mark_dirty(c);
        idle[local_idle++] = c;
        if (local_idle % opt.idle_batch == 0) run_loop(idle_all_ready, 0);
    }
    run_loop(idle_all_ready, 0);
    for (int w = p; w < opt.workers; w += opt.procs) {
        struct conn *c = new_conn(R_WORKER, w);
        put_packet(&c->out, CAN_DO, 1, function_buf, function_len);
        put_packet(&c->out, ECHO_REQ, 1, "ready", (size_t)5);
        mark_dirty(c);
        conns[nc++] = c;
        local_workers++;
    }
    if (opt.mode != M_DRAIN) {
        long base = 0;
        for (int i = 0; i < opt.clients; i++) {
            long limit = share(opt.jobs, opt.clients, i);
            if (i % opt.procs == p) {
                struct conn *c = new_conn(opt.mode == M_BG ? R_BG
                                          : opt.mode == M_HTTP ? R_HTTP : R_CLIENT, i);
                c->base = base;
                c->limit = limit;
                if (c->role == R_HTTP) {
                    c->t_submit = calloc((size_t)limit + 1, sizeof(double));
                } else if (c->role == R_CLIENT) {
                    size_t cap = 2;
                    while (cap < (size_t)opt.inflight + 1) cap *= 2;
                    c->fifo = calloc(cap, sizeof *c->fifo);
                    c->fifo_mask = cap - 1;
                    ht_init(&c->ht, (size_t)opt.inflight);
                    c->completed = calloc((size_t)limit + 1, 1);
                    c->t_submit = calloc((size_t)limit + 1, sizeof(double));
                }
                conns[nc++] = c;
            }
            base += limit;
        }
    }
    run_loop(all_local_workers_ready, 0);
    atomic_fetch_add(&sh->ready_procs, 1);
    if (self_start) {
        check_idle_registered();
        mark_start();
    } else {
        run_loop(started, 0);
    }
    double u0, s0, u1, s1;
    cpu_now(&u0, &s0);
    for (int i = 0; i < nc; i++) {
        struct conn *c = conns[i];
        if (c->role == R_WORKER) {
            put_packet(&c->out, GRAB_JOB, 0);
            mark_dirty(c);
        } else if (c->role == R_BG) {
            bg_submit_window(c);
        } else if (c->role == R_HTTP) {
            http_send(c);
        } else {
            for (int k = 0; k < opt.inflight && c->next < c->limit; k++) client_submit(c);
        }
    }
    run_loop(global_done, 1);
    cpu_now(&u1, &s1);
    sh->cpu_user[p] = u1 - u0;
    sh->cpu_sys[p] = s1 - s0;
    /* Untimed: one more ECHO_REQ per idle worker; any NOOP the server queued for it
     * during the run arrives before its ECHO_RES. */
    if (local_idle && !atomic_load(&sh->fatal) && !atomic_load(&sh->timed_out)) {
        for (long i = 0; i < local_idle; i++) {
            put_packet(&idle[i]->out, ECHO_REQ, 1, "check", (size_t)5);
            mark_dirty(idle[i]);
        }
        final_phase = 1;
        run_loop(idle_all_checked, 0);
        final_phase = 0;
    }
    for (int i = 0; i < nc; i++) close_conn(conns[i]);
    for (long i = 0; i < local_idle; i++) close_conn(idle[i]);
    close(ep);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *sorted, long n, double q) {
    if (n <= 0) return 0;
    long i = (long)(q * (double)(n - 1) + 0.5);
    return sorted[i];
}

/* Print text escaped for a JSON string (the quotes are the caller's). */
static void json_text(const char *q) {
    for (; *q; q++)
        if (*q == '"' || *q == '\\') printf("\\%c", *q);
        else if ((unsigned char)*q < 32) printf("\\u%04x", *q);
        else putchar(*q);
}

static void usage(void) {
    fprintf(stderr,
"usage: loadgen roundtrip|latency|bg|drain|http --port P [--host H] [--jobs N]\n"
            "  [--http-port H] [--http-close]  (http mode: the HTTP listener; a connection\n"
            "  per request)  [--tls] [--tls-ca FILE]  (roundtrip, latency: over TLS)\n"
            "  [--clients C] [--inflight W] [--workers K] [--window W] [--payload BYTES]\n"
            "  [--unique] [--function NAME] [--procs N] [--timeout SECONDS] [--fault K]\n"
            "  [--server-pid PID]  (report that process's CPU seconds during the timed phase)\n"
            "  [--idle N] [--idle-function NAME] [--idle-batch B]  (N sleeping workers of\n"
            "  NAME, default idle, connected B per process at a time, default 32 / procs;\n"
            "  any packet they get but their ECHO_RES is an error)\n");
    exit(2);
}

static void *shared_alloc(size_t n) {
    void *p = mmap(NULL, n ? n : 1, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die("mmap");
    return p;
}

int main(int argc, char **argv) {
    static struct option longopts[] = {
        {"host", 1, 0, 'h'}, {"port", 1, 0, 'p'}, {"jobs", 1, 0, 'n'},
        {"clients", 1, 0, 'c'}, {"inflight", 1, 0, 'i'}, {"workers", 1, 0, 'w'},
        {"window", 1, 0, 'W'}, {"payload", 1, 0, 's'}, {"unique", 0, 0, 'u'},
        {"function", 1, 0, 'f'}, {"procs", 1, 0, 'P'}, {"timeout", 1, 0, 't'},
        {"fault", 1, 0, 'F'}, {"server-pid", 1, 0, 'S'}, {"idle", 1, 0, 'I'},
        {"idle-function", 1, 0, 'G'}, {"idle-batch", 1, 0, 'B'}, {"http-port", 1, 0, 'H'},
        {"http-close", 0, 0, 'C'}, {"tls", 0, 0, 'T'}, {"tls-ca", 1, 0, 'A'}, {0, 0, 0, 0},
    };
    if (argc < 2) usage();
    int m;
    for (m = 0; m < M_NMODES && strcmp(argv[1], mode_names[m]); m++) {}
    if (m == M_NMODES) usage();
    opt.mode = (enum mode)m;
    int ch;
    optind = 2;
    int workers_set = 0, clients_set = 0;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'n': opt.jobs = atol(optarg); break;
        case 'c': opt.clients = atoi(optarg); clients_set = 1; break;
        case 'i': opt.inflight = atoi(optarg); break;
        case 'w': opt.workers = atoi(optarg); workers_set = 1; break;
        case 'W': opt.window = atoi(optarg); break;
        case 's': opt.payload = atol(optarg); break;
        case 'u': opt.unique = 1; break;
        case 'f': opt.function = optarg; break;
        case 'P': opt.procs = atoi(optarg); break;
        case 't': opt.timeout = atof(optarg); break;
        case 'F': opt.fault = atol(optarg); break;
        case 'S': opt.server_pid = atoi(optarg); break;
        case 'I': opt.idle = atoi(optarg); break;
        case 'G': opt.idle_function = optarg; break;
        case 'B': opt.idle_batch = atoi(optarg); break;
        case 'H': opt.http_port = atoi(optarg); break;
        case 'C': opt.http_close = 1; break;
        case 'T': opt.tls = 1; break;
        case 'A': opt.tls_ca = optarg; break;
        default: usage();
        }
    }
    if (opt.port <= 0 || opt.port > 65535 || opt.jobs <= 0) usage();
    if (opt.mode == M_LATENCY) opt.clients = opt.inflight = opt.workers = 1, opt.procs = 1;
    if (opt.mode == M_BG) {
        opt.workers = 0;
        if (!clients_set) opt.clients = 1;
    }
    if (opt.mode == M_DRAIN) {
        opt.clients = 0;
        if (!workers_set) opt.workers = 100;
    }
    if (opt.payload < 0)
        opt.payload = (opt.mode == M_BG || opt.mode == M_DRAIN || opt.mode == M_HTTP) ? 100 : 16;
    if ((opt.mode == M_HTTP) != (opt.http_port > 0) || opt.http_port > 65535 ||
        (opt.http_close && opt.mode != M_HTTP) ||
        (opt.tls && ((opt.mode != M_ROUNDTRIP && opt.mode != M_LATENCY) || opt.idle)) ||
        (opt.tls_ca && !opt.tls))
        usage();
    if (opt.payload > (1 << 20) || opt.clients < 0 || opt.workers < 0 || opt.inflight < 1 ||
        opt.window < 1 || opt.procs < 1 || opt.procs > MAXPROCS || opt.idle < 0 ||
        opt.idle_batch < 0 || !*opt.idle_function || strlen(opt.idle_function) > 255)
        usage();
    if (opt.mode != M_DRAIN && opt.clients > opt.jobs) opt.clients = (int)opt.jobs;
    if (!opt.function) opt.function = opt.mode == M_DRAIN ? "drain" : opt.mode == M_BG ? "bg" : "echo";
    function_len = strlen(opt.function);
    if (function_len >= sizeof function_buf) usage();
    memcpy(function_buf, opt.function, function_len);
    int nprocs_max = opt.mode == M_DRAIN ? opt.workers : opt.clients + opt.workers;
    if (opt.procs > nprocs_max) opt.procs = nprocs_max > 0 ? nprocs_max : 1;

    if (!opt.idle_batch) opt.idle_batch = opt.procs < 32 ? 32 / opt.procs : 1;
    /* Many connections (--idle): raise the soft descriptor limit to the hard one. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    long fds_needed = (opt.idle + opt.procs - 1) / opt.procs + opt.clients + opt.workers + 64;
    if (rl.rlim_cur != RLIM_INFINITY && (long)rl.rlim_cur < fds_needed) {
        fprintf(stderr, "loadgen: %ld file descriptors needed per process, RLIMIT_NOFILE is "
                "%ld (raise ulimit -Hn)\n", fds_needed, (long)rl.rlim_cur);
        exit(2);
    }

    signal(SIGPIPE, SIG_IGN);
    double t0 = now();
    deadline = t0 + opt.timeout;
    alarm((unsigned)opt.timeout + 15); /* last resort if something blocks outside the loop */
    if (opt.tls) tls_init();
    sh = shared_alloc(sizeof *sh);
    lat = shared_alloc((size_t)opt.jobs * sizeof *lat);
    if (opt.mode == M_DRAIN) seen = shared_alloc((size_t)opt.jobs);
    if (opt.mode == M_BG || opt.mode == M_DRAIN) {
        handles = shared_alloc((size_t)opt.jobs * HANDLE_MAX);
        handle_len = shared_alloc((size_t)opt.jobs);
    }

    if (opt.mode == M_DRAIN) {
        /* Queue every job first (untimed) over one pipelined connection. */
        ep = epoll_create1(EPOLL_CLOEXEC);
        dirty = calloc(1, sizeof *dirty);
        bg_presubmit = new_conn(R_BG, 0);
        bg_presubmit->limit = opt.jobs;
        bg_submit_window(bg_presubmit);
        run_loop(presubmit_done, 0);
        atomic_store(&sh->client_done, 0);
        close(bg_presubmit->fd);
        close(ep);
        free(dirty);
    }

    pid_t pids[MAXPROCS];
    if (!atomic_load(&sh->stop)) {
        if (opt.procs == 1) {
            run_proc(0, 1);
        } else {
            pid_t parent = getpid();
            for (int p = 0; p < opt.procs; p++) {
                pids[p] = fork();
                if (pids[p] < 0) die("fork");
                if (pids[p] == 0) {
                    prctl(PR_SET_PDEATHSIG, SIGKILL);
                    if (getppid() != parent) _exit(3);
                    run_proc(p, 0);
                    _exit(0);
                }
            }
            while (atomic_load(&sh->ready_procs) < opt.procs && !atomic_load(&sh->stop)) {
                if (now() > deadline) {
                    error_at(E_TIMEOUT, "timed out while connecting");
                    atomic_store(&sh->timed_out, 1);
                    atomic_store(&sh->stop, 1);
                }
                usleep(200);
            }
            check_idle_registered();
            mark_start();
            for (int p = 0; p < opt.procs; p++) {
                int status;
                while (waitpid(pids[p], &status, 0) < 0 && errno == EINTR) {}
                if (!WIFEXITED(status) || WEXITSTATUS(status))
                    error_at(E_CLOSED, "load process %d exited abnormally (status %d)", p,
                             status);
            }
        }
    }
    if (!atomic_load(&sh->end_set)) {
        sh->t_end = now();
        sh->server_cpu_end = server_cpu();
    }
    if (!atomic_load(&sh->start)) sh->t_start = sh->t_end; /* failed before the clock ran */

    /* Whole-run checks, across processes. */
    long done = opt.mode == M_DRAIN ? atomic_load(&sh->worker_done) : atomic_load(&sh->client_done);
    if (!atomic_load(&sh->timed_out) && !atomic_load(&sh->fatal)) {
        if (opt.mode == M_ROUNDTRIP || opt.mode == M_LATENCY || opt.mode == M_HTTP) {
            long wd = atomic_load(&sh->worker_done);
            if (wd != opt.jobs || done != opt.jobs)
                error_at(E_COUNT, "workers completed %ld, clients got %ld, of %ld jobs", wd, done,
                         opt.jobs);
        }
        if (opt.idle && atomic_load(&sh->idle_checked) != opt.idle)
            error_at(E_COUNT, "%ld of %d idle workers answered the final ECHO_REQ",
                     atomic_load(&sh->idle_checked), opt.idle);
        if (opt.mode == M_DRAIN) {
            long missing = 0;
            for (long g = 0; g < opt.jobs; g++) missing += seen[g] == 0;
            if (missing) {
                atomic_fetch_add(&sh->errs[E_MISSING], missing - 1);
                error_at(E_MISSING, "%ld jobs never reached a worker", missing);
            }
        }
        if (opt.mode == M_BG) {
            struct htab set;
            ht_init(&set, (size_t)opt.jobs);
            long dup = 0;
            for (long g = 0; g < opt.jobs; g++)
                if (handle_len[g] && ht_put(&set, handles[g], handle_len[g], g) < 0) dup++;
            if (dup) {
                atomic_fetch_add(&sh->errs[E_DUP_HANDLE], dup - 1);
                error_at(E_DUP_HANDLE, "%ld jobs got a handle already given to another", dup);
            }
        }
    }

    double seconds = sh->t_end - sh->t_start;
    if (seconds <= 0) seconds = 1e-9;
    double user = 0, sys = 0;
    for (int p = 0; p < opt.procs; p++) user += sh->cpu_user[p], sys += sh->cpu_sys[p];
    long errors = 0;
    for (int k = 0; k < E_NKINDS; k++) errors += atomic_load(&sh->errs[k]);

    double p50 = 0, p99 = 0, pmax = 0, mean = 0;
    long nl = 0;
    if (opt.mode == M_ROUNDTRIP || opt.mode == M_LATENCY || opt.mode == M_HTTP) {
        double *s = malloc((size_t)opt.jobs * sizeof *s);
        for (long g = 0; g < opt.jobs; g++)
            if (lat[g] > 0) s[nl++] = lat[g], mean += lat[g];
        qsort(s, (size_t)nl, sizeof *s, cmp_double);
        p50 = pct(s, nl, 0.5) * 1e6;
        p99 = pct(s, nl, 0.99) * 1e6;
        pmax = nl ? s[nl - 1] * 1e6 : 0;
        mean = nl ? mean / (double)nl * 1e6 : 0;
        free(s);
    }
    printf("{\"mode\": \"%s\", \"jobs\": %ld, \"expected\": %ld, \"seconds\": %.6f, "
           "\"rate\": %.1f, \"errors\": %ld, \"error_kinds\": {",
           mode_names[opt.mode], done, opt.jobs, seconds, (double)done / seconds, errors);
    int first = 1;
    for (int k = 0; k < E_NKINDS; k++) {
        long v = atomic_load(&sh->errs[k]);
        if (v) printf("%s\"%s\": %ld", first ? "" : ", ", err_names[k], v), first = 0;
    }
    printf("}, \"first_error\": \"");
    json_text(sh->first_error);
    printf("\", \"p50_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f, \"mean_us\": %.1f, "
           "\"cpu_user\": %.4f, \"cpu_sys\": %.4f, \"cpu_seconds\": %.4f, "
           "\"cpu_util\": %.3f, \"procs\": %d, \"clients\": %d, \"workers\": %d, "
           "\"server_cpu_seconds\": %.3f, \"idle\": %d, \"idle_function\": \"",
           p50, p99, pmax, mean, user, sys, user + sys, (user + sys) / seconds, opt.procs,
           opt.clients, opt.workers, sh->server_cpu_end - sh->server_cpu_start, opt.idle);
    json_text(opt.idle_function);
    printf("\", \"idle_registered\": %ld, \"idle_noops\": %ld, \"idle_other_packets\": %ld, "
           "\"idle_checked\": %ld, \"timed_out\": %s}\n",
           opt.idle ? sh->idle_registered : 0, atomic_load(&sh->idle_noops),
           atomic_load(&sh->idle_other), atomic_load(&sh->idle_checked),
           atomic_load(&sh->timed_out) ? "true" : "false");
    fflush(stdout);
    return atomic_load(&sh->timed_out) || atomic_load(&sh->fatal) ? 2 : errors ? 1 : 0;
}
