/*
 * replay: main() for a fuzz harness built without libFuzzer (any compiler).
 *
 *   fuzz_<target> PATH...
 *
 * Runs the harness once over each file named, and over every file (sorted,
 * dot files skipped) of each folder named; a folder that does not exist is
 * skipped, so an empty regressions/<target> needs no placeholder.  A crash
 * or a failed FUZZ_CHECK aborts, which fails the ctest.  libFuzzer builds
 * do the same with `fuzz_<target> -runs=0 PATH...`.
 */
#include <string.h>
#include <sys/stat.h>

#include "support_fuzz.h"

/* Harnesses need not define it: libFuzzer calls it only if they do. */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

static int run_file(const char *path)
{
    size_t len = 0;
    uint8_t *data = fuzz_read_file(path, &len);
    if (!data) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        return -1;
    }
    /* An exact-size copy, so ASan sees a read past the input's end. */
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, data, len);
    free(data);
    LLVMFuzzerTestOneInput(copy, len);
    free(copy);
    return 0;
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    int runs = 0, failed = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s does not exist, skipped\n", argv[i]);
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            failed |= run_file(argv[i]) != 0;
            runs++;
            continue;
        }
        char **names = fuzz_list_dir(argv[i], NULL);
        for (size_t k = 0; names && names[k]; k++) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", argv[i], names[k]);
            failed |= run_file(path) != 0;
            runs++;
        }
        fuzz_names_free(names);
    }
    printf("replay: %d inputs run%s\n", runs, failed ? ", some unreadable" : "");
    return failed ? 1 : 0;
}
