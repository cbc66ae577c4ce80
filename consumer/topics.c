/* topics: idempotent topic creation, with the replication factor and topic
 * configs of a dp_topic_spec (see topics.h). */
#include "topics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A client for admin requests to brokers, with cfg's Kafka settings if cfg
 * is given. */
static dp_err admin_client(const char *brokers, const dp_config *cfg, rd_kafka_t **out,
                           char *err, size_t errlen)
{
    char kerr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, kerr,
                          sizeof(kerr)) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "%s", kerr);
    }
    if (cfg) {
        dp_err e = dp_config_apply_kafka(cfg, conf, 1, err, errlen);
        if (e) {
            rd_kafka_conf_destroy(conf);
            return e;
        }
    }
    *out = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof(kerr));
    if (!*out)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "admin client: %s", kerr);
    return DP_OK;
}

/* Applies spec's configs ("k=v,k=v") to nt: an error names the pair. */
static dp_err set_configs(rd_kafka_NewTopic_t *nt, const char *configs,
                          char *err, size_t errlen)
{
    if (!configs || !*configs)
        return DP_OK;
    char *copy = strdup(configs), *save = NULL;
    dp_err e = DP_OK;
    for (char *p = strtok_r(copy, ",", &save); p && !e; p = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(p, '=');
        if (!eq || eq == p) {
            e = dp_errf(DP_ERR_PERMANENT, err, errlen,
                        "topic config '%s' is not name=value", p);
            break;
        }
        *eq = '\0';
        if (rd_kafka_NewTopic_set_config(nt, p, eq + 1))
            e = dp_errf(DP_ERR_PERMANENT, err, errlen, "topic config %s=%s refused",
                        p, eq + 1);
    }
    free(copy);
    return e;
}

dp_err dp_topics_ensure(const dp_config *cfg, const char *const *names,
                        const int *is_dlq, int n, const dp_topic_spec *spec,
                        int *created, char *err, size_t errlen)
{
    char kerr[512];
    if (created)
        *created = 0;
    rd_kafka_NewTopic_t **nt = calloc((size_t)n, sizeof(*nt));
    dp_err e = DP_OK;
    for (int i = 0; i < n && !e; i++) {
        nt[i] = rd_kafka_NewTopic_new(names[i], spec->partitions, spec->replication,
                                      kerr, sizeof(kerr));
        if (!nt[i]) {
            e = dp_errf(DP_ERR_PERMANENT, err, errlen, "topic %s: %s", names[i], kerr);
            break;
        }
        e = set_configs(nt[i], spec->configs, err, errlen);
        if (!e && is_dlq && is_dlq[i] && spec->dlq_retention_ms) {
            char ms[32];
            snprintf(ms, sizeof(ms), "%lld", spec->dlq_retention_ms);
            if (rd_kafka_NewTopic_set_config(nt[i], "retention.ms", ms))
                e = dp_errf(DP_ERR_PERMANENT, err, errlen,
                            "topic %s: retention.ms=%s refused", names[i], ms);
        }
    }
    rd_kafka_t *rk = NULL;
    if (!e)
        e = admin_client(cfg->brokers, cfg, &rk, err, errlen);
    if (e) {
        for (int i = 0; i < n; i++)
            if (nt[i])
                rd_kafka_NewTopic_destroy(nt[i]);
        free(nt);
        return e;
    }
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *opts =
        rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_operation_timeout(opts, 30000, kerr, sizeof(kerr));
    rd_kafka_CreateTopics(rk, nt, (size_t)n, opts, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 60000);
    if (!ev) {
        e = dp_errf(DP_ERR_RETRYABLE, err, errlen,
                    "create topics: no answer from %s", cfg->brokers);
    } else if (rd_kafka_event_error(ev)) {
        e = dp_errf(DP_ERR_RETRYABLE, err, errlen, "create topics: %s",
                    rd_kafka_event_error_string(ev));
    } else {
        const rd_kafka_CreateTopics_result_t *r =
            rd_kafka_event_CreateTopics_result(ev);
        size_t cnt;
        const rd_kafka_topic_result_t **tr =
            rd_kafka_CreateTopics_result_topics(r, &cnt);
        for (size_t i = 0; i < cnt; i++) {
            rd_kafka_resp_err_t te = rd_kafka_topic_result_error(tr[i]);
            if (te == RD_KAFKA_RESP_ERR_NO_ERROR) {
                if (created)
                    (*created)++;
            } else if (te != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS && e == DP_OK) {
                e = dp_errf(DP_ERR_PERMANENT, err, errlen, "create topic %s: %s",
                            rd_kafka_topic_result_name(tr[i]),
                            rd_kafka_topic_result_error_string(tr[i]));
            }
        }
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy_array(nt, (size_t)n);
    free(nt);
    rd_kafka_destroy(rk);
    return e;
}

dp_err dp_topics_delete_prefix(const char *brokers, const char *prefix,
                               int *deleted, char *err, size_t errlen)
{
    char kerr[512];
    if (deleted)
        *deleted = 0;
    if (!prefix || !*prefix)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "refusing an empty prefix");
    rd_kafka_t *rk;
    dp_err ce = admin_client(brokers, NULL, &rk, err, errlen);
    if (ce)
        return ce;
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t me = rd_kafka_metadata(rk, 1, NULL, &md, 10000);
    if (me) {
        rd_kafka_destroy(rk);
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "list topics: %s",
                       rd_kafka_err2str(me));
    }
    size_t plen = strlen(prefix), n = 0;
    rd_kafka_DeleteTopic_t **dt = calloc((size_t)md->topic_cnt + 1, sizeof(*dt));
    for (int i = 0; i < md->topic_cnt; i++)
        if (strncmp(md->topics[i].topic, prefix, plen) == 0)
            dt[n++] = rd_kafka_DeleteTopic_new(md->topics[i].topic);
    rd_kafka_metadata_destroy(md);
    dp_err e = DP_OK;
    if (n) {
        rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
        rd_kafka_AdminOptions_t *opts =
            rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DELETETOPICS);
        rd_kafka_AdminOptions_set_operation_timeout(opts, 30000, kerr, sizeof(kerr));
        rd_kafka_DeleteTopics(rk, dt, n, opts, q);
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 60000);
        if (!ev) {
            e = dp_errf(DP_ERR_RETRYABLE, err, errlen, "delete topics: no answer");
        } else if (rd_kafka_event_error(ev)) {
            e = dp_errf(DP_ERR_RETRYABLE, err, errlen, "delete topics: %s",
                        rd_kafka_event_error_string(ev));
        } else {
            size_t cnt;
            const rd_kafka_topic_result_t **tr = rd_kafka_DeleteTopics_result_topics(
                rd_kafka_event_DeleteTopics_result(ev), &cnt);
            for (size_t i = 0; i < cnt; i++)
                if (rd_kafka_topic_result_error(tr[i]) == RD_KAFKA_RESP_ERR_NO_ERROR &&
                    deleted)
                    (*deleted)++;
        }
        if (ev)
            rd_kafka_event_destroy(ev);
        rd_kafka_AdminOptions_destroy(opts);
        rd_kafka_queue_destroy(q);
        rd_kafka_DeleteTopic_destroy_array(dt, n);
    }
    free(dt);
    rd_kafka_destroy(rk);
    return e;
}
