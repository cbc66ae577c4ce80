/*
 * The settings table: defaults, the config file, the environment on top,
 * librdkafka pass-through properties, and errors that name the setting.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

static void clear_env(void)
{
    unsetenv("DOCPIPE_CONFIG");
    unsetenv("DOCPIPE_BATCH_MAX");
    unsetenv("DOCPIPE_BROKERS");
    unsetenv("DOCPIPE_RETRY_JITTER");
    unsetenv("DOCPIPE_KAFKA_FETCH_MAX_BYTES");
    unsetenv("DOCPIPE_CONSUMER_SESSION_TIMEOUT_MS");
    unsetenv("DOCPIPE_OFFSET_RESET");
    unsetenv("DOCPIPE_CHUNKER_VERSION");
    unsetenv("DOCPIPE_CHUNK_MAX_TOKENS");
    unsetenv("DOCPIPE_CHUNK_OVERLAP_TOKENS");
}

TestSuite(config, .init = clear_env);

static const char *pair(char **list, const char *name)
{
    for (int i = 0; list && list[i]; i += 2)
        if (strcmp(list[i], name) == 0)
            return list[i + 1];
    return NULL;
}

Test(config, test_defaults_are_the_original_systems_numbers)
{
    dp_config c;
    char err[256];
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_eq(c.retry_max, 3);
    cr_assert_eq(c.retry_base_ms, 3000);
    cr_assert_eq(c.breaker_threshold, 5);
    cr_assert_eq(c.breaker_reset_ms, 60000);
    cr_assert_eq(c.embed_dim, 1536);
    cr_assert_eq(c.embed_rpm, 3500);
    cr_assert_eq(c.embed_tpm, 90000);
    cr_assert_geq(c.embed_inflight, 32);
    cr_assert_str_eq(c.offset_reset, "earliest");
    cr_assert(strlen(c.instance_id) > 0, "an instance id is made up");
    dp_config_free(&c);
}

Test(config, test_environment_overrides_the_file_which_overrides_defaults)
{
    char path[] = "/tmp/docpipe-config-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "# a comment\nbatch_max = 250\nbrokers = file:1\n"
               "kafka.fetch.max.bytes = 1000\nconsumer.session.timeout.ms = 7000\n");
    fclose(f);
    setenv("DOCPIPE_CONFIG", path, 1);
    setenv("DOCPIPE_BROKERS", "env:2", 1);
    setenv("DOCPIPE_KAFKA_FETCH_MAX_BYTES", "2000", 1);
    dp_config c;
    char err[256];
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_eq(c.batch_max, 250, "from the file");
    cr_assert_str_eq(c.brokers, "env:2", "the environment wins");
    cr_assert_str_eq(pair(c.kafka_common, "fetch.max.bytes"), "2000");
    cr_assert_str_eq(pair(c.kafka_consumer, "session.timeout.ms"), "7000");
    cr_assert_null(pair(c.kafka_producer, "session.timeout.ms"));
    dp_config_free(&c);
    unlink(path);
}

Test(config, test_bad_values_are_errors_naming_the_setting)
{
    dp_config c;
    char err[256];
    setenv("DOCPIPE_BATCH_MAX", "lots", 1);
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_ERR_PERMANENT);
    cr_assert(strstr(err, "batch_max") && strstr(err, "DOCPIPE_BATCH_MAX"), "%s", err);
    dp_config_free(&c);
    unsetenv("DOCPIPE_BATCH_MAX");
    setenv("DOCPIPE_RETRY_JITTER", "3", 1);
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_ERR_PERMANENT);
    cr_assert(strstr(err, "retry_jitter"), "%s", err);
    dp_config_free(&c);
    unsetenv("DOCPIPE_RETRY_JITTER");
    setenv("DOCPIPE_OFFSET_RESET", "middle", 1);
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_ERR_PERMANENT);
    cr_assert(strstr(err, "offset_reset"), "%s", err);
    dp_config_free(&c);
}

Test(config, chunker_settings_default_to_bounded_chunks_and_refuse_what_no_chunker_does)
{
    dp_config c;
    char err[256];
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_str_eq(c.chunker_version, "markdown-simple@2");
    cr_assert_eq(c.chunk_max_tokens, 512);
    cr_assert_eq(c.chunk_overlap_tokens, 0);
    dp_config_free(&c);
    setenv("DOCPIPE_CHUNKER_VERSION", "markdown-simple@1", 1);
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_str_eq(c.chunker_version, "markdown-simple@1");
    dp_config_free(&c);
    setenv("DOCPIPE_CHUNKER_VERSION", "markdown-simple@3", 1);
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_ERR_PERMANENT);
    cr_assert(strstr(err, "chunker_version") && strstr(err, "markdown-simple@3"), "%s", err);
    dp_config_free(&c);
    unsetenv("DOCPIPE_CHUNKER_VERSION");
    setenv("DOCPIPE_CHUNK_MAX_TOKENS", "9000", 1);
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_ERR_PERMANENT);
    cr_assert(strstr(err, "chunk_max_tokens"), "%s", err);
    dp_config_free(&c);
    setenv("DOCPIPE_CHUNK_MAX_TOKENS", "100", 1);
    setenv("DOCPIPE_CHUNK_OVERLAP_TOKENS", "51", 1);
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_ERR_PERMANENT);
    cr_assert(strstr(err, "chunk_overlap_tokens"), "%s", err);
    dp_config_free(&c);
    setenv("DOCPIPE_CHUNK_OVERLAP_TOKENS", "50", 1);
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_OK, "%s", err);
    dp_config_free(&c);
}

Test(config, test_unknown_kafka_property_is_refused_by_librdkafka)
{
    setenv("DOCPIPE_KAFKA_NO_SUCH_THING", "1", 1);
    dp_config c;
    char err[256];
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_OK);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    cr_assert_eq(dp_config_apply_kafka(&c, conf, 0, err, sizeof(err)), DP_ERR_PERMANENT);
    cr_assert(strstr(err, "no.such.thing"), "%s", err);
    rd_kafka_conf_destroy(conf);
    dp_config_free(&c);
    unsetenv("DOCPIPE_KAFKA_NO_SUCH_THING");
}
