/*
 * support_embedserver: finding the docpipe-embedserver binary and a
 * monotonic clock, shared by the tests that start the server.
 */
#ifndef DP_SUPPORT_EMBEDSERVER_H
#define DP_SUPPORT_EMBEDSERVER_H

#include <stddef.h>

/* DOCPIPE_EMBEDSERVER, else tools/docpipe-embedserver beside DOCPIPE_BIN,
 * else beside this test executable (both live in the build folder). */
void embedserver_path(char *out, size_t n);

/* Seconds on the monotonic clock. */
double test_now_s(void);

#endif
