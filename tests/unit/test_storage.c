/*
 * test_storage: content-addressed file storage (dp_storage_put/get, and
 * batches made durable together, dp_storage_write/sync/discard): the
 * folder of a kind is made on its first file, the same bytes map to the same
 * path, and what is read back is what was stored.
 */
#include <criterion/criterion.h>

#include <dirent.h>
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

/* Files in the folder whose name holds ".tmp." (writes not yet durable). */
static int temporaries(const char *folder)
{
    int n = 0;
    DIR *d = opendir(folder);
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += strstr(e->d_name, ".tmp.") != NULL;
    if (d)
        closedir(d);
    return n;
}

Test(storage, a_batch_shows_its_files_only_once_synced)
{
    char path[3][DP_STORAGE_PATH_SIZE], err[512], file[600], folder[400];
    const char *texts[3] = {"first text", "second text", "first text"};
    dp_storage_batch sb = {0};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(dp_storage_write(&sb, root, "parsed", texts[i], strlen(texts[i]),
                                      path[i], NULL, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_str_eq(path[0], path[2], "the same bytes, the same path");
    snprintf(folder, sizeof(folder), "%s/parsed", root);
    struct stat st;
    for (int i = 0; i < 3; i++) {
        snprintf(file, sizeof(file), "%s/%s", folder, path[i] + 17);
        cr_assert_neq(stat(file, &st), 0, "%s is visible before the sync", file);
    }
    cr_assert_eq(temporaries(folder), 3, "one temporary per write");
    cr_assert_eq(dp_storage_sync(&sb, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_eq(temporaries(folder), 0);
    for (int i = 0; i < 3; i++) {
        char *back;
        size_t len;
        cr_assert_eq(dp_storage_get(root, path[i], 1024, &back, &len, err, sizeof(err)),
                     DP_OK, "%s", err);
        cr_assert_eq(len, strlen(texts[i]));
        cr_assert_eq(memcmp(back, texts[i], len), 0);
        free(back);
    }
    /* Already there: nothing to write, nothing to sync. */
    cr_assert_eq(dp_storage_write(&sb, root, "parsed", texts[1], strlen(texts[1]),
                                  path[1], NULL, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_eq(temporaries(folder), 0);

    /* A batch given up (its handler pass failed) leaves nothing behind. */
    char lost[DP_STORAGE_PATH_SIZE];
    cr_assert_eq(dp_storage_write(&sb, root, "parsed", "never kept", 10, lost, NULL,
                                  err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_eq(temporaries(folder), 1);
    dp_storage_discard(&sb);
    cr_assert_eq(temporaries(folder), 0);
    snprintf(file, sizeof(file), "%s/%s", folder, lost + 17);
    cr_assert_neq(stat(file, &st), 0);
}

Test(storage, size_of_a_stored_file_and_of_a_missing_one)
{
    char path[DP_STORAGE_PATH_SIZE], err[512];
    cr_assert_eq(dp_storage_put(root, "raw", "12345", 5, path, NULL, err, sizeof(err)),
                 DP_OK, "%s", err);
    size_t len = 0;
    cr_assert_eq(dp_storage_size(root, path, &len, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_eq(len, 5);
    cr_assert_eq(dp_storage_size(root, "storage://raw/nothing", &len, err, sizeof(err)),
                 DP_ERR_PERMANENT);
}
