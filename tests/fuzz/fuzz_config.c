/*
 * fuzz_config: the DOCPIPE_CONFIG file parser (consumer/config.c), through
 * dp_config_load as the docpipe command calls it.
 *
 * Input: the whole file.  It is written into a memory file that
 * DOCPIPE_CONFIG names (/proc/self/fd/N), so no disk is touched; every
 * DOCPIPE_* variable is removed first, so only the file and the defaults
 * count.
 *
 * What must hold, besides no crash, leak or undefined behaviour
 * (config.h): the outcome is DP_OK, or DP_ERR_PERMANENT with a message;
 * after DP_OK every string setting is set and every number is within the
 * range its setting allows; the pass-through Kafka properties are
 * name/value pairs.  dp_config_free releases everything, after a failure
 * too.
 */
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "support_fuzz.h"

extern char **environ;
static int fd = -1;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    for (int again = 1; again;) {
        again = 0;
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "DOCPIPE_", 8) == 0 && strchr(*e, '=')) {
                char name[512];
                snprintf(name, sizeof(name), "%.*s", (int)(strchr(*e, '=') - *e), *e);
                unsetenv(name);
                again = 1;
                break;
            }
        }
    }
    fd = memfd_create("docpipe-config", 0);
    FUZZ_CHECK(fd >= 0, "memfd_create");
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    setenv("DOCPIPE_CONFIG", path, 1);
    return 0;
}

static void check_pairs(char **list)
{
    size_t n = 0;
    while (list && list[n])
        n++;
    FUZZ_CHECK(n % 2 == 0, "pass-through list of odd length");
}

#define IN(v, lo, hi) ((v) >= (lo) && (v) <= (hi))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FUZZ_CHECK(ftruncate(fd, 0) == 0, "ftruncate");
    FUZZ_CHECK(pwrite(fd, data, size, 0) == (ssize_t)size, "pwrite");

    dp_config cfg;
    char err[512] = "";
    dp_err rc = dp_config_load(&cfg, err, sizeof(err));
    FUZZ_CHECK(rc == DP_OK || rc == DP_ERR_PERMANENT, "neither ok nor permanent");
    if (rc == DP_OK) {
        FUZZ_CHECK(cfg.brokers && cfg.database_url && cfg.instance_id && *cfg.instance_id &&
                       cfg.schema_dir && cfg.storage_dir && cfg.log_level &&
                       cfg.topic_prefix && cfg.embed_url && cfg.embed_model &&
                       cfg.embed_api_key && cfg.tika_url,
                   "a string setting is missing");
        FUZZ_CHECK(!strcmp(cfg.offset_reset, "earliest") || !strcmp(cfg.offset_reset, "latest"),
                   "offset_reset");
        FUZZ_CHECK(!strcmp(cfg.embed_encoding, "float") || !strcmp(cfg.embed_encoding, "base64"),
                   "embed_encoding");
        FUZZ_CHECK(IN(cfg.retry_jitter, 0.0, 1.0), "retry_jitter out of [0, 1]");
        FUZZ_CHECK(IN(cfg.batch_max, 0, 100000) && IN(cfg.retry_base_ms, 1, 3600000) &&
                       IN(cfg.topic_partitions, 1, 1024) && IN(cfg.embed_dim, 1, 65536) &&
                       IN(cfg.embed_inflight, 1, 1024) && IN(cfg.embed_buffer_kb, 64, 1048576) &&
                       IN(cfg.breaker_threshold, 1, 1000) && IN(cfg.demo_publish, 0, 1),
                   "a number out of its range");
        check_pairs(cfg.kafka_common);
        check_pairs(cfg.kafka_consumer);
        check_pairs(cfg.kafka_producer);
    } else {
        FUZZ_CHECK(err[0], "failed without a message");
    }
    dp_config_free(&cfg);
    return 0;
}
