/*
 * support_env: what the integration tests share.
 *
 * Every test gets its own topic prefix (so its own topics and consumer
 * groups) on the real Kafka broker and PostgreSQL server started by
 * scripts/test-env.sh; docpipe itself runs as child processes, exactly as
 * an operator would run it, so SIGKILL and SIGTERM are the real thing.
 */
#ifndef DP_SUPPORT_ENV_H
#define DP_SUPPORT_ENV_H

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct tenv {
    char prefix[64];     /* topic prefix, e.g. "t1234_passthrough." */
    char brokers[256];
    char dburl[512];
    char bin[1024];      /* the docpipe executable */
    char srcdir[1024];
    PGconn *db;
} tenv;

/* Prepares a test: unique prefix, migrations, topics. */
void tenv_setup(tenv *t, const char *name);
void tenv_teardown(tenv *t);

/* Runs docpipe with args (NULL-terminated) and extra "K=V" environment
 * entries (NULL-terminated, may be NULL); returns the exit status. */
int tenv_docpipe(tenv *t, const char *const *args, const char *const *env);

/* Same, with stdout written to outfile. */
int tenv_docpipe_out(tenv *t, const char *const *args, const char *const *env,
                     const char *outfile);
/* Starts docpipe with args in the background; output goes to logfile. */
pid_t tenv_spawn(tenv *t, const char *const *args, const char *logfile,
                 const char *const *env);

/* Starts docpipe with args in the background, standard input, output and
 * error from and to the files named (each may be NULL: inherited). */
pid_t tenv_spawn_io(tenv *t, const char *const *args, const char *const *env,
                    const char *infile, const char *outfile, const char *errfile);
/* Waits for a child started by tenv_spawn*: its exit status, or 128+signal. */
int tenv_wait(pid_t pid);

/* Starts `docpipe run <stage>` in the background; stderr goes to logfile. */
pid_t tenv_spawn_stage(tenv *t, const char *stage, const char *logfile,
                       const char *const *env);
/* Sends sig and waits for exit (up to timeout_ms); returns the exit status,
 * 128+signal if killed by one, or -1 on timeout. */
int tenv_stop(pid_t pid, int sig, int timeout_ms);

/* One integer from a query (with %s for the prefix'ed topic, etc.). */
long long tenv_scalar(tenv *t, const char *sql);

/* Polls sql until it returns want (or timeout): returns the last value. */
long long tenv_wait_scalar(tenv *t, const char *sql, long long want,
                           int timeout_ms);

/* Produces raw records to topic; headers as NULL-terminated name/value. */
void tenv_produce(tenv *t, const char *topic, const char *key,
                  const void *value, size_t len, const char *const *headers);

/* A record read back from a topic (copied: librdkafka handles are gone). */
typedef struct tmsg {
    int32_t partition;
    int64_t offset;
    char *key;
    size_t key_len;
    unsigned char *value;
    size_t len;
    rd_kafka_headers_t *headers;
} tmsg;

/* Reads every record now in topic (all partitions, from the start). Free
 * the array with tenv_free_msgs. */
int tenv_consume_all(tenv *t, const char *topic, tmsg **out, int timeout_ms);
void tenv_free_msgs(tmsg *msgs, int n);

/* Header value as a NUL-terminated string in buf, or NULL. */
const char *tenv_header(const tmsg *m, const char *name, char *buf,
                        size_t buflen);

/* Reads the whole file. */
char *tenv_slurp(const char *path);

#endif

/* Starts docpipe-embedserver on a free port with extra flags (NULL-
 * terminated); writes its base URL. */
pid_t tenv_start_embedserver(tenv *t, const char *const *flags, char *url,
                             size_t urllen);

/* POSTs a JSON body to url (for the embedding server's /admin/faults). */
void tenv_http_post(const char *url, const char *json);
/* The same, returning the reply's body (malloc'd). */
char *tenv_http_post_reply(const char *url, const char *json);
/* GETs url into a malloc'd string. */
char *tenv_http_get(const char *url);
/* GETs url: the status (0: no answer); *body (malloc'd, "" if none) when
 * body is not NULL. */
long tenv_http_get_status(const char *url, char **body);
/* GETs http://127.0.0.1:port/path until it answers want (or timeout_s);
 * returns the last status. */
long tenv_http_wait_status(int port, const char *path, long want, int timeout_s);
/* A loopback port free right now. */
int tenv_free_port(void);
