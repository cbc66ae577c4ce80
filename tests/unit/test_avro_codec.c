/*
 * avro_codec: canonical form, fingerprints, single-object encoding, schema
 * evolution, and the promise that undecodable bytes are poison, never a
 * crash.
 *
 * Reference values come from outside this code:
 *   - tests/data/avro/schema-tests.txt is the Avro project's own list of
 *     canonical forms and fingerprints (share/test/data in apache/avro,
 *     commit 70260919), which its Java tests verify;
 *   - the canonical forms, fingerprints and encoded bytes for the .avsc files
 *     here were produced with fastavro 1.x (to_parsing_canonical_form,
 *     fingerprint, schemaless_writer behind a C3 01 + fingerprint header).
 *     Python tools print the fingerprint as its 8 little-endian wire bytes;
 *     here it is the integer, as in the spec.  (python-avro 1.12.2 gets the
 *     canonical form of kitchen_sink.avsc wrong: it keeps {"type":"long"}
 *     for a logical type and spells a named type out twice.)
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "avro_codec.h"

#define ERRLEN 512

static const char *source_dir(void)
{
    const char *dir = getenv("DOCPIPE_SOURCE_DIR");
    return dir && *dir ? dir : DOCPIPE_SOURCE_DIR;
}

static char *data_path(const char *name)
{
    static char path[1024];
    snprintf(path, sizeof(path), "%s/tests/data/avro/%s", source_dir(), name);
    return path;
}

static char *slurp(const char *name)
{
    FILE *f = fopen(data_path(name), "rb");
    cr_assert_not_null(f, "cannot open %s", data_path(name));
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    cr_assert_eq(fread(text, 1, (size_t)size, f), (size_t)size);
    text[size] = '\0';
    fclose(f);
    return text;
}

static size_t unhex(const char *hex, uint8_t *out)
{
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned byte;
        sscanf(hex + 2 * i, "%2x", &byte);
        out[i] = (uint8_t)byte;
    }
    return n;
}

static uint64_t add_file(dp_avro_registry *reg, const char *name)
{
    char err[ERRLEN];
    uint64_t fp = 0;
    dp_err rc = dp_avro_registry_add_file(reg, data_path(name), &fp, err, sizeof(err));
    cr_assert_eq(rc, DP_OK, "registering %s: %s", name, err);
    return fp;
}

static uint64_t add_json(dp_avro_registry *reg, const char *json)
{
    char err[ERRLEN];
    uint64_t fp = 0;
    dp_err rc = dp_avro_registry_add_json(reg, json, &fp, err, sizeof(err));
    cr_assert_eq(rc, DP_OK, "registering %s: %s", json, err);
    return fp;
}

static avro_value_t field(avro_value_t *rec, const char *name)
{
    avro_value_t f;
    cr_assert_eq(avro_value_get_by_name(rec, name, &f, NULL), 0, "no field %s", name);
    return f;
}

static void set_field_string(avro_value_t *rec, const char *name, const char *s);

static const char *string_of(avro_value_t *rec, const char *name)
{
    avro_value_t f = field(rec, name);
    const char *s;
    size_t size;
    cr_assert_eq(avro_value_get_string(&f, &s, &size), 0);
    cr_assert_eq(strlen(s) + 1, size, "string %s carries its NUL in its size", name);
    return s;
}

/* fastavro: document_v1.avsc, {"id":"doc-42","title":"Über Avro","pages":7,
 * "tags":["a","bb"],"status":"PARSED","attachment":b"\x00\x01\xff"} */
static const char V1_DOC42[] =
    "c3012d7a8bfa4dd7200b0c646f632d343214c39c626572204176726f0e040261046262000202060001ff";
/* fastavro: document_v2.avsc, {"id":"doc-43","title":"t","pages":1,"tags":[],
 * "status":"DONE","attachment":None,"language":"fr","labels":{"x":-1}} */
static const char V2_DOC43[] =
    "c3017fcbacb3946d6ed20c646f632d34330274020004000466720202780100";

#define FP_V1 UINT64_C(0x0b20d74dfa8b7a2d)
#define FP_V2 UINT64_C(0xd26e6d94b3accb7f)
#define FP_SINK UINT64_C(0x958edfc93a4431ff)

/* ---------------------------------------------------------------------- */
/* Canonical form and fingerprints                                          */
/* ---------------------------------------------------------------------- */

/* One case of schema-tests.txt. */
typedef struct spec_case {
    char id[16];
    char *input, *canonical, *fingerprint;
} spec_case;

/* Reads "<<name value" or a "<<name" ... "name" block starting at *line. */
static char *spec_value(char **lines, size_t n, size_t *i, const char *name)
{
    char *line = lines[*i] + 2 + strlen(name);
    if (*line == ' ')
        return strdup(line + 1);
    size_t cap = 1;
    char *out = calloc(1, cap);
    for ((*i)++; *i < n && strcmp(lines[*i], name) != 0; (*i)++) {
        cap += strlen(lines[*i]) + 1;
        out = realloc(out, cap);
        strcat(out, lines[*i]);
        strcat(out, "\n");
    }
    return out;
}

Test(canonical, matches_every_avro_spec_test_vector)
{
    char *text = slurp("schema-tests.txt");
    char *lines[4096];
    size_t n = 0;
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l && n < 4096;
         l = strtok_r(NULL, "\n", &save))
        lines[n++] = l;

    spec_case cases[256];
    size_t ncases = 0;
    char id[16] = "?";
    for (size_t i = 0; i < n; i++) {
        if (strncmp(lines[i], "// ", 3) == 0 && strlen(lines[i]) == 6)
            snprintf(id, sizeof(id), "%s", lines[i] + 3);
        else if (strncmp(lines[i], "<<INPUT", 7) == 0) {
            cases[ncases] = (spec_case){.input = spec_value(lines, n, &i, "INPUT")};
            snprintf(cases[ncases++].id, sizeof(id), "%s", id);
        } else if (ncases && strncmp(lines[i], "<<canonical", 11) == 0)
            cases[ncases - 1].canonical = spec_value(lines, n, &i, "canonical");
        else if (ncases && strncmp(lines[i], "<<fingerprint", 13) == 0)
            cases[ncases - 1].fingerprint = spec_value(lines, n, &i, "fingerprint");
    }
    cr_assert_geq(ncases, 34, "parsed only %zu cases", ncases);

    size_t fingerprints = 0;
    for (size_t k = 0; k < ncases; k++) {
        spec_case *c = &cases[k];
        char err[ERRLEN];
        char *pcf = dp_avro_canonical_form(c->input, err, sizeof(err));
        cr_assert_not_null(pcf, "case %s: %s", c->id, err);
        cr_expect_str_eq(pcf, c->canonical, "case %s", c->id);
        if (c->fingerprint) {
            int64_t want = strtoll(c->fingerprint, NULL, 10);
            cr_expect_eq((int64_t)dp_avro_crc64(pcf, strlen(pcf)), want,
                         "case %s fingerprint", c->id);
            fingerprints++;
        }
        free(pcf);
        free(c->input);
        free(c->canonical);
        free(c->fingerprint);
    }
    cr_assert_geq(fingerprints, 25);
    free(text);
}

Test(canonical, crc64_of_no_bytes_is_the_empty_seed)
{
    cr_assert_eq(dp_avro_crc64("", 0), DP_AVRO_CRC64_EMPTY);
    cr_assert_eq(dp_avro_crc64("\"int\"", 5), UINT64_C(8247732601305521295));
}

Test(canonical, qualifies_nested_names_and_strips_everything_else)
{
    char *json = slurp("kitchen_sink.avsc"), err[ERRLEN];
    char *pcf = dp_avro_canonical_form(json, err, sizeof(err));
    cr_assert_not_null(pcf, "%s", err);
    cr_assert_str_eq(pcf,
        "{\"name\":\"docpipe.test.all.Sink\",\"type\":\"record\",\"fields\":["
        "{\"name\":\"n\",\"type\":\"null\"},{\"name\":\"b\",\"type\":\"boolean\"},"
        "{\"name\":\"i\",\"type\":\"int\"},{\"name\":\"l\",\"type\":\"long\"},"
        "{\"name\":\"f\",\"type\":\"float\"},{\"name\":\"d\",\"type\":\"double\"},"
        "{\"name\":\"raw\",\"type\":\"bytes\"},{\"name\":\"s\",\"type\":\"string\"},"
        "{\"name\":\"md5\",\"type\":{\"name\":\"docpipe.test.all.MD5\",\"type\":\"fixed\",\"size\":16}},"
        "{\"name\":\"color\",\"type\":{\"name\":\"docpipe.test.colors.Color\",\"type\":\"enum\","
        "\"symbols\":[\"RED\",\"GREEN\",\"BLUE\"]}},"
        "{\"name\":\"other_color\",\"type\":\"docpipe.test.colors.Color\"},"
        "{\"name\":\"matrix\",\"type\":{\"type\":\"array\",\"items\":{\"type\":\"array\",\"items\":\"double\"}}},"
        "{\"name\":\"counts\",\"type\":{\"type\":\"map\",\"values\":\"long\"}},"
        "{\"name\":\"choice\",\"type\":[\"null\",\"string\",\"docpipe.test.all.MD5\","
        "{\"type\":\"map\",\"values\":\"int\"}]},"
        "{\"name\":\"inner\",\"type\":{\"name\":\"docpipe.test.all.Inner\",\"type\":\"record\",\"fields\":["
        "{\"name\":\"label\",\"type\":\"string\"},"
        "{\"name\":\"next\",\"type\":[\"null\",\"docpipe.test.all.Inner\"]}]}}]}");
    free(pcf);
    free(json);
}

Test(canonical, registered_fingerprints_match_fastavro)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    cr_assert_eq(add_file(reg, "document_v1.avsc"), FP_V1);
    cr_assert_eq(add_file(reg, "document_v2.avsc"), FP_V2);
    cr_assert_eq(add_file(reg, "kitchen_sink.avsc"), FP_SINK);
    cr_assert_not_null(dp_avro_registry_schema(reg, FP_V1));
    cr_assert_null(dp_avro_registry_schema(reg, 42));
    dp_avro_registry_free(reg);
}

Test(canonical, same_schema_written_differently_registers_once)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t a = add_json(reg, "{\"type\":\"record\",\"name\":\"R\",\"namespace\":\"x\","
                               "\"fields\":[{\"name\":\"a\",\"type\":\"int\"}]}");
    uint64_t b = add_json(reg, "{ \"name\" : \"x.R\", \"doc\":\"same\", \"type\":\"record\","
                               "\"fields\":[{\"type\":{\"type\":\"int\"},\"name\":\"a\","
                               "\"default\":3, \"order\":\"ignore\"}]}");
    cr_assert_eq(a, b);
    dp_avro_registry_free(reg);
}

/* The canonical form cannot say "namespace":"" (a known gap in the spec), so
 * the schema must reach avro-c as written, not as its canonical form. */
Test(canonical, null_namespace_type_inside_a_namespaced_record)
{
    static const char json[] =
        "{\"type\":\"record\",\"name\":\"a.R\",\"fields\":["
        "{\"name\":\"x\",\"type\":{\"type\":\"record\",\"name\":\"S\","
        "\"fields\":[{\"name\":\"i\",\"type\":\"int\"}]}},"
        "{\"name\":\"z\",\"type\":{\"type\":\"record\",\"name\":\"S\",\"namespace\":\"\","
        "\"fields\":[{\"name\":\"s\",\"type\":\"string\"}]}},"
        "{\"name\":\"w\",\"type\":[\"null\",\"S\"]}]}";
    char err[ERRLEN];
    char *pcf = dp_avro_canonical_form(json, err, sizeof(err));
    cr_assert_not_null(pcf, "%s", err);
    cr_assert_str_eq(pcf,
        "{\"name\":\"a.R\",\"type\":\"record\",\"fields\":["
        "{\"name\":\"x\",\"type\":{\"name\":\"a.S\",\"type\":\"record\","
        "\"fields\":[{\"name\":\"i\",\"type\":\"int\"}]}},"
        "{\"name\":\"z\",\"type\":{\"name\":\"S\",\"type\":\"record\","
        "\"fields\":[{\"name\":\"s\",\"type\":\"string\"}]}},"
        "{\"name\":\"w\",\"type\":[\"null\",\"a.S\"]}]}");
    free(pcf);

    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t fp = add_json(reg, json);
    avro_value_t v, out, f, b;
    void *buf;
    size_t len;
    cr_assert_eq(dp_avro_value_new(reg, fp, &v, err, sizeof(err)), DP_OK);
    f = field(&v, "x"), f = field(&f, "i"), avro_value_set_int(&f, 5);
    f = field(&v, "z"), set_field_string(&f, "s", "null namespace");
    f = field(&v, "w"), avro_value_set_branch(&f, 1, &b), b = field(&b, "i");
    avro_value_set_int(&b, 6);
    cr_assert_eq(dp_avro_encode(reg, fp, &v, &buf, &len, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_eq(dp_avro_decode(reg, fp, buf, len, &out, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert(avro_value_equal(&v, &out));
    free(buf);
    avro_value_decref(&out);
    avro_value_decref(&v);
    dp_avro_registry_free(reg);
}

Test(canonical, invalid_schemas_are_permanent_errors_that_say_why)
{
    static const struct {
        const char *json, *why;
    } bad[] = {
        {"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"Nope\"}]}",
         "unknown type \"Nope\""},
        {"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"int\","
         "\"default\":\"one\"}]}", "default of field \"a\""},
        {"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":"
         "[\"string\",\"null\"],\"default\":null}]}", "default of field \"a\""},
        {"[\"int\",[\"null\"]]", "may not directly contain a union"},
        {"[\"int\",\"int\"]", "contains int twice"},
        {"{\"type\":\"enum\",\"name\":\"E\",\"symbols\":[\"A\",\"A\"]}", "duplicate symbol"},
        {"{\"type\":\"fixed\",\"name\":\"F\",\"size\":-1}", "size"},
        {"{\"type\":\"record\",\"name\":\"1R\",\"fields\":[]}", "invalid name"},
        {"{\"type\":\"record\",\"name\":\"R\",\"fields\":[]", "not valid JSON"},
        {"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":"
         "{\"type\":\"record\",\"name\":\"R\",\"fields\":[]}}]}", "defined twice"},
    };
    dp_avro_registry *reg = dp_avro_registry_new();
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[ERRLEN] = "";
        uint64_t fp = 0;
        cr_expect_eq(dp_avro_registry_add_json(reg, bad[i].json, &fp, err, sizeof(err)),
                     DP_ERR_PERMANENT, "%s", bad[i].json);
        cr_expect_not_null(strstr(err, bad[i].why), "%s: message \"%s\"", bad[i].json, err);
    }
    char err[ERRLEN];
    uint64_t fp;
    cr_expect_eq(dp_avro_registry_add_file(reg, "/nonexistent.avsc", &fp, err, sizeof(err)),
                 DP_ERR_PERMANENT);
    cr_expect_not_null(strstr(err, "/nonexistent.avsc"));
    dp_avro_registry_free(reg);
}

/* ---------------------------------------------------------------------- */
/* Encoding and decoding                                                    */
/* ---------------------------------------------------------------------- */

static void set_field_string(avro_value_t *rec, const char *name, const char *s)
{
    avro_value_t f = field(rec, name);
    cr_assert_eq(avro_value_set_string(&f, s), 0);
}

static void build_doc42(avro_value_t *doc)
{
    avro_value_t f, item;
    set_field_string(doc, "id", "doc-42");
    set_field_string(doc, "title", "\xc3\x9c" "ber Avro");
    f = field(doc, "pages");
    avro_value_set_int(&f, 7);
    f = field(doc, "tags");
    avro_value_append(&f, &item, NULL);
    avro_value_set_string(&item, "a");
    avro_value_append(&f, &item, NULL);
    avro_value_set_string(&item, "bb");
    f = field(doc, "status");
    avro_value_set_enum(&f, 1);
    f = field(doc, "attachment");
    avro_value_set_branch(&f, 1, &item);
    avro_value_set_bytes(&item, "\x00\x01\xff", 3);
}

Test(codec, encode_writes_marker_fingerprint_and_the_bytes_fastavro_writes)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t fp = add_file(reg, "document_v1.avsc");
    char err[ERRLEN];
    avro_value_t doc;
    cr_assert_eq(dp_avro_value_new(reg, fp, &doc, err, sizeof(err)), DP_OK, "%s", err);
    build_doc42(&doc);

    void *buf;
    size_t len;
    cr_assert_eq(dp_avro_encode(reg, fp, &doc, &buf, &len, err, sizeof(err)), DP_OK, "%s", err);
    uint8_t want[128];
    size_t wantlen = unhex(V1_DOC42, want);
    cr_assert_eq(len, wantlen);
    cr_assert_eq(memcmp(buf, want, len), 0);

    uint64_t peeked;
    cr_assert_eq(dp_avro_peek_fingerprint(buf, len, &peeked, err, sizeof(err)), DP_OK);
    cr_assert_eq(peeked, fp);
    free(buf);
    avro_value_decref(&doc);
    dp_avro_registry_free(reg);
}

Test(codec, decode_reads_what_fastavro_wrote)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t fp = add_file(reg, "document_v2.avsc");
    uint8_t bytes[128];
    size_t len = unhex(V2_DOC43, bytes);
    char err[ERRLEN];
    avro_value_t doc, f, v;
    cr_assert_eq(dp_avro_decode(reg, fp, bytes, len, &doc, err, sizeof(err)), DP_OK, "%s", err);

    cr_assert_str_eq(string_of(&doc, "id"), "doc-43");
    cr_assert_str_eq(string_of(&doc, "language"), "fr");
    int status, branch;
    f = field(&doc, "status");
    avro_value_get_enum(&f, &status);
    cr_assert_eq(status, 2);
    f = field(&doc, "attachment");
    avro_value_get_discriminant(&f, &branch);
    cr_assert_eq(branch, 0);
    f = field(&doc, "labels");
    int64_t x;
    cr_assert_eq(avro_value_get_by_name(&f, "x", &v, NULL), 0);
    avro_value_get_long(&v, &x);
    cr_assert_eq(x, -1);
    avro_value_decref(&doc);
    dp_avro_registry_free(reg);
}

static void build_sink(avro_value_t *s)
{
    static const uint8_t md5[16] = {0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04,
                                    0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8, 0x42, 0x7e};
    avro_value_t f, row, x, next;
    f = field(s, "n"), avro_value_set_null(&f);
    f = field(s, "b"), avro_value_set_boolean(&f, 1);
    f = field(s, "i"), avro_value_set_int(&f, INT32_MIN);
    f = field(s, "l"), avro_value_set_long(&f, INT64_MAX);
    f = field(s, "f"), avro_value_set_float(&f, -1.5f);
    f = field(s, "d"), avro_value_set_double(&f, 6.02214076e23);
    f = field(s, "raw"), avro_value_set_bytes(&f, "\0\0\xfe", 3);
    f = field(s, "s"), avro_value_set_string(&f, "h\xc3\xa9llo");
    f = field(s, "md5"), avro_value_set_fixed(&f, (void *)md5, 16);
    f = field(s, "color"), avro_value_set_enum(&f, 2);
    f = field(s, "other_color"), avro_value_set_enum(&f, 0);
    f = field(s, "matrix");
    avro_value_append(&f, &row, NULL);
    avro_value_append(&row, &x, NULL), avro_value_set_double(&x, 1.0);
    avro_value_append(&row, &x, NULL), avro_value_set_double(&x, -2.0);
    avro_value_append(&f, &row, NULL);
    f = field(s, "counts");
    avro_value_add(&f, "a", &x, NULL, NULL), avro_value_set_long(&x, 1);
    avro_value_add(&f, "", &x, NULL, NULL), avro_value_set_long(&x, INT64_MIN);
    f = field(s, "choice");
    avro_value_set_branch(&f, 2, &x), avro_value_set_fixed(&x, (void *)md5, 16);
    f = field(s, "inner");
    set_field_string(&f, "label", "outer");
    x = field(&f, "next");
    avro_value_set_branch(&x, 1, &next);
    set_field_string(&next, "label", "inner");
    x = field(&next, "next");
    avro_value_set_branch(&x, 0, &row), avro_value_set_null(&row);
}

Test(codec, every_avro_type_survives_a_round_trip)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t fp = add_file(reg, "kitchen_sink.avsc");
    char err[ERRLEN];
    avro_value_t sink, back;
    cr_assert_eq(dp_avro_value_new(reg, fp, &sink, err, sizeof(err)), DP_OK);
    build_sink(&sink);
    void *buf;
    size_t len;
    cr_assert_eq(dp_avro_encode(reg, fp, &sink, &buf, &len, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_eq(dp_avro_decode(reg, fp, buf, len, &back, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert(avro_value_equal(&sink, &back), "decoded value differs");
    cr_assert_str_eq(string_of(&back, "s"), "h\xc3\xa9llo");
    free(buf);
    avro_value_decref(&back);
    avro_value_decref(&sink);
    dp_avro_registry_free(reg);
}

Test(codec, decode_into_reuses_one_value_across_records)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t v1 = add_file(reg, "document_v1.avsc");
    uint64_t v2 = add_file(reg, "document_v2.avsc");
    uint8_t a[128], b[128];
    size_t alen = unhex(V1_DOC42, a), blen = unhex(V2_DOC43, b);
    char err[ERRLEN];
    avro_value_t doc;
    cr_assert_eq(dp_avro_value_new(reg, v2, &doc, err, sizeof(err)), DP_OK);
    for (int round = 0; round < 3; round++) {
        cr_assert_eq(dp_avro_decode_into(reg, v2, a, alen, &doc, err, sizeof(err)), DP_OK,
                     "%s", err);
        cr_assert_str_eq(string_of(&doc, "id"), "doc-42");
        avro_value_t tags = field(&doc, "tags");
        size_t ntags;
        avro_value_get_size(&tags, &ntags);
        cr_assert_eq(ntags, 2, "tags are not appended across records");
        cr_assert_eq(dp_avro_decode_into(reg, v2, b, blen, &doc, err, sizeof(err)), DP_OK,
                     "%s", err);
        cr_assert_str_eq(string_of(&doc, "id"), "doc-43");
    }
    avro_value_t wrong;
    cr_assert_eq(dp_avro_value_new(reg, v1, &wrong, err, sizeof(err)), DP_OK);
    cr_assert_eq(dp_avro_decode_into(reg, v2, a, alen, &wrong, err, sizeof(err)),
                 DP_ERR_PERMANENT, "a target of another schema is refused");
    avro_value_decref(&wrong);
    avro_value_decref(&doc);
    dp_avro_registry_free(reg);
}

Test(codec, encode_refuses_a_value_of_another_schema)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t v1 = add_file(reg, "document_v1.avsc");
    uint64_t v2 = add_file(reg, "document_v2.avsc");
    char err[ERRLEN];
    avro_value_t doc;
    void *buf;
    size_t len;
    cr_assert_eq(dp_avro_value_new(reg, v1, &doc, err, sizeof(err)), DP_OK);
    build_doc42(&doc);
    cr_assert_eq(dp_avro_encode(reg, v2, &doc, &buf, &len, err, sizeof(err)), DP_ERR_PERMANENT);
    cr_assert_eq(dp_avro_encode(reg, 7, &doc, &buf, &len, err, sizeof(err)), DP_ERR_PERMANENT);
    cr_assert_null(buf);
    avro_value_decref(&doc);
    dp_avro_registry_free(reg);
}

/* ---------------------------------------------------------------------- */
/* Schema evolution                                                         */
/* ---------------------------------------------------------------------- */

Test(evolution, old_reader_ignores_fields_added_by_a_newer_writer)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t v1 = add_file(reg, "document_v1.avsc");
    add_file(reg, "document_v2.avsc");
    uint8_t bytes[128];
    size_t len = unhex(V2_DOC43, bytes);
    char err[ERRLEN];
    avro_value_t doc, f;
    cr_assert_eq(dp_avro_decode(reg, v1, bytes, len, &doc, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_eq(avro_value_get_schema(&doc), dp_avro_registry_schema(reg, v1));
    size_t nfields;
    avro_value_get_size(&doc, &nfields);
    cr_assert_eq(nfields, 6);
    cr_assert_str_eq(string_of(&doc, "id"), "doc-43");
    cr_assert_str_eq(string_of(&doc, "title"), "t");
    cr_assert_eq(avro_value_get_by_name(&doc, "language", &f, NULL) == 0, 0);
    avro_value_decref(&doc);
    dp_avro_registry_free(reg);
}

Test(evolution, new_reader_fills_defaults_for_fields_an_older_writer_lacks)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    add_file(reg, "document_v1.avsc");
    uint64_t v2 = add_file(reg, "document_v2.avsc");
    uint8_t bytes[128];
    size_t len = unhex(V1_DOC42, bytes);
    char err[ERRLEN];
    avro_value_t doc, f, rev;
    cr_assert_eq(dp_avro_decode(reg, v2, bytes, len, &doc, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_str_eq(string_of(&doc, "id"), "doc-42");
    cr_assert_str_eq(string_of(&doc, "title"), "\xc3\x9c" "ber Avro");
    cr_assert_str_eq(string_of(&doc, "language"), "und");
    f = field(&doc, "labels");
    size_t n;
    int64_t r;
    avro_value_get_size(&f, &n);
    cr_assert_eq(n, 1);
    cr_assert_eq(avro_value_get_by_name(&f, "rev", &rev, NULL), 0);
    avro_value_get_long(&rev, &r);
    cr_assert_eq(r, 2);
    f = field(&doc, "attachment");
    avro_value_t branch;
    const void *raw;
    size_t rawlen;
    avro_value_get_current_branch(&f, &branch);
    avro_value_get_bytes(&branch, &raw, &rawlen);
    cr_assert_eq(rawlen, 3);
    cr_assert_eq(memcmp(raw, "\x00\x01\xff", 3), 0);
    avro_value_decref(&doc);
    dp_avro_registry_free(reg);
}

Test(evolution, reader_field_without_default_makes_old_records_poison)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    add_file(reg, "document_v1.avsc");
    char *v1 = slurp("document_v1.avsc");
    /* v1 plus a required field: append it before the closing "]" of fields. */
    char *v3 = malloc(strlen(v1) + 64), *end = strrchr(v1, ']');
    sprintf(v3, "%.*s,{\"name\":\"owner\",\"type\":\"string\"}%s", (int)(end - v1), v1, end);
    uint64_t fp3 = add_json(reg, v3);
    uint8_t bytes[128];
    size_t len = unhex(V1_DOC42, bytes);
    char err[ERRLEN];
    avro_value_t doc;
    cr_assert_eq(dp_avro_decode(reg, fp3, bytes, len, &doc, err, sizeof(err)), DP_ERR_POISON);
    cr_assert_null(doc.iface);
    cr_assert_not_null(strstr(err, "\"owner\""), "message: %s", err);
    cr_assert_not_null(strstr(err, "no default"), "message: %s", err);
    free(v3);
    free(v1);
    dp_avro_registry_free(reg);
}

Test(evolution, promotions_renamed_fields_enum_defaults_and_unions)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t w = add_json(reg,
        "{\"type\":\"record\",\"name\":\"E\",\"fields\":["
        "{\"name\":\"n\",\"type\":\"int\"},{\"name\":\"s\",\"type\":\"string\"},"
        "{\"name\":\"old_name\",\"type\":\"float\"},"
        "{\"name\":\"u\",\"type\":[\"null\",\"int\"]},{\"name\":\"plain\",\"type\":\"long\"},"
        "{\"name\":\"e\",\"type\":{\"type\":\"enum\",\"name\":\"K\",\"symbols\":[\"A\",\"B\",\"C\"]}}]}");
    uint64_t r = add_json(reg,
        "{\"type\":\"record\",\"name\":\"E\",\"fields\":["
        "{\"name\":\"n\",\"type\":\"double\"},{\"name\":\"s\",\"type\":\"bytes\"},"
        "{\"name\":\"new_name\",\"aliases\":[\"old_name\"],\"type\":\"double\"},"
        "{\"name\":\"u\",\"type\":[\"null\",\"long\"]},{\"name\":\"plain\",\"type\":[\"null\",\"long\"]},"
        "{\"name\":\"e\",\"type\":{\"type\":\"enum\",\"name\":\"K\",\"symbols\":[\"A\",\"B\"],"
        "\"default\":\"A\"}}]}");
    char err[ERRLEN];
    avro_value_t in, out, f, b;
    cr_assert_eq(dp_avro_value_new(reg, w, &in, err, sizeof(err)), DP_OK);
    f = field(&in, "n"), avro_value_set_int(&f, -3);
    set_field_string(&in, "s", "str");
    f = field(&in, "old_name"), avro_value_set_float(&f, 0.25f);
    f = field(&in, "u"), avro_value_set_branch(&f, 1, &b), avro_value_set_int(&b, 9);
    f = field(&in, "plain"), avro_value_set_long(&f, 1LL << 40);
    f = field(&in, "e"), avro_value_set_enum(&f, 2);
    void *buf;
    size_t len;
    cr_assert_eq(dp_avro_encode(reg, w, &in, &buf, &len, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_eq(dp_avro_decode(reg, r, buf, len, &out, err, sizeof(err)), DP_OK, "%s", err);

    double d;
    int64_t l;
    int sym, disc;
    const void *raw;
    size_t rawlen;
    f = field(&out, "n"), avro_value_get_double(&f, &d);
    cr_assert_eq(d, -3.0);
    f = field(&out, "s"), avro_value_get_bytes(&f, &raw, &rawlen);
    cr_assert_eq(rawlen, 3);
    cr_assert_eq(memcmp(raw, "str", 3), 0);
    f = field(&out, "new_name"), avro_value_get_double(&f, &d);
    cr_assert_eq(d, 0.25);
    f = field(&out, "u"), avro_value_get_current_branch(&f, &b), avro_value_get_long(&b, &l);
    cr_assert_eq(l, 9);
    f = field(&out, "plain"), avro_value_get_discriminant(&f, &disc);
    cr_assert_eq(disc, 1);
    avro_value_get_current_branch(&f, &b), avro_value_get_long(&b, &l);
    cr_assert_eq(l, 1LL << 40);
    f = field(&out, "e"), avro_value_get_enum(&f, &sym);
    cr_assert_eq(sym, 0, "unknown symbol C falls back to the reader's default");
    avro_value_decref(&out);
    free(buf);
    avro_value_decref(&in);
    dp_avro_registry_free(reg);
}

Test(evolution, enum_symbol_unknown_to_a_reader_without_default_is_poison)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t w = add_json(reg, "{\"type\":\"enum\",\"name\":\"K\",\"symbols\":[\"A\",\"B\",\"C\"]}");
    uint64_t r = add_json(reg, "{\"type\":\"enum\",\"name\":\"K\",\"symbols\":[\"B\",\"A\"]}");
    char err[ERRLEN];
    avro_value_t in, out;
    void *buf;
    size_t len;
    int sym;
    cr_assert_eq(dp_avro_value_new(reg, w, &in, err, sizeof(err)), DP_OK);
    avro_value_set_enum(&in, 0);
    cr_assert_eq(dp_avro_encode(reg, w, &in, &buf, &len, err, sizeof(err)), DP_OK);
    cr_assert_eq(dp_avro_decode(reg, r, buf, len, &out, err, sizeof(err)), DP_OK, "%s", err);
    avro_value_get_enum(&out, &sym);
    cr_assert_eq(sym, 1, "symbols are matched by name, not position");
    avro_value_decref(&out);
    free(buf);
    avro_value_set_enum(&in, 2);
    cr_assert_eq(dp_avro_encode(reg, w, &in, &buf, &len, err, sizeof(err)), DP_OK);
    cr_assert_eq(dp_avro_decode(reg, r, buf, len, &out, err, sizeof(err)), DP_ERR_POISON);
    cr_assert_not_null(strstr(err, "symbol C"), "message: %s", err);
    free(buf);
    avro_value_decref(&in);
    dp_avro_registry_free(reg);
}

Test(evolution, unrelated_schemas_are_poison)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t v1 = add_file(reg, "document_v1.avsc");
    uint64_t sink = add_file(reg, "kitchen_sink.avsc");
    uint8_t bytes[128];
    size_t len = unhex(V1_DOC42, bytes);
    char err[ERRLEN];
    avro_value_t out;
    cr_assert_eq(dp_avro_decode(reg, sink, bytes, len, &out, err, sizeof(err)), DP_ERR_POISON);
    cr_assert_not_null(strstr(err, "cannot be read as"), "message: %s", err);
    (void)v1;
    dp_avro_registry_free(reg);
}

/* ---------------------------------------------------------------------- */
/* Hostile bytes                                                            */
/* ---------------------------------------------------------------------- */

static dp_err decode_hex(dp_avro_registry *reg, uint64_t reader, uint64_t writer,
                         const char *body_hex, char *err)
{
    uint8_t buf[256] = {0xC3, 0x01};
    for (int i = 0; i < 8; i++)
        buf[2 + i] = (uint8_t)(writer >> (8 * i));
    size_t len = DP_AVRO_HEADER_SIZE + unhex(body_hex, buf + DP_AVRO_HEADER_SIZE);
    avro_value_t out;
    dp_err rc = dp_avro_decode(reg, reader, buf, len, &out, err, ERRLEN);
    if (rc == DP_OK)
        avro_value_decref(&out);
    else
        cr_assert_null(out.iface);
    return rc;
}

Test(poison, bytes_without_the_single_object_marker)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t v1 = add_file(reg, "document_v1.avsc");
    char err[ERRLEN];
    avro_value_t out;
    static const char *inputs[] = {"", "c3", "c301", "c3012d7a8bfa4dd720", "7b7d",
                                   "c3022d7a8bfa4dd7200b00", "00012d7a8bfa4dd7200b00"};
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        uint8_t buf[64];
        size_t len = unhex(inputs[i], buf);
        cr_expect_eq(dp_avro_decode(reg, v1, buf, len, &out, err, sizeof(err)), DP_ERR_POISON,
                     "input %s", inputs[i]);
        cr_expect_not_null(strstr(err, "single-object"), "message: %s", err);
    }
    dp_avro_registry_free(reg);
}

Test(poison, unknown_writer_fingerprint_but_unknown_reader_is_a_caller_bug)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t v1 = add_file(reg, "document_v1.avsc");
    char err[ERRLEN];
    cr_assert_eq(decode_hex(reg, v1, 0x1234, "00", err), DP_ERR_POISON);
    cr_assert_not_null(strstr(err, "0000000000001234"), "message: %s", err);
    cr_assert_eq(decode_hex(reg, 0x99, v1, "00", err), DP_ERR_PERMANENT);
    dp_avro_registry_free(reg);
}

Test(poison, every_truncation_and_any_trailing_byte)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t fp = add_file(reg, "kitchen_sink.avsc");
    char err[ERRLEN];
    avro_value_t sink, out;
    void *buf;
    size_t len;
    cr_assert_eq(dp_avro_value_new(reg, fp, &sink, err, sizeof(err)), DP_OK);
    build_sink(&sink);
    cr_assert_eq(dp_avro_encode(reg, fp, &sink, &buf, &len, err, sizeof(err)), DP_OK);
    for (size_t cut = 0; cut < len; cut++) {
        cr_assert_eq(dp_avro_decode(reg, fp, buf, cut, &out, err, sizeof(err)), DP_ERR_POISON,
                     "prefix of %zu/%zu bytes", cut, len);
        cr_assert_null(out.iface);
    }
    uint8_t *longer = malloc(len + 1);
    memcpy(longer, buf, len);
    longer[len] = 0;
    cr_assert_eq(dp_avro_decode(reg, fp, longer, len + 1, &out, err, sizeof(err)), DP_ERR_POISON);
    cr_assert_not_null(strstr(err, "trailing"), "message: %s", err);
    free(longer);
    free(buf);
    avro_value_decref(&sink);
    dp_avro_registry_free(reg);
}

Test(poison, hostile_lengths_and_counts_are_refused_before_allocating)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t str = add_json(reg, "\"string\"");
    uint64_t raw = add_json(reg, "\"bytes\"");
    uint64_t nulls = add_json(reg, "{\"type\":\"array\",\"items\":\"null\"}");
    uint64_t map = add_json(reg, "{\"type\":\"map\",\"values\":\"null\"}");
    uint64_t lng = add_json(reg, "\"long\"");
    uint64_t i32 = add_json(reg, "\"int\"");
    uint64_t flag = add_json(reg, "\"boolean\"");
    uint64_t uni = add_json(reg, "[\"null\",\"int\"]");
    uint64_t en = add_json(reg, "{\"type\":\"enum\",\"name\":\"K\",\"symbols\":[\"A\"]}");
    static const struct {
        int which;
        const char *hex, *why;
    } cases[] = {
        {0, "feffffffffffffff7f", "exceeds"},           /* string of 2^62 bytes */
        {0, "8080808008", "exceeds"},                   /* 1 GiB string */
        {0, "03", "negative"},                          /* length -2 */
        {1, "01", "negative"},                          /* length -1 */
        {1, "0a6869", "exceeds"},                       /* 5 bytes announced, 2 given */
        {2, "8080808080808080800100", "more than"},     /* 2^62 nulls... */
        {2, "ffffffffffffffffff0100", "invalid block count"}, /* INT64_MIN items */
        {2, "0100", "truncated"},                       /* -1 items, size missing */
        {2, "01800100", "block size 64"},               /* -1 items in 64 bytes */
        {3, "02feffffff0f00", "exceeds"},               /* map key of 2^31-1 bytes */
        {3, "0204410000", "NUL"},                       /* key "A\0" */
        {4, "ffffffffffffffffffff01", "longer than 64"},
        {4, "ff", "truncated varint"},
        {5, "8080808010", "out of range"},              /* int > INT32_MAX */
        {6, "02", "not 0 or 1"},
        {7, "04", "union branch 2"},
        {7, "01", "union branch -1"},
        {8, "02", "index 1 out of range"},
    };
    uint64_t fps[] = {str, raw, nulls, map, lng, i32, flag, uni, en};
    char err[ERRLEN];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t fp = fps[cases[i].which];
        cr_expect_eq(decode_hex(reg, fp, fp, cases[i].hex, err), DP_ERR_POISON, "case %zu", i);
        cr_expect_not_null(strstr(err, cases[i].why), "case %zu: %s", i, err);
    }
    /* Legitimate: 3 nulls in a block with its byte size, then the end. */
    cr_assert_eq(decode_hex(reg, nulls, nulls, "050000", err), DP_OK, "%s", err);
    dp_avro_registry_free(reg);
}

Test(poison, nesting_deeper_than_the_limit)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t fp = add_json(reg, "{\"type\":\"record\",\"name\":\"Node\",\"fields\":["
                                "{\"name\":\"next\",\"type\":[\"null\",\"Node\"]}]}");
    char err[ERRLEN], hex[1024];
    /* The outermost record is depth 0, so DP_AVRO_MAX_DEPTH + 1 nodes fit. */
    for (int nodes = DP_AVRO_MAX_DEPTH; nodes <= DP_AVRO_MAX_DEPTH + 2; nodes++) {
        /* "next" is branch 1 (02) nodes-1 times, then branch 0 (00). */
        int n = 0;
        for (int k = 0; k < nodes - 1; k++)
            n += sprintf(hex + n, "02");
        sprintf(hex + n, "00");
        dp_err want = nodes <= DP_AVRO_MAX_DEPTH + 1 ? DP_OK : DP_ERR_POISON;
        cr_expect_eq(decode_hex(reg, fp, fp, hex, err), want, "%d nodes: %s", nodes, err);
    }
    dp_avro_registry_free(reg);
}

/* xorshift64*: deterministic noise so a failure can be replayed. */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * UINT64_C(2685821657736338717);
}

Test(poison, random_garbage_and_mutations_never_crash)
{
    dp_avro_registry *reg = dp_avro_registry_new();
    uint64_t sink = add_file(reg, "kitchen_sink.avsc");
    uint64_t v1 = add_file(reg, "document_v1.avsc");
    uint64_t v2 = add_file(reg, "document_v2.avsc");
    char err[ERRLEN];
    avro_value_t value, out;
    void *enc;
    size_t enclen;
    cr_assert_eq(dp_avro_value_new(reg, sink, &value, err, sizeof(err)), DP_OK);
    build_sink(&value);
    cr_assert_eq(dp_avro_encode(reg, sink, &value, &enc, &enclen, err, sizeof(err)), DP_OK);
    avro_value_decref(&value);
    uint8_t doc[128];
    size_t doclen = unhex(V1_DOC42, doc);

    uint64_t seed = 0x9e3779b97f4a7c15;
    uint8_t buf[512];
    size_t decoded = 0, poisoned = 0;
    for (int round = 0; round < 30000; round++) {
        size_t len;
        uint64_t reader;
        int kind = round % 3;
        if (kind == 0) { /* a valid header, then noise */
            len = DP_AVRO_HEADER_SIZE + rnd(&seed) % 200;
            memcpy(buf, enc, DP_AVRO_HEADER_SIZE);
            for (size_t i = DP_AVRO_HEADER_SIZE; i < len; i++)
                buf[i] = (uint8_t)rnd(&seed);
            reader = sink;
        } else { /* a valid record with a few bytes changed */
            const uint8_t *src = kind == 1 ? enc : doc;
            len = kind == 1 ? enclen : doclen;
            memcpy(buf, src, len);
            for (int k = 1 + (int)(rnd(&seed) % 4); k > 0; k--)
                buf[DP_AVRO_HEADER_SIZE + rnd(&seed) % (len - DP_AVRO_HEADER_SIZE)] =
                    (uint8_t)rnd(&seed);
            reader = kind == 1 ? sink : (rnd(&seed) & 1 ? v1 : v2);
        }
        dp_err rc = dp_avro_decode(reg, reader, buf, len, &out, err, sizeof(err));
        cr_assert(rc == DP_OK || rc == DP_ERR_POISON, "round %d: %s", round, dp_err2str(rc));
        if (rc == DP_OK) {
            decoded++;
            avro_value_decref(&out);
        } else {
            poisoned++;
        }
    }
    cr_log_info("garbage: %zu decoded, %zu poison", decoded, poisoned);
    cr_assert_gt(poisoned, 1000);
    free(enc);
    dp_avro_registry_free(reg);
}

/* ---------------------------------------------------------------------- */
/* Threads                                                                  */
/* ---------------------------------------------------------------------- */

typedef struct shared {
    dp_avro_registry *reg;
    uint64_t reader;
    uint8_t bytes[128];
    size_t len;
    int failures;
} shared;

static void *decode_many(void *arg)
{
    shared *s = arg;
    char err[ERRLEN];
    for (int i = 0; i < 2000; i++) {
        avro_value_t out;
        if (dp_avro_decode(s->reg, s->reader, s->bytes, s->len, &out, err, sizeof(err)) != DP_OK)
            __atomic_add_fetch(&s->failures, 1, __ATOMIC_RELAXED);
        else
            avro_value_decref(&out);
    }
    return NULL;
}

Test(threads, decoders_on_many_threads_share_one_registry)
{
    shared s = {.reg = dp_avro_registry_new()};
    add_file(s.reg, "document_v1.avsc");
    s.reader = add_file(s.reg, "document_v2.avsc");
    s.len = unhex(V1_DOC42, s.bytes);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, decode_many, &s);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    cr_assert_eq(s.failures, 0);
    dp_avro_registry_free(s.reg);
}
