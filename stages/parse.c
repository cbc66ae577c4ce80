/*
 * parse (stage 2): turns the raw file into text.
 *
 * In: <prefix>parse-queued (ParseRequested).  Plain text and markdown are
 * their own text, decoded to clean UTF-8 (textdecode.h: byte order marks,
 * an 8-bit fallback charset, U+FFFD for invalid sequences, no stray
 * controls); PDF and HTML go through the parser service (Apache Tika
 * server, PUT /tika), whose answer is cleaned the same way.  The text, at
 * most 10 MB, is stored content-addressed and the job moves parse_queued →
 * parsed; a DocumentParsed goes to <prefix>parsed.  A text or markdown
 * file that is clean UTF-8 already is referred to as it is (the raw file
 * is content-addressed too), so validate, chunk and the stored text all
 * read the same decoded text either way; a parsed text is written with the
 * batch's others and made durable once for all (dp_storage_sync).  An
 * unparseable file is a permanent failure
 * (failed_parse, dead-lettered).  A retryable failure while the parser is
 * down (its circuit breaker open, or GET /tika unanswered) pauses the stage
 * and spends no record's retry budget; one while Tika is up is the
 * document's own (retried, then dead-lettered).
 *
 * A pass calls Tika first, for the whole batch at once (tika_concurrency in
 * flight), before its first statement: no row is locked and nothing is read
 * while Tika works, so gather, retry and replay never wait on a parse.  Then
 * it reads and locks the jobs (dp_docstage_ready) and writes what the
 * answers say, for the documents still in a state parse takes.  The calls
 * start only within a window (parse_pass_ms, capped below
 * idle_txn_timeout_ms and max.poll.interval.ms); the documents not sent by
 * then are deferred to a later pass without spending their retry budget.
 * Answers are kept by record (partition, offset) for the next pass, which
 * the runtime runs at once when one record of the pass was deferred or
 * failed: a document is sent to Tika once, not once per pass.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "breaker.h"
#include "clock.h"
#include "docdb.h"
#include "docstage.h"
#include "log.h"
#include "stages.h"
#include "textdecode.h"
#include "tika_client.h"

#define PARSE_MAX_RAW (25u * 1024 * 1024)
#define PARSE_MAX_TEXT (10u * 1024 * 1024)

static const char *const parse_from[] = {"parse_queued", "failed_parse", NULL};

/* What Tika made of one record's document: kept for the passes over the
 * same batch (the runtime runs a batch's pass again without its failed or
 * deferred records). */
typedef struct parse_done {
    int32_t partition;
    int64_t offset;
    int keep;             /* 0: a retryable outcome, asked again next pass */
    dp_err v;
    char why[768];
    char *text;           /* on DP_OK: clean UTF-8 */
    size_t text_len;
} parse_done;

typedef struct parse_state {
    dp_tika_client *tika;
    int concurrency;      /* tika_concurrency */
    int64_t window_ms;    /* a pass starts Tika calls within this */
    parse_done *done;
    size_t ndone, capdone;
} parse_state;

static int is_text_mime(const char *mime)
{
    return strcmp(mime, "text/plain") == 0 || strcmp(mime, "text/markdown") == 0;
}

static parse_done *done_find(parse_state *ps, const dp_record *rec)
{
    for (size_t k = 0; k < ps->ndone; k++)
        if (ps->done[k].partition == rec->partition && ps->done[k].offset == rec->offset)
            return &ps->done[k];
    return NULL;
}

/* Keeps the answers of this pass's records that are worth keeping. */
static void done_keep(parse_state *ps, dp_batch *b)
{
    size_t n = 0;
    for (size_t k = 0; k < ps->ndone; k++) {
        parse_done *d = &ps->done[k];
        int wanted = 0;
        for (size_t i = 0; d->keep && i < dp_batch_count(b) && !wanted; i++) {
            const dp_record *rec = dp_batch_record(b, i);
            wanted = rec->partition == d->partition && rec->offset == d->offset;
        }
        if (wanted)
            ps->done[n++] = *d;
        else
            free(d->text);
    }
    ps->ndone = n;
}

static parse_done *done_add(parse_state *ps, const dp_record *rec)
{
    if (ps->ndone == ps->capdone) {
        size_t cap = ps->capdone ? 2 * ps->capdone : 16;
        parse_done *more = realloc(ps->done, cap * sizeof(*more));
        if (!more)
            return NULL;
        ps->done = more;
        ps->capdone = cap;
    }
    parse_done *d = &ps->done[ps->ndone++];
    memset(d, 0, sizeof(*d));
    d->partition = rec->partition;
    d->offset = rec->offset;
    return d;
}

/* Sends the pass's documents that need Tika and have no answer yet, all at
 * once, before any statement of the pass.  *deferred: how many were not
 * sent within the window (deferred, no budget spent).  Returns a retryable
 * error, having asked for the batch to wait, when Tika is down. */
static dp_err tika_phase(dp_docstage *ds, parse_state *ps, dp_batch *b, int64_t t0,
                         size_t *deferred, char *err, size_t errlen)
{
    size_t count = dp_batch_count(b), n = 0;
    *deferred = 0;
    dp_tika_job *jobs = calloc(count + 1, sizeof(*jobs));
    size_t *recs = calloc(count + 1, sizeof(*recs));
    char **raws = calloc(count + 1, sizeof(*raws));
    if (!jobs || !recs || !raws) {
        free(jobs);
        free(recs);
        free(raws);
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "parse: out of memory");
    }
    dp_err e = DP_OK;
    for (size_t i = 0; i < count; i++) {
        avro_value_t *m = dp_docstage_msg(b, i);
        const char *mime = dp_msg_str(m, "mime");
        const dp_record *rec = dp_batch_record(b, i);
        if (is_text_mime(mime) || done_find(ps, rec))
            continue;
        char why[768];
        size_t raw_len = 0;
        dp_err v = dp_storage_get(ds->cfg->storage_dir, dp_msg_str(m, "raw_path"),
                                  PARSE_MAX_RAW, &raws[n], &raw_len, why, sizeof(why));
        if (v != DP_OK) {
            parse_done *d = done_add(ps, rec);
            if (!d) {
                e = dp_errf(DP_ERR_RETRYABLE, err, errlen, "parse: out of memory");
                goto out;
            }
            d->keep = v != DP_ERR_RETRYABLE;
            d->v = v;
            snprintf(d->why, sizeof(d->why), "%s", why);
            continue;
        }
        jobs[n] = (dp_tika_job){.data = raws[n], .len = raw_len, .content_type = mime,
                                .max_bytes = PARSE_MAX_TEXT};
        recs[n++] = i;
    }
    if (n == 0)
        goto out;
    dp_tika_parse_many(ps->tika, jobs, n, ps->concurrency, t0 + ps->window_ms);
    int failed = 0;
    for (size_t k = 0; k < n; k++) {
        size_t i = recs[k];
        const char *doc = dp_msg_str(dp_docstage_msg(b, i), "document_id");
        if (!jobs[k].started) {
            dp_batch_defer(b, i, 500, "parse %s: the pass's %lld ms for Tika calls ran out;"
                           " it goes in a later pass", doc, (long long)ps->window_ms);
            (*deferred)++;
            continue;
        }
        dp_err v = jobs[k].result;
        char *text = jobs[k].text;
        size_t text_len = jobs[k].text_len;
        char why[768];
        snprintf(why, sizeof(why), "%s", jobs[k].error);
        /* Tika answers UTF-8; what a document smuggles through it
         * (controls, broken sequences) is cleaned the same way. */
        if (v == DP_OK && !dp_text_is_clean(text, text_len)) {
            char *clean = NULL;
            v = dp_text_decode(text, text_len, NULL, &clean, &text_len, NULL, why,
                               sizeof(why));
            free(text);
            text = clean;
        }
        failed |= v == DP_ERR_RETRYABLE;
        parse_done *d = done_add(ps, dp_batch_record(b, i));
        if (!d) {
            free(text);
            e = dp_errf(DP_ERR_RETRYABLE, err, errlen, "parse: out of memory");
            goto out;
        }
        d->keep = v != DP_ERR_RETRYABLE;
        d->v = v;
        snprintf(d->why, sizeof(d->why), "%s", why);
        d->text = v == DP_OK ? text : NULL;
        d->text_len = v == DP_OK ? text_len : 0;
        if (v != DP_OK)
            free(text);
    }
    /* Tika down (breaker open, or not answering at all) is not the
     * documents' failure: wait, spend no budget. */
    dp_breaker *br = dp_tika_client_breaker(ps->tika);
    if (failed && (dp_breaker_state_now(br) == DP_BREAKER_OPEN ||
                   !dp_tika_client_alive(ps->tika))) {
        const char *why = "";
        for (size_t k = 0; k < n && !*why; k++)
            if (jobs[k].started && jobs[k].result == DP_ERR_RETRYABLE)
                why = jobs[k].error;
        dp_batch_retry_after(b, dp_breaker_retry_in_ms(br));
        e = dp_errf(DP_ERR_RETRYABLE, err, errlen, "parser unavailable (breaker %s): %s",
                    dp_breaker_state_name(dp_breaker_state_now(br)), why);
    }
out:
    for (size_t k = 0; k < count; k++)
        free(raws[k]);
    free(raws);
    free(recs);
    free(jobs);
    return e;
}

static dp_err parse_handle(void *state, dp_batch *b, char *err, size_t errlen)
{
    dp_docstage *ds = state;
    parse_state *ps = ds->impl;
    int64_t t0 = dp_clock_mono_ms(NULL);
    dp_storage_batch sb = {0}; /* the texts, made durable together */
    size_t deferred = 0;
    done_keep(ps, b);
    dp_err e = tika_phase(ds, ps, b, t0, &deferred, err, errlen);
    if (e || deferred)
        /* Deferred records leave the pass, which the runtime runs again
         * with the others at once: their answers are kept for it. */
        return e;
    for (size_t i = 0; i < dp_batch_count(b); i++) {
        avro_value_t *m = dp_docstage_msg(b, i);
        const char *doc = dp_msg_str(m, "document_id");
        const char *mime = dp_msg_str(m, "mime");
        const char *raw_path = dp_msg_str(m, "raw_path");
        int go;
        if ((e = dp_docstage_ready(ds, b, i, doc, parse_from, &go, err, errlen)))
            goto out;
        if (!go)
            continue;

        char why[768], path[DP_STORAGE_PATH_SIZE];
        size_t text_len = 0;
        dp_err v;
        const char *encoding = "utf-8";
        if (is_text_mime(mime)) {
            char *raw = NULL;
            size_t raw_len = 0;
            v = dp_storage_get(ds->cfg->storage_dir, raw_path, PARSE_MAX_RAW, &raw,
                               &raw_len, why, sizeof(why));
            if (v == DP_OK && dp_text_is_clean(raw, raw_len)) {
                /* Clean UTF-8 is its own text: the raw file,
                 * content-addressed like a parsed one, is referred to as
                 * it is. */
                text_len = raw_len;
                snprintf(path, sizeof(path), "%s", raw_path);
            } else if (v == DP_OK) {
                char *text = NULL;
                dp_text_info info;
                v = dp_text_decode(raw, raw_len, ds->cfg->text_fallback_charset,
                                   &text, &text_len, &info, why, sizeof(why));
                encoding = info.encoding;
                if (v == DP_OK && text_len <= PARSE_MAX_TEXT)
                    v = dp_storage_write(&sb, ds->cfg->storage_dir, "parsed", text,
                                         text_len, path, NULL, why, sizeof(why));
                free(text);
            }
            free(raw);
            if (v == DP_OK && text_len > PARSE_MAX_TEXT)
                v = dp_errf(DP_ERR_PERMANENT, why, sizeof(why),
                            "text is %zu bytes, over the 10 MB limit", text_len);
        } else {
            const parse_done *d = done_find(ps, dp_batch_record(b, i));
            if (!d) /* (cannot be: tika_phase answered every one) */
                v = dp_errf(DP_ERR_RETRYABLE, why, sizeof(why), "no answer from Tika");
            else if ((v = d->v) != DP_OK)
                snprintf(why, sizeof(why), "%s", d->why);
            else {
                text_len = d->text_len;
                v = dp_storage_write(&sb, ds->cfg->storage_dir, "parsed", d->text,
                                     text_len, path, NULL, why, sizeof(why));
            }
        }
        if (v) {
            dp_batch_fail(b, i, v, "parse %s (%s): %s", doc, mime, why);
            continue;
        }
        int moved;
        char progress[96];
        /* encoding: one of textdecode's names or the configured charset,
         * which iconv knew, so no character needing JSON escapes. */
        snprintf(progress, sizeof(progress),
                 "{\"text_bytes\": %zu, \"encoding\": \"%.40s\"}", text_len,
                 strpbrk(encoding, "\"\\") ? "?" : encoding);
        e = dp_docstage_transition(ds, b, doc, parse_from, "parsed", "PARSED",
                                   dp_msg_str(m, "correlation_id"), progress, &moved,
                                   err, errlen);
        if (e)
            goto out;
        dp_docstage_set_job(ds, doc, path, -1); /* written with the move */
        dp_field f[] = {DP_FS("document_id", doc),
                        DP_FS("job_id", dp_msg_str(m, "job_id")),
                        DP_FS("parsed_path", path),
                        DP_FL("text_bytes", text_len),
                        DP_FS("correlation_id", dp_msg_str(m, "correlation_id"))};
        dp_docstage_emit(ds, b, i, ds->out_topic, "DocumentParsed", doc, f, 5);
    }
    /* Durable before the batch commits and its records are published. */
    e = dp_storage_sync(&sb, err, errlen);
out:
    dp_storage_discard(&sb);
    return e;
}

/* A Kafka consumer property as docpipe passes it through (the consumer's
 * own over the common one), or def. */
static long consumer_prop(const dp_config *cfg, const char *name, long def)
{
    char **lists[2] = {cfg->kafka_consumer, cfg->kafka_common};
    for (int l = 0; l < 2; l++)
        for (char **p = lists[l]; p && *p; p += 2)
            if (strcmp(p[0], name) == 0)
                return strtol(p[1], NULL, 10);
    return def;
}

dp_err dp_parse_open(const dp_config *cfg, dp_stage *stage, char *err,
                     size_t errlen)
{
    /* A pass lasts at most its window plus one call (calls in flight
     * finish), and must end well within the idle-transaction timeout (the
     * runtime's transaction is open, idle, while Tika works) and the
     * consumer's max.poll.interval.ms (librdkafka's default: 300000). */
    long limit = consumer_prop(cfg, "max.poll.interval.ms", 300000);
    if (cfg->idle_txn_timeout_ms > 0 && cfg->idle_txn_timeout_ms < limit)
        limit = cfg->idle_txn_timeout_ms;
    dp_config tcfg = *cfg;
    long call_ms = cfg->tika_timeout_ms > 0 ? cfg->tika_timeout_ms : 120000;
    if (call_ms > limit / 2)
        call_ms = limit / 2;
    tcfg.tika_timeout_ms = (int)call_ms;
    long window = limit / 10 * 9 - call_ms;
    if (window > cfg->parse_pass_ms)
        window = cfg->parse_pass_ms;
    if (window < 1)
        window = 1;
    if (call_ms < cfg->tika_timeout_ms || window < cfg->parse_pass_ms)
        dp_log(DP_LOG_INFO, NULL, "parse: Tika calls time out after %ld ms and start within"
               " %ld ms of a pass, to end a pass within %ld ms (idle_txn_timeout_ms,"
               " max.poll.interval.ms)", call_ms, window, limit);
    parse_state *ps = calloc(1, sizeof(*ps));
    if (!ps)
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "parse: out of memory");
    ps->concurrency = cfg->tika_concurrency > 0 ? cfg->tika_concurrency : 4;
    ps->window_ms = window;
    dp_err e = dp_tika_client_new(&tcfg, &ps->tika, err, errlen);
    if (e) {
        free(ps);
        return e;
    }
    dp_docstage_spec spec = {"parse", "parse-queued", "ParseRequested", "parsed",
                             "failed_parse", 8, parse_handle};
    e = dp_docstage_init(cfg, &spec, ps, stage, err, errlen);
    if (e) {
        dp_tika_client_free(ps->tika);
        free(ps);
    }
    return e;
}

void dp_parse_close(dp_stage *stage)
{
    parse_state *ps = dp_docstage_close(stage);
    if (!ps)
        return;
    dp_tika_client_free(ps->tika);
    for (size_t k = 0; k < ps->ndone; k++)
        free(ps->done[k].text);
    free(ps->done);
    free(ps);
}
