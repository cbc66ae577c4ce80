/*
 * demo: the pass-through demonstration stage.
 *
 * Reads DemoRecord values (schemas/demo_record.avsc, Avro single-object
 * encoding) from <prefix>demo.in, writes one row per record into
 * docpipe.demo_results with COPY, and publishes each record unchanged to
 * <prefix>demo.out (unless demo_publish is 0: a sink, rows only).  It exists to show and test the runtime, so its body
 * text may carry fault directives:
 *   "fail:permanent"        the record fails permanently;
 *   "fail:batch"            the whole batch fails with an error no record is
 *                           blamed for (so the runtime settles its records
 *                           one at a time, where this one fails permanently);
 *   "fail:retry-until:N"    it fails retryably until its N-th attempt;
 *   "fail:until-file:PATH"  it fails permanently while the file PATH does
 *                           not exist: a cause fixed outside the record,
 *                           after which the same record succeeds (tests
 *                           of `docpipe dlq redrive`);
 *   "stall-once:MS:PATH"    the handler sleeps MS ms unless the file PATH
 *                           exists, creating it first: only one process
 *                           ever stalls on it (a stalled zombie in tests).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <avro.h>

#include "avro_codec.h"
#include "pg.h"
#include "stages.h"

typedef struct demo_state {
    dp_avro_registry *reg;
    uint64_t reader_fp;
    char *in, *out, *dlq;
    const char *outputs[2];
    dp_buf copy;
    int publish;                /* demo_publish */
    avro_value_t scratch;       /* reused by every decode (one thread) */
    int has_scratch;
} demo_state;

typedef struct demo_rec {
    char *id;
    int64_t seq;
    char *body;
} demo_rec;

static dp_err demo_decode(void *state, const void *value, size_t len,
                          void **out, char *err, size_t errlen)
{
    demo_state *st = state;
    avro_value_t f;
    dp_err e;
    if (!st->has_scratch) {
        if ((e = dp_avro_value_new(st->reg, st->reader_fp, &st->scratch, err, errlen)))
            return e;
        st->has_scratch = 1;
    }
    if ((e = dp_avro_decode_into(st->reg, st->reader_fp, value, len, &st->scratch,
                                 err, errlen)))
        return e;
    const char *id = NULL, *body = NULL;
    size_t idl = 0, bodyl = 0;
    int64_t seq = 0;
    if (avro_value_get_by_name(&st->scratch, "id", &f, NULL) == 0 &&
        avro_value_get_string(&f, &id, &idl) == 0 && idl)
        idl--;
    if (avro_value_get_by_name(&st->scratch, "seq", &f, NULL) == 0)
        avro_value_get_long(&f, &seq);
    if (avro_value_get_by_name(&st->scratch, "body", &f, NULL) == 0 &&
        avro_value_get_string(&f, &body, &bodyl) == 0 && bodyl)
        bodyl--;
    if (!id || !body)
        return dp_errf(DP_ERR_POISON, err, errlen, "DemoRecord lacks id or body");
    /* One allocation: the struct, then both strings. */
    demo_rec *r = malloc(sizeof(*r) + idl + bodyl + 2);
    if (!r)
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "out of memory");
    r->id = (char *)(r + 1);
    memcpy(r->id, id, idl);
    r->id[idl] = '\0';
    r->body = r->id + idl + 1;
    memcpy(r->body, body, bodyl);
    r->body[bodyl] = '\0';
    r->seq = seq;
    *out = r;
    return DP_OK;
}

static void demo_free_decoded(void *state, void *decoded)
{
    (void)state;
    free(decoded);
}

static char *fmt_i64(char *p, int64_t v)
{
    char tmp[24];
    int n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    if (v < 0)
        *p++ = '-';
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (n)
        *p++ = tmp[--n];
    return p;
}

/* COPY text format: backslash, tab, newline and CR escaped. */
static void copy_field(dp_buf *b, const char *s)
{
    size_t start = 0, i = 0;
    for (; s[i]; i++) {
        const char *esc = s[i] == '\\' ? "\\\\" : s[i] == '\t' ? "\\t"
                          : s[i] == '\n' ? "\\n" : s[i] == '\r' ? "\\r" : NULL;
        if (esc) {
            dp_buf_append(b, s + start, i - start);
            dp_buf_append(b, esc, 2);
            start = i + 1;
        }
    }
    dp_buf_append(b, s + start, i - start);
}

static dp_err demo_handle(void *state, dp_batch *batch, char *err,
                          size_t errlen)
{
    demo_state *st = state;
    PGconn *db = dp_batch_db(batch);
    const char *instance = dp_batch_instance(batch);
    size_t n = dp_batch_count(batch);
    dp_buf_reset(&st->copy);
    for (size_t i = 0; i < n; i++) {
        dp_record *rec = dp_batch_record(batch, i);
        demo_rec *r = rec->decoded;
        int until;
        long ms;
        char path[512];
        if (strcmp(r->body, "fail:batch") == 0 && n > 1)
            return dp_errf(DP_ERR_PERMANENT, err, errlen,
                           "demo record %s fails its whole batch", r->id);
        if (strcmp(r->body, "fail:permanent") == 0 || strcmp(r->body, "fail:batch") == 0) {
            dp_batch_fail(batch, i, DP_ERR_PERMANENT,
                          "demo record %s asks to fail permanently", r->id);
            continue;
        }
        if (strncmp(r->body, "fail:until-file:", 16) == 0 &&
            access(r->body + 16, F_OK) != 0) {
            dp_batch_fail(batch, i, DP_ERR_PERMANENT,
                          "demo record %s fails until %s exists", r->id, r->body + 16);
            continue;
        }
        if (r->body[0] == 'f' && sscanf(r->body, "fail:retry-until:%d", &until) == 1 &&
            rec->attempts < until) {
            dp_batch_fail(batch, i, DP_ERR_RETRYABLE,
                          "demo record %s fails until attempt %d (this is %d)",
                          r->id, until, rec->attempts);
            continue;
        }
        if (r->body[0] == 's' && sscanf(r->body, "stall-once:%ld:%511s", &ms, path) == 2) {
            FILE *f = fopen(path, "wx");
            if (f) {
                fclose(f);
                usleep((useconds_t)ms * 1000);
            }
        }
        char num[64], *q;
        copy_field(&st->copy, r->id);
        q = num;
        *q++ = '\t';
        q = fmt_i64(q, r->seq);
        *q++ = '\t';
        dp_buf_append(&st->copy, num, (size_t)(q - num));
        copy_field(&st->copy, rec->topic);
        q = num;
        *q++ = '\t';
        q = fmt_i64(q, rec->partition);
        *q++ = '\t';
        q = fmt_i64(q, rec->offset);
        *q++ = '\t';
        dp_buf_append(&st->copy, num, (size_t)(q - num));
        copy_field(&st->copy, r->body);
        dp_buf_append(&st->copy, "\t", 1);
        copy_field(&st->copy, instance);
        dp_buf_append(&st->copy, "\n", 1);
        if (st->publish)
            dp_batch_emit(batch, i, st->out, r->id, strlen(r->id), rec->value,
                          rec->value_len);
    }
    if (st->copy.len == 0)
        return DP_OK;
    PGresult *res = PQexec(db, "COPY docpipe.demo_results (id, seq, topic,"
                               " partition, \"offset\", body, instance)"
                               " FROM STDIN");
    dp_err e = dp_pg_check(db, res, PGRES_COPY_IN, "copy demo rows", err,
                           errlen);
    if (e)
        return e;
    PQclear(res);
    if (PQputCopyData(db, st->copy.data, (int)st->copy.len) != 1 ||
        PQputCopyEnd(db, NULL) != 1)
        return dp_errf(dp_pg_classify(db, NULL), err, errlen, "copy demo rows: %s",
                       PQerrorMessage(db));
    res = PQgetResult(db);
    e = dp_pg_check(db, res, PGRES_COMMAND_OK, "copy demo rows", err, errlen);
    if (e == DP_OK)
        PQclear(res);
    while ((res = PQgetResult(db)))
        PQclear(res);
    return e;
}

dp_err dp_demo_open(const dp_config *cfg, dp_stage *stage, char *err,
                    size_t errlen)
{
    demo_state *st = calloc(1, sizeof(*st));
    char path[4096];
    snprintf(path, sizeof(path), "%s/demo_record.avsc", cfg->schema_dir);
    st->reg = dp_avro_registry_new();
    dp_err e = dp_avro_registry_add_file(st->reg, path, &st->reader_fp, err,
                                         errlen);
    if (e) {
        dp_avro_registry_free(st->reg);
        free(st);
        return e;
    }
    st->in = dp_topic_name(cfg, "demo.in");
    st->out = dp_topic_name(cfg, "demo.out");
    st->dlq = dp_topic_name(cfg, "demo.dlq");
    st->outputs[0] = st->out;
    st->publish = cfg->demo_publish;
    stage->name = "demo";
    stage->input_topic = st->in;
    stage->output_topics = st->outputs;
    stage->dlq_topic = st->dlq;
    stage->batch_max = 1000;
    stage->state = st;
    stage->decode = demo_decode;
    stage->free_decoded = demo_free_decoded;
    stage->handle = demo_handle;
    return DP_OK;
}

void dp_demo_close(dp_stage *stage)
{
    demo_state *st = stage->state;
    if (!st)
        return;
    if (st->has_scratch)
        avro_value_decref(&st->scratch);
    dp_avro_registry_free(st->reg);
    free(st->in);
    free(st->out);
    free(st->dlq);
    dp_buf_free(&st->copy);
    free(st);
    stage->state = NULL;
}

/* Encodes one DemoRecord (used by `docpipe demo-produce`, tests, bench). */
dp_err dp_demo_encode(const dp_config *cfg, const char *id, int64_t seq,
                      const char *body, void **buf, size_t *len, char *err,
                      size_t errlen);
dp_err dp_demo_encode(const dp_config *cfg, const char *id, int64_t seq,
                      const char *body, void **buf, size_t *len, char *err,
                      size_t errlen)
{
    static dp_avro_registry *reg;
    static uint64_t fp;
    if (!reg) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/demo_record.avsc", cfg->schema_dir);
        reg = dp_avro_registry_new();
        dp_err e = dp_avro_registry_add_file(reg, path, &fp, err, errlen);
        if (e) {
            dp_avro_registry_free(reg);
            reg = NULL;
            return e;
        }
    }
    avro_schema_t schema = dp_avro_registry_schema(reg, fp);
    avro_value_iface_t *iface = avro_generic_class_from_schema(schema);
    avro_value_t v, f;
    avro_generic_value_new(iface, &v);
    avro_value_get_by_name(&v, "id", &f, NULL);
    avro_value_set_string(&f, id);
    avro_value_get_by_name(&v, "seq", &f, NULL);
    avro_value_set_long(&f, seq);
    avro_value_get_by_name(&v, "body", &f, NULL);
    avro_value_set_string(&f, body);
    dp_err e = dp_avro_encode(reg, fp, &v, buf, len, err, errlen);
    avro_value_decref(&v);
    avro_value_iface_decref(iface);
    return e;
}
