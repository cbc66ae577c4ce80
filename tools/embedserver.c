/*
 * docpipe-embedserver: a local stand-in for the OpenAI embeddings API.
 *
 * POST /v1/embeddings answers the way OpenAI does, with vectors that depend
 * only on the text: the same text gives the same vector in every run and
 * every process, so pipeline tests can assert on stored embeddings.  Around
 * that sit fault switches (latency, failing status codes, failure windows,
 * hung requests) that tests set at start or flip at runtime through
 * /admin/faults, and counters in /admin/stats to check what a client did
 * (requests, inputs, tokens: docpipe's estimate of the texts received, what
 * a provider's token limit counts).
 *
 * Design:
 *  - libmicrohttpd in thread-per-connection mode.  A request that sleeps
 *    (injected latency, a hung request) holds only its own thread, so 100
 *    concurrent requests at 1 s latency finish in about 1 s.  Keep-alive is
 *    libmicrohttpd's.
 *  - One table of options (option_defs) is the single source of the flags,
 *    their environment variables, defaults, ranges and --help.  Options marked
 *    runtime are the "knobs" that POST /admin/faults changes; their JSON key
 *    is the flag name with '_' for '-'.
 *  - Knobs, the failure window and the counters live under one mutex.  Every
 *    sleep waits on a condition variable that shutdown broadcasts, so SIGTERM
 *    ends even a hung request at once and the process exits 0.
 *  - Vectors: FNV-1a-64 of the UTF-8 text seeds splitmix64, which seeds
 *    xoshiro256**; Box-Muller turns its output into N(0,1) values, and the
 *    vector is L2-normalised (in double, then stored as float32).  Asking for
 *    fewer dimensions gives the renormalised prefix of the longer vector,
 *    like OpenAI's shortened embeddings.  The Python mock of the original
 *    seeded with md5("text:index"), so its vectors also changed with the
 *    position in the batch; these do not.
 *  - prompt_tokens (= total_tokens) is the sum of whitespace-separated word
 *    counts, as in the original mock.
 *  - An input over --max-input-tokens (8191, text-embedding-3's limit), counted
 *    with the estimate the chunker bounds chunks by (stages/tokens.c, linked
 *    in), is refused with 400 and OpenAI's "maximum context length" error,
 *    so a pipeline test sees what a real service does to an over-long chunk.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "tokens.h"

#define EMB_MAX_DIM 16384
#define EMB_MAX_BODY ((size_t)64 << 20)
#define EMB_MODEL "text-embedding-3-small"

/* ------------------------------------------------------------------------
 * Options: one table for flags, environment, defaults, ranges and --help.
 * ---------------------------------------------------------------------- */

/* Settings that POST /admin/faults may change while the server runs. */
struct knobs {
    long dim;
    long latency_ms;
    long fail_status;
    double fail_rate;
    long fail_for_ms;
    long retry_after_s;
    double timeout_rate;
    long timeout_ms;
};

struct config {
    const char *host;     /* strings point into argv, environ or the table */
    long port;
    const char *api_key;
    long max_connections;
    long max_inputs;
    long max_input_tokens;
    bool quiet;
    const char *fail_mix_text;
    struct fail_mix {     /* --fail-mix, parsed: drawn once per request */
        int n;
        long status[8];
        double rate[8];
    } fail_mix;
    struct knobs knobs;   /* the knobs as started */
};

enum opt_type { OPT_STR, OPT_LONG, OPT_DOUBLE, OPT_BOOL };

struct option_def {
    const char *name;   /* --name; admin JSON key is name with '_' for '-' */
    const char *env;
    enum opt_type type;
    size_t offset;      /* into struct config */
    const char *def;    /* NULL: unset */
    double min, max;
    bool runtime;       /* a knob: also in /admin/faults */
    const char *help;
};

#define CFG(f) offsetof(struct config, f)
#define KNOB(f) offsetof(struct config, knobs.f)

static const struct option_def option_defs[] = {
    {"host", "DOCPIPE_EMBED_SERVER_HOST", OPT_STR, CFG(host), "127.0.0.1", 0, 0,
     false, "address to listen on"},
    {"port", "DOCPIPE_EMBED_SERVER_PORT", OPT_LONG, CFG(port), "39980", 0, 65535,
     false, "TCP port; 0 picks a free one (see the first stdout line)"},
    {"api-key", "DOCPIPE_EMBED_SERVER_KEY", OPT_STR, CFG(api_key), NULL, 0, 0,
     false, "if set, /v1/* needs 'Authorization: Bearer KEY' (else 401)"},
    {"max-connections", "DOCPIPE_EMBED_SERVER_MAX_CONNECTIONS", OPT_LONG,
     CFG(max_connections), "1024", 1, 100000, false,
     "concurrent connections, one thread each"},
    {"max-inputs", "DOCPIPE_EMBED_SERVER_MAX_INPUTS", OPT_LONG, CFG(max_inputs),
     "2048", 1, 1000000, false, "most inputs in one request (OpenAI: 2048)"},
    {"max-input-tokens", "DOCPIPE_EMBED_SERVER_MAX_INPUT_TOKENS", OPT_LONG,
     CFG(max_input_tokens), "8191", 0, 100000000, false,
     "most tokens in one input, by docpipe's estimate (stages/tokens.h); longer"
     " ones get 400 as from OpenAI (text-embedding-3: 8191); 0: no limit"},
    {"quiet", "DOCPIPE_EMBED_SERVER_QUIET", OPT_BOOL, CFG(quiet), "0", 0, 1,
     false, "log start, stop and fault changes, not every request"},
    {"dim", "DOCPIPE_EMBED_SERVER_DIM", OPT_LONG, KNOB(dim), "1536", 1,
     EMB_MAX_DIM, true, "vector dimension when a request gives none"},
    {"latency-ms", "DOCPIPE_EMBED_SERVER_LATENCY_MS", OPT_LONG, KNOB(latency_ms),
     "0", 0, 3600000, true, "delay before answering each embeddings request"},
    {"fail-status", "DOCPIPE_EMBED_SERVER_FAIL_STATUS", OPT_LONG,
     KNOB(fail_status), "0", 0, 599, true,
     "fail embeddings requests with this HTTP status (e.g. 429, 500, 503); 0 = off"},
    {"fail-rate", "DOCPIPE_EMBED_SERVER_FAIL_RATE", OPT_DOUBLE, KNOB(fail_rate),
     "1", 0, 1, true, "share of requests that fail while fail-status is set"},
    {"fail-for-ms", "DOCPIPE_EMBED_SERVER_FAIL_FOR_MS", OPT_LONG,
     KNOB(fail_for_ms), "0", 0, 86400000, true,
     "an outage: fail every request but /admin/* for the next N ms with "
     "fail-status (503 if 0), then set fail-status back to 0"},
    {"retry-after-s", "DOCPIPE_EMBED_SERVER_RETRY_AFTER_S", OPT_LONG,
     KNOB(retry_after_s), "0", 0, 86400, true,
     "send 'Retry-After: N' with 429 and 503 failures; 0 = no header"},
    {"fail-mix", "DOCPIPE_EMBED_SERVER_FAIL_MIX", OPT_STR, CFG(fail_mix_text), NULL,
     0, 0, false,
     "several failures at once, STATUS:SHARE,... (e.g. 500:0.10,429:0.02): each "
     "request fails with one of them by its share (together at most 1), "
     "429 and 503 with retry-after-s"},
    {"timeout-rate", "DOCPIPE_EMBED_SERVER_TIMEOUT_RATE", OPT_DOUBLE,
     KNOB(timeout_rate), "0", 0, 1, true,
     "share of requests accepted and then left unanswered for timeout-ms"},
    {"timeout-ms", "DOCPIPE_EMBED_SERVER_TIMEOUT_MS", OPT_LONG, KNOB(timeout_ms),
     "120000", 0, 86400000, true,
     "how long an unanswered request hangs (shutdown ends it early)"},
};

#define N_OPTIONS (sizeof(option_defs) / sizeof(option_defs[0]))

static void json_key_of(const struct option_def *o, char *out, size_t n)
{
    snprintf(out, n, "%s", o->name);
    for (char *p = out; *p; p++)
        if (*p == '-')
            *p = '_';
}

/* Parse text into the option's field of cfg; false with err filled on error. */
static bool option_set_text(const struct option_def *o, struct config *cfg,
                            const char *text, char *err, size_t errlen)
{
    char *base = (char *)cfg + o->offset;
    char *end = NULL;
    errno = 0;
    switch (o->type) {
    case OPT_STR:
        *(const char **)base = text;
        return true;
    case OPT_BOOL:
        if (!strcmp(text, "1") || !strcmp(text, "true") || !strcmp(text, "yes")) {
            *(bool *)base = true;
            return true;
        }
        if (!strcmp(text, "0") || !strcmp(text, "false") || !strcmp(text, "no")) {
            *(bool *)base = false;
            return true;
        }
        snprintf(err, errlen, "%s: expected true or false, got '%s'", o->name, text);
        return false;
    case OPT_LONG: {
        long v = strtol(text, &end, 10);
        if (errno || end == text || *end || v < o->min || v > o->max) {
            snprintf(err, errlen, "%s: expected an integer in [%.0f, %.0f], got '%s'",
                     o->name, o->min, o->max, text);
            return false;
        }
        *(long *)base = v;
        return true;
    }
    case OPT_DOUBLE: {
        double v = strtod(text, &end);
        if (errno || end == text || *end || !(v >= o->min && v <= o->max)) {
            snprintf(err, errlen, "%s: expected a number in [%g, %g], got '%s'",
                     o->name, o->min, o->max, text);
            return false;
        }
        *(double *)base = v;
        return true;
    }
    }
    return false;
}

/* Rules that span more than one range check. */
static bool knobs_check(const struct knobs *k, char *err, size_t errlen)
{
    if (k->fail_status != 0 && (k->fail_status < 400 || k->fail_status > 599)) {
        snprintf(err, errlen, "fail_status must be 0 or a status in [400, 599], got %ld",
                 k->fail_status);
        return false;
    }
    return true;
}

/* "500:0.10,429:0.02" into mix; false with err filled on error. */
static bool fail_mix_parse(const char *text, struct fail_mix *mix, char *err,
                           size_t errlen)
{
    double sum = 0;
    mix->n = 0;
    for (const char *p = text; *p;) {
        char *end;
        errno = 0;
        long status = strtol(p, &end, 10);
        if (errno || end == p || *end != ':' || status < 400 || status > 599) {
            snprintf(err, errlen, "fail-mix: expected STATUS:SHARE with a status in "
                     "[400, 599] at '%s'", p);
            return false;
        }
        p = end + 1;
        double rate = strtod(p, &end);
        if (errno || end == p || (*end && *end != ',') || !(rate >= 0 && rate <= 1)) {
            snprintf(err, errlen, "fail-mix: expected a share in [0, 1] at '%s'", p);
            return false;
        }
        if (mix->n == (int)(sizeof(mix->status) / sizeof(mix->status[0]))) {
            snprintf(err, errlen, "fail-mix: at most %d statuses",
                     (int)(sizeof(mix->status) / sizeof(mix->status[0])));
            return false;
        }
        mix->status[mix->n] = status;
        mix->rate[mix->n++] = rate;
        sum += rate;
        p = *end ? end + 1 : end;
    }
    if (sum > 1 + 1e-9) {
        snprintf(err, errlen, "fail-mix: the shares add up to %g, more than 1", sum);
        return false;
    }
    return true;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: docpipe-embedserver [options]\n"
            "\n"
            "An OpenAI-compatible embeddings service with deterministic vectors and\n"
            "fault switches, for local runs and tests.  Flags override environment\n"
            "variables, which override defaults.  Prints 'listening on HOST:PORT' as\n"
            "its first stdout line; logs JSON lines on stderr; SIGTERM/SIGINT stop it.\n"
            "\n"
            "Endpoints: POST /v1/embeddings, GET /v1/models, GET /health,\n"
            "GET|POST|DELETE /admin/faults (knobs marked *), GET|DELETE /admin/stats.\n"
            "\n");
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct option_def *o = &option_defs[i];
        char arg[32] = "";
        if (o->type != OPT_BOOL)
            snprintf(arg, sizeof(arg), " %s", o->type == OPT_STR ? "TEXT" : "N");
        fprintf(f, "  --%s%s%s\n      %s\n      env %s", o->name, arg,
                o->runtime ? "  *" : "", o->help, o->env);
        if (o->def)
            fprintf(f, ", default %s", o->def);
        fputc('\n', f);
    }
    fprintf(f, "  --help\n      show this text\n");
}

/* Defaults, then environment, then argv.  Returns 0 to run, 1 on a usage
 * error, 2 after --help. */
static int config_load(struct config *cfg, int argc, char **argv)
{
    char err[256];
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct option_def *o = &option_defs[i];
        if (o->def && !option_set_text(o, cfg, o->def, err, sizeof(err))) {
            fprintf(stderr, "docpipe-embedserver: bad default: %s\n", err);
            return 1;
        }
        const char *env = getenv(o->env);
        if (env && *env && !option_set_text(o, cfg, env, err, sizeof(err))) {
            fprintf(stderr, "docpipe-embedserver: %s: %s\n", o->env, err);
            return 1;
        }
    }

    struct option longopts[N_OPTIONS + 2];
    for (size_t i = 0; i < N_OPTIONS; i++)
        longopts[i] = (struct option){option_defs[i].name,
                                      option_defs[i].type == OPT_BOOL ? no_argument
                                                                      : required_argument,
                                      NULL, 256 + (int)i};
    longopts[N_OPTIONS] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[N_OPTIONS + 1] = (struct option){NULL, 0, NULL, 0};

    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (c == 'h') {
            usage(stdout);
            return 2;
        }
        if (c < 256) {
            usage(stderr);
            return 1;
        }
        const struct option_def *o = &option_defs[c - 256];
        if (!option_set_text(o, cfg, o->type == OPT_BOOL ? "1" : optarg, err,
                             sizeof(err))) {
            fprintf(stderr, "docpipe-embedserver: --%s\n", err);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "docpipe-embedserver: unexpected argument '%s'\n", argv[optind]);
        return 1;
    }
    if (!knobs_check(&cfg->knobs, err, sizeof(err)) ||
        (cfg->fail_mix_text &&
         !fail_mix_parse(cfg->fail_mix_text, &cfg->fail_mix, err, sizeof(err)))) {
        fprintf(stderr, "docpipe-embedserver: %s\n", err);
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Logging: one JSON object per line on stderr, written with one write().
 * ---------------------------------------------------------------------- */

/* Takes ownership of extra (may be NULL). */
static void log_event(const char *level, const char *msg, json_t *extra)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[64];
    snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
             tm.tm_sec, ts.tv_nsec / 1000000);

    json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "ts", when, "level", level,
                          "stage", "embedserver", "msg", msg);
    if (o && extra)
        json_object_update(o, extra);
    json_decref(extra);
    char *line = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(o);
    if (!line)
        return;
    size_t len = strlen(line);
    line[len] = '\n'; /* the NUL becomes the newline: one write() */
    ssize_t w = write(STDERR_FILENO, line, len + 1);
    (void)w;
    free(line);
}

static void log_mhd(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    log_event("warn", "libmicrohttpd", json_pack("{s:s}", "detail", msg));
}

/* ------------------------------------------------------------------------
 * Deterministic vectors.
 * ---------------------------------------------------------------------- */

static uint64_t fnv1a64(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro256ss(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in (0, 1): never 0, so log() in Box-Muller stays finite. */
static double unit_open(uint64_t r) { return ((double)(r >> 11) + 0.5) * 0x1.0p-53; }

/* out[0..dim) = normalise(N(0,1)^dim) seeded by the text. */
static void embed_text(const char *text, size_t len, long dim, double *scratch,
                       float *out)
{
    uint64_t seed = fnv1a64(text, len);
    uint64_t s[4];
    for (int i = 0; i < 4; i++)
        s[i] = splitmix64(&seed);

    double norm = 0;
    for (long i = 0; i < dim; i += 2) {
        double u1 = unit_open(xoshiro256ss(s));
        double u2 = unit_open(xoshiro256ss(s));
        double r = sqrt(-2.0 * log(u1));
        scratch[i] = r * cos(2.0 * M_PI * u2);
        if (i + 1 < dim)
            scratch[i + 1] = r * sin(2.0 * M_PI * u2);
    }
    for (long i = 0; i < dim; i++)
        norm += scratch[i] * scratch[i];
    norm = sqrt(norm);
    for (long i = 0; i < dim; i++)
        out[i] = (float)(scratch[i] / norm);
}

/* ------------------------------------------------------------------------
 * A growable text buffer for the embeddings reply, which can hold millions
 * of numbers: cheaper written directly than built as jansson values.
 * ---------------------------------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};

static bool buf_reserve(struct buf *b, size_t more)
{
    if (b->oom)
        return false;
    if (b->len + more + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (!buf_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3))) static void buf_printf(struct buf *b,
                                                            const char *fmt, ...)
{
    char small[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(small)) {
        buf_add(b, small, (size_t)n);
        return;
    }
    if (!buf_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Appends the base64 of the vector as little-endian float32. */
static void buf_base64_floats(struct buf *b, const float *v, long dim)
{
    static const char tbl[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = (size_t)dim * 4;
    if (!buf_reserve(b, (n + 2) / 3 * 4))
        return;
    unsigned char bytes[3];
    size_t have = 0;
    char *o = b->p + b->len;
    for (long i = 0; i < dim; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        for (int k = 0; k < 4; k++) {
            bytes[have++] = (unsigned char)(u >> (8 * k));
            if (have == 3) {
                *o++ = tbl[bytes[0] >> 2];
                *o++ = tbl[((bytes[0] & 3) << 4) | (bytes[1] >> 4)];
                *o++ = tbl[((bytes[1] & 15) << 2) | (bytes[2] >> 6)];
                *o++ = tbl[bytes[2] & 63];
                have = 0;
            }
        }
    }
    if (have) {
        if (have == 1)
            bytes[1] = 0;
        *o++ = tbl[bytes[0] >> 2];
        *o++ = tbl[((bytes[0] & 3) << 4) | (bytes[1] >> 4)];
        *o++ = have == 2 ? tbl[(bytes[1] & 15) << 2] : '=';
        *o++ = '=';
    }
    b->len = (size_t)(o - b->p);
    b->p[b->len] = '\0';
}

/* ------------------------------------------------------------------------
 * Server state.
 * ---------------------------------------------------------------------- */

struct stats {
    long requests;        /* POST /v1/embeddings received */
    long inputs;          /* texts embedded in 200 replies */
    long tokens;          /* docpipe's estimate (tokens.h) of valid requests' texts */
    long in_flight, in_flight_max;
    long timeouts;        /* requests left hanging on purpose */
    long responses[600];  /* embeddings replies by status */
    long failures[600];   /* injected failures by status */
};

struct server {
    struct config cfg;
    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t wake;  /* broadcast at shutdown; sleepers wait on it */
    bool stopping;
    struct knobs knobs;
    double fail_until;    /* monotonic ms; 0 = no fail_for_ms window */
    struct stats stats;
    double started;
    uint64_t rng_seed;
    atomic_uint_fast64_t rng_counter;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Uniform in [0, 1) for fault decisions; thread-safe, not reproducible. */
static double fault_uniform(struct server *s)
{
    uint64_t x = s->rng_seed + atomic_fetch_add(&s->rng_counter, 1);
    return (double)(splitmix64(&x) >> 11) * 0x1.0p-53;
}

/* Sleeps ms, or less if the server is stopping. */
static void sleep_ms(struct server *s, long ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += ms / 1000;
    deadline.tv_nsec += (ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->lock);
    while (!s->stopping &&
           pthread_cond_timedwait(&s->wake, &s->lock, &deadline) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&s->lock);
}

/* A lapsed fail_for_ms window switches the failure off. */
static void knobs_expire_locked(struct server *s, double now)
{
    if (s->fail_until > 0 && now >= s->fail_until) {
        s->fail_until = 0;
        s->knobs.fail_for_ms = 0;
        s->knobs.fail_status = 0;
    }
}

static void knobs_apply_locked(struct server *s, const struct knobs *k, bool window_set)
{
    s->knobs = *k;
    if (window_set)
        s->fail_until = k->fail_for_ms > 0 ? now_ms() + (double)k->fail_for_ms : 0;
}

static json_t *knobs_json(struct server *s)
{
    json_t *o = json_object();
    pthread_mutex_lock(&s->lock);
    double now = now_ms();
    knobs_expire_locked(s, now);
    struct knobs k = s->knobs;
    if (s->fail_until > 0)
        k.fail_for_ms = (long)ceil(s->fail_until - now);
    pthread_mutex_unlock(&s->lock);

    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct option_def *d = &option_defs[i];
        if (!d->runtime)
            continue;
        char key[64];
        json_key_of(d, key, sizeof(key));
        const char *field = (const char *)&k + (d->offset - CFG(knobs));
        json_object_set_new(o, key, d->type == OPT_DOUBLE
                                        ? json_real(*(const double *)field)
                                        : json_integer(*(const long *)field));
    }
    return o;
}

static json_t *stats_json(struct server *s)
{
    json_t *responses = json_object(), *failures = json_object();
    pthread_mutex_lock(&s->lock);
    struct stats st = s->stats;
    pthread_mutex_unlock(&s->lock);
    for (int code = 0; code < 600; code++) {
        char key[8];
        snprintf(key, sizeof(key), "%d", code);
        if (st.responses[code])
            json_object_set_new(responses, key, json_integer(st.responses[code]));
        if (st.failures[code])
            json_object_set_new(failures, key, json_integer(st.failures[code]));
    }
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:o, s:f}", "requests",
                     (json_int_t)st.requests, "inputs", (json_int_t)st.inputs,
                     "tokens", (json_int_t)st.tokens,
                     "in_flight", (json_int_t)st.in_flight, "in_flight_max",
                     (json_int_t)st.in_flight_max, "timeouts", (json_int_t)st.timeouts,
                     "responses", responses, "failures", failures, "uptime_s",
                     round(now_ms() - s->started) / 1e3);
}

/* ------------------------------------------------------------------------
 * Replies.
 * ---------------------------------------------------------------------- */

struct reply {
    unsigned status;
    char *body;        /* malloc'd JSON text; NULL means out of memory */
    long retry_after;  /* > 0: send Retry-After */
    long inputs;       /* for the log line */
};

static struct reply reply_json(unsigned status, json_t *o)
{
    struct reply r = {status, o ? json_dumps(o, JSON_COMPACT) : NULL, 0, 0};
    json_decref(o);
    return r;
}

/* OpenAI's error shape: {"error":{"message","type","param","code"}}. */
__attribute__((format(printf, 4, 5))) static struct reply
reply_error(unsigned status, const char *type, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return reply_json(status, json_pack("{s:{s:s, s:s, s:n, s:s?}}", "error", "message",
                                        msg, "type", type, "param", "code", code));
}

static struct reply reply_bad_request(const char *msg)
{
    return reply_error(400, "invalid_request_error", NULL, "%s", msg);
}

/* ------------------------------------------------------------------------
 * POST /v1/embeddings
 * ---------------------------------------------------------------------- */

static long word_count(const char *s, size_t n)
{
    long words = 0;
    bool in_word = false;
    for (size_t i = 0; i < n; i++) {
        bool space = s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' ||
                     s[i] == '\f' || s[i] == '\v';
        if (!space && !in_word)
            words++;
        in_word = !space;
    }
    return words;
}

/* Builds the 200 reply for validated texts (each a JSON string). */
static struct reply embeddings_reply(json_t *texts, const char *model, long dim,
                                     bool base64)
{
    struct reply r = {200, NULL, 0, (long)json_array_size(texts)};
    double *scratch = malloc((size_t)dim * sizeof(double));
    float *vec = malloc((size_t)dim * sizeof(float));
    json_t *model_str = json_string(model);
    char *model_json = model_str ? json_dumps(model_str, JSON_ENCODE_ANY) : NULL;
    json_decref(model_str);
    struct buf b = {0};
    if (!scratch || !vec || !model_json)
        goto out;

    long tokens = 0;
    size_t i;
    json_t *t;
    buf_puts(&b, "{\"object\":\"list\",\"data\":[");
    json_array_foreach(texts, i, t)
    {
        const char *text = json_string_value(t);
        size_t len = json_string_length(t);
        tokens += word_count(text, len);
        embed_text(text, len, dim, scratch, vec);
        buf_printf(&b, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":",
                   i ? "," : "", i);
        if (base64) {
            buf_puts(&b, "\"");
            buf_base64_floats(&b, vec, dim);
            buf_puts(&b, "\"}");
        } else {
            buf_puts(&b, "[");
            /* %.9g round-trips a float32 exactly. */
            for (long j = 0; j < dim; j++)
                buf_printf(&b, j ? ",%.9g" : "%.9g", (double)vec[j]);
            buf_puts(&b, "]}");
        }
    }
    buf_printf(&b, "],\"model\":%s,\"usage\":{\"prompt_tokens\":%ld,\"total_tokens\":%ld}}",
               model_json, tokens, tokens);
    if (!b.oom)
        r.body = b.p;
    else
        free(b.p);
out:
    free(scratch);
    free(vec);
    free(model_json);
    return r;
}

/* Validates the request body and embeds it. */
static struct reply embeddings_handle_body(struct server *s, const char *body,
                                           size_t len, long default_dim)
{
    json_error_t jerr;
    json_t *req = json_loadb(body ? body : "", len, 0, &jerr);
    if (!req || !json_is_object(req)) {
        json_decref(req);
        return reply_error(400, "invalid_request_error", "invalid_json",
                           "We could not parse the JSON body of your request: %s",
                           req ? "expected an object" : jerr.text);
    }

    struct reply r;
    json_t *model = json_object_get(req, "model");
    json_t *input = json_object_get(req, "input");
    json_t *fmt = json_object_get(req, "encoding_format");
    json_t *dims = json_object_get(req, "dimensions");
    json_t *texts = json_is_string(input) ? json_pack("[O]", input) : json_incref(input);
    bool base64 = false;
    long dim = default_dim;
    long request_tokens = 0;

    if (!json_is_string(model) || !json_string_length(model)) {
        r = reply_bad_request("you must provide a model parameter");
        goto out;
    }
    if (!json_is_array(texts) || !json_array_size(texts)) {
        r = reply_bad_request("'input' must be a non-empty string or a non-empty "
                              "array of strings");
        goto out;
    }
    if (json_array_size(texts) > (size_t)s->cfg.max_inputs) {
        r = reply_error(400, "invalid_request_error", NULL,
                        "'input' holds %zu items; at most %ld are allowed",
                        json_array_size(texts), s->cfg.max_inputs);
        goto out;
    }
    size_t i;
    json_t *t;
    json_array_foreach(texts, i, t)
    {
        if (!json_is_string(t) || !json_string_length(t)) {
            r = reply_error(400, "invalid_request_error", NULL,
                            "'input[%zu]' must be a non-empty string (token arrays "
                            "are not supported)",
                            i);
            goto out;
        }
        size_t tokens = dp_tokens_estimate(json_string_value(t), json_string_length(t));
        if (s->cfg.max_input_tokens && tokens > (size_t)s->cfg.max_input_tokens) {
            r = reply_error(400, "invalid_request_error", NULL,
                            "This model's maximum context length is %ld tokens, however"
                            " you requested %zu tokens (input[%zu]). Please reduce the"
                            " length of the input.", s->cfg.max_input_tokens, tokens, i);
            goto out;
        }
        request_tokens += (long)tokens;
    }
    pthread_mutex_lock(&s->lock);
    s->stats.tokens += request_tokens; /* what a provider's token limit counts */
    pthread_mutex_unlock(&s->lock);
    if (fmt && !json_is_null(fmt)) {
        const char *f = json_string_value(fmt);
        if (f && !strcmp(f, "base64"))
            base64 = true;
        else if (!f || strcmp(f, "float")) {
            r = reply_bad_request("'encoding_format' must be \"float\" or \"base64\"");
            goto out;
        }
    }
    if (dims && !json_is_null(dims)) {
        if (!json_is_integer(dims) || json_integer_value(dims) < 1 ||
            json_integer_value(dims) > EMB_MAX_DIM) {
            r = reply_error(400, "invalid_request_error", NULL,
                            "'dimensions' must be an integer in [1, %d]", EMB_MAX_DIM);
            goto out;
        }
        dim = (long)json_integer_value(dims);
    }
    r = embeddings_reply(texts, json_string_value(model), dim, base64);
out:
    json_decref(texts);
    json_decref(req);
    return r;
}

static bool authorized(struct server *s, struct MHD_Connection *conn)
{
    if (!s->cfg.api_key || !*s->cfg.api_key)
        return true;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                MHD_HTTP_HEADER_AUTHORIZATION);
    return h && !strncmp(h, "Bearer ", 7) && !strcmp(h + 7, s->cfg.api_key);
}

static struct reply reply_unauthorized(void)
{
    return reply_error(401, "invalid_request_error", "invalid_api_key",
                       "Incorrect API key provided");
}

/* Faults first (as a proxy or rate limiter in front of the model would),
 * then validation and the vectors. */
static struct reply embeddings_handle(struct server *s, struct MHD_Connection *conn,
                                      const char *body, size_t len, bool too_big)
{
    pthread_mutex_lock(&s->lock);
    s->stats.requests++;
    if (++s->stats.in_flight > s->stats.in_flight_max)
        s->stats.in_flight_max = s->stats.in_flight;
    knobs_expire_locked(s, now_ms());
    struct knobs k = s->knobs;
    pthread_mutex_unlock(&s->lock);

    struct reply r;
    bool injected = false;
    if (!authorized(s, conn)) {
        r = reply_unauthorized();
        goto done;
    }
    if (k.latency_ms > 0)
        sleep_ms(s, k.latency_ms);
    if (k.timeout_rate > 0 && fault_uniform(s) < k.timeout_rate) {
        pthread_mutex_lock(&s->lock);
        s->stats.timeouts++;
        pthread_mutex_unlock(&s->lock);
        sleep_ms(s, k.timeout_ms);
    }

    /* Read the window again: it may have lapsed during the sleeps. */
    pthread_mutex_lock(&s->lock);
    knobs_expire_locked(s, now_ms());
    bool in_window = s->fail_until > 0;
    long status = s->knobs.fail_status;
    double rate = s->knobs.fail_rate;
    long retry_after = s->knobs.retry_after_s;
    pthread_mutex_unlock(&s->lock);
    if (!in_window && !(status && fault_uniform(s) < rate))
        status = 0;
    if (!status && !in_window && s->cfg.fail_mix.n) {
        /* One draw picks at most one status of the mix by its share. */
        double u = fault_uniform(s), acc = 0;
        for (int i = 0; i < s->cfg.fail_mix.n && !status; i++) {
            acc += s->cfg.fail_mix.rate[i];
            if (u < acc)
                status = s->cfg.fail_mix.status[i];
        }
    }
    if (in_window || status) {
        if (!status)
            status = 503;
        injected = true;
        const char *type = status == 429   ? "requests"
                           : status >= 500 ? "server_error"
                                           : "invalid_request_error";
        const char *code = status == 429 ? "rate_limit_exceeded" : "injected_fault";
        r = reply_error((unsigned)status, type, code,
                        "docpipe-embedserver: injected failure (HTTP %ld)", status);
        if (status == 429 || status == 503)
            r.retry_after = retry_after;
        goto done;
    }

    if (too_big)
        r = reply_error(413, "invalid_request_error", "request_too_large",
                        "request body larger than %zu bytes", EMB_MAX_BODY);
    else
        r = embeddings_handle_body(s, body, len, k.dim);
    if (!r.body)
        r = reply_error(500, "server_error", NULL, "out of memory");

done:
    pthread_mutex_lock(&s->lock);
    s->stats.in_flight--;
    s->stats.responses[r.status < 600 ? r.status : 0]++;
    if (injected)
        s->stats.failures[r.status]++;
    if (r.status == 200)
        s->stats.inputs += r.inputs;
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ------------------------------------------------------------------------
 * Admin: /admin/faults and /admin/stats (no API key: local tooling only).
 * ---------------------------------------------------------------------- */

static struct reply faults_post(struct server *s, const char *body, size_t len)
{
    json_error_t jerr;
    json_t *req = json_loadb(body ? body : "", len, 0, &jerr);
    if (!json_is_object(req)) {
        json_decref(req);
        return reply_bad_request("expected a JSON object of fault settings");
    }

    pthread_mutex_lock(&s->lock);
    knobs_expire_locked(s, now_ms());
    struct knobs k = s->knobs;
    pthread_mutex_unlock(&s->lock);

    /* Unknown keys and bad values reject the whole change. */
    struct config scratch = {.knobs = k};
    bool window_set = false;
    char err[256] = "";
    const char *key;
    json_t *v;
    json_object_foreach(req, key, v)
    {
        const struct option_def *d = NULL;
        for (size_t i = 0; i < N_OPTIONS && !d; i++) {
            char name[64];
            json_key_of(&option_defs[i], name, sizeof(name));
            if (option_defs[i].runtime && !strcmp(name, key))
                d = &option_defs[i];
        }
        if (!d) {
            snprintf(err, sizeof(err), "unknown setting '%s'", key);
            break;
        }
        bool ok = d->type == OPT_LONG ? json_is_integer(v) : json_is_number(v);
        double x = json_number_value(v);
        if (!ok || x < d->min || x > d->max) {
            snprintf(err, sizeof(err), "%s: expected %s in [%g, %g]", key,
                     d->type == OPT_LONG ? "an integer" : "a number", d->min, d->max);
            break;
        }
        char *field = (char *)&scratch + d->offset;
        if (d->type == OPT_LONG)
            *(long *)field = (long)json_integer_value(v);
        else
            *(double *)field = x;
        if (!strcmp(key, "fail_for_ms"))
            window_set = true;
    }
    json_decref(req);
    if (!*err)
        knobs_check(&scratch.knobs, err, sizeof(err));
    if (*err)
        return reply_bad_request(err);

    pthread_mutex_lock(&s->lock);
    knobs_apply_locked(s, &scratch.knobs, window_set);
    pthread_mutex_unlock(&s->lock);
    json_t *now = knobs_json(s);
    log_event("info", "faults changed", json_pack("{s:O}", "faults", now));
    return reply_json(200, now);
}

static struct reply faults_reset(struct server *s)
{
    pthread_mutex_lock(&s->lock);
    knobs_apply_locked(s, &s->cfg.knobs, true);
    pthread_mutex_unlock(&s->lock);
    json_t *now = knobs_json(s);
    log_event("info", "faults reset", json_pack("{s:O}", "faults", now));
    return reply_json(200, now);
}

static struct reply stats_reset(struct server *s)
{
    pthread_mutex_lock(&s->lock);
    long in_flight = s->stats.in_flight;
    memset(&s->stats, 0, sizeof(s->stats));
    s->stats.in_flight = s->stats.in_flight_max = in_flight;
    pthread_mutex_unlock(&s->lock);
    return reply_json(200, stats_json(s));
}

/* ------------------------------------------------------------------------
 * HTTP plumbing.
 * ---------------------------------------------------------------------- */

/* Per-request state, kept in libmicrohttpd's con_cls. */
struct request {
    char *body;
    size_t len, cap;
    bool too_big;
    double started;
};

static void request_append(struct request *rq, const char *data, size_t n)
{
    if (rq->too_big)
        return;
    if (rq->len + n > EMB_MAX_BODY) {
        rq->too_big = true;
        return;
    }
    if (rq->len + n + 1 > rq->cap) {
        size_t cap = rq->cap ? rq->cap : 4096;
        while (cap < rq->len + n + 1)
            cap *= 2;
        char *p = realloc(rq->body, cap);
        if (!p) {
            rq->too_big = true;
            return;
        }
        rq->body = p;
        rq->cap = cap;
    }
    memcpy(rq->body + rq->len, data, n);
    rq->len += n;
    rq->body[rq->len] = '\0';
}

/* During a fail_for_ms window the whole service is down, not only the
 * embeddings endpoint: a client checking whether it is up sees it too. */
static bool outage_now(struct server *s, long *status)
{
    pthread_mutex_lock(&s->lock);
    knobs_expire_locked(s, now_ms());
    bool down = s->fail_until > 0;
    *status = s->knobs.fail_status ? s->knobs.fail_status : 503;
    pthread_mutex_unlock(&s->lock);
    return down;
}

static struct reply route(struct server *s, struct MHD_Connection *conn,
                          const char *url, const char *method, struct request *rq)
{
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST"),
         del = !strcmp(method, "DELETE");
    long down_status;

    if (strncmp(url, "/admin/", 7) != 0 && strcmp(url, "/v1/embeddings") != 0 &&
        outage_now(s, &down_status))
        return reply_error((unsigned)down_status, "server_error", "injected_fault",
                           "docpipe-embedserver: injected outage (HTTP %ld)", down_status);

    if (!strcmp(url, "/v1/embeddings")) {
        if (post)
            return embeddings_handle(s, conn, rq->body, rq->len, rq->too_big);
    } else if (!strcmp(url, "/v1/models")) {
        if (get)
            return authorized(s, conn)
                       ? reply_json(200, json_pack("{s:s, s:[{s:s, s:s, s:s}]}",
                                                   "object", "list", "data", "id",
                                                   EMB_MODEL, "object", "model",
                                                   "owned_by", "docpipe"))
                       : reply_unauthorized();
    } else if (!strcmp(url, "/health")) {
        if (get)
            return reply_json(200, json_pack("{s:s}", "status", "ok"));
    } else if (!strcmp(url, "/admin/faults")) {
        if (get)
            return reply_json(200, knobs_json(s));
        if (post)
            return rq->too_big ? reply_bad_request("body too large")
                               : faults_post(s, rq->body, rq->len);
        if (del)
            return faults_reset(s);
    } else if (!strcmp(url, "/admin/stats")) {
        if (get)
            return reply_json(200, stats_json(s));
        if (del)
            return stats_reset(s);
    } else {
        return reply_error(404, "invalid_request_error", "unknown_url",
                           "Unknown request URL: %s %s", method, url);
    }
    return reply_error(405, "invalid_request_error", "method_not_allowed",
                       "%s is not allowed on %s", method, url);
}

static enum MHD_Result send_reply(struct server *s, struct MHD_Connection *conn,
                                  const char *method, const char *url,
                                  struct request *rq, struct reply *r)
{
    static char oom_body[] = "{\"error\":{\"message\":\"out of memory\","
                             "\"type\":\"server_error\",\"param\":null,\"code\":null}}";
    struct MHD_Response *resp;
    if (r->body) {
        resp = MHD_create_response_from_buffer(strlen(r->body), r->body,
                                               MHD_RESPMEM_MUST_FREE);
    } else {
        r->status = 500;
        resp = MHD_create_response_from_buffer(strlen(oom_body), oom_body,
                                               MHD_RESPMEM_PERSISTENT);
    }
    if (!resp) {
        free(r->body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (r->retry_after > 0) {
        char v[24];
        snprintf(v, sizeof(v), "%ld", r->retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    enum MHD_Result ret = MHD_queue_response(conn, r->status, resp);
    MHD_destroy_response(resp);

    if (!s->cfg.quiet) {
        json_t *extra = json_pack("{s:s, s:s, s:i, s:f}", "method", method, "path", url,
                                  "status", (int)r->status, "ms",
                                  round((now_ms() - rq->started) * 1e3) / 1e3);
        if (extra && r->inputs)
            json_object_set_new(extra, "inputs", json_integer(r->inputs));
        log_event(r->status >= 500 ? "warn" : "info", "request", extra);
    }
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    struct server *s = cls;
    struct request *rq = *con_cls;
    (void)version;
    if (!rq) {
        rq = calloc(1, sizeof(*rq));
        if (!rq)
            return MHD_NO;
        rq->started = now_ms();
        *con_cls = rq;
        return MHD_YES;
    }
    if (*upload_size) {
        request_append(rq, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    struct reply r = route(s, conn, url, method, rq);
    return send_reply(s, conn, method, url, rq, &r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct request *rq = *con_cls;
    if (rq) {
        free(rq->body);
        free(rq);
        *con_cls = NULL;
    }
}

/* ------------------------------------------------------------------------
 * main
 * ---------------------------------------------------------------------- */

static bool resolve(const char *host, long port, struct sockaddr_storage *out,
                    socklen_t *outlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%ld", port);
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        log_event("error", "cannot resolve host",
                  json_pack("{s:s, s:s}", "host", host, "error", gai_strerror(rc)));
        return false;
    }
    memcpy(out, res->ai_addr, res->ai_addrlen);
    *outlen = res->ai_addrlen;
    freeaddrinfo(res);
    return true;
}

int main(int argc, char **argv)
{
    static struct server srv;
    struct server *s = &srv;
    int rc = config_load(&s->cfg, argc, argv);
    if (rc)
        return rc == 2 ? 0 : 2;

    struct sockaddr_storage addr;
    socklen_t addrlen;
    if (!resolve(s->cfg.host, s->cfg.port, &addr, &addrlen))
        return 1;

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s->lock, NULL);
    s->started = now_ms();
    knobs_apply_locked(s, &s->cfg.knobs, true);
    struct timespec seed;
    clock_gettime(CLOCK_REALTIME, &seed);
    s->rng_seed = (uint64_t)seed.tv_nsec ^ ((uint64_t)seed.tv_sec << 20) ^
                  ((uint64_t)getpid() << 40);

    /* Every thread, libmicrohttpd's included, inherits this mask, so only
     * sigwait() below sees SIGTERM and SIGINT. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG;
    if (addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)s->cfg.port, NULL, NULL, on_request, s,
        MHD_OPTION_EXTERNAL_LOGGER, log_mhd, s, /* first, or MHD warns */
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)s->cfg.max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, s, MHD_OPTION_END);
    if (!d) {
        log_event("error", "cannot listen",
                  json_pack("{s:s, s:I}", "host", s->cfg.host, "port",
                            (json_int_t)s->cfg.port));
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    unsigned port = info ? info->port : (unsigned)s->cfg.port;
    bool v6 = addr.ss_family == AF_INET6;
    printf("listening on %s%s%s:%u\n", v6 ? "[" : "", s->cfg.host, v6 ? "]" : "", port);
    fflush(stdout);
    log_event("info", "listening",
              json_pack("{s:s, s:i, s:o}", "host", s->cfg.host, "port", (int)port,
                        "faults", knobs_json(s)));

    int sig = 0;
    sigwait(&stop, &sig);
    log_event("info", "stopping", json_pack("{s:s}", "signal", strsignal(sig)));

    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->lock);
    MHD_stop_daemon(d);

    log_event("info", "stopped",
              json_pack("{s:o}", "stats", stats_json(s)));
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->wake);
    return 0;
}
