/*
 * test_storage: content-addressed file storage (dp_storage_put/get): the
 * folder of a kind is made on its first file, the same bytes map to the same
 * path, and what is read back is what was stored.
 */
#include <criterion/criterion.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "docdb.h"
#include "ids.h"

static char root[256];

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
    (void)sb, (void)flag, (void)f;
    return remove(p);
}

static void setup(void)
{
    snprintf(root, sizeof(root), "/tmp/docpipe-storage-test-%d", (int)getpid());
}

static void teardown(void) { nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

TestSuite(storage, .init = setup, .fini = teardown);

Test(storage, first_file_makes_the_folders_and_reads_back)
{
    char dir[300], path[DP_STORAGE_PATH_SIZE], sha[65], err[512];
    snprintf(dir, sizeof(dir), "%s/not/yet/there", root);
    struct stat st;
    cr_assert_neq(stat(dir, &st), 0, "the storage folder does not exist yet");
    const char text[] = "hello, storage";
    cr_assert_eq(dp_storage_put(dir, "parsed", text, strlen(text), path, sha, err,
                                sizeof(err)), DP_OK, "%s", err);
    char want[DP_SHA256_HEX_SIZE];
    cr_assert_eq(dp_sha256_hex(text, strlen(text), want), DP_OK);
    cr_assert_str_eq(sha, want);
    cr_assert_eq(strncmp(path, "storage://parsed/", 17), 0, "%s", path);
    cr_assert_str_eq(path + 17, sha);

    char *back = NULL;
    size_t len = 0;
    cr_assert_eq(dp_storage_get(dir, path, 1024, &back, &len, err, sizeof(err)), DP_OK,
                 "%s", err);
    cr_assert_eq(len, strlen(text));
    cr_assert_eq(memcmp(back, text, len), 0);
    free(back);

    /* A second file of the same kind goes into the folder now there, and
     * the same bytes again map to the same path. */
    char path2[DP_STORAGE_PATH_SIZE], path3[DP_STORAGE_PATH_SIZE];
    cr_assert_eq(dp_storage_put(dir, "parsed", "other", 5, path2, NULL, err, sizeof(err)),
                 DP_OK, "%s", err);
    cr_assert_str_neq(path2, path);
    cr_assert_eq(dp_storage_put(dir, "parsed", text, strlen(text), path3, NULL, err,
                                sizeof(err)), DP_OK, "%s", err);
    cr_assert_str_eq(path3, path);
}

Test(storage, a_file_over_the_limit_is_refused_as_permanent)
{
    char path[DP_STORAGE_PATH_SIZE], err[512];
    cr_assert_eq(dp_storage_put(root, "raw", "0123456789", 10, path, NULL, err,
                                sizeof(err)), DP_OK, "%s", err);
    char *back = NULL;
    size_t len = 0;
    cr_assert_eq(dp_storage_get(root, path, 5, &back, &len, err, sizeof(err)),
                 DP_ERR_PERMANENT);
    cr_assert(strstr(err, "over the limit"), "%s", err);
}
