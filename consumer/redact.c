/* redact: registered secrets masked in every message (see redact.h). */
#include "redact.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DP_REDACT_MAX 64

static pthread_mutex_t dp_redact_mu = PTHREAD_MUTEX_INITIALIZER;
static char *dp_redact_secrets[DP_REDACT_MAX];
static size_t dp_redact_n;
static char *dp_redact_public;

void dp_redact_set_public(const char *text)
{
    char *copy = text ? strdup(text) : NULL;
    pthread_mutex_lock(&dp_redact_mu);
    free(dp_redact_public);
    dp_redact_public = copy;
    pthread_mutex_unlock(&dp_redact_mu);
}

void dp_redact_add(const char *secret)
{
    if (!secret || strlen(secret) < DP_REDACT_MIN)
        return;
    pthread_mutex_lock(&dp_redact_mu);
    int known = dp_redact_public && strstr(dp_redact_public, secret) != NULL;
    for (size_t i = 0; i < dp_redact_n && !known; i++)
        known = strcmp(dp_redact_secrets[i], secret) == 0;
    if (!known && dp_redact_n < DP_REDACT_MAX) {
        char *copy = strdup(secret);
        if (copy) {
            dp_redact_secrets[dp_redact_n] = copy;
            /* Published after the slot is filled: dp_redact() reads the
             * count without the lock to skip the common no-secret case. */
            __atomic_store_n(&dp_redact_n, dp_redact_n + 1, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&dp_redact_mu);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Registers s[0..n) as written and percent-decoded. */
static void add_span(const char *s, size_t n)
{
    char *raw = strndup(s, n), *dec = malloc(n + 1);
    if (raw && dec) {
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
            int hi, lo;
            if (s[i] == '%' && i + 2 < n && (hi = hexval((unsigned char)s[i + 1])) >= 0 &&
                (lo = hexval((unsigned char)s[i + 2])) >= 0) {
                dec[o++] = (char)(hi * 16 + lo);
                i += 2;
            } else {
                dec[o++] = s[i];
            }
        }
        dec[o] = '\0';
        dp_redact_add(raw);
        dp_redact_add(dec);
    }
    free(raw);
    free(dec);
}

/* Where the password of url is: [*start, *start + *len), or 0 if none.
 * Looks for scheme://user:PASSWORD@host, a password=VALUE query parameter,
 * and a password=VALUE (or 'quoted value') pair of a key=value string. */
static int find_password(const char *url, size_t *start, size_t *len)
{
    const char *scheme = strstr(url, "://");
    if (scheme) {
        const char *auth = scheme + 3;
        size_t alen = strcspn(auth, "/?#");
        const char *at = NULL;
        for (const char *p = auth; p < auth + alen; p++)
            if (*p == '@')
                at = p; /* the last @ ends the userinfo */
        if (at) {
            const char *colon = memchr(auth, ':', (size_t)(at - auth));
            if (colon && at > colon + 1) {
                *start = (size_t)(colon + 1 - url);
                *len = (size_t)(at - colon - 1);
                return 1;
            }
        }
    }
    for (const char *p = url; (p = strstr(p, "password")) != NULL; p += 8) {
        int starts = p == url || p[-1] == '?' || p[-1] == '&' || isspace((unsigned char)p[-1]);
        const char *v = p + 8;
        while (!scheme && isspace((unsigned char)*v))
            v++;
        if (!starts || *v != '=')
            continue;
        v++;
        while (!scheme && isspace((unsigned char)*v))
            v++;
        if (!scheme && *v == '\'') {
            const char *e = v + 1;
            while (*e && *e != '\'')
                e += e[0] == '\\' && e[1] ? 2 : 1;
            *start = (size_t)(v + 1 - url);
            *len = (size_t)(e - v - 1);
        } else {
            *start = (size_t)(v - url);
            *len = scheme ? strcspn(v, "&#") : strcspn(v, " \t\n\r");
        }
        return *len > 0;
    }
    return 0;
}

void dp_redact_add_url(const char *url)
{
    size_t start, len;
    if (url && find_password(url, &start, &len))
        add_span(url + start, len);
}

char *dp_redact_url(const char *url, char *out, size_t outlen)
{
    size_t start, len;
    if (!outlen)
        return out;
    if (!url)
        url = "";
    if (find_password(url, &start, &len))
        snprintf(out, outlen, "%.*s%s%s", (int)start, url, DP_REDACT_MASK,
                 url + start + len);
    else
        snprintf(out, outlen, "%s", url);
    dp_redact(out);
    return out;
}

void dp_redact(char *text)
{
    if (!text || __atomic_load_n(&dp_redact_n, __ATOMIC_ACQUIRE) == 0)
        return;
    pthread_mutex_lock(&dp_redact_mu);
    for (size_t i = 0; i < dp_redact_n; i++) {
        const char *s = dp_redact_secrets[i];
        size_t n = strlen(s), m = strlen(DP_REDACT_MASK);
        char *p = text;
        while ((p = strstr(p, s)) != NULL) {
            memcpy(p, DP_REDACT_MASK, m);
            memmove(p + m, p + n, strlen(p + n) + 1);
            p += m;
        }
    }
    pthread_mutex_unlock(&dp_redact_mu);
}

int dp_redact_is_secret_name(const char *name)
{
    static const char *const words[] = {"password", "secret", "api.key", "api_key",
                                        "sasl.jaas", "oauthbearer.config", "token"};
    char lower[256];
    size_t n = 0;
    for (; name && name[n] && n + 1 < sizeof(lower); n++)
        lower[n] = (char)tolower((unsigned char)name[n]);
    lower[n] = '\0';
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strstr(lower, words[i]))
            return 1;
    return 0;
}
