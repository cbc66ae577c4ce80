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
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "breaker.h"
#include "docdb.h"
#include "docstage.h"
#include "stages.h"
#include "textdecode.h"
#include "tika_client.h"

#define PARSE_MAX_RAW (25u * 1024 * 1024)
#define PARSE_MAX_TEXT (10u * 1024 * 1024)

static const char *const parse_from[] = {"parse_queued", "failed_parse", NULL};

static dp_err parse_handle(void *state, dp_batch *b, char *err, size_t errlen)
{
    dp_docstage *ds = state;
    dp_tika_client *tika = ds->impl;
    dp_storage_batch sb = {0}; /* the texts, made durable together */
    dp_err e = DP_OK;
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
        if (strcmp(mime, "text/plain") == 0 || strcmp(mime, "text/markdown") == 0) {
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
            char *raw = NULL, *text = NULL;
            size_t raw_len = 0;
            v = dp_storage_get(ds->cfg->storage_dir, raw_path, PARSE_MAX_RAW, &raw,
                               &raw_len, why, sizeof(why));
            if (v == DP_OK)
                v = dp_tika_parse(tika, raw, raw_len, mime, PARSE_MAX_TEXT, &text,
                                  &text_len, why, sizeof(why));
            free(raw);
            /* Tika down (breaker open, or not answering at all) is not this
             * document's failure: wait, spend no budget. */
            if (v == DP_ERR_RETRYABLE &&
                (dp_breaker_state_now(dp_tika_client_breaker(tika)) == DP_BREAKER_OPEN ||
                 !dp_tika_client_alive(tika))) {
                free(text);
                dp_batch_retry_after(b, dp_breaker_retry_in_ms(dp_tika_client_breaker(tika)));
                e = dp_errf(DP_ERR_RETRYABLE, err, errlen,
                            "parser unavailable (breaker %s): %s",
                            dp_breaker_state_name(dp_breaker_state_now(
                                dp_tika_client_breaker(tika))), why);
                goto out;
            }
            /* Tika answers UTF-8; what a document smuggles through it
             * (controls, broken sequences) is cleaned the same way. */
            if (v == DP_OK && !dp_text_is_clean(text, text_len)) {
                char *clean = NULL;
                v = dp_text_decode(text, text_len, NULL, &clean, &text_len, NULL,
                                   why, sizeof(why));
                free(text);
                text = clean;
            }
            if (v == DP_OK)
                v = dp_storage_write(&sb, ds->cfg->storage_dir, "parsed", text,
                                     text_len, path, NULL, why, sizeof(why));
            free(text);
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

dp_err dp_parse_open(const dp_config *cfg, dp_stage *stage, char *err,
                     size_t errlen)
{
    dp_tika_client *tika;
    dp_err e = dp_tika_client_new(cfg, &tika, err, errlen);
    if (e)
        return e;
    dp_docstage_spec spec = {"parse", "parse-queued", "ParseRequested", "parsed",
                             "failed_parse", 8, parse_handle};
    e = dp_docstage_init(cfg, &spec, tika, stage, err, errlen);
    if (e)
        dp_tika_client_free(tika);
    return e;
}

void dp_parse_close(dp_stage *stage)
{
    dp_tika_client_free(dp_docstage_close(stage));
}
