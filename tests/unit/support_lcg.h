/*
 * support_lcg: the LCG document generator shared by test_chunker.c,
 * test_ids.c and the python3 generator their expected tables came from.
 * It mixes words, headings, '\r', '\n', ASCII and Unicode spaces.
 */
#ifndef DP_SUPPORT_LCG_H
#define DP_SUPPORT_LCG_H

#include <stddef.h>
#include <stdint.h>

/* A malloc'd, NUL-terminated document of ntok tokens; *len its length. */
char *lcg_doc(uint64_t seed, int ntok, size_t *len);

#endif
