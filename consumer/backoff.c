/* backoff: exponential delays with jitter (see backoff.h). */
#include "backoff.h"

#include <stdlib.h>

int64_t dp_backoff_ms(int64_t base_ms, int n, double jitter,
                      unsigned int *rand_state)
{
    if (n < 0)
        n = 0;
    if (n > 30)
        n = 30;
    double d = (double)base_ms * (double)(1LL << n);
    if (jitter > 0) {
        double r = (double)rand_r(rand_state) / (double)RAND_MAX; /* 0..1 */
        d *= 1.0 + jitter * (2.0 * r - 1.0);
    }
    return d < 1 ? 1 : (int64_t)d;
}
