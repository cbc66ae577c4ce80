/* support_embedserver: shared by the embedding-server tests (see header). */
#include "support_embedserver.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double test_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void embedserver_path(char *out, size_t n)
{
    const char *explicit = getenv("DOCPIPE_EMBEDSERVER");
    if (explicit && *explicit) {
        snprintf(out, n, "%s", explicit);
        return;
    }
    char self[4096];
    const char *bin = getenv("DOCPIPE_BIN");
    if (!bin || !*bin) {
        ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
        cr_assert(len > 0, "set DOCPIPE_EMBEDSERVER or DOCPIPE_BIN");
        self[len] = '\0';
        bin = self;
    }
    const char *slash = strrchr(bin, '/');
    int dirlen = slash ? (int)(slash - bin) : 1;
    snprintf(out, n, "%.*s/tools/docpipe-embedserver", dirlen, slash ? bin : ".");
}
