/* support_fuzz: helpers of the fuzz harnesses (see support_fuzz.h). */
#include "support_fuzz.h"

#include <dirent.h>
#include <string.h>
#include <sys/stat.h>

#include "avro_codec.h"

const char *fuzz_source_dir(void)
{
    const char *dir = getenv("DOCPIPE_SOURCE_DIR");
    return dir && *dir ? dir : DOCPIPE_SOURCE_DIR;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char **fuzz_list_dir(const char *dir, const char *suffix)
{
    size_t n = 0, cap = 16;
    char **names = calloc(cap + 1, sizeof(*names));
    DIR *d = names ? opendir(dir) : NULL;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        size_t len = strlen(de->d_name), slen = suffix ? strlen(suffix) : 0;
        if (de->d_name[0] == '.' ||
            (suffix && (len <= slen || strcmp(de->d_name + len - slen, suffix) != 0)))
            continue;
        char path[4096];
        struct stat st;
        if (snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) >= (int)sizeof(path) ||
            stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (n == cap) {
            char **grown = realloc(names, (2 * cap + 1) * sizeof(*names));
            if (!grown)
                break;
            names = grown;
            cap *= 2;
        }
        if ((names[n] = strdup(de->d_name)))
            n++;
    }
    if (d)
        closedir(d);
    if (names) {
        names[n] = NULL;
        qsort(names, n, sizeof(*names), by_name);
    }
    return names;
}

void fuzz_names_free(char **names)
{
    for (size_t i = 0; names && names[i]; i++)
        free(names[i]);
    free(names);
}

uint8_t *fuzz_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0, got;
    uint8_t *buf = malloc(cap + 1);
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            uint8_t *grown = realloc(buf, 2 * cap + 1);
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
            cap *= 2;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

size_t fuzz_avro_schemas(dp_avro_registry *reg, uint64_t *fps, char **stems, int *stage,
                         size_t max)
{
    static const char *const dirs[] = {"schemas", "tests/data/avro"};
    size_t n = 0;
    for (size_t d = 0; d < 2; d++) {
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s/%s", fuzz_source_dir(), dirs[d]);
        char **names = fuzz_list_dir(dir, ".avsc");
        for (size_t i = 0; names && names[i] && n < max; i++) {
            char path[8192], err[512];
            snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
            if (dp_avro_registry_add_file(reg, path, &fps[n], err, sizeof(err)) != DP_OK) {
                fprintf(stderr, "fuzz: schema %s: %s\n", path, err);
                abort();
            }
            if (stems)
                stems[n] = strndup(names[i], strlen(names[i]) - strlen(".avsc"));
            stage[n] = d == 0;
            n++;
        }
        fuzz_names_free(names);
    }
    if (n == 0) {
        fprintf(stderr, "fuzz: no schemas under %s\n", fuzz_source_dir());
        abort();
    }
    return n;
}

int fuzz_utf8_message(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                   : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (len == 0 || i + len > n || (c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
        uint32_t cp = len == 1 ? c : c & (0x7f >> len);
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + k] & 0x3f);
        }
        static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < least[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}
