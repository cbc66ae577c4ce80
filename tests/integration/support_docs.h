/*
 * support_docs: deterministic test documents of every supported kind.
 *
 * Markdown and text documents are their own parsed text, so a test can
 * compute their expected chunks with the real chunker; HTML and PDF (built
 * by hand: one Helvetica font, uncompressed text pages) go through the
 * parser service.
 */
#ifndef DP_SUPPORT_DOCS_H
#define DP_SUPPORT_DOCS_H

#include <stddef.h>

typedef struct tdoc {
    char path[1024];
    const char *kind;     /* "md", "txt", "html", "pdf" */
    size_t size;          /* bytes on disk */
    char *text;           /* md/txt: the content; else NULL */
} tdoc;

/* Writes one document of about `size` bytes; seed makes it unique. */
void tdoc_make(tdoc *d, const char *dir, const char *kind, size_t size,
               unsigned seed);
void tdoc_free(tdoc *d);

/* Expected chunk count of a md/txt document (-1 for other kinds). */
long tdoc_expected_chunks(const tdoc *d);

#endif
