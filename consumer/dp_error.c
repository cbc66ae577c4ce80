/* dp_error: names and message formatting for dp_err values. */
#include "dp_error.h"
#include "redact.h"

#include <stdarg.h>
#include <stdio.h>

const char *dp_err2str(dp_err err)
{
    switch (err) {
    case DP_OK: return "ok";
    case DP_ERR_RETRYABLE: return "retryable";
    case DP_ERR_PERMANENT: return "permanent";
    case DP_ERR_POISON: return "poison";
    case DP_ERR_FENCED: return "fenced";
    }
    return "unknown";
}

/* Length of the valid UTF-8 character at p (n bytes readable), or 0. */
static size_t utf8_char_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xbf;
    size_t len;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4;
    else
        return 0;
    if (c == 0xe0)
        lo = 0xa0;          /* no overlong forms */
    else if (c == 0xed)
        hi = 0x9f;          /* no surrogates */
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;          /* nothing above U+10FFFF */
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return len;
}

dp_err dp_errf(dp_err err, char *buf, size_t buflen, const char *fmt, ...)
{
    if (buf && buflen) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(buf, buflen, fmt, ap);
        va_end(ap);
        /* Cut short: drop a character whose encoding lost its end. */
        if (n >= 0 && (size_t)n >= buflen) {
            size_t len = buflen - 1, start = len;
            while (start > 0 && len - start < 4 && ((unsigned char)buf[start - 1] & 0xc0) == 0x80)
                start--;
            if (start > 0 && (unsigned char)buf[start - 1] >= 0xc0)
                start--;
            else
                start = len;
            if (start < len && utf8_char_len((unsigned char *)buf + start, len - start) == 0)
                buf[start] = '\0';
        }
        /* An error value may be logged, stored and published: no secret
         * setting leaves in it (redact.h). */
        dp_redact(buf);
    }
    return err;
}

size_t dp_err_quote(char *out, size_t outlen, const void *text, size_t n)
{
    const unsigned char *p = text;
    size_t o = 0;
    if (!outlen)
        return 0;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_char_len(p + i, n - i);
        if (len == 0 || p[i] < 0x20 || p[i] == 0x7f) {
            if (o + 1 >= outlen)
                break;
            out[o++] = p[i] == '\n' || p[i] == '\r' || p[i] == '\t' ? ' ' : '?';
            i++;
            continue;
        }
        if (o + len >= outlen)
            break;
        for (size_t k = 0; k < len; k++)
            out[o++] = (char)p[i + k];
        i += len;
    }
    out[o] = '\0';
    return o;
}
