/* support_pipe: see support_pipe.h. */
#include "support_pipe.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

double tpipe_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void tpipe_setup(tpipe *p, const char *name)
{
    memset(p, 0, sizeof(*p));
    tenv_setup(&p->t, name);
    char dir[1200];
    snprintf(dir, sizeof(dir), "/tmp/docpipe-%sstorage", p->t.prefix);
    memcpy(p->storage, dir, sizeof(dir));
    mkdir(p->storage, 0755);
    snprintf(p->user, sizeof(p->user), "%08x-0000-4000-8000-%012x", 0xfa1u,
             (unsigned)getpid());
    p->embed_pid = tenv_start_embedserver(&p->t, NULL, p->embed_url,
                                          sizeof(p->embed_url));
    char ee[300];
    snprintf(ee, sizeof(ee), "DOCPIPE_EMBED_URL=%s", p->embed_url);
    memcpy(p->env_embed, ee, sizeof(ee));
    char es[1300];
    snprintf(es, sizeof(es), "DOCPIPE_STORAGE_DIR=%s", dir);
    memcpy(p->env_storage, es, sizeof(es));
}

void tpipe_teardown(tpipe *p)
{
    for (int i = 0; i < p->nprocs; i++)
        if (p->procs[i] > 0)
            tenv_stop(p->procs[i], SIGTERM, 60000);
    p->nprocs = 0;
    if (p->embed_pid > 0)
        tenv_stop(p->embed_pid, SIGTERM, 10000);
    p->embed_pid = 0;
    tenv_teardown(&p->t);
}

int tpipe_run(tpipe *p, const char *stages, const char *const *env)
{
    cr_assert(p->nprocs < PIPE_MAX_PROCS);
    int i = p->nprocs++;
    const char *args[16] = {"run"};
    int argc = 1;
    char copy[256];
    snprintf(copy, sizeof(copy), "%s", stages);
    for (char *s = strtok(copy, " "); s && argc < 15; s = strtok(NULL, " "))
        args[argc++] = s;
    args[argc] = NULL;
    const char *all[32] = {p->env_embed, p->env_storage, "DOCPIPE_BATCH_WAIT_MS=20"};
    int n = 3;
    for (int k = 0; env && env[k] && n < 31; k++)
        all[n++] = env[k];
    all[n] = NULL;
    char log[600];
    snprintf(log, sizeof(log), "/tmp/docpipe-%sproc%d.log", p->t.prefix, i);
    memcpy(p->logs[i], log, sizeof(log));
    unlink(p->logs[i]);
    p->procs[i] = tenv_spawn(&p->t, args, p->logs[i], all);
    return i;
}

int tpipe_stop(tpipe *p, int i)
{
    int st = tenv_stop(p->procs[i], SIGTERM, 120000);
    p->procs[i] = 0;
    return st;
}

void tpipe_write_md(const char *path, long lines, int width, int headings,
                    unsigned seed)
{
    FILE *f = fopen(path, "w");
    cr_assert(f, "cannot write %s", path);
    char line[512];
    if (width > (int)sizeof(line) - 2)
        width = (int)sizeof(line) - 2;
    for (long l = 0; l < lines; l++) {
        int k = snprintf(line, sizeof(line), "%s%u %ld ", headings ? "# " : "", seed, l);
        unsigned x = seed * 2654435761u + (unsigned)l * 40503u;
        while (k < width) {
            x = x * 1103515245u + 12345u;
            line[k++] = (x >> 16) % 7 == 0 ? ' ' : (char)('a' + (x >> 16) % 26);
        }
        line[k++] = '\n';
        fwrite(line, 1, (size_t)k, f);
    }
    fclose(f);
}

void tpipe_submit(tpipe *p, const char *const *files, size_t n, char (*ids)[40])
{
    char out[700];
    snprintf(out, sizeof(out), "/tmp/docpipe-%ssubmit.out", p->t.prefix);
    const char **args = calloc(n + 5, sizeof(*args));
    args[0] = "submit";
    args[1] = "--user";
    args[2] = p->user;
    for (size_t k = 0; k < n; k++)
        args[3 + k] = files[k];
    const char *env[] = {p->env_storage, NULL};
    cr_assert_eq(tenv_docpipe_out(&p->t, args, env, out), 0, "submit failed");
    free(args);
    char *text = tenv_slurp(out);
    cr_assert(text);
    size_t got = 0;
    for (char *line = strtok(text, "\n"); line && got < n; line = strtok(NULL, "\n"))
        if (sscanf(line, "%36s", ids[got]) == 1)
            got++;
    free(text);
    cr_assert_eq(got, n, "submit printed %zu ids for %zu files", got, n);
}

void tpipe_status(tpipe *p, const char *doc, char *out, size_t outlen)
{
    const char *params[1] = {doc};
    PGresult *r = PQexecParams(p->t.db, "SELECT status FROM upload_pipeline.upload_jobs"
                               " WHERE document_id = $1::uuid", 1, NULL, params,
                               NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(p->t.db));
    snprintf(out, outlen, "%s", PQntuples(r) ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
}

long long tpipe_q(tpipe *p, const char *sql, const char *arg)
{
    const char *params[1] = {arg};
    PGresult *r = PQexecParams(p->t.db, sql, arg ? 1 : 0, NULL, params, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s: %s", sql,
                 PQerrorMessage(p->t.db));
    long long v = PQntuples(r) && !PQgetisnull(r, 0, 0) ? atoll(PQgetvalue(r, 0, 0)) : 0;
    PQclear(r);
    return v;
}

long long tpipe_service_count(tpipe *p, const char *name)
{
    char url[300];
    snprintf(url, sizeof(url), "%s/admin/stats", p->embed_url);
    char *body = tenv_http_get(url);
    cr_assert(body, "no answer from %s", url);
    json_t *j = json_loads(body, 0, NULL);
    free(body);
    cr_assert(json_is_object(j));
    long long v = json_integer_value(json_object_get(j, name));
    json_decref(j);
    return v;
}

int tpipe_log_count(tpipe *p, int i, const char *needle)
{
    char *text = tenv_slurp(p->logs[i]);
    int n = 0;
    for (char *s = text; s && (s = strstr(s, needle)); s += strlen(needle))
        n++;
    free(text);
    return n;
}
