/*
 * arena: a bump allocator for one batch's bytes (see arena.c).
 */
#ifndef DP_ARENA_H
#define DP_ARENA_H

#include <stddef.h>

#define DP_ARENA_CHUNK (64 * 1024)
#define DP_ARENA_KEEP (1024 * 1024)

typedef struct dp_arena_chunk {
    struct dp_arena_chunk *next;
    size_t cap, used, pad_;   /* 32 bytes: what follows stays 16-aligned */
} dp_arena_chunk;

typedef struct dp_arena {
    dp_arena_chunk *cur;          /* in use, newest first */
    dp_arena_chunk *spare;        /* standard-size chunks kept for reuse */
    size_t spare_bytes;
} dp_arena;

/* n bytes, 16-aligned, valid until the next reset. */
void *dp_arena_alloc(dp_arena *a, size_t n);
/* Everything allocated goes; standard chunks are kept for reuse. */
void dp_arena_reset(dp_arena *a);
/* Frees every chunk. */
void dp_arena_free(dp_arena *a);

#endif
