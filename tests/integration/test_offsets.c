/*
 * The PostgreSQL offset store on its own: claims bump the epoch, and an
 * advance is refused unless both the epoch and the expected offset match.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "migrate.h"
#include "attempts.h"
#include "offsets.h"

static PGconn *db;
static char group[64];

static void setup(void)
{
    const char *url = getenv("DOCPIPE_DATABASE_URL");
    db = PQconnectdb(url ? url : "postgresql://postgres@127.0.0.1:55432/docpipe");
    cr_assert_eq(PQstatus(db), CONNECTION_OK, "%s", PQerrorMessage(db));
    char err[512], dir[2048];
    const char *src = getenv("DOCPIPE_SOURCE_DIR");
    snprintf(dir, sizeof(dir), "%s/schemas/sql", src ? src : DOCPIPE_SOURCE_DIR);
    cr_assert_eq(dp_migrate(db, dir, NULL, NULL, err, sizeof(err)), DP_OK, "%s", err);
    snprintf(group, sizeof(group), "offsets-test-%d-%ld", (int)getpid(), (long)time(NULL));
}

static void teardown(void) { PQfinish(db); }

TestSuite(offsets, .init = setup, .fini = teardown);

static dp_err advance(int64_t epoch, int64_t expected, int64_t next)
{
    char err[512];
    PQclear(PQexec(db, "BEGIN"));
    dp_offset_advance a = {0, epoch, expected, next};
    dp_err e = dp_offsets_advance(db, group, "topic", &a, 1, dp_attempt_new_id(),
                                  err, sizeof(err));
    PQclear(PQexec(db, e == DP_OK ? "COMMIT" : "ROLLBACK"));
    return e;
}

Test(offsets, test_claim_without_row_starts_at_nothing_and_epoch_one)
{
    dp_offset_claim c = {.partition = 0};
    char err[512];
    cr_assert_eq(dp_offsets_claim(db, group, "topic", "A", &c, 1, err, sizeof(err)), DP_OK);
    cr_assert_eq(c.next_offset, -1);
    cr_assert_eq(c.epoch, 1);
}

Test(offsets, test_zombie_instance_cannot_commit_after_reclaim)
{
    char err[512];
    dp_offset_claim a = {.partition = 0}, b = {.partition = 0};
    cr_assert_eq(dp_offsets_claim(db, group, "topic", "A", &a, 1, err, sizeof(err)), DP_OK);
    cr_assert_eq(advance(a.epoch, -1, 10), DP_OK, "the owner commits");
    cr_assert_eq(dp_offsets_claim(db, group, "topic", "B", &b, 1, err, sizeof(err)), DP_OK);
    cr_assert_eq(b.next_offset, 10, "the new owner starts where A stopped");
    cr_assert_gt(b.epoch, a.epoch);
    cr_assert_eq(advance(a.epoch, 10, 20), DP_ERR_FENCED, "A is fenced");
    cr_assert_eq(advance(b.epoch, 10, 20), DP_OK, "B commits");
}

Test(offsets, test_advance_from_unexpected_offset_is_fenced)
{
    char err[512];
    dp_offset_claim a = {.partition = 0};
    cr_assert_eq(dp_offsets_claim(db, group, "topic", "A", &a, 1, err, sizeof(err)), DP_OK);
    cr_assert_eq(advance(a.epoch, -1, 5), DP_OK);
    cr_assert_eq(advance(a.epoch, 3, 8), DP_ERR_FENCED,
                 "a commit built on a stale offset is refused");
    cr_assert_eq(advance(a.epoch, 5, 8), DP_OK);
}
