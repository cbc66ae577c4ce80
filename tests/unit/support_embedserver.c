/* support_embedserver: shared by the embedding-server tests (see header). */
#include "support_embedserver.h"

#include <criterion/criterion.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

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

pid_t embedserver_spawn(const char *const *args, const char *const *env, char *url,
                        size_t urllen)
{
    char path[4096];
    embedserver_path(path, sizeof(path));
    cr_assert(access(path, X_OK) == 0,
              "no executable at %s (build the docpipe-embedserver target)", path);

    const char *argv[32] = {path, "--port", "0", "--quiet"};
    int argc = 4;
    for (; args && *args; args++)
        argv[argc++] = *args;
    argv[argc] = NULL;

    size_t nenv = 0, nextra = 0;
    while (environ[nenv])
        nenv++;
    while (env && env[nextra])
        nextra++;
    char **envp = calloc(nenv + nextra + 1, sizeof(char *));
    cr_assert(envp);
    memcpy(envp, environ, nenv * sizeof(char *));
    if (nextra)
        memcpy(envp + nenv, env, nextra * sizeof(char *));

    int out[2];
    cr_assert(pipe(out) == 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a crashed test */
        dup2(out[1], STDOUT_FILENO);
        close(out[0]);
        close(out[1]);
        execve(path, (char *const *)argv, envp);
        _exit(127);
    }
    free(envp);
    close(out[1]);

    /* The first stdout line is "listening on 127.0.0.1:PORT". */
    char line[128];
    size_t len = 0;
    struct pollfd pfd = {.fd = out[0], .events = POLLIN};
    while (len < sizeof(line) - 1 && !memchr(line, '\n', len)) {
        cr_assert(poll(&pfd, 1, 10000) == 1, "server printed nothing in 10 s");
        ssize_t n = read(out[0], line + len, sizeof(line) - 1 - len);
        cr_assert(n > 0, "server exited before listening");
        len += (size_t)n;
    }
    line[len] = '\0';
    close(out[0]);
    unsigned port = 0;
    cr_assert(sscanf(line, "listening on 127.0.0.1:%u", &port) == 1, "got '%s'", line);
    snprintf(url, urllen, "http://127.0.0.1:%u", port);
    return pid;
}
