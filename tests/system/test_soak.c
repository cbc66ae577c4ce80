/*
 * The chaos soak, short (bench/soak.c, docs/reliability.md "Chaos soak"):
 * 150 documents through two processes of every stage while a random stage
 * process is SIGKILLed every 2-5 s for 60 s, the soak's own broker is
 * SIGKILLed once and its own PostgreSQL stopped in immediate mode once, and
 * the embedding service fails 10% of requests with 500 and 2% with 429.
 * Three documents are PNG images named .md: intake refuses them for good.
 *
 * It asserts the soak's report: every other document complete, none lost,
 * no chunk row, event or completion twice, exactly one dead letter per
 * injected failure and none other, and the kills made.  The soak starts
 * its own servers on ports of its own (55532, 39592/39593), so the shared
 * ones are never touched.  DOCPIPE_SOAK_ARGS replaces the schedule (e.g.
 * "--documents 1000 --duration 300").
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(soak, .timeout = 900);

static char out[1 << 16];

/* The number after "label: " in the report, -1 if absent. */
static long figure(const char *label)
{
    char key[128];
    snprintf(key, sizeof(key), "\n%s: ", label);
    const char *p = strstr(out, key);
    return p ? strtol(p + strlen(key), NULL, 10) : -1;
}

static void soak_path(char *path, size_t n)
{
    const char *s = getenv("DOCPIPE_SOAK_BIN");
    if (s && *s) {
        snprintf(path, n, "%s", s);
        return;
    }
    const char *bin = getenv("DOCPIPE_BIN");
    cr_assert(bin, "DOCPIPE_BIN or DOCPIPE_SOAK_BIN must name the programs");
    const char *slash = strrchr(bin, '/');
    snprintf(path, n, "%.*sbench/docpipe-soak", slash ? (int)(slash - bin + 1) : 0, bin);
}

Test(soak, kills_and_outages_lose_and_repeat_nothing_and_dead_letter_only_the_injected)
{
    char path[4096], cmd[8192];
    soak_path(path, sizeof(path));
    cr_assert(access(path, X_OK) == 0, "%s is not built", path);
    const char *args = getenv("DOCPIPE_SOAK_ARGS");
    if (!args || !*args)
        args = "--documents 150 --permanent 3 --duration 60 --kill-every-ms 2000-5000"
               " --drain-timeout 300 --seed 7";
    snprintf(cmd, sizeof(cmd), "'%s' %s", path, args);
    FILE *p = popen(cmd, "r");
    cr_assert(p, "cannot run %s", cmd);
    out[0] = '\n';
    size_t len = 1;
    size_t got;
    while ((got = fread(out + len, 1, sizeof(out) - len - 1, p)) > 0)
        len += got;
    out[len] = '\0';
    int st = pclose(p);
    fprintf(stderr, "%s", out + 1);
    cr_assert(WIFEXITED(st), "the soak did not exit");

    long docs = 150, perm = 3;
    const char *d = strstr(args, "--documents "), *q = strstr(args, "--permanent ");
    if (d)
        docs = atol(d + 12);
    if (q)
        perm = atol(q + 12);
    char *head = strstr(out, "\nsoak: ");
    cr_assert(head, "the soak printed no report (exit %d)", WEXITSTATUS(st));
    cr_assert_eq(figure("documents submitted"), docs, "every document submitted");
    cr_assert_eq(figure("documents complete"), docs - perm,
                 "every document but the injected failures complete");
    cr_assert_eq(figure("documents lost"), 0, "none lost");
    cr_assert_eq(figure("documents failed unexpectedly"), 0, "none failed but the injected");
    cr_assert_eq(figure("injected permanent failures"), perm, "each injected one refused");
    cr_assert_gt(figure("chunk rows"), docs - perm, "chunks stored");
    cr_assert_eq(figure("repeated rows"), 0, "no chunk row twice");
    cr_assert_eq(figure("missing rows"), 0, "no chunk row missing");
    cr_assert_eq(figure("repeated events"), 0, "no step's event twice");
    cr_assert_eq(figure("repeated completions"), 0, "no document completed twice");
    cr_assert_eq(figure("dead letters"), perm, "exactly one dead letter per injected failure");
    cr_assert(strstr(out, "other: 0)"), "no other dead letter");
    cr_assert_geq(figure("kills"), 5, "stage processes were SIGKILLed");
    cr_assert(strstr(out, "broker 1 (SIGKILL"), "the broker was SIGKILLed once");
    cr_assert(strstr(out, "PostgreSQL 1 (immediate stop"), "PostgreSQL stopped once");
    cr_assert(strstr(out, "\nresult: PASS"), "the soak's verdict");
    cr_assert_eq(WEXITSTATUS(st), 0, "the soak exits 0");
}
