/* support_env: shared integration-test machinery (see support_env.h). */
#include "support_env.h"
#include "pg.h"
#include "topics.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tenv_setup(tenv *t, const char *name)
{
    memset(t, 0, sizeof(*t));
    snprintf(t->prefix, sizeof(t->prefix), "t%d_%ld_%s.", (int)getpid(),
             (long)(time(NULL) % 100000), name);
    snprintf(t->brokers, sizeof(t->brokers), "%s",
             env_or("DOCPIPE_BROKERS", "127.0.0.1:39092"));
    snprintf(t->dburl, sizeof(t->dburl), "%s",
             env_or("DOCPIPE_DATABASE_URL",
                    "postgresql://postgres@127.0.0.1:55432/docpipe"));
    snprintf(t->bin, sizeof(t->bin), "%s", env_or("DOCPIPE_BIN", "docpipe"));
    snprintf(t->srcdir, sizeof(t->srcdir), "%s",
             env_or("DOCPIPE_SOURCE_DIR", DOCPIPE_SOURCE_DIR));
    t->db = PQconnectdb(t->dburl);
    cr_assert_eq(PQstatus(t->db), CONNECTION_OK,
                 "PostgreSQL at %s: %s (start it: scripts/test-env.sh up)",
                 t->dburl, PQerrorMessage(t->db));
    const char *migrate[] = {"migrate", NULL};
    cr_assert_eq(tenv_docpipe(t, migrate, NULL), 0, "docpipe migrate failed");
    const char *topics[] = {"topics", NULL};
    cr_assert_eq(tenv_docpipe(t, topics, NULL), 0,
                 "docpipe topics failed (is Kafka up at %s?)", t->brokers);
}

/* Long-running children (stages, pipelines) still running when a test
 * ends, by a failed assertion for instance, are killed by tenv_teardown:
 * a later test never shares the machine with them. */
static pid_t running[64];
static int nrunning;

void tenv_teardown(tenv *t)
{
    while (nrunning > 0) {
        pid_t pid = running[--nrunning];
        if (waitpid(pid, NULL, WNOHANG) == 0) { /* ours and still running */
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
    }
    /* A test's topics go with it, so repeated runs do not pile up
     * partitions in the broker. */
    if (t->prefix[0]) {
        char err[512];
        if (dp_topics_delete_prefix(t->brokers, t->prefix, NULL, err, sizeof(err)))
            fprintf(stderr, "teardown: %s\n", err);
    }
    if (t->db)
        PQfinish(t->db);
    t->db = NULL;
}

static void child_env(tenv *t, const char *const *env)
{
    setenv("DOCPIPE_TOPIC_PREFIX", t->prefix, 1);
    setenv("DOCPIPE_BROKERS", t->brokers, 1);
    setenv("DOCPIPE_DATABASE_URL", t->dburl, 1);
    char schema[1100];
    snprintf(schema, sizeof(schema), "%s/schemas", t->srcdir);
    setenv("DOCPIPE_SCHEMA_DIR", schema, 1);
    for (int i = 0; env && env[i]; i++)
        putenv((char *)env[i]);
}

/* Redirects fd to path (opened with flags); nothing when path is NULL. */
static void redirect(int fd, const char *path, int flags)
{
    if (!path)
        return;
    int f = open(path, flags, 0644);
    if (f >= 0) {
        dup2(f, fd);
        close(f);
    }
}

static pid_t spawn_io(tenv *t, const char *const *args, const char *const *env,
                      const char *logfile, const char *infile, const char *outfile,
                      const char *errfile)
{
    int argc = 0;
    while (args[argc])
        argc++;
    const char **argv = calloc((size_t)argc + 2, sizeof(char *));
    argv[0] = t->bin;
    for (int i = 0; i < argc; i++)
        argv[i + 1] = args[i];
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        child_env(t, env);
        if (logfile) {
            int fd = open(logfile, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                dup2(fd, STDERR_FILENO);
                dup2(fd, STDOUT_FILENO);
                close(fd);
            }
        }
        redirect(STDIN_FILENO, infile, O_RDONLY);
        redirect(STDOUT_FILENO, outfile, O_WRONLY | O_CREAT | O_TRUNC);
        redirect(STDERR_FILENO, errfile, O_WRONLY | O_CREAT | O_TRUNC);
        execv(t->bin, (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", t->bin, strerror(errno));
        _exit(127);
    }
    free(argv);
    return pid;
}

static pid_t spawn(tenv *t, const char *const *args, const char *const *env,
                   const char *logfile, const char *outfile)
{
    return spawn_io(t, args, env, logfile, NULL, outfile, NULL);
}

int tenv_docpipe(tenv *t, const char *const *args, const char *const *env)
{
    pid_t pid = spawn(t, args, env, NULL, NULL);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static pid_t keep_running(pid_t pid)
{
    if (pid > 0 && nrunning < (int)(sizeof(running) / sizeof(running[0])))
        running[nrunning++] = pid;
    return pid;
}

static void forget_running(pid_t pid)
{
    for (int i = 0; i < nrunning; i++)
        if (running[i] == pid)
            running[i--] = running[--nrunning];
}

pid_t tenv_spawn_stage(tenv *t, const char *stage, const char *logfile,
                       const char *const *env)
{
    const char *args[] = {"run", stage, NULL};
    return keep_running(spawn(t, args, env, logfile, NULL));
}

int tenv_docpipe_out(tenv *t, const char *const *args, const char *const *env,
                     const char *outfile)
{
    pid_t pid = spawn(t, args, env, NULL, outfile);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

pid_t tenv_spawn(tenv *t, const char *const *args, const char *logfile,
                 const char *const *env)
{
    return keep_running(spawn(t, args, env, logfile, NULL));
}

pid_t tenv_spawn_io(tenv *t, const char *const *args, const char *const *env,
                    const char *infile, const char *outfile, const char *errfile)
{
    return keep_running(spawn_io(t, args, env, NULL, infile, outfile, errfile));
}

int tenv_wait(pid_t pid)
{
    forget_running(pid);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int tenv_stop(pid_t pid, int sig, int timeout_ms)
{
    forget_running(pid);
    kill(pid, sig);
    long long until = mono_ms() + timeout_ms;
    int st;
    while (mono_ms() < until) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

long long tenv_scalar(tenv *t, const char *sql)
{
    PGresult *res = PQexec(t->db, sql);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s: %s", sql,
                 PQresultErrorMessage(res));
    cr_assert(PQntuples(res) == 1 && !PQgetisnull(res, 0, 0),
              "%s returned no value", sql);
    long long v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

long long tenv_wait_scalar(tenv *t, const char *sql, long long want,
                           int timeout_ms)
{
    long long until = mono_ms() + timeout_ms, v = 0;
    do {
        v = tenv_scalar(t, sql);
        if (v == want)
            return v;
        usleep(100000);
    } while (mono_ms() < until);
    return v;
}

void tenv_produce(tenv *t, const char *topic, const char *key,
                  const void *value, size_t len, const char *const *headers)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", t->brokers, err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    cr_assert(rk, "producer: %s", err);
    rd_kafka_headers_t *h = rd_kafka_headers_new(8);
    for (int i = 0; headers && headers[i]; i += 2)
        rd_kafka_header_add(h, headers[i], -1, headers[i + 1], -1);
    rd_kafka_resp_err_t e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
        RD_KAFKA_V_KEY((void *)key, key ? strlen(key) : 0),
        RD_KAFKA_V_VALUE((void *)value, len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
        RD_KAFKA_V_END);
    cr_assert_eq(e, 0, "produce: %s", rd_kafka_err2str(e));
    cr_assert_eq(rd_kafka_flush(rk, 30000), 0, "flush timed out");
    rd_kafka_destroy(rk);
}

int tenv_consume_all(tenv *t, const char *topic, tmsg **out, int timeout_ms)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", t->brokers, err, sizeof(err));
    rd_kafka_conf_set(conf, "group.id", "docpipe-test-reader", err, sizeof(err));
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof(err));
    rd_kafka_conf_set(conf, "isolation.level", "read_committed", err, sizeof(err));
    /* A partition's end is reported, so one that ends with a transaction
     * marker (never delivered) is done at once instead of at the timeout. */
    rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    cr_assert(rk, "consumer: %s", err);
    const rd_kafka_metadata_t *md;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    cr_assert_eq(rd_kafka_metadata(rk, 0, rkt, &md, 10000), 0, "metadata");
    int nparts = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(nparts);
    int64_t *high = calloc((size_t)nparts, sizeof(int64_t));
    int64_t *next = calloc((size_t)nparts, sizeof(int64_t));
    for (int p = 0; p < nparts; p++) {
        int64_t lo;
        rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &high[p], 10000);
        next[p] = lo;
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    }
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    int n = 0, cap = 64;
    tmsg *msgs = malloc((size_t)cap * sizeof(*msgs));
    long long until = mono_ms() + timeout_ms;
    for (;;) {
        int done = 1;
        for (int p = 0; p < nparts; p++)
            if (next[p] < high[p])
                done = 0;
        if (done || mono_ms() > until)
            break;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (!m)
            continue;
        if (m->err) {
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF && m->offset >= high[m->partition])
                next[m->partition] = high[m->partition];
            rd_kafka_message_destroy(m);
            continue;
        }
        next[m->partition] = m->offset + 1;
        if (n == cap) {
            cap *= 2;
            msgs = realloc(msgs, (size_t)cap * sizeof(*msgs));
        }
        tmsg *c = &msgs[n++];
        c->partition = m->partition;
        c->offset = m->offset;
        c->key_len = m->key_len;
        c->key = malloc(m->key_len + 1);
        memcpy(c->key, m->key ? m->key : "", m->key_len);
        c->key[m->key_len] = '\0';
        c->len = m->len;
        c->value = malloc(m->len + 1);
        memcpy(c->value, m->payload ? m->payload : "", m->len);
        rd_kafka_headers_t *h = NULL;
        c->headers = rd_kafka_message_headers(m, &h) ? NULL : rd_kafka_headers_copy(h);
        rd_kafka_message_destroy(m);
    }
    /* read_committed skips control records: the last offset may be one
     * (the end-of-partition report covers it). */
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    free(high);
    free(next);
    *out = msgs;
    return n;
}

void tenv_free_msgs(tmsg *msgs, int n)
{
    for (int i = 0; i < n; i++) {
        free(msgs[i].key);
        free(msgs[i].value);
        if (msgs[i].headers)
            rd_kafka_headers_destroy(msgs[i].headers);
    }
    free(msgs);
}

const char *tenv_header(const tmsg *m, const char *name, char *buf,
                        size_t buflen)
{
    const void *v;
    size_t len;
    if (!m->headers || rd_kafka_header_get_last(m->headers, name, &v, &len) ||
        len >= buflen)
        return NULL;
    memcpy(buf, v, len);
    buf[len] = '\0';
    return buf;
}

char *tenv_slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return strdup("");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    buf[got] = '\0';
    fclose(f);
    return buf;
}

pid_t tenv_start_embedserver(tenv *t, const char *const *flags, char *url,
                             size_t urllen)
{
    char bin[1200];
    const char *env = getenv("DOCPIPE_EMBEDSERVER");
    if (env && *env) {
        snprintf(bin, sizeof(bin), "%s", env);
    } else {
        snprintf(bin, sizeof(bin), "%s", t->bin);
        char *slash = strrchr(bin, '/');
        snprintf(slash ? slash + 1 : bin, sizeof(bin) - (size_t)(slash ? slash + 1 - bin : 0),
                 "tools/docpipe-embedserver");
    }
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    const char *argv[32] = {bin, "--port", "0", "--quiet"};
    int argc = 4;
    for (int i = 0; flags && flags[i] && argc < 30; i++)
        argv[argc++] = flags[i];
    argv[argc] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    char line[256] = "";
    cr_assert(fgets(line, sizeof(line), f), "embedserver %s did not start", bin);
    fclose(f);
    char *addr = strstr(line, "listening on ");
    cr_assert(addr, "embedserver said: %s", line);
    addr += strlen("listening on ");
    addr[strcspn(addr, "\r\n")] = '\0';
    snprintf(url, urllen, "http://%s", addr);
    return pid;
}

#include <curl/curl.h>

static size_t collect(char *p, size_t sz, size_t n, void *arg)
{
    dp_buf *b = arg;
    dp_buf_append(b, p, sz * n);
    return sz * n;
}

void tenv_http_post(const char *url, const char *json)
{
    free(tenv_http_post_reply(url, json));
}

char *tenv_http_post_reply(const char *url, const char *json)
{
    CURL *c = curl_easy_init();
    dp_buf b = {0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, json);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    cr_assert(rc == CURLE_OK && status == 200, "POST %s: %s (%ld) %s", url,
              curl_easy_strerror(rc), status, b.data ? b.data : "");
    return b.data ? b.data : strdup("");
}

char *tenv_http_get(const char *url)
{
    char *body = NULL;
    if (tenv_http_get_status(url, &body) == 0) {
        free(body);
        return NULL;
    }
    return body;
}

long tenv_http_get_status(const char *url, char **body)
{
    CURL *c = curl_easy_init();
    dp_buf b = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (!b.data)
        dp_buf_append(&b, "", 0);
    if (body)
        *body = b.data;
    else
        dp_buf_free(&b);
    return status;
}

long tenv_http_wait_status(int port, const char *path, long want, int timeout_s)
{
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    long st = 0;
    for (int i = 0; i < timeout_s * 5 && (st = tenv_http_get_status(url, NULL)) != want;
         i++)
        usleep(200 * 1000);
    return st;
}

int tenv_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t len = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    close(fd);
    return ntohs(sa.sin_port);
}
