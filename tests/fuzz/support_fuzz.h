/*
 * support_fuzz: what the fuzz harnesses share.
 *
 * A harness is a file fuzz_<target>.c defining LLVMFuzzerTestOneInput (and
 * LLVMFuzzerInitialize when it sets up state once).  It must be
 * deterministic (the same input always takes the same path) and must free
 * everything it allocates for one input before returning, so that
 * LeakSanitizer's report at the end of a run points at the product code.
 * FUZZ_CHECK turns a broken promise of the code under test into a crash
 * that libFuzzer saves, exactly as if a sanitizer had found it.
 */
#ifndef DP_SUPPORT_FUZZ_H
#define DP_SUPPORT_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts with the file, line, condition and a message when cond is false. */
#define FUZZ_CHECK(cond, msg)                                                     \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "%s:%d: fuzz check failed: %s: %s\n", __FILE__,       \
                    __LINE__, #cond, (msg));                                      \
            abort();                                                              \
        }                                                                         \
    } while (0)

/* The source tree: $DOCPIPE_SOURCE_DIR, else where it was built from. */
const char *fuzz_source_dir(void);

/* The names of the regular files in dir that end in suffix (NULL: any, but
 * not dot files), sorted, as a NULL-terminated malloc'd array: free it with
 * fuzz_names_free.  An unreadable or missing folder gives an empty list. */
char **fuzz_list_dir(const char *dir, const char *suffix);
void fuzz_names_free(char **names);

/* Reads a whole file into a malloc'd buffer (NUL-terminated, *len without
 * it); NULL if it cannot be read. */
uint8_t *fuzz_read_file(const char *path, size_t *len);

/* The schemas the Avro harness decodes with, in a fixed order, since an
 * input names them by index: the .avsc files of schemas/ (the stages'
 * messages), then those of tests/data/avro (fixtures with every Avro type
 * and two versions of one record, for schema resolution), each sorted by
 * file name.  Registers
 * them in reg; writes at most max fingerprints into fps, and into stems the
 * file names without ".avsc" (malloc'd, caller frees; may be NULL), and
 * into stage[i] whether schema i is a stage message.  Returns the count. */
struct dp_avro_registry;
size_t fuzz_avro_schemas(struct dp_avro_registry *reg, uint64_t *fps, char **stems,
                         int *stage, size_t max);

/* Whether s[0..n) is valid UTF-8 (RFC 3629: no overlong forms, surrogates
 * or code points above U+10FFFF) without control characters other than
 * tab: what a message must be to go into a PostgreSQL text column. */
int fuzz_utf8_message(const char *s, size_t n);

/* Input consumed from the front, a byte at a time; 0 once it is used up. */
typedef struct fuzz_in {
    const uint8_t *p;
    size_t n;
} fuzz_in;

static inline uint8_t fuzz_byte(fuzz_in *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

#endif
