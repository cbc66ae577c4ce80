/*
 * fuzz_tika_reply: what the Tika client makes of an answer
 * (dp_tika_reply in stages/tika_client.c: the body collected piece by piece
 * under max_bytes, the status classified, the message built from the start
 * of Tika's complaint).  libcurl's own reading of HTTP is not in scope.
 *
 * Input: [status][piece][max][flags][body...].  status picks one of the
 * statuses below (Tika's own, the edges of each class, and odd ones);
 * piece is the size of the pieces libcurl hands over (0: all at once);
 * max is max_bytes in units of 16 bytes (0: no limit); flags bit 0 declares
 * a Content-Type.
 *
 * What must hold, besides no crash, leak or undefined behaviour
 * (tika_client.h): 2xx within max_bytes is DP_OK with exactly the body as
 * a NUL-terminated text; a body over max_bytes is DP_ERR_PERMANENT; 4xx
 * other than 408 and 429 is DP_ERR_PERMANENT; everything else
 * DP_ERR_RETRYABLE; a failure hands no text over and says why, in valid
 * UTF-8 without control characters (the message goes to PostgreSQL).
 */
#include <string.h>

#include "support_fuzz.h"
#include "tika_client.h"

static const long statuses[] = {200, 201, 204, 299, 0,   100, 199, 300, 302, 399, 400,
                                404, 408, 413, 415, 422, 429, 499, 500, 502, 503, 504,
                                599, 600, 999, -1,  1000};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    long status = statuses[fuzz_byte(&in) % (sizeof(statuses) / sizeof(statuses[0]))];
    size_t piece = fuzz_byte(&in);
    size_t max = (size_t)fuzz_byte(&in) * 16;
    const char *type = fuzz_byte(&in) & 1 ? "application/pdf" : NULL;

    char *text = (char *)"untouched", err[512] = "";
    size_t text_len = 12345;
    dp_err rc = dp_tika_reply(status, in.p, in.n, piece, 4096, type, max, &text, &text_len,
                              err, sizeof(err));
    int over = max && in.n > max;
    int ok = status >= 200 && status < 300 && !over;
    int permanent = over || (status >= 400 && status < 500 && status != 408 && status != 429);
    dp_err want = ok ? DP_OK : permanent ? DP_ERR_PERMANENT : DP_ERR_RETRYABLE;
    FUZZ_CHECK(rc == want, "outcome differs from the contract");
    if (rc == DP_OK) {
        FUZZ_CHECK(text && text_len == in.n && memcmp(text, in.p, in.n) == 0 &&
                       text[text_len] == '\0',
                   "text is not the body");
        FUZZ_CHECK(err[0] == '\0', "ok with a message");
    } else {
        FUZZ_CHECK(text == NULL && text_len == 0 && err[0], "failed with a text or no why");
        FUZZ_CHECK(fuzz_utf8_message(err, strlen(err)), "message is not valid UTF-8");
    }
    free(text);
    return 0;
}
