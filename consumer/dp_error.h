/*
 * dp_error: the error values shared by every docpipe module.
 *
 * Errors are values, never exit() calls: a function that can fail returns a
 * dp_err and, where a caller needs the why, writes a message into a buffer
 * the caller owns.  The categories are the ones the runtime acts on:
 *   retryable  try again later (timeouts, 429/5xx, lost connections);
 *   permanent  will never succeed (bad content, 4xx): dead-letter it;
 *   poison     the bytes cannot even be decoded: dead-letter, no retries;
 *   fenced     this instance no longer owns the partition: roll back.
 */
#ifndef DP_ERROR_H
#define DP_ERROR_H

#include <stddef.h>

typedef enum dp_err {
    DP_OK = 0,
    DP_ERR_RETRYABLE,
    DP_ERR_PERMANENT,
    DP_ERR_POISON,
    DP_ERR_FENCED,
} dp_err;

/* Static lower-case name of an error value ("ok", "retryable", ...). */
const char *dp_err2str(dp_err err);

/* Writes a printf-style message into buf (if buf is not NULL) and returns err,
 * so failures read as: return dp_errf(DP_ERR_PERMANENT, err, errlen, "...").
 * A message cut short by buflen loses the last character whole, never part
 * of its UTF-8 encoding. */
dp_err dp_errf(dp_err err, char *buf, size_t buflen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Quotes n bytes from outside (a service's reply: any bytes) for a message:
 * writes them into out as at most outlen - 1 bytes of UTF-8 and a NUL, with
 * line breaks and tabs as spaces, every other control byte and every byte
 * that does not begin a valid character as '?', and a character that does
 * not fit whole left out.  Messages end up in PostgreSQL text columns, Kafka
 * headers and JSON log lines, which take no invalid UTF-8.  Returns the
 * bytes written. */
size_t dp_err_quote(char *out, size_t outlen, const void *text, size_t n);

#endif
