/* topics: idempotent topic creation, with the replication factor and topic
 * configs of a dp_topic_spec (see topics.h). */
#include "topics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the admin client's error callback saw: a broker that refused the
 * credentials (SASL) fails the request at once with librdkafka's reason,
 * instead of the request timing out a minute later. */
typedef struct admin_state {
    int auth_failed;
    char reason[512];
} admin_state;

static void admin_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    admin_state *st = opaque;
    if (err == RD_KAFKA_RESP_ERR__AUTHENTICATION && !st->auth_failed) {
        snprintf(st->reason, sizeof(st->reason), "%s", reason);
        st->auth_failed = 1;
    }
}

/* A client for admin requests to brokers, with cfg's Kafka settings if cfg
 * is given. */
static dp_err admin_client(const char *brokers, const dp_config *cfg, admin_state *st,
                           rd_kafka_t **out, char *err, size_t errlen)
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
    memset(st, 0, sizeof(*st));
    rd_kafka_conf_set_error_cb(conf, admin_error_cb);
    rd_kafka_conf_set_opaque(conf, st);
    *out = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof(kerr));
    if (!*out)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "admin client: %s", kerr);
    return DP_OK;
}

/* The admin request's result from q, waiting up to timeout_ms; NULL when
 * none came or the brokers refused the credentials (st says which). */
static rd_kafka_event_t *admin_wait(rd_kafka_t *rk, rd_kafka_queue_t *q, admin_state *st,
                                    int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 200) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 200);
        if (ev)
            return ev;
        rd_kafka_poll(rk, 0); /* serves admin_error_cb */
        if (st->auth_failed)
            return NULL;
    }
    return NULL;
}

static dp_err admin_no_answer(const admin_state *st, const char *what, const char *brokers,
                              char *err, size_t errlen)
{
    if (st->auth_failed)
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "%s: Kafka at %s refused the credentials (check"
                       " DOCPIPE_KAFKA_SECURITY_PROTOCOL, _SASL_MECHANISM, _SASL_USERNAME"
                       " and _SASL_PASSWORD): %s", what, brokers, st->reason);
    return dp_errf(DP_ERR_RETRYABLE, err, errlen, "%s: no answer from %s", what, brokers);
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
    admin_state st;
    if (!e)
        e = admin_client(cfg->brokers, cfg, &st, &rk, err, errlen);
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
    rd_kafka_event_t *ev = admin_wait(rk, q, &st, 60000);
    if (!ev) {
        e = admin_no_answer(&st, "create topics", cfg->brokers, err, errlen);
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
    admin_state st;
    dp_err ce = admin_client(brokers, NULL, &st, &rk, err, errlen);
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
        rd_kafka_event_t *ev = admin_wait(rk, q, &st, 60000);
        if (!ev) {
            e = admin_no_answer(&st, "delete topics", brokers, err, errlen);
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
