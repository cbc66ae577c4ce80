/* publish: confirmed deliveries and the re-sending publisher (see publish.h). */
#include "publish.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

typedef struct pub_item {
    struct pub_item *next;
    char *topic;
    void *key;
    size_t key_len;
    void *value;
    size_t value_len;
    char *hnames[DP_PUBLISHER_MAX_HEADERS], *hvalues[DP_PUBLISHER_MAX_HEADERS];
    int nh;
} pub_item;

struct dp_publisher {
    rd_kafka_t *rk;
    pub_item *resend, **resend_tail; /* reported delivered without an offset */
    dp_publish_stats st;
    char last_error[256];
};

static void item_free(pub_item *it)
{
    free(it->topic);
    free(it->key);
    free(it->value);
    for (int i = 0; i < it->nh; i++) {
        free(it->hnames[i]);
        free(it->hvalues[i]);
    }
    free(it);
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    dp_publisher *p = opaque;
    pub_item *it = m->_private;
    if (dp_delivery_confirmed(m)) {
        p->st.confirmed++;
        item_free(it);
    } else if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        p->st.unconfirmed++;
        it->next = NULL;
        *p->resend_tail = it;
        p->resend_tail = &it->next;
    } else {
        p->st.failed++;
        snprintf(p->last_error, sizeof(p->last_error), "%s", rd_kafka_err2str(m->err));
        item_free(it);
    }
}

rd_kafka_conf_t *dp_publisher_conf(const dp_config *cfg, const char *linger_ms,
                                   const char *partitioner, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *set[][2] = {{"bootstrap.servers", cfg->brokers},
                            {"enable.idempotence", "true"},
                            {"linger.ms", linger_ms},
                            {"partitioner", partitioner}};
    for (size_t i = 0; i < sizeof(set) / sizeof(set[0]); i++) {
        if (set[i][1] && rd_kafka_conf_set(conf, set[i][0], set[i][1], err, errlen) !=
                             RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    }
    if (dp_config_apply_kafka(cfg, conf, 1, err, errlen)) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    return conf;
}

dp_publisher *dp_publisher_new(rd_kafka_conf_t *conf, char *err, size_t errlen)
{
    dp_publisher *p = calloc(1, sizeof(*p));
    p->resend_tail = &p->resend;
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rd_kafka_conf_set_opaque(conf, p);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, errlen);
    if (!p->rk) {
        rd_kafka_conf_destroy(conf);
        free(p);
        return NULL;
    }
    return p;
}

/* Hands the item to librdkafka, which reads its buffers until the report. */
static rd_kafka_resp_err_t produce_item(dp_publisher *p, pub_item *it)
{
    rd_kafka_headers_t *h = NULL;
    if (it->nh) {
        h = rd_kafka_headers_new((size_t)it->nh);
        for (int i = 0; i < it->nh; i++)
            rd_kafka_header_add(h, it->hnames[i], -1, it->hvalues[i], -1);
    }
    rd_kafka_resp_err_t ke;
    while ((ke = rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(it->topic),
                RD_KAFKA_V_KEY(it->key, it->key_len),
                RD_KAFKA_V_VALUE(it->value, it->value_len),
                RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(it),
                RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(p->rk, 10);
    if (ke && h)
        rd_kafka_headers_destroy(h);
    return ke;
}

static void *dup_bytes(const void *b, size_t n)
{
    void *c = malloc(n ? n : 1);
    if (n)
        memcpy(c, b, n);
    return c;
}

int dp_publisher_send(dp_publisher *p, const char *topic, const void *key,
                      size_t key_len, void *value, size_t value_len,
                      const char *header_name, const char *header_value,
                      char *err, size_t errlen)
{
    const char *h[3] = {header_name, header_value ? header_value : "", NULL};
    return dp_publisher_send_headers(p, topic, key, key_len, value, value_len,
                                     header_name ? h : NULL, err, errlen);
}

int dp_publisher_send_headers(dp_publisher *p, const char *topic, const void *key,
                              size_t key_len, void *value, size_t value_len,
                              const char *const *headers, char *err, size_t errlen)
{
    pub_item *it = calloc(1, sizeof(*it));
    it->topic = strdup(topic);
    it->key = key ? dup_bytes(key, key_len) : NULL;
    it->key_len = key ? key_len : 0;
    it->value = value;
    it->value_len = value_len;
    for (int i = 0; headers && headers[i] && it->nh < DP_PUBLISHER_MAX_HEADERS; i += 2) {
        it->hnames[it->nh] = strdup(headers[i]);
        it->hvalues[it->nh++] = strdup(headers[i + 1] ? headers[i + 1] : "");
    }
    rd_kafka_resp_err_t ke = produce_item(p, it);
    if (ke) {
        snprintf(err, errlen, "%s", rd_kafka_err2str(ke));
        item_free(it);
        return -1;
    }
    p->st.sent++;
    rd_kafka_poll(p->rk, 0);
    return 0;
}

uint64_t dp_publisher_finish(dp_publisher *p, int timeout_ms, int max_rounds,
                             char *err, size_t errlen)
{
    uint64_t lost = 0;
    for (int round = 0;; round++) {
        if (rd_kafka_flush(p->rk, timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR) {
            lost += (uint64_t)rd_kafka_outq_len(p->rk);
            snprintf(p->last_error, sizeof(p->last_error),
                     "not acknowledged within %d ms", timeout_ms);
        }
        pub_item *list = p->resend;
        p->resend = NULL;
        p->resend_tail = &p->resend;
        if (!list)
            break;
        while (list) {
            pub_item *it = list;
            list = it->next;
            rd_kafka_resp_err_t ke = RD_KAFKA_RESP_ERR__FAIL;
            if (round < max_rounds && (ke = produce_item(p, it)) == 0) {
                p->st.resent++;
                continue;
            }
            p->st.failed++;
            snprintf(p->last_error, sizeof(p->last_error), "%s",
                     round < max_rounds ? rd_kafka_err2str(ke)
                                        : "delivery never confirmed with an offset");
            item_free(it);
        }
    }
    lost += p->st.failed;
    if (lost)
        snprintf(err, errlen, "%s", p->last_error);
    return lost;
}

dp_publish_stats dp_publisher_stats(const dp_publisher *p)
{
    return p->st;
}

void dp_publisher_free(dp_publisher *p)
{
    if (!p)
        return;
    /* Records still queued (a flush that timed out) get their failed
     * reports now, which frees them. */
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_flush(p->rk, 1000);
    rd_kafka_destroy(p->rk);
    while (p->resend) {
        pub_item *it = p->resend;
        p->resend = it->next;
        item_free(it);
    }
    free(p);
}
