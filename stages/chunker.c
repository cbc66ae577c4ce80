/*
 * chunker: the "markdown-simple" chunker and the embedding batch planner.
 * The rules and their quirks are spelled out in chunker.h.
 *
 * Memory: the chunk texts are disjoint pieces of the input, and between two
 * consecutive chunks lies at least the '\n' that ended the earlier one, so
 * all texts plus one NUL each fit in len + 1 bytes.  The chunker therefore
 * makes one text allocation of len + 1 bytes and grows only the dp_chunk
 * array, and never re-joins lines: '\n'.join(lines) is simply the input
 * range from the first line's start to the last line's end.
 *
 * markdown-simple@2 (chunks bounded by tokens) follows the embedding batch
 * planner at the end of this file: its texts may overlap, so its buffer
 * grows instead.
 */
#include "chunker.h"

#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

struct chunk_builder {
    dp_chunk_list *list;
    size_t cap;            /* allocated dp_chunk slots */
    size_t text_used;      /* bytes used in list->text_buf */
    EVP_MD_CTX *md;
    EVP_MD *sha256;        /* fetched once: an implicit fetch per chunk costs
                              more than hashing a short chunk */
};

static int sha256_hex(EVP_MD_CTX *md, const EVP_MD *sha256, const char *p, size_t n,
                      char *out)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dn = 0;
    if (EVP_DigestInit_ex2(md, sha256, NULL) != 1 ||
        EVP_DigestUpdate(md, p, n) != 1 || EVP_DigestFinal_ex(md, d, &dn) != 1)
        return -1;
    for (unsigned int i = 0; i < dn; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 0x0f];
    }
    out[2 * dn] = '\0';
    return 0;
}

/* Flushes the lines [first, last_end) (nlines of them) as one chunk, unless
 * its stripped text is empty.  Returns 0 or -1 on allocation failure. */
static int flush_chunk(struct chunk_builder *b, const char *first,
                       const char *last_end, size_t nlines)
{
    dp_chunk_list *list = b->list;
    size_t text_len;
    const char *text = dp_text_strip(first, (size_t)(last_end - first), &text_len);
    if (text_len == 0)
        return 0;                           /* dropped: no ord used */
    if (list->count == INT32_MAX)          /* chunk_ord is a Postgres int */
        return -1;

    if (list->count == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        dp_chunk *items = realloc(list->items, cap * sizeof *items);
        if (!items)
            return -1;
        list->items = items;
        b->cap = cap;
    }

    char *dst = list->text_buf + b->text_used;
    memcpy(dst, text, text_len);
    dst[text_len] = '\0';
    b->text_used += text_len + 1;

    dp_chunk *c = &list->items[list->count];
    c->ord = (uint32_t)list->count;
    c->start_line = list->count * DP_CHUNKER_MAX_LINES;
    c->end_line = c->start_line + nlines;
    c->text = dst;
    c->text_len = text_len;
    c->tokens = dp_tokens_estimate(dst, text_len);
    if (sha256_hex(b->md, b->sha256, dst, text_len, c->sha256) != 0)
        return -1;
    list->count++;
    return 0;
}

void dp_chunk_list_free(dp_chunk_list *list)
{
    if (!list)
        return;
    free(list->items);
    free(list->text_buf);
    list->items = NULL;
    list->text_buf = NULL;
    list->count = 0;
}

dp_err dp_chunk_markdown(const char *content, size_t len, dp_chunk_list *out,
                         char *err, size_t errlen)
{
    struct chunk_builder b = { out, 0, 0, EVP_MD_CTX_new(), EVP_MD_fetch(NULL, "SHA256", NULL) };
    memset(out, 0, sizeof *out);
    if (!content) {
        content = "";
        len = 0;
    }
    out->text_buf = malloc(len + 1);
    if (!out->text_buf || !b.md || !b.sha256)
        goto oom;

    const char *end = content + len;
    const char *line = content;             /* start of the current line */
    const char *first = content;            /* start of the current chunk */
    size_t nlines = 0;

    for (;;) {                              /* one iteration per '\n'-split line */
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        const char *line_end = nl ? nl : end;
        if (nlines == 0)
            first = line;
        nlines++;
        if ((line < line_end && line[0] == '#') || nlines >= DP_CHUNKER_MAX_LINES) {
            if (flush_chunk(&b, first, line_end, nlines) != 0)
                goto oom;
            nlines = 0;
        }
        if (!nl)
            break;
        line = nl + 1;
    }
    if (nlines > 0 && flush_chunk(&b, first, end, nlines) != 0)
        goto oom;

    EVP_MD_CTX_free(b.md);
    EVP_MD_free(b.sha256);
    if (out->count == 0) {
        dp_chunk_list_free(out);
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "No chunks generated from parsed content");
    }
    return DP_OK;

oom:
    EVP_MD_CTX_free(b.md);
    EVP_MD_free(b.sha256);
    dp_chunk_list_free(out);
    return dp_errf(DP_ERR_RETRYABLE, err, errlen,
                   "chunker: out of memory chunking %zu bytes of content", len);
}

/* ---- Embedding batches -------------------------------------------------- */

size_t dp_embed_estimate_tokens(const char *text, size_t len)
{
    return dp_tokens_estimate(text, len);
}

size_t dp_embed_plan_batches(const size_t *tokens, size_t n, size_t max_texts,
                             size_t max_tokens, size_t *batch_end)
{
    size_t nbatches = 0, in_batch = 0, batch_tokens = 0;
    for (size_t i = 0; i < n; i++) {
        /* "current_tokens + estimated > 8000", written so it cannot overflow */
        int over = tokens[i] > max_tokens || batch_tokens > max_tokens - tokens[i];
        if (in_batch > 0 && (in_batch >= max_texts || over)) {
            batch_end[nbatches++] = i;
            in_batch = 0;
            batch_tokens = 0;
        }
        in_batch++;
        batch_tokens += tokens[i];
    }
    if (in_batch > 0)
        batch_end[nbatches++] = n;
    return nbatches;
}

/* ---- markdown-simple@2 ---------------------------------------------------- */

dp_err dp_chunker_spec_parse(const char *version, dp_chunker_spec *out, char *err,
                             size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (version && !strcmp(version, DP_CHUNKER_DEFAULT_VERSION)) {
        out->version = 1;
        return DP_OK;
    }
    size_t n = strlen(DP_CHUNKER_V2);
    if (version && !strncmp(version, DP_CHUNKER_V2, n) &&
        (version[n] == '\0' || version[n] == ';')) {
        unsigned long max = DP_CHUNKER_V2_MAX_TOKENS, ov = DP_CHUNKER_V2_OVERLAP_TOKENS;
        const char *p = version + n;
        const char *key = ";max_tokens=";
        char *end;
        if (!strncmp(p, key, strlen(key))) {
            p += strlen(key);
            max = strtoul(p, &end, 10);
            p = end == p ? "!" : end;
        }
        key = ";overlap_tokens=";
        if (!strncmp(p, key, strlen(key))) {
            p += strlen(key);
            ov = strtoul(p, &end, 10);
            p = end == p ? "!" : end;
        }
        char canon[DP_CHUNKER_VERSION_SIZE];
        dp_chunker_spec s = {2, (unsigned)max, (unsigned)ov};
        if (*p == '\0' && max >= DP_CHUNKER_MIN_TOKENS && max <= DP_CHUNKER_MAX_TOKENS_LIMIT &&
            ov <= max / 2) {
            dp_chunker_spec_format(&s, canon, sizeof canon);
            if (!strcmp(canon, version)) {
                *out = s;
                return DP_OK;
            }
        }
    }
    return dp_errf(DP_ERR_PERMANENT, err, errlen,
                   "unknown chunker version '%s' (known: %s, %s, %s;max_tokens=N"
                   ";overlap_tokens=M with N %d-%d, M at most N/2, defaults %d and %d"
                   " left out)", version ? version : "", DP_CHUNKER_DEFAULT_VERSION,
                   DP_CHUNKER_V2, DP_CHUNKER_V2, DP_CHUNKER_MIN_TOKENS,
                   DP_CHUNKER_MAX_TOKENS_LIMIT, DP_CHUNKER_V2_MAX_TOKENS,
                   DP_CHUNKER_V2_OVERLAP_TOKENS);
}

void dp_chunker_spec_format(const dp_chunker_spec *spec, char *out, size_t outlen)
{
    if (spec->version != 2) {
        snprintf(out, outlen, "%s", DP_CHUNKER_DEFAULT_VERSION);
        return;
    }
    int n = snprintf(out, outlen, "%s", DP_CHUNKER_V2);
    if (spec->max_tokens != DP_CHUNKER_V2_MAX_TOKENS && n > 0 && (size_t)n < outlen)
        n += snprintf(out + n, outlen - (size_t)n, ";max_tokens=%u", spec->max_tokens);
    if (spec->overlap_tokens != DP_CHUNKER_V2_OVERLAP_TOKENS && n > 0 && (size_t)n < outlen)
        snprintf(out + n, outlen - (size_t)n, ";overlap_tokens=%u", spec->overlap_tokens);
}

dp_err dp_chunk_text(const dp_chunker_spec *spec, const char *content, size_t len,
                     dp_chunk_list *out, char *err, size_t errlen)
{
    if (spec->version == 2)
        return dp_chunk_markdown_v2(spec, content, len, out, err, errlen);
    return dp_chunk_markdown(content, len, out, err, errlen);
}

struct v2 {
    dp_chunk_list *list;
    size_t cap, used, bufcap;
    size_t *offs;          /* text offsets: the buffer moves as it grows */
    EVP_MD_CTX *md;
    EVP_MD *sha256;
    size_t max, overlap;
    size_t over;           /* a chunk's tokens over max: a bug, reported */
    const char *end;       /* of the content */
};

static int ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Emits [s, e) stripped as the next chunk, lines [l0, l1).  0, or -1 when
 * memory fails. */
static int v2_emit(struct v2 *b, const char *s, const char *e, size_t l0, size_t l1)
{
    dp_chunk_list *list = b->list;
    size_t n;
    const char *t = dp_text_strip(s, (size_t)(e - s), &n);
    if (n == 0)
        return 0;
    if (list->count == INT32_MAX)
        return -1;
    if (list->count == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        dp_chunk *items = realloc(list->items, cap * sizeof *items);
        if (!items)
            return -1;
        list->items = items;
        size_t *offs = realloc(b->offs, cap * sizeof *offs);
        if (!offs)
            return -1;
        b->offs = offs;
        b->cap = cap;
    }
    if (b->used + n + 1 > b->bufcap) {
        size_t cap = b->bufcap * 2 > b->used + n + 1 ? b->bufcap * 2 : b->used + n + 1;
        char *buf = realloc(list->text_buf, cap);
        if (!buf)
            return -1;
        list->text_buf = buf;
        b->bufcap = cap;
    }
    char *dst = list->text_buf + b->used;
    memcpy(dst, t, n);
    dst[n] = '\0';
    dp_chunk *c = &list->items[list->count];
    c->ord = (uint32_t)list->count;
    c->start_line = l0;
    c->end_line = l1 > l0 ? l1 : l0 + 1;
    c->text = NULL;
    c->text_len = n;
    c->tokens = dp_tokens_estimate(dst, n);
    if (c->tokens > b->max) {       /* never: the rules above keep the bound */
        b->over = c->tokens;
        return -1;
    }
    b->offs[list->count] = b->used;
    b->used += n + 1;
    if (sha256_hex(b->md, b->sha256, dst, n, c->sha256) != 0)
        return -1;
    list->count++;
    return 0;
}

/* Start of the overlap the chunk [s, e) hands on: the earliest word start
 * (else character start) p in it with estimate(p..e) <= budget; e for none.
 * A text estimated at most budget is at most 5 * budget bytes (tokens.h),
 * so only the tail of that length is searched, by bisection (the estimate
 * of a suffix shrinks as it starts later). */
static const char *v2_overlap(const char *s, const char *e, size_t budget)
{
    if (budget == 0 || e <= s)
        return e;
    const char *lo = (size_t)(e - s) > 5 * budget + 8 ? e - (5 * budget + 8) : s;
    int words = 0;
    for (const char *p = lo + 1; p < e && !words; p++)
        words = ws(p[-1]) && !ws(*p);
    const char *a = lo, *z = e;   /* invariant: snap(z) fits */
    while (a < z) {
        const char *m = a + (z - a) / 2, *q = m;
        if (words)
            while (q < e && !(q > s && ws(q[-1]) && !ws(*q)))
                q++;
        else
            while (q < e && ((unsigned char)*q & 0xc0) == 0x80)
                q++;
        if (dp_tokens_estimate(q, (size_t)(e - q)) <= budget)
            z = m;
        else
            a = m + 1;
    }
    const char *q = z;
    if (words)
        while (q < e && !(q > s && ws(q[-1]) && !ws(*q)))
            q++;
    else
        while (q < e && ((unsigned char)*q & 0xc0) == 0x80)
            q++;
    return q;
}

static size_t lines_between(const char *s, const char *e)
{
    size_t n = 0;
    for (const char *p = s; p < e && (p = memchr(p, '\n', (size_t)(e - p))); p++)
        n++;
    return n;
}

/* Cuts the line [ls, le) (number li), over max tokens, into pieces. */
static int v2_split_line(struct v2 *b, const char *ls, const char *le, size_t li)
{
    const char *pos = ls, *ovs = NULL;
    while (pos < le && ws(*pos))
        pos++;
    while (pos < le) {
        const char *ps = ovs ? ovs : pos;
        size_t fit = dp_tokens_prefix(ps, (size_t)(le - ps), b->max);
        const char *lim = ps + fit;
        if (lim <= pos && ovs) {          /* no room after the overlap */
            ovs = NULL;
            continue;
        }
        if (lim == le)
            return v2_emit(b, ps, le, li, li + 1);
        const char *q = NULL;
        /* The last sentence end in the second half of the piece... */
        for (const char *p = lim; p > pos && p >= ps + fit / 2 && !q; p--) {
            if (p < le && ws(*p)) {
                const char *k = p - 1;
                if (k > ps && *k && strchr("\"')]", *k))
                    k--;
                if (*k && strchr(".!?", *k))
                    q = p;
            }
        }
        /* ...else the last whitespace... */
        for (const char *p = lim; p > pos && !q; p--)
            if (p < le && ws(*p))
                q = p;
        /* ...else hard, at a character boundary. */
        if (!q) {               /* dp_tokens_prefix cut between characters */
            q = lim;
            if (q <= pos) {     /* not even one fits (max_tokens >= 32: never) */
                q = pos + 1;
                while (q < le && ((unsigned char)*q & 0xc0) == 0x80)
                    q++;
            }
        }
        if (v2_emit(b, ps, q, li, li + 1) != 0)
            return -1;
        const char *next = q;
        while (next < le && ws(*next))
            next++;
        ovs = NULL;
        if (b->overlap && next < le) {
            const char *o = v2_overlap(ps, q, b->overlap);
            if (o > ps && o < q)
                ovs = o;
        }
        pos = next;
    }
    return 0;
}

dp_err dp_chunk_markdown_v2(const dp_chunker_spec *spec, const char *content,
                            size_t len, dp_chunk_list *out, char *err, size_t errlen)
{
    struct v2 b = {0};
    b.list = out;
    b.md = EVP_MD_CTX_new();
    b.sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    b.max = spec->max_tokens;
    b.overlap = spec->overlap_tokens;
    memset(out, 0, sizeof *out);
    if (!content) {
        content = "";
        len = 0;
    }
    b.bufcap = len + 1;
    out->text_buf = malloc(b.bufcap);
    if (!out->text_buf || !b.md || !b.sha256)
        goto oom;
    b.end = content + len;

    const char *end = content + len, *line = content;
    /* The current chunk: [cs, ce), lines [cl, cel), cost ct (an upper
     * bound: the sum of its lines' estimates plus one per '\n'). */
    const char *cs = NULL, *ce = NULL;
    size_t cl = 0, cel = 0, ct = 0;
    /* Its last paragraph start after a blank line, and the line number. */
    const char *para = NULL;
    size_t para_l = 0, li = 0;
    int after_blank = 0;

    for (;; li++) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        const char *le = nl ? nl : end;
        const char *p = line;
        while (p < le && ws(*p))
            p++;
        int blank = p == le;
        size_t lt = dp_tokens_estimate(line, (size_t)(le - line));

        if (cs && !blank && *line == '#') {          /* a heading starts a chunk */
            if (v2_emit(&b, cs, ce, cl, cel) != 0)
                goto oom;
            cs = NULL;
        }
        if (lt > b.max) {
            if (cs && v2_emit(&b, cs, ce, cl, cel) != 0)
                goto oom;
            cs = NULL;
            if (v2_split_line(&b, line, le, li) != 0)
                goto oom;
        } else if (blank) {
            if (cs && ct + 1 + lt > b.max) {
                if (v2_emit(&b, cs, ce, cl, cel) != 0)
                    goto oom;
                cs = NULL;
            } else if (cs) {
                ce = le;
                ct += 1 + lt;
                after_blank = 1;
            }
        } else {
            if (cs && ct + 1 + lt > b.max && para) {  /* cut at the paragraph */
                if (v2_emit(&b, cs, para, cl, para_l) != 0)
                    goto oom;
                cs = para;
                cl = para_l;
                ct = dp_tokens_estimate(cs, (size_t)(ce - cs));
                para = NULL;
            }
            if (cs && ct + 1 + lt > b.max) {           /* cut inside a paragraph */
                if (v2_emit(&b, cs, ce, cl, cel) != 0)
                    goto oom;
                size_t room = b.max > lt + 1 ? b.max - 1 - lt : 0;
                const char *o = v2_overlap(cs, ce, b.overlap < room ? b.overlap : room);
                if (o < ce) {
                    cl += lines_between(cs, o);
                    cs = o;
                    ct = dp_tokens_estimate(cs, (size_t)(ce - cs));
                } else {
                    cs = NULL;
                }
            }
            if (!cs) {
                cs = line;
                cl = li;
                ct = lt;
                para = NULL;
            } else {
                if (after_blank) {
                    para = line;
                    para_l = li;
                }
                ct += 1 + lt;
            }
            ce = le;
            cel = li + 1;
            after_blank = 0;
        }
        if (!cs)
            after_blank = 0;
        if (!nl)
            break;
        line = nl + 1;
    }
    if (cs && v2_emit(&b, cs, ce, cl, cel) != 0)
        goto oom;

    for (size_t k = 0; k < out->count; k++)
        out->items[k].text = out->text_buf + b.offs[k];
    free(b.offs);
    EVP_MD_CTX_free(b.md);
    EVP_MD_free(b.sha256);
    if (out->count == 0) {
        dp_chunk_list_free(out);
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "No chunks generated from parsed content");
    }
    return DP_OK;

oom:
    free(b.offs);
    EVP_MD_CTX_free(b.md);
    EVP_MD_free(b.sha256);
    dp_chunk_list_free(out);
    if (b.over)
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "chunker: internal error: a chunk of %zu estimated tokens,"
                       " over the bound of %zu", b.over, b.max);
    return dp_errf(DP_ERR_RETRYABLE, err, errlen,
                   "chunker: out of memory chunking %zu bytes of content", len);
}
