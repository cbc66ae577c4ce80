/* support_docs: test document generator (see support_docs.h). */
#include "support_docs.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chunker.h"
#include "ids.h"
#include "pg.h"

static const char *const words[] = {
    "pipeline", "document", "kafka", "partition", "offset", "vector", "chunk",
    "parser", "stream", "record", "commit", "replay", "embedding", "search",
    "table", "schema", "broker", "consumer", "group", "latency", "batch",
    "storage", "index", "token", "model", "service", "breaker", "retry",
    "letter", "state", "event", "correlation", "upload", "finalize", "gather",
    "plain", "text", "markdown", "heading", "paragraph", "section", "report"};
#define NWORDS (sizeof(words) / sizeof(words[0]))

static unsigned next(unsigned *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static void line(dp_buf *b, unsigned *s, int nwords)
{
    for (int w = 0; w < nwords; w++) {
        const char *word = words[next(s) % NWORDS];
        dp_buf_appendf(b, "%s%s", w ? " " : "", word);
    }
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot write %s", path);
    fwrite(data, 1, len, f);
    fclose(f);
}

static void make_md(dp_buf *b, size_t size, unsigned s, int markdown)
{
    dp_buf_appendf(b, markdown ? "# Document %u\n\n" : "Document %u\n\n", s);
    int section = 0;
    while (b->len < size) {
        if (markdown)
            dp_buf_appendf(b, "## Section %d\n\n", ++section);
        int lines = 3 + (int)(next(&s) % 25);
        for (int l = 0; l < lines; l++) {
            line(b, &s, 6 + (int)(next(&s) % 8));
            dp_buf_append(b, "\n", 1);
            if (next(&s) % 6 == 0)
                dp_buf_append(b, "\n", 1);
        }
        dp_buf_append(b, "\n", 1);
    }
}

static void make_html(dp_buf *b, size_t size, unsigned s)
{
    dp_buf_appendf(b, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                      "<title>Document %u</title></head>\n<body>\n<h1>Document %u</h1>\n",
                   s, s);
    int section = 0;
    while (b->len + 20 < size) {
        dp_buf_appendf(b, "<h2>Section %d</h2>\n", ++section);
        int paras = 1 + (int)(next(&s) % 4);
        for (int p = 0; p < paras; p++) {
            dp_buf_append(b, "<p>", 3);
            line(b, &s, 20 + (int)(next(&s) % 40));
            dp_buf_append(b, "</p>\n", 5);
        }
    }
    dp_buf_append(b, "</body></html>\n", 15);
}

static void make_pdf(dp_buf *b, size_t size, unsigned s)
{
    /* Pages of 60 lines; objects: 1 catalog, 2 pages, 3 font, then a
     * (page, content) pair per page. */
    size_t est_page = 60 * 75;
    int pages = (int)(size / est_page) + 1;
    size_t *offs = calloc((size_t)(3 + 2 * pages + 1), sizeof(size_t));
    dp_buf_append(b, "%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", 15);
    offs[1] = b->len;
    dp_buf_appendf(b, "1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n");
    offs[2] = b->len;
    dp_buf_appendf(b, "2 0 obj\n<< /Type /Pages /Count %d /Kids [", pages);
    for (int p = 0; p < pages; p++)
        dp_buf_appendf(b, "%d 0 R ", 4 + 2 * p);
    dp_buf_appendf(b, "] >>\nendobj\n");
    offs[3] = b->len;
    dp_buf_appendf(b, "3 0 obj\n<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>\nendobj\n");
    dp_buf content = {0};
    for (int p = 0; p < pages; p++) {
        dp_buf_reset(&content);
        dp_buf_appendf(&content, "BT /F1 10 Tf 12 TL 40 800 Td\n");
        if (p == 0)
            dp_buf_appendf(&content, "(Document %u) Tj T*\n", s);
        for (int l = 0; l < 60; l++) {
            dp_buf_append(&content, "(", 1);
            line(&content, &s, 8 + (int)(next(&s) % 4));
            dp_buf_append(&content, ") Tj T*\n", 8);
        }
        dp_buf_append(&content, "ET\n", 3);
        int page = 4 + 2 * p, cont = page + 1;
        offs[page] = b->len;
        dp_buf_appendf(b, "%d 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842]"
                          " /Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>\nendobj\n",
                       page, cont);
        offs[cont] = b->len;
        dp_buf_appendf(b, "%d 0 obj\n<< /Length %zu >>\nstream\n", cont, content.len);
        dp_buf_append(b, content.data, content.len);
        dp_buf_appendf(b, "endstream\nendobj\n");
    }
    int nobj = 3 + 2 * pages;
    size_t xref = b->len;
    dp_buf_appendf(b, "xref\n0 %d\n0000000000 65535 f \n", nobj + 1);
    for (int o = 1; o <= nobj; o++)
        dp_buf_appendf(b, "%010zu 00000 n \n", offs[o]);
    dp_buf_appendf(b, "trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%zu\n%%%%EOF\n",
                   nobj + 1, xref);
    dp_buf_free(&content);
    free(offs);
}

void tdoc_make(tdoc *d, const char *dir, const char *kind, size_t size,
               unsigned seed)
{
    memset(d, 0, sizeof(*d));
    d->kind = kind;
    unsigned s = seed * 2654435761u + 12345u;
    if (!s)
        s = 1;
    dp_buf b = {0};
    if (!strcmp(kind, "md"))
        make_md(&b, size, s, 1);
    else if (!strcmp(kind, "txt"))
        make_md(&b, size, s, 0);
    else if (!strcmp(kind, "html"))
        make_html(&b, size, s);
    else
        make_pdf(&b, size, s);
    snprintf(d->path, sizeof(d->path), "%s/doc-%05u-%zu.%s", dir, seed, size, kind);
    write_file(d->path, b.data, b.len);
    d->size = b.len;
    if (!strcmp(kind, "md") || !strcmp(kind, "txt")) {
        d->text = b.data;
        b.data = NULL;
    }
    dp_buf_free(&b);
}

void tdoc_free(tdoc *d)
{
    free(d->text);
    d->text = NULL;
}

long tdoc_expected_chunks(const tdoc *d)
{
    if (!d->text)
        return -1;
    char *copy = strdup(d->text);
    size_t n = dp_normalize_text(copy, strlen(copy), copy);
    dp_chunk_list list = {0};
    char err[256];
    long count = -1;
    /* The chunker new jobs get by default (setting chunker_version). */
    dp_chunker_spec spec = {2, DP_CHUNKER_V2_MAX_TOKENS, DP_CHUNKER_V2_OVERLAP_TOKENS};
    if (dp_chunk_text(&spec, copy, n, &list, err, sizeof(err)) == DP_OK)
        count = (long)list.count;
    dp_chunk_list_free(&list);
    free(copy);
    return count;
}
