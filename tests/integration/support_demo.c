/* support_demo: encodes DemoRecords for tests without a dp_config. */
#include <stdio.h>
#include <string.h>

#include "config.h"

dp_err dp_demo_encode(const dp_config *cfg, const char *id, int64_t seq,
                      const char *body, void **buf, size_t *len, char *err,
                      size_t errlen);

int dp_test_demo_encode(const char *srcdir, const char *id, long seq,
                        const char *body, void **buf, size_t *len, char *err,
                        size_t errlen);
int dp_test_demo_encode(const char *srcdir, const char *id, long seq,
                        const char *body, void **buf, size_t *len, char *err,
                        size_t errlen)
{
    static char dir[2048];
    dp_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    snprintf(dir, sizeof(dir), "%s/schemas", srcdir);
    cfg.schema_dir = dir;
    return (int)dp_demo_encode(&cfg, id, seq, body, buf, len, err, errlen);
}
