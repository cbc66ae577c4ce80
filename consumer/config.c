/*
 * config: the settings table and its loaders.
 *
 * Each row names a field of dp_config by offset, so adding a setting is one
 * line here plus the field.  Values are validated when loaded: an integer
 * setting that does not parse, or is out of its range, is an error naming the
 * setting and its source, never a silent default.
 */
#include "config.h"
#include "log.h"
#include "redact.h"

#include <ctype.h>
#include <errno.h>
#include <iconv.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { CT_STR, CT_INT, CT_LONG, CT_DOUBLE } dp_config_type;

typedef struct dp_config_entry {
    const char *name;
    dp_config_type type;
    size_t offset;
    const char *def;
    double min, max;
    const char *help;
} dp_config_entry;

#define F(field) offsetof(dp_config, field)

static const dp_config_entry dp_config_table[] = {
    {"brokers", CT_STR, F(brokers), "127.0.0.1:39092", 0, 0,
     "Kafka bootstrap servers."},
    {"database_url", CT_STR, F(database_url),
     "postgresql://postgres@127.0.0.1:55432/docpipe", 0, 0,
     "PostgreSQL connection string (libpq URI or key=value); a password in it"
     " is shown as `***` in logs and errors."},
    {"instance_id", CT_STR, F(instance_id), "", 0, 0,
     "Name of this process in logs and offset ownership (default host-pid)."},
    {"schema_dir", CT_STR, F(schema_dir), DOCPIPE_SOURCE_DIR "/schemas", 0, 0,
     "Folder holding the Avro schemas (*.avsc) and sql/ migrations."},
    {"storage_dir", CT_STR, F(storage_dir), "./.run/storage", 0, 0,
     "Folder for content-addressed raw and parsed files."},
    {"offset_reset", CT_STR, F(offset_reset), "earliest", 0, 0,
     "Where a partition with no stored offset starts: earliest or latest."},
    {"http_addr", CT_STR, F(http_addr), "", 0, 0,
     "Address (host:port) where `docpipe run` serves /metrics (Prometheus text"
     " format), /livez and /readyz; empty: none (`docpipe run --http ADDR` sets"
     " it too)."},
    {"http_live_ms", CT_INT, F(http_live_ms), "120000", 1000, 86400000,
     "/livez fails once a stage's poll loop has not turned for this long."},
    {"stats_interval_ms", CT_INT, F(stats_interval_ms), "0", 0, 3600000,
     "Interval of librdkafka's statistics, exported as metrics (0: 5000 when"
     " http_addr is set, else off)."},
    {"offset_gap", CT_STR, F(offset_gap), "earliest", 0, 0,
     "When a stored offset is no longer in the log (retention, deleted"
     " records, a recreated topic): earliest resumes at the earliest record"
     " kept, logging and recording the gap (docpipe.dp_offset_gaps); fail"
     " stops the stage with an error."},
    {"log_level", CT_STR, F(log_level), "info", 0, 0,
     "Lowest level logged: debug, info, warn or error."},
    {"topic_prefix", CT_STR, F(topic_prefix), "docpipe.", 0, 0,
     "Prefix of every topic name docpipe creates or reads."},
    {"batch_max", CT_INT, F(batch_max), "0", 0, 100000,
     "Most records in one batch (0: the stage's own default)."},
    {"batch_wait_ms", CT_INT, F(batch_wait_ms), "50", 0, 60000,
     "Longest wait for a batch to fill once its first record arrived."},
    {"retry_max", CT_INT, F(retry_max), "3", 0, 100,
     "Retries of a record that failed retryably before it is dead-lettered."},
    {"retry_base_ms", CT_INT, F(retry_base_ms), "3000", 1, 3600000,
     "First retry delay; retry n waits base * 2^n."},
    {"retry_jitter", CT_DOUBLE, F(retry_jitter), "0.2", 0, 1,
     "Random spread of a retry delay, as a fraction (0.2: +-20%)."},
    {"produce_timeout_ms", CT_INT, F(produce_timeout_ms), "30000", 100, 600000,
     "How long a batch waits for Kafka to acknowledge its outputs."},
    {"lock_timeout_ms", CT_INT, F(lock_timeout_ms), "10000", 100, 600000,
     "How long claiming a partition waits for a previous owner's commit."},
    {"idle_txn_timeout_ms", CT_INT, F(idle_txn_timeout_ms), "300000", 1000, 86400000,
     "PostgreSQL ends a transaction left idle this long (a stalled zombie)."},
    {"pg_plan_cache_mode", CT_STR, F(pg_plan_cache_mode), "auto", 0, 0,
     "PostgreSQL plan_cache_mode of docpipe's sessions: auto, force_custom_plan"
     " (every statement planned at each run: no stale plan, more CPU) or"
     " force_generic_plan."},
    {"pg_replan_ms", CT_INT, F(pg_replan_ms), "1000", 0, 3600000,
     "A stage drops its session's cached plans (DISCARD PLANS) at most this"
     " often, between batches; 0: never. A plan made while a table was nearly"
     " empty scans the whole table per lookup (foreign-key checks included)"
     " until the table is next analyzed; this bounds how long it is kept."},
    {"topic_partitions", CT_INT, F(topic_partitions), "4", 1, 1024,
     "Partitions of each topic created by `docpipe topics`."},
    {"topic_replication", CT_INT, F(topic_replication), "1", 1, 32,
     "Replication factor of each topic created by `docpipe topics` (at most the"
     " number of brokers)."},
    {"topic_configs", CT_STR, F(topic_configs), "", 0, 0,
     "Topic configs given to every topic `docpipe topics` creates, as"
     " comma-separated name=value pairs (e.g. min.insync.replicas=2)."},
    {"dlq_retention_ms", CT_LONG, F(dlq_retention_ms), "0", -1, 1e15,
     "retention.ms of the dead-letter topics `docpipe topics` creates; 0: the"
     " broker's default, -1: kept forever."},
    {"gc_event_retention", CT_STR, F(gc_event_retention), "30 days", 0, 0,
     "How long `docpipe gc` keeps documents' events (a PostgreSQL interval:"
     " \"30 days\", \"12h\")."},
    {"gc_dlq_retention", CT_STR, F(gc_dlq_retention), "30 days", 0, 0,
     "How long `docpipe gc` keeps a dead letter after it was resolved"
     " (redriven); unresolved ones always stay."},
    {"gc_file_grace", CT_STR, F(gc_file_grace), "1 day", 0, 0,
     "Age below which `docpipe gc` keeps a stored file no row refers to, or a"
     " temporary one: longer than an upload can wait for intake."},
    {"gc_attempt_retention", CT_STR, F(gc_attempt_retention), "14 days", 0, 0,
     "Age below which `docpipe gc` keeps a committed attempt's row even once"
     " every stage has read its records: a replay back over this window still"
     " finds them committed (a replay reading a record whose row is gone skips"
     " it). At least the topics' retention.ms plus segment.ms (Kafka's"
     " defaults: 7 + 7 days)."},
    {"db_connect_timeout_ms", CT_INT, F(db_connect_timeout_ms), "60000", 0, 3600000,
     "How long connecting to PostgreSQL at start keeps retrying (capped"
     " exponential backoff) before it fails; 0: one attempt."},
    {"demo_publish", CT_INT, F(demo_publish), "1", 0, 1,
     "Demo stage: 1 publishes each record to demo.out; 0 only writes its row."},
    {"embed_url", CT_STR, F(embed_url), "http://127.0.0.1:39980", 0, 0,
     "Base URL of the OpenAI-compatible embedding service."},
    {"embed_model", CT_STR, F(embed_model), "text-embedding-3-small", 0, 0,
     "Embedding model name."},
    {"embed_api_key", CT_STR, F(embed_api_key), "", 0, 0,
     "Bearer token for the embedding service (env DOCPIPE_EMBED_API_KEY); shown"
     " as `***` in logs and errors."},
    {"embed_encoding", CT_STR, F(embed_encoding), "base64", 0, 0,
     "encoding_format asked of the service: base64 (float32, compact) or float."},
    {"embed_dim", CT_INT, F(embed_dim), "1536", 1, 65536,
     "Expected embedding dimension; other sizes are rejected."},
    {"embed_inflight", CT_INT, F(embed_inflight), "128", 1, 1024,
     "Embedding requests kept in flight by one embed instance."},
    {"embed_rpm", CT_INT, F(embed_rpm), "3500", 1, 100000000,
     "Client-side limit of embedding requests per minute."},
    {"embed_tpm", CT_INT, F(embed_tpm), "90000", 1, 1000000000,
     "Client-side limit of estimated embedding tokens per minute."},
    {"embed_rate_scope", CT_STR, F(embed_rate_scope), "shared", 0, 0,
     "Who embed_rpm and embed_tpm bound together: shared (every embed instance and"
     " `docpipe search` calling the same embed_url, embed_model and API key, through"
     " PostgreSQL; each process alone while PostgreSQL does not answer) or process"
     " (each process by itself)."},
    {"embed_timeout_ms", CT_INT, F(embed_timeout_ms), "60000", 100, 600000,
     "Timeout of one embedding request."},
    {"embed_buffer_kb", CT_INT, F(embed_buffer_kb), "2048", 64, 1048576,
     "Most reply bytes one embed instance holds at once (KB); further replies wait,"
     " unread, until earlier ones are stored. Bounds memory whatever embed_inflight"
     " and embed_encoding are."},
    {"embed_pass_ms", CT_INT, F(embed_pass_ms), "60000", 100, 3600000,
     "Longest time one embed pass sends requests (then the rest of its batch waits"
     " for the next pass); also at most a quarter of max.poll.interval.ms and of"
     " idle_txn_timeout_ms, whichever is less."},
    {"embed_window_tokens", CT_INT, F(embed_window_tokens), "0", -1, 1000000000,
     "Most estimated tokens of one document's embedding batches released and not"
     " yet embedded (at least one batch); further ones are released as these are"
     " gathered, so documents share the rate limit fairly. 0: ten seconds of"
     " embed_tpm (15000 at its default); -1: all at once."},
    {"tika_url", CT_STR, F(tika_url), "http://127.0.0.1:39998", 0, 0,
     "Base URL of the Apache Tika server used by the parse stage."},
    {"tika_timeout_ms", CT_INT, F(tika_timeout_ms), "120000", 100, 600000,
     "Timeout of one parse request."},
    {"tika_concurrency", CT_INT, F(tika_concurrency), "4", 1, 64,
     "Parse requests one parse instance keeps in flight to Tika at once."},
    {"parse_pass_ms", CT_INT, F(parse_pass_ms), "60000", 100, 3600000,
     "How long a parse pass keeps starting Tika calls; documents not sent by"
     " then wait for the next pass (no retry spent). Requests in flight finish."
     " Capped so a pass stays under idle_txn_timeout_ms and the consumer's"
     " max.poll.interval.ms."},
    {"text_fallback_charset", CT_STR, F(text_fallback_charset), "WINDOWS-1252", 0, 0,
     "8-bit charset (an iconv name) of a text or markdown file that has no"
     " byte order mark and is not UTF-8. WINDOWS-1252 reads ISO-8859-1 (latin1)"
     " text the same, apart from the rarely used C1 controls 0x80-0x9F, which it"
     " reads as the curly quotes and dashes Windows editors write there."},
    {"breaker_threshold", CT_INT, F(breaker_threshold), "5", 1, 1000,
     "Consecutive failures that open a service's circuit breaker."},
    {"breaker_reset_ms", CT_INT, F(breaker_reset_ms), "60000", 10, 3600000,
     "Time an open breaker waits before a half-open probe."},
    {"chunker_version", CT_STR, F(chunker_version), "markdown-simple@2", 0, 0,
     "Chunker of new jobs, recorded by intake in the job (chunks_version) so"
     " replays and retries chunk alike: markdown-simple@2 (chunks of at most"
     " chunk_max_tokens estimated tokens) or markdown-simple@1 (the original's,"
     " unbounded: a long line is one chunk, which a real embedding service may"
     " refuse)."},
    {"chunk_max_tokens", CT_INT, F(chunk_max_tokens), "512", 32, 8191,
     "markdown-simple@2: most estimated tokens per chunk (an upper bound of"
     " cl100k's count on ordinary text; at most 1638 also bounds any bytes"
     " under 8191 real tokens). Recorded with the job's chunker version."},
    {"chunk_overlap_tokens", CT_INT, F(chunk_overlap_tokens), "0", 0, 4095,
     "markdown-simple@2: estimated tokens of a chunk cut inside a paragraph"
     " repeated at the start of the next one; at most chunk_max_tokens / 2."},
};

#define DP_CONFIG_N (sizeof(dp_config_table) / sizeof(dp_config_table[0]))

static void env_name(const char *name, char *out, size_t outlen)
{
    size_t n = (size_t)snprintf(out, outlen, "DOCPIPE_");
    for (const char *p = name; *p && n + 1 < outlen; p++)
        out[n++] = (char)toupper((unsigned char)*p);
    out[n] = '\0';
}

static dp_err set_value(dp_config *cfg, const dp_config_entry *e,
                        const char *value, const char *source,
                        char *err, size_t errlen)
{
    char *field = (char *)cfg + e->offset;
    char *end;
    switch (e->type) {
    case CT_STR: {
        char **s = (char **)field;
        free(*s);
        *s = strdup(value);
        return DP_OK;
    }
    case CT_INT: {
        errno = 0;
        long v = strtol(value, &end, 10);
        if (errno || end == value || *end || v < e->min || v > e->max)
            return dp_errf(DP_ERR_PERMANENT, err, errlen,
                           "setting %s from %s: '%s' is not a whole number "
                           "from %.0f to %.0f", e->name, source, value,
                           e->min, e->max);
        *(int *)field = (int)v;
        return DP_OK;
    }
    case CT_LONG: {
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end || v < e->min || v > e->max)
            return dp_errf(DP_ERR_PERMANENT, err, errlen,
                           "setting %s from %s: '%s' is not a whole number "
                           "from %.0f to %.0f", e->name, source, value,
                           e->min, e->max);
        *(long long *)field = v;
        return DP_OK;
    }
    case CT_DOUBLE: {
        errno = 0;
        double v = strtod(value, &end);
        /* Written as "inside the range", not "outside it": strtod reads
         * "nan", and a NaN compares false with both ends, so
         * "retry_jitter = nan" was accepted (tests/fuzz/regressions/config). */
        if (errno || end == value || *end || !(v >= e->min && v <= e->max))
            return dp_errf(DP_ERR_PERMANENT, err, errlen,
                           "setting %s from %s: '%s' is not a number from "
                           "%g to %g", e->name, source, value, e->min, e->max);
        *(double *)field = v;
        return DP_OK;
    }
    }
    return DP_OK;
}

/* Appends name=value to a NULL-terminated pair list, replacing a previous
 * value of the same name (so the environment overrides the file). */
static void pairs_set(char ***list, const char *name, const char *value)
{
    size_t n = 0;
    if (*list) {
        for (; (*list)[n]; n += 2) {
            if (strcmp((*list)[n], name) == 0) {
                free((*list)[n + 1]);
                (*list)[n + 1] = strdup(value);
                return;
            }
        }
    }
    *list = realloc(*list, (n + 3) * sizeof(char *));
    (*list)[n] = strdup(name);
    (*list)[n + 1] = strdup(value);
    (*list)[n + 2] = NULL;
}

static void pairs_free(char **list)
{
    if (!list)
        return;
    for (size_t i = 0; list[i]; i++)
        free(list[i]);
    free(list);
}

/* kafka.fetch.max.bytes -> (common, "fetch.max.bytes"); returns 0 if the key
 * is not a pass-through key. */
static int passthrough_key(dp_config *cfg, const char *key, char ****list,
                           const char **prop)
{
    static const struct { const char *prefix; size_t off; } kinds[] = {
        {"kafka.", offsetof(dp_config, kafka_common)},
        {"consumer.", offsetof(dp_config, kafka_consumer)},
        {"producer.", offsetof(dp_config, kafka_producer)},
    };
    for (size_t i = 0; i < 3; i++) {
        size_t len = strlen(kinds[i].prefix);
        if (strncmp(key, kinds[i].prefix, len) == 0 && key[len]) {
            *list = (char ***)((char *)cfg + kinds[i].off);
            *prop = key + len;
            return 1;
        }
    }
    return 0;
}

static const dp_config_entry *find_entry(const char *name)
{
    for (size_t i = 0; i < DP_CONFIG_N; i++)
        if (strcmp(dp_config_table[i].name, name) == 0)
            return &dp_config_table[i];
    return NULL;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static dp_err load_file(dp_config *cfg, const char *path, char *err,
                        size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "config file %s: %s", path, strerror(errno));
    char line[4096];
    int lineno = 0;
    dp_err rc = DP_OK;
    while (rc == DP_OK && fgets(line, sizeof(line), f)) {
        lineno++;
        char *s = trim(line);
        if (!*s || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = dp_errf(DP_ERR_PERMANENT, err, errlen,
                         "config file %s:%d: expected name = value", path,
                         lineno);
            break;
        }
        *eq = '\0';
        char *key = trim(s), *value = trim(eq + 1);
        char source[600];
        snprintf(source, sizeof(source), "%s:%d", path, lineno);
        char ***list;
        const char *prop;
        const dp_config_entry *e = find_entry(key);
        if (e)
            rc = set_value(cfg, e, value, source, err, errlen);
        else if (passthrough_key(cfg, key, &list, &prop))
            pairs_set(list, prop, value);
        else
            rc = dp_errf(DP_ERR_PERMANENT, err, errlen,
                         "config file %s: unknown setting '%s'", source, key);
    }
    fclose(f);
    return rc;
}

/* DOCPIPE_KAFKA_FETCH_MAX_BYTES -> fetch.max.bytes */
static void env_to_property(const char *env, char *out, size_t outlen)
{
    size_t n = 0;
    for (; *env && n + 1 < outlen; env++)
        out[n++] = *env == '_' ? '.' : (char)tolower((unsigned char)*env);
    out[n] = '\0';
}

extern char **environ;

/* The settings that hold secrets, registered with redact.h so that no log
 * line or error value shows them: the API key itself, the password in any
 * URL setting (database_url's above all), and every pass-through Kafka
 * property whose name says it is a secret (sasl.password ...). */
static void register_secrets(const dp_config *cfg)
{
    /* What is shown anyway is no secret: a password "docpipe" beside a
     * database and topics named docpipe is left as it is. */
    char pub[4096], u1[1024], u2[1024], u3[1024];
    snprintf(pub, sizeof(pub), "docpipe %s %s %s %s %s %s", cfg->topic_prefix,
             dp_redact_url(cfg->database_url, u1, sizeof(u1)),
             dp_redact_url(cfg->embed_url, u2, sizeof(u2)),
             dp_redact_url(cfg->tika_url, u3, sizeof(u3)), cfg->brokers, cfg->embed_model);
    dp_redact_set_public(pub);
    dp_redact_add(cfg->embed_api_key);
    const char *urls[] = {cfg->database_url, cfg->embed_url, cfg->tika_url, cfg->brokers};
    for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++)
        dp_redact_add_url(urls[i]);
    char **lists[] = {cfg->kafka_common, cfg->kafka_consumer, cfg->kafka_producer};
    for (size_t l = 0; l < 3; l++)
        for (char **p = lists[l]; p && *p; p += 2)
            if (dp_redact_is_secret_name(p[0]))
                dp_redact_add(p[1]);
}

dp_err dp_config_load(dp_config *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    dp_err rc;
    for (size_t i = 0; i < DP_CONFIG_N; i++) {
        rc = set_value(cfg, &dp_config_table[i], dp_config_table[i].def,
                       "default", err, errlen);
        if (rc != DP_OK)
            return rc;
    }
    const char *file = getenv("DOCPIPE_CONFIG");
    if (file && *file && (rc = load_file(cfg, file, err, errlen)) != DP_OK)
        return rc;
    for (size_t i = 0; i < DP_CONFIG_N; i++) {
        char name[128];
        env_name(dp_config_table[i].name, name, sizeof(name));
        const char *v = getenv(name);
        if (v && (rc = set_value(cfg, &dp_config_table[i], v, name, err,
                                 errlen)) != DP_OK)
            return rc;
    }
    static const struct { const char *prefix; const char *file_prefix; } pt[] = {
        {"DOCPIPE_KAFKA_", "kafka."},
        {"DOCPIPE_CONSUMER_", "consumer."},
        {"DOCPIPE_PRODUCER_", "producer."},
    };
    for (char **e = environ; *e; e++) {
        for (size_t k = 0; k < 3; k++) {
            size_t plen = strlen(pt[k].prefix);
            if (strncmp(*e, pt[k].prefix, plen) != 0)
                continue;
            const char *eq = strchr(*e, '=');
            if (!eq || eq == *e + plen)
                continue;
            char envkey[256], prop[256], key[300];
            size_t klen = (size_t)(eq - (*e + plen));
            if (klen >= sizeof(envkey))
                continue;
            memcpy(envkey, *e + plen, klen);
            envkey[klen] = '\0';
            env_to_property(envkey, prop, sizeof(prop));
            snprintf(key, sizeof(key), "%s%s", pt[k].file_prefix, prop);
            char ***list;
            const char *p;
            if (passthrough_key(cfg, key, &list, &p))
                pairs_set(list, p, eq + 1);
        }
    }
    if (strcmp(cfg->offset_gap, "earliest") && strcmp(cfg->offset_gap, "fail"))
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "setting offset_gap: '%s' is neither earliest nor fail",
                       cfg->offset_gap);
    if (strcmp(cfg->offset_reset, "earliest") && strcmp(cfg->offset_reset, "latest"))
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "setting offset_reset: '%s' is neither earliest nor "
                       "latest", cfg->offset_reset);
    if (strcmp(cfg->pg_plan_cache_mode, "force_custom_plan") &&
        strcmp(cfg->pg_plan_cache_mode, "auto") &&
        strcmp(cfg->pg_plan_cache_mode, "force_generic_plan"))
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "setting pg_plan_cache_mode: '%s' is not force_custom_plan, auto"
                       " or force_generic_plan", cfg->pg_plan_cache_mode);
    if (strcmp(cfg->chunker_version, "markdown-simple@1") &&
        strcmp(cfg->chunker_version, "markdown-simple@2"))
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "setting chunker_version: '%s' is neither markdown-simple@2"
                       " nor markdown-simple@1", cfg->chunker_version);
    if (cfg->chunk_overlap_tokens > cfg->chunk_max_tokens / 2)
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "setting chunk_overlap_tokens: %d is over half of"
                       " chunk_max_tokens (%d)", cfg->chunk_overlap_tokens,
                       cfg->chunk_max_tokens);
    if (strcmp(cfg->embed_encoding, "float") && strcmp(cfg->embed_encoding, "base64"))
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "setting embed_encoding: '%s' is neither float nor base64",
                       cfg->embed_encoding);
    if (strcmp(cfg->embed_rate_scope, "shared") && strcmp(cfg->embed_rate_scope, "process"))
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "setting embed_rate_scope: '%s' is neither shared nor process",
                       cfg->embed_rate_scope);
    iconv_t cd = iconv_open("UTF-8", cfg->text_fallback_charset);
    if (cd == (iconv_t)-1)
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "setting text_fallback_charset: '%s' is not a charset iconv"
                       " knows (iconv --list names them)", cfg->text_fallback_charset);
    iconv_close(cd);
    register_secrets(cfg);
    if (!*cfg->instance_id) {
        char host[128] = "docpipe";
        gethostname(host, sizeof(host) - 1);
        char id[200];
        snprintf(id, sizeof(id), "%s-%d", host, (int)getpid());
        free(cfg->instance_id);
        cfg->instance_id = strdup(id);
    }
    return DP_OK;
}

void dp_config_free(dp_config *cfg)
{
    for (size_t i = 0; i < DP_CONFIG_N; i++) {
        if (dp_config_table[i].type == CT_STR) {
            char **s = (char **)((char *)cfg + dp_config_table[i].offset);
            free(*s);
            *s = NULL;
        }
    }
    pairs_free(cfg->kafka_common);
    pairs_free(cfg->kafka_consumer);
    pairs_free(cfg->kafka_producer);
    memset(cfg, 0, sizeof(*cfg));
}

/* librdkafka's own log lines as docpipe's JSON lines (so redacted, like
 * every line: redact.h): its errors as errors, warnings as warnings, the
 * rest and its configuration warnings as debug.  A client that wants
 * another callback sets it after dp_config_apply_kafka(). */
static void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac,
                         const char *buf)
{
    (void)rk;
    dp_log(strcmp(fac, "CONFWARN") == 0 ? DP_LOG_DEBUG
           : level <= 3 ? DP_LOG_ERROR : level <= 4 ? DP_LOG_WARN : DP_LOG_DEBUG,
           NULL, "kafka %s: %s", fac, buf);
}

dp_err dp_config_apply_kafka(const dp_config *cfg, rd_kafka_conf_t *conf,
                             int is_producer, char *err, size_t errlen)
{
    rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
    char **lists[2] = {cfg->kafka_common,
                       is_producer ? cfg->kafka_producer : cfg->kafka_consumer};
    for (int l = 0; l < 2; l++) {
        for (char **p = lists[l]; p && *p; p += 2) {
            char kerr[256];
            if (rd_kafka_conf_set(conf, p[0], p[1], kerr, sizeof(kerr)) !=
                RD_KAFKA_CONF_OK)
                return dp_errf(DP_ERR_PERMANENT, err, errlen,
                               "Kafka property %s=%s: %s", p[0],
                               dp_redact_is_secret_name(p[0]) ? DP_REDACT_MASK : p[1],
                               kerr);
        }
    }
    return DP_OK;
}

void dp_config_print_help(FILE *out)
{
    fprintf(out, "Settings (environment variable, default):\n");
    for (size_t i = 0; i < DP_CONFIG_N; i++) {
        char name[128];
        env_name(dp_config_table[i].name, name, sizeof(name));
        fprintf(out, "  %-28s %s\n  %-28s   default: %s\n", name,
                dp_config_table[i].help, "",
                *dp_config_table[i].def ? dp_config_table[i].def : "(empty)");
    }
    fprintf(out, "  DOCPIPE_KAFKA_<PROPERTY>     any librdkafka property for "
                 "every client\n"
                 "  DOCPIPE_CONSUMER_<PROPERTY>  ... for consumers only\n"
                 "  DOCPIPE_PRODUCER_<PROPERTY>  ... for producers only\n"
                 "  DOCPIPE_CONFIG               a file of `name = value` "
                 "lines read before the environment\n");
}

void dp_config_print_markdown(FILE *out)
{
    fprintf(out, "# docpipe configuration\n\n"
                 "Generated by `docpipe config-doc` from the settings table "
                 "in `consumer/config.c`.\n\n"
                 "Precedence: default < file named by `DOCPIPE_CONFIG` "
                 "(`name = value` lines) < environment.\n\n"
                 "| setting (file) | environment | default | meaning |\n"
                 "|---|---|---|---|\n");
    for (size_t i = 0; i < DP_CONFIG_N; i++) {
        char name[128];
        env_name(dp_config_table[i].name, name, sizeof(name));
        const char *def = dp_config_table[i].def;
        if (strncmp(def, DOCPIPE_SOURCE_DIR, strlen(DOCPIPE_SOURCE_DIR)) == 0)
            def = "<source>/schemas";
        fprintf(out, "| `%s` | `%s` | `%s` | %s |\n", dp_config_table[i].name,
                name, def, dp_config_table[i].help);
    }
    fprintf(out, "\nlibrdkafka properties pass through: `DOCPIPE_KAFKA_<PROPERTY>` "
                 "(dots as underscores, e.g. `DOCPIPE_KAFKA_FETCH_MAX_BYTES`) for "
                 "every Kafka client, `DOCPIPE_CONSUMER_…` and `DOCPIPE_PRODUCER_…` "
                 "for one kind; in the file `kafka.<property>`, "
                 "`consumer.<property>`, `producer.<property>`.\n");
    fprintf(out, "\nThey override what a stage sets by default. Consumer: "
                 "`partition.assignment.strategy=range`, "
                 "`isolation.level=read_committed`, `enable.auto.commit=false`, and a "
                 "small prefetch (`queued.max.messages.kbytes=256`, "
                 "`fetch.max.bytes=1048576`, `max.partition.fetch.bytes=262144`) that "
                 "the runtime keeps refilled, and `fetch.wait.max.ms=100` (see "
                 "docs/benchmarks.md). Producer: "
                 "`enable.idempotence=true`, `acks=all`, `linger.ms=5`. "
                 "`MALLOC_ARENA_MAX` (default 2 in `docpipe`) bounds glibc's heaps.\n");
}
