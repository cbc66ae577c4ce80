/*
 * avro_seeds: writes the seed corpus of fuzz_avro with the project's own
 * encoder (dp_avro_encode), in the harness's input format.
 *
 *   fuzz_avro_seeds OUTDIR      (e.g. tests/fuzz/corpus/avro)
 *
 * For every schema of fuzz_avro_schemas, two values that differ in every
 * field (each union branch, empty and full arrays and maps, each enum
 * symbol taken in turn) are filled in by walking the schema, and written as
 *   <stem>-<variant>.bin      [reader = writer = schema][writer][body]
 *   <stem>-raw.bin            [reader][not an index][C3 01 fp body]
 * plus, for two schemas of one record name (document_v1/v2), each written
 * by one and read by the other (<writer>-as-<reader>.bin).  The output is
 * the same on every run.
 */
#include <string.h>

#include "avro_codec.h"
#include "support_fuzz.h"

#define MAX_SCHEMAS 64

static int fill(avro_value_t *v, int variant, int depth, const char *field);

static int fill_string(avro_value_t *v, const char *field)
{
    size_t n = field ? strlen(field) : 0;
    if (n > 3 && strcmp(field + n - 3, "_id") == 0)
        return avro_value_set_string(v, "6c8a1e6e-1f0b-4aa8-9f0a-1a7c2e6f2b42");
    return avro_value_set_string(v, field ? field : "text");
}

static int fill(avro_value_t *v, int variant, int depth, const char *field)
{
    avro_value_t child;
    avro_schema_t s = avro_value_get_schema(v);
    int rc = 0;
    switch (avro_value_get_type(v)) {
    case AVRO_NULL: return avro_value_set_null(v);
    case AVRO_BOOLEAN: return avro_value_set_boolean(v, variant & 1);
    case AVRO_INT32: return avro_value_set_int(v, variant ? -7 : 42);
    case AVRO_INT64: return avro_value_set_long(v, variant ? -1 : INT64_C(1700000000000));
    case AVRO_FLOAT: return avro_value_set_float(v, variant ? -0.25f : 1.5f);
    case AVRO_DOUBLE: return avro_value_set_double(v, variant ? 1e300 : 3.25);
    case AVRO_BYTES: return avro_value_set_bytes(v, variant ? "" : "\x00\x01\xff", variant ? 0 : 3);
    case AVRO_STRING: return variant ? avro_value_set_string(v, "") : fill_string(v, field);
    case AVRO_FIXED: {
        char raw[256];
        size_t n = (size_t)avro_schema_fixed_size(s);
        memset(raw, variant ? 0x00 : 0xab, sizeof(raw));
        return avro_value_set_fixed(v, raw, n < sizeof(raw) ? n : sizeof(raw));
    }
    case AVRO_ENUM:
        return avro_value_set_enum(v, variant % avro_schema_enum_number_of_symbols(s));
    case AVRO_ARRAY:
        for (int i = 0; i < (variant ? 0 : 2) && rc == 0; i++)
            if ((rc = avro_value_append(v, &child, NULL)) == 0)
                rc = fill(&child, i, depth + 1, NULL);
        return rc;
    case AVRO_MAP:
        for (int i = 0; i < (variant ? 0 : 2) && rc == 0; i++)
            if ((rc = avro_value_add(v, i ? "b" : "a", &child, NULL, NULL)) == 0)
                rc = fill(&child, i, depth + 1, NULL);
        return rc;
    case AVRO_UNION: {
        /* Deep down, branch 0 (null in a recursive type) ends the value. */
        size_t nb = avro_schema_union_size(s);
        int branch = depth > 3 ? 0 : (int)((size_t)(variant + 1) % nb);
        if ((rc = avro_value_set_branch(v, branch, &child)) == 0)
            rc = fill(&child, variant, depth + 1, field);
        return rc;
    }
    case AVRO_RECORD:
        for (size_t i = 0; i < avro_schema_record_size(s) && rc == 0; i++)
            if ((rc = avro_value_get_by_index(v, i, &child, NULL)) == 0)
                rc = fill(&child, variant + (int)i, depth + 1,
                          avro_schema_record_field_name(s, (int)i));
        return rc;
    default: return EINVAL;
    }
}

static void write_seed(const char *dir, const char *name, uint8_t reader, uint8_t writer,
                       const uint8_t *bytes, size_t len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s.bin", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fputc(reader, f) == EOF || fputc(writer, f) == EOF ||
        fwrite(bytes, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "avro_seeds: cannot write %s\n", path);
        exit(1);
    }
    printf("%s (%zu bytes)\n", path, len + 2);
}

/* One value of schema i, variant; its single-object bytes (malloc'd). */
static uint8_t *encode_one(dp_avro_registry *reg, uint64_t fp, int variant, size_t *len)
{
    avro_value_t v;
    void *buf = NULL;
    char err[512];
    if (dp_avro_value_new(reg, fp, &v, err, sizeof(err)) != DP_OK ||
        fill(&v, variant, 0, NULL) != 0 ||
        dp_avro_encode(reg, fp, &v, &buf, len, err, sizeof(err)) != DP_OK) {
        fprintf(stderr, "avro_seeds: cannot encode %016llx: %s\n", (unsigned long long)fp,
                err);
        exit(1);
    }
    avro_value_decref(&v);
    return buf;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
        return 2;
    }
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t fps[MAX_SCHEMAS];
    char *stems[MAX_SCHEMAS];
    int stage[MAX_SCHEMAS];
    size_t n = fuzz_avro_schemas(reg, fps, stems, stage, MAX_SCHEMAS);
    for (size_t i = 0; i < n; i++) {
        for (int variant = 0; variant < 2; variant++) {
            size_t len;
            uint8_t *buf = encode_one(reg, fps[i], variant, &len);
            char name[300];
            snprintf(name, sizeof(name), "%s-%d", stems[i], variant);
            write_seed(argv[1], name, (uint8_t)i, (uint8_t)i, buf + DP_AVRO_HEADER_SIZE,
                       len - DP_AVRO_HEADER_SIZE);
            if (variant == 0) {
                snprintf(name, sizeof(name), "%s-raw", stems[i]);
                write_seed(argv[1], name, (uint8_t)i, 0xff, buf, len);
            }
            free(buf);
        }
        /* The same record name in another schema: resolution both ways. */
        avro_schema_t si = dp_avro_registry_schema(reg, fps[i]);
        for (size_t j = 0; j < n; j++) {
            avro_schema_t sj = dp_avro_registry_schema(reg, fps[j]);
            const char *nsi = avro_schema_namespace(si), *nsj = avro_schema_namespace(sj);
            if (j == i || strcmp(avro_schema_name(si), avro_schema_name(sj)) != 0 ||
                strcmp(nsi ? nsi : "", nsj ? nsj : "") != 0)
                continue;
            size_t len;
            uint8_t *buf = encode_one(reg, fps[i], 0, &len);
            char name[300];
            snprintf(name, sizeof(name), "%s-as-%s", stems[i], stems[j]);
            write_seed(argv[1], name, (uint8_t)j, (uint8_t)i, buf + DP_AVRO_HEADER_SIZE,
                       len - DP_AVRO_HEADER_SIZE);
            free(buf);
        }
    }
    for (size_t i = 0; i < n; i++)
        free(stems[i]);
    dp_avro_registry_free(reg);
    return 0;
}
