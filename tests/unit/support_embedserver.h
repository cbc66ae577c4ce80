/*
 * support_embedserver: finding and starting the docpipe-embedserver binary,
 * and a monotonic clock, shared by the tests that start the server.
 */
#ifndef DP_SUPPORT_EMBEDSERVER_H
#define DP_SUPPORT_EMBEDSERVER_H

#include <stddef.h>
#include <sys/types.h>

/* DOCPIPE_EMBEDSERVER, else tools/docpipe-embedserver beside DOCPIPE_BIN,
 * else beside this test executable (both live in the build folder). */
void embedserver_path(char *out, size_t n);

/* Starts docpipe-embedserver --port 0 --quiet with args ("--flag", "value";
 * NULL-terminated, may be NULL) and env ("NAME=value" added to ours; may be
 * NULL), killed if the test dies; waits for its "listening on" line and
 * writes its base URL (http://127.0.0.1:PORT).  Returns its pid. */
pid_t embedserver_spawn(const char *const *args, const char *const *env, char *url,
                        size_t urllen);

/* Seconds on the monotonic clock. */
double test_now_s(void);

#endif
