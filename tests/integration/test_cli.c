/*
 * The docpipe command as people and scripts use it: submit's output parses
 * back whatever the file names, --json everywhere scripts read, wait's exit
 * codes (3 on timeout, 130 on SIGINT), its progress lines on stderr, and
 * submit --wait against the whole pipeline (`docpipe run all`, the embedding
 * service and Apache Tika server, as in test_pipeline.c).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "support_env.h"

static tenv T;
static pid_t embed_pid, pipe_pid;
static char storage[1200], env_storage[1300], env_embed[300], user[64];

/* A document id no job has: wait cannot see it finish. */
#define NEVER_DOC "6b1f7c52-1d3a-4c7e-9a55-0123456789ab"

static void teardown(void)
{
    if (pipe_pid > 0)
        tenv_stop(pipe_pid, SIGTERM, 60000);
    if (embed_pid > 0)
        tenv_stop(embed_pid, SIGTERM, 10000);
    pipe_pid = embed_pid = 0;
    tenv_teardown(&T);
}

TestSuite(cli, .fini = teardown, .timeout = 600);

static char embed_url[256];
static const char *extra_env[4];

/* Prefix, storage and a user of this test's own; the pipeline if asked. */
static void start(const char *name, int pipeline)
{
    tenv_setup(&T, name);
    snprintf(storage, sizeof(storage), "/tmp/docpipe-%sstorage", T.prefix);
    mkdir(storage, 0755);
    snprintf(env_storage, sizeof(env_storage), "DOCPIPE_STORAGE_DIR=%s", storage);
    snprintf(user, sizeof(user), "%08x-0000-4000-8000-%012x",
             (unsigned)time(NULL), (unsigned)getpid());
    if (!pipeline)
        return;
    char *url = embed_url;
    embed_pid = tenv_start_embedserver(&T, NULL, url, sizeof(embed_url));
    snprintf(env_embed, sizeof(env_embed), "DOCPIPE_EMBED_URL=%s", url);
    const char *env[10] = {env_embed, env_storage, "DOCPIPE_EMBED_TPM=100000000",
                           "DOCPIPE_EMBED_RPM=1000000", "DOCPIPE_BATCH_WAIT_MS=20", NULL};
    for (int i = 0, k = 5; extra_env[i] && k < 9; i++)
        env[k++] = extra_env[i];
    const char *args[] = {"run", "all", NULL};
    char logf[600];
    snprintf(logf, sizeof(logf), "/tmp/docpipe-%spipeline.log", T.prefix);
    pipe_pid = tenv_spawn(&T, args, logf, env);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

/* Undoes submit's escapes (\t \n \r \\) in place. */
static void unescape(char *s)
{
    char *o = s;
    for (; *s; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            *o++ = *s == 't' ? '\t' : *s == 'n' ? '\n' : *s == 'r' ? '\r' : *s;
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
}

static char *out_path(const char *what, char *buf, size_t len)
{
    snprintf(buf, len, "/tmp/docpipe-%s%s", T.prefix, what);
    return buf;
}

Test(cli, test_submit_output_parses_back_whatever_the_file_name)
{
    start("cli_names", 0);
    char dir[1300], odd[1400], plain[1400], out[700];
    snprintf(dir, sizeof(dir), "%s/in", storage);
    mkdir(dir, 0755);
    snprintf(odd, sizeof(odd), "%s/tab\there\nnew\\line.md", dir);
    snprintf(plain, sizeof(plain), "%s/plain.md", dir);
    write_file(odd, "# odd\n\nA name with a tab and a newline.\n");
    write_file(plain, "# plain\n\nAn ordinary name.\n");
    const char *env[] = {env_storage, NULL};

    const char *tsv_args[] = {"submit", "--user", user, odd, plain, NULL};
    cr_assert_eq(tenv_docpipe_out(&T, tsv_args, env, out_path("tsv", out, sizeof(out))), 0);
    char *tsv = tenv_slurp(out);
    char ids[2][40], names[2][1400];
    int n = 0;
    for (char *line = strtok(tsv, "\n"); line && n < 3; line = strtok(NULL, "\n")) {
        cr_assert_lt(n, 2, "one line per file:\n%s", tsv);
        cr_assert_eq(sscanf(line, "%36s", ids[n]), 1);
        char *name = strrchr(line, '\t');
        cr_assert(name, "three fields: %s", line);
        snprintf(names[n], sizeof(names[n]), "%s", name + 1);
        unescape(names[n]);
        n++;
    }
    cr_assert_eq(n, 2, "two records:\n%s", tsv);
    cr_assert_str_eq(names[0], odd);
    cr_assert_str_eq(names[1], plain);
    free(tsv);

    const char *json_args[] = {"submit", "--json", "--user", user, odd, plain, NULL};
    cr_assert_eq(tenv_docpipe_out(&T, json_args, env, out_path("json", out, sizeof(out))), 0);
    json_error_t jerr;
    json_t *arr = json_load_file(out, 0, &jerr);
    cr_assert(json_is_array(arr), "submit --json: %s", jerr.text);
    cr_assert_eq(json_array_size(arr), 2);
    for (int i = 0; i < 2; i++) {
        json_t *r = json_array_get(arr, (size_t)i);
        cr_assert_str_eq(json_string_value(json_object_get(r, "document_id")), ids[i]);
        cr_assert_str_eq(json_string_value(json_object_get(r, "file")), i ? plain : odd);
        cr_assert_str_eq(json_string_value(json_object_get(r, "status")), "submitted");
    }
    json_decref(arr);
}

Test(cli, test_wait_for_a_document_that_cannot_finish_times_out_with_exit_3)
{
    start("cli_timeout", 0);
    char out[700];
    const char *args[] = {"wait", "--timeout", "1", NEVER_DOC, NULL};
    cr_assert_eq(tenv_docpipe_out(&T, args, NULL, out_path("wait", out, sizeof(out))), 3);
    char *text = tenv_slurp(out);
    cr_assert(strstr(text, "timed out"), "wait said: %s", text);
    free(text);
}

Test(cli, test_status_json_counts_documents_by_state)
{
    start("cli_status", 0);
    char out[700];
    const char *args[] = {"status", "--json", NULL};
    cr_assert_eq(tenv_docpipe_out(&T, args, NULL, out_path("status", out, sizeof(out))), 0);
    json_error_t jerr;
    json_t *doc = json_load_file(out, 0, &jerr);
    cr_assert(json_is_object(doc), "status --json: %s", jerr.text);
    json_t *states = json_object_get(doc, "states");
    cr_assert(json_is_object(states));
    json_int_t sum = 0;
    const char *k;
    json_t *v;
    json_object_foreach(states, k, v) {
        cr_assert(json_is_integer(v), "count of %s", k);
        sum += json_integer_value(v);
    }
    cr_assert_eq(json_integer_value(json_object_get(doc, "total")), sum);
    cr_assert_eq(sum, tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.upload_jobs"));
    json_decref(doc);
}

Test(cli, test_sigint_ends_wait_promptly_with_exit_130)
{
    start("cli_sigint", 0);
    char out[700], errf[700];
    const char *args[] = {"wait", "--timeout", "120", NEVER_DOC, NULL};
    pid_t pid = tenv_spawn_io(&T, args, NULL, NULL, out_path("wait.out", out, sizeof(out)),
                              out_path("wait.err", errf, sizeof(errf)));
    usleep(1500 * 1000); /* connected and polling */
    cr_assert_eq(tenv_stop(pid, SIGINT, 3000), 130, "wait ends within 3 s, exit 130");
    char *text = tenv_slurp(errf);
    cr_assert(strstr(text, "interrupted"), "wait said: %s", text);
    free(text);
}

Test(cli, test_wait_prints_plain_progress_lines_on_stderr_when_not_a_terminal)
{
    start("cli_progress", 0);
    char out[700], errf[700];
    const char *args[] = {"wait", "--timeout", "3", "--progress-every", "1", NEVER_DOC, NULL};
    pid_t pid = tenv_spawn_io(&T, args, NULL, NULL, out_path("wait.out", out, sizeof(out)),
                              out_path("wait.err", errf, sizeof(errf)));
    cr_assert_eq(tenv_wait(pid), 3);
    char *text = tenv_slurp(errf);
    cr_assert(strstr(text, "docpipe wait: 0/1 complete, 0 failed"), "stderr: %s", text);
    cr_assert(strstr(text, "docs/s"), "stderr: %s", text);
    cr_assert_null(strchr(text, '\r'), "no redrawing when not a terminal");
    free(text);
}

Test(cli, test_submit_wait_exits_0_when_its_documents_complete)
{
    start("cli_submit_wait", 1);
    char dir[1300], path[1400], out[700];
    snprintf(dir, sizeof(dir), "%s/in", storage);
    mkdir(dir, 0755);
    for (int i = 0; i < 3; i++) {
        char text[200];
        snprintf(path, sizeof(path), "%s/doc%d.md", dir, i);
        snprintf(text, sizeof(text), "# Document %d\n\nShort text number %d for %s.\n",
                 i, i, user);
        write_file(path, text);
    }
    const char *env[] = {env_storage, NULL};
    const char *args[] = {"submit", "--wait", "--timeout", "300", "--progress-every",
                          "5", "--user", user, dir, NULL};
    cr_assert_eq(tenv_docpipe_out(&T, args, env, out_path("submit", out, sizeof(out))), 0);
    char *text = tenv_slurp(out);
    int n = 0;
    char id[40];
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
        if (sscanf(line, "%36s", id) == 1 && strlen(id) == 36)
            n++;
    cr_assert_eq(n, 3, "three document ids:\n%s", text);
    free(text);
    char sql[300];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE user_id = '%s' AND status = 'complete'", user);
    cr_assert_eq(tenv_scalar(&T, sql), 3);
}

Test(cli, test_wait_redraws_one_progress_line_on_a_terminal)
{
    start("cli_tty", 0);
    int master;
    pid_t pid = forkpty(&master, NULL, NULL, NULL);
    cr_assert_geq(pid, 0, "forkpty: %s", strerror(errno));
    if (pid == 0) { /* the environment is tenv_setup's */
        execl(T.bin, "docpipe", "wait", "--timeout", "3", NEVER_DOC, (char *)NULL);
        _exit(127);
    }
    char buf[16384];
    size_t len = 0;
    for (;;) {
        ssize_t r = read(master, buf + len, sizeof(buf) - 1 - len);
        if (r <= 0) /* EIO once the child is gone */
            break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    close(master);
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 3, "exit 3 on timeout");
    cr_assert(strstr(buf, "\r0/1 complete, 0 failed"), "redrawn line: %s", buf);
    cr_assert_null(strstr(buf, "docpipe wait: 0/1"), "no plain lines: %s", buf);
}

/* The embedding service answers 503 to everything: its breaker opens, and
 * wait's progress line says so, from what the running stages report
 * (docpipe.dp_service_status), instead of guessing. */
Test(cli, test_wait_says_the_embedding_breaker_holds_the_documents)
{
    extra_env[0] = "DOCPIPE_BREAKER_THRESHOLD=1";
    extra_env[1] = "DOCPIPE_BREAKER_RESET_MS=3000";
    extra_env[2] = NULL;
    start("cli_breaker", 1);
    extra_env[0] = NULL;
    char faults[400];
    snprintf(faults, sizeof(faults), "%s/admin/faults", embed_url);
    tenv_http_post(faults, "{\"fail_status\": 503}");
    char dir[1300], path[1400], out[700], errf[700];
    snprintf(dir, sizeof(dir), "%s/in", storage);
    mkdir(dir, 0755);
    snprintf(path, sizeof(path), "%s/held.md", dir);
    write_file(path, "# Held\n\nThis document waits for the embedding service.\n");
    const char *env[] = {env_storage, NULL};
    const char *sub[] = {"submit", "--user", user, dir, NULL};
    cr_assert_eq(tenv_docpipe_out(&T, sub, env, out_path("submit", out, sizeof(out))), 0);
    char *text = tenv_slurp(out);
    char id[40] = "";
    cr_assert_eq(sscanf(text, "%36s", id), 1);
    free(text);
    const char *args[] = {"wait", "--timeout", "120", "--progress-every", "1", id, NULL};
    pid_t pid = tenv_spawn_io(&T, args, NULL, NULL, out_path("hold.out", out, sizeof(out)),
                              out_path("hold.err", errf, sizeof(errf)));
    int seen = 0;
    for (int i = 0; i < 240 && !seen; i++) {
        usleep(250 * 1000);
        text = tenv_slurp(errf);
        /* Open, or half-open between a reset and its probe. */
        seen = text && strstr(text, "held by embeddings: breaker") != NULL;
        free(text);
    }
    kill(pid, SIGINT);
    cr_assert_eq(tenv_wait(pid), 130);
    text = tenv_slurp(errf);
    cr_assert(seen, "wait names the open breaker:\n%s", text);
    free(text);
    /* The service comes back: the breaker closes on its own and the
     * document completes. */
    tenv_http_post(faults, "{\"fail_status\": 0}");
    char sql[300];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE document_id = '%s' AND status = 'complete'", id);
    cr_assert_eq(tenv_wait_scalar(&T, sql, 1, 180000), 1);
}
