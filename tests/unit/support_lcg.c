/* support_lcg: the shared LCG test-document generator (see support_lcg.h). */
#include "support_lcg.h"

#include <stdlib.h>
#include <string.h>

static const char *const LCG_TOKENS[] = {
    "a", "word ", "Text.", "#", "## H", " ", "  ", "\t", "\r", "\n", "\n", "\n\n",
    "\xc2\xa0", "\xe3\x80\x80", "\xe2\x80\xa8", "\v", "\x1c", "x", "\xc3\xa9", "# Title\n",
};

char *lcg_doc(uint64_t seed, int ntok, size_t *len)
{
    size_t cap = (size_t)ntok * 8 + 1, n = 0;
    char *doc = malloc(cap);
    uint64_t x = seed;
    for (int i = 0; i < ntok; i++) {
        x = x * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
        const char *t = LCG_TOKENS[(x >> 33) % (sizeof LCG_TOKENS / sizeof LCG_TOKENS[0])];
        size_t tl = strlen(t);
        memcpy(doc + n, t, tl);
        n += tl;
    }
    doc[n] = '\0';
    *len = n;
    return doc;
}
