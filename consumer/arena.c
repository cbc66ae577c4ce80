/*
 * dp_arena: a bump allocator for one batch's bytes (record copies, outputs):
 * one reset per batch instead of a free per record.  Chunks of the
 * standard size are kept for reuse up to DP_ARENA_KEEP bytes; bigger ones
 * are freed.  Out of memory aborts, as everywhere in the runtime.
 */
#include "arena.h"

#include <stdlib.h>

void *dp_arena_alloc(dp_arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    dp_arena_chunk *c = a->cur;
    if (!c || c->cap - c->used < n) {
        if (n <= DP_ARENA_CHUNK && a->spare) {
            c = a->spare;
            a->spare = c->next;
            a->spare_bytes -= c->cap;
        } else {
            size_t cap = n > DP_ARENA_CHUNK ? n : DP_ARENA_CHUNK;
            c = malloc(sizeof(*c) + cap);
            if (!c)
                abort(); /* as the rest of the runtime: no recovery from OOM */
            c->cap = cap;
        }
        c->used = 0;
        c->next = a->cur;
        a->cur = c;
    }
    void *p = (char *)(c + 1) + c->used;
    c->used += n;
    return p;
}
void dp_arena_reset(dp_arena *a)
{
    while (a->cur) {
        dp_arena_chunk *c = a->cur;
        a->cur = c->next;
        if (c->cap == DP_ARENA_CHUNK && a->spare_bytes + c->cap <= DP_ARENA_KEEP) {
            c->next = a->spare;
            a->spare = c;
            a->spare_bytes += c->cap;
        } else {
            free(c);
        }
    }
}
void dp_arena_free(dp_arena *a)
{
    dp_arena_reset(a);
    while (a->spare) {
        dp_arena_chunk *c = a->spare;
        a->spare = c->next;
        free(c);
    }
    a->spare_bytes = 0;
}
