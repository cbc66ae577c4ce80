/* dp_error: names and message formatting for dp_err values. */
#include "dp_error.h"

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

dp_err dp_errf(dp_err err, char *buf, size_t buflen, const char *fmt, ...)
{
    if (buf && buflen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, buflen, fmt, ap);
        va_end(ap);
    }
    return err;
}
