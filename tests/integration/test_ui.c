/*
 * The dashboard (`docpipe run --http`, consumer/ui.c) rendered by a real
 * browser: headless Chromium from Debian loads the page, its JavaScript
 * fetches /api/..., and the DOM it leaves is checked against what went
 * through the intake and demo stages (records, dead letters, lag,
 * partitions), the documents by state in PostgreSQL, and a submitted
 * document's timeline.
 * A screenshot is kept in $DOCPIPE_ARTIFACTS/dashboard.png (the build
 * directory's artifacts/, set by CMake).
 */
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "support_env.h"

static tenv T;
static pid_t stage_pid;

static void teardown(void)
{
    if (stage_pid > 0)
        tenv_stop(stage_pid, SIGTERM, 30000);
    stage_pid = 0;
    tenv_teardown(&T);
}

TestSuite(ui, .fini = teardown, .timeout = 300);


static void produce(long n, long start, const char *body)
{
    char ns[32], ss[32];
    snprintf(ns, sizeof(ns), "%ld", n);
    snprintf(ss, sizeof(ss), "%ld", start);
    const char *args[] = {"demo-produce", ns, "--start", ss, "--body", body, NULL};
    cr_assert_eq(tenv_docpipe(&T, args, NULL), 0);
}

static const char *chromium(void)
{
    static const char *const where[] = {"/usr/bin/chromium", "/usr/bin/chromium-browser"};
    for (size_t i = 0; i < sizeof(where) / sizeof(where[0]); i++)
        if (access(where[i], X_OK) == 0)
            return where[i];
    cr_assert_fail("headless Chromium is needed to render the dashboard and was not "
                   "found (/usr/bin/chromium): install Debian's chromium package "
                   "(scripts/deps.sh does)");
    return NULL;
}

/* Chromium's rendering of url after its scripts ran: the DOM (malloc'd), or
 * with shot set, a screenshot written there (NULL returned). */
static char *render(const char *url, const char *shot)
{
    char out[600], cmd[3000];
    snprintf(out, sizeof(out), "/tmp/docpipe-%sdom.html", T.prefix);
    /* Its own profile directory, so no other Chromium's state is shared;
     * --virtual-time-budget lets the page's fetches and timers run first. */
    snprintf(cmd, sizeof(cmd),
             "%s --headless --no-sandbox --disable-gpu --user-data-dir=/tmp/docpipe-%schromium"
             " --virtual-time-budget=5000 %s%s%s '%s' %s%s 2>/tmp/docpipe-%schromium.log",
             chromium(), T.prefix, shot ? "--window-size=1280,900 --screenshot=" : "",
             shot ? shot : "", shot ? "" : "--dump-dom", url, shot ? "" : "> ",
             shot ? "" : out, T.prefix);
    cr_assert_eq(system(cmd), 0, "chromium failed: %s", cmd);
    return shot ? NULL : tenv_slurp(out);
}

/* The number in the cell of class cls in the row data-<key>="name", or -1. */
static long cell(const char *dom, const char *key, const char *name, const char *cls)
{
    char row[200], td[200];
    snprintf(row, sizeof(row), "data-%s=\"%s\"", key, name);
    snprintf(td, sizeof(td), "class=\"%s\">", cls);
    const char *r = strstr(dom, row);
    const char *end = r ? strstr(r, "</tr>") : NULL;
    const char *c = r ? strstr(r, td) : NULL;
    if (!c || c > end)
        return -1;
    return strtol(c + strlen(td), NULL, 10);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

Test(ui, test_dashboard_shows_what_went_through_in_a_browser)
{
    chromium();
    tenv_setup(&T, "ui");
    int port = tenv_free_port();
    char addr[64], log[600], url[200];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    snprintf(log, sizeof(log), "/tmp/docpipe-%sdemo.log", T.prefix);
    /* intake beside demo: a submitted document gets its job, its events and
     * a state in flight (parse_queued: no parse stage runs here). */
    char storage[600], env_storage[700];
    snprintf(storage, sizeof(storage), "/tmp/docpipe-%sstorage", T.prefix);
    snprintf(env_storage, sizeof(env_storage), "DOCPIPE_STORAGE_DIR=%s", storage);
    const char *env[] = {env_storage, NULL};
    const char *args[] = {"run", "--http", addr, "intake", "demo", NULL};
    stage_pid = tenv_spawn(&T, args, log, env);
    cr_assert_eq(tenv_http_wait_status(port, "/readyz", 200, 60), 200, "ready once joined");

    produce(120, 0, "payload");
    produce(2, 1000, "fail:permanent");
    char sql[600];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM docpipe.demo_results"
             " WHERE topic = '%sdemo.in'", T.prefix);
    cr_assert_eq(tenv_wait_scalar(&T, sql, 120, 60000), 120);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM docpipe.dp_dead_letters"
             " WHERE group_id = '%sdemo'", T.prefix);
    cr_assert_eq(tenv_wait_scalar(&T, sql, 2, 60000), 2);

    /* A document submitted, to look up by id. */
    char out[600], doc[40] = "";
    snprintf(out, sizeof(out), "/tmp/docpipe-%ssubmit.out", T.prefix);
    char sample[1200];
    snprintf(sample, sizeof(sample), "%s/samples/notes.txt", T.srcdir);
    const char *sargs[] = {"submit", "--user", "00000000-0000-4000-8000-0000000000a1",
                           sample, NULL};
    cr_assert_eq(tenv_docpipe_out(&T, sargs, env, out), 0, "submit failed");
    char *ids = tenv_slurp(out);
    cr_assert(ids && sscanf(ids, "%36s", doc) == 1, "submit printed no id");
    free(ids);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE document_id = '%s' AND status = 'parse_queued'", doc);
    cr_assert_eq(tenv_wait_scalar(&T, sql, 1, 60000), 1, "intake took the document");

    /* The page at /#<document>: the stage table, documents by state, the
     * document's timeline and the dead letters, as the browser drew them. */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/#%s", port, doc);
    char *dom = render(url, NULL);
    cr_assert(strstr(dom, "<h1>docpipe</h1>"), "the page itself:\n%s", dom);
    cr_assert(strstr(dom, "updated 2"), "its scripts ran and reached the API:\n%s", dom);
    const char *intake_row = strstr(dom, "data-stage=\"intake\"");
    const char *demo_row = strstr(dom, "data-stage=\"demo\"");
    cr_assert(intake_row && demo_row && intake_row < demo_row,
              "stages in the order run was given them:\n%s", dom);
    cr_assert_eq(cell(dom, "stage", "intake", "n records"), 1, "intake's one upload");
    cr_assert_eq(cell(dom, "stage", "demo", "n records"), 120, "records:\n%s", dom);
    cr_assert_eq(cell(dom, "stage", "demo", "n dead_letters"), 2);
    cr_assert_eq(cell(dom, "stage", "demo", "n lag"), 0);
    cr_assert_eq(cell(dom, "stage", "demo", "n assigned"), 4);
    cr_assert(strstr(dom, "<td class=\"breaker muted\">none</td>"),
              "intake and demo call no service: breaker none");
    cr_assert_eq(count(dom, "<td class=\"category\">permanent</td>"), 2,
                 "the two dead letters of this prefix:\n%s", dom);
    long queued = tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.upload_jobs"
                                  " WHERE status = 'parse_queued'");
    cr_assert(queued >= 1);
    cr_assert_eq(cell(dom, "state", "parse_queued", "n documents"), queued,
                 "documents in flight as PostgreSQL counts them:\n%s", dom);
    cr_assert(strstr(dom, "id=\"docstate\">notes.txt"), "the document:\n%s", dom);
    cr_assert(strstr(dom, "id=\"timeline\""), "its timeline");
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.events"
             " WHERE document_id = '%s'", doc);
    long events = tenv_scalar(&T, sql);
    char *tl = strstr(dom, "id=\"timeline\"");
    char *tl_end = strstr(tl, "</table>");
    cr_assert(tl_end);
    *tl_end = '\0';
    cr_assert(events >= 1, "submit wrote the document's first event");
    cr_assert_eq(count(tl, "<tr>") - 1, events, "one row per event (and the head):\n%s", tl);
    free(dom);

    /* The screenshot, kept as the test's artifact. */
    const char *dir = getenv("DOCPIPE_ARTIFACTS");
    char shot[1200];
    if (dir && *dir) {
        mkdir(dir, 0755);
        snprintf(shot, sizeof(shot), "%s/dashboard.png", dir);
    } else {
        snprintf(shot, sizeof(shot), "/tmp/docpipe-%sdashboard.png", T.prefix);
    }
    unlink(shot);
    render(url, shot);
    struct stat st;
    cr_assert_eq(stat(shot, &st), 0, "no screenshot at %s", shot);
    cr_assert(st.st_size > 10000, "screenshot %s is only %lld bytes", shot,
              (long long)st.st_size);
    fprintf(stderr, "dashboard screenshot: %s\n", shot);

    cr_assert_eq(tenv_stop(stage_pid, SIGTERM, 30000), 0);
    stage_pid = 0;
}
