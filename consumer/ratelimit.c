/* ratelimit: sliding-window request and token limits (see ratelimit.h). */
#include "ratelimit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"

struct entry {
    int64_t at;     /* admission time, ms */
    int64_t tokens;
};

struct dp_ratelimit {
    pthread_mutex_t mu;
    int64_t rpm, tpm;       /* <= 0: unlimited */
    struct entry *ring;     /* the window's admissions, oldest at head */
    size_t cap, head, len;
    int64_t window_tokens;  /* sum of tokens over the ring */
    int64_t (*now_ms)(void *arg);
    void *clock_arg;
};

dp_ratelimit *dp_ratelimit_new(int requests_per_min, int tokens_per_min)
{
    dp_ratelimit *rl = calloc(1, sizeof(*rl));
    if (!rl)
        return NULL;
    pthread_mutex_init(&rl->mu, NULL);
    rl->rpm = requests_per_min;
    rl->tpm = tokens_per_min;
    rl->now_ms = dp_clock_mono_ms;
    return rl;
}

void dp_ratelimit_free(dp_ratelimit *rl)
{
    if (!rl)
        return;
    pthread_mutex_destroy(&rl->mu);
    free(rl->ring);
    free(rl);
}

void dp_ratelimit_set_clock(dp_ratelimit *rl, int64_t (*now_ms)(void *arg), void *arg)
{
    pthread_mutex_lock(&rl->mu);
    rl->now_ms = now_ms ? now_ms : dp_clock_mono_ms;
    rl->clock_arg = now_ms ? arg : NULL;
    pthread_mutex_unlock(&rl->mu);
}

static struct entry *at(dp_ratelimit *rl, size_t i)
{
    return &rl->ring[(rl->head + i) % rl->cap];
}

/* Drops admissions that have left the window. */
static void expire(dp_ratelimit *rl, int64_t now)
{
    while (rl->len && now - at(rl, 0)->at >= DP_RATELIMIT_WINDOW_MS) {
        rl->window_tokens -= at(rl, 0)->tokens;
        rl->head = (rl->head + 1) % rl->cap;
        rl->len--;
    }
}

static int push(dp_ratelimit *rl, int64_t now, int64_t tokens)
{
    if (rl->len == rl->cap) {
        size_t cap = rl->cap ? rl->cap * 2 : 64;
        struct entry *ring = malloc(cap * sizeof(*ring));
        if (!ring)
            return -1;
        for (size_t i = 0; i < rl->len; i++)
            ring[i] = *at(rl, i);
        free(rl->ring);
        rl->ring = ring;
        rl->cap = cap;
        rl->head = 0;
    }
    *at(rl, rl->len) = (struct entry){now, tokens};
    rl->len++;
    rl->window_tokens += tokens;
    return 0;
}

/* ms until admission i leaves the window. */
static int64_t until_expired(dp_ratelimit *rl, size_t i, int64_t now)
{
    return at(rl, i)->at + DP_RATELIMIT_WINDOW_MS - now;
}

int64_t dp_ratelimit_try(dp_ratelimit *rl, int tokens)
{
    int64_t want = tokens > 0 ? tokens : 0;
    int64_t wait = 0;
    pthread_mutex_lock(&rl->mu);
    int64_t now = rl->now_ms(rl->clock_arg);
    expire(rl, now);

    /* Requests: the oldest admissions must leave until one slot is free. */
    if (rl->rpm > 0 && (int64_t)rl->len >= rl->rpm)
        wait = until_expired(rl, rl->len - (size_t)rl->rpm, now);

    /* Tokens: the window may hold at most tpm - want (0 for an oversized
     * request); find the admission whose expiry brings it there. */
    if (rl->tpm > 0 && want > 0) {
        int64_t room = want <= rl->tpm ? rl->tpm - want : 0;
        int64_t held = rl->window_tokens;
        for (size_t i = 0; i < rl->len && held > room; i++) {
            held -= at(rl, i)->tokens;
            if (held <= room) {
                int64_t w = until_expired(rl, i, now);
                if (w > wait)
                    wait = w;
            }
        }
    }

    if (wait <= 0 && push(rl, now, want) != 0)
        wait = 1; /* out of memory: ask again later */
    pthread_mutex_unlock(&rl->mu);
    return wait > 0 ? wait : 0;
}

void dp_ratelimit_usage(dp_ratelimit *rl, int64_t *requests, int64_t *tokens)
{
    pthread_mutex_lock(&rl->mu);
    expire(rl, rl->now_ms(rl->clock_arg));
    if (requests)
        *requests = (int64_t)rl->len;
    if (tokens)
        *tokens = rl->window_tokens;
    pthread_mutex_unlock(&rl->mu);
}
