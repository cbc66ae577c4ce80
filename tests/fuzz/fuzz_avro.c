/*
 * fuzz_avro: the Avro decoder (consumer/avro_codec.c) on hostile bytes.
 *
 * Input: [reader][writer][bytes...].  reader picks the schema to decode
 * into, by index (fuzz_avro_schemas: the stages' messages, then the test
 * fixtures).  If writer is an index too, bytes are a body and the harness
 * puts the C3 01 + fingerprint header of that writer in front, so the
 * fuzzer works on bodies and schema resolution; otherwise bytes are the
 * whole single-object record, header included.
 *
 * What must hold, besides no crash, leak or undefined behaviour:
 *   - the outcome is DP_OK or DP_ERR_POISON, never another error;
 *   - dp_avro_decode_into agrees with dp_avro_decode, down to the bytes the
 *     two values encode to, and again when it decodes into the value it
 *     filled the first time (the reset of a used value, a partial one too);
 *   - what decoded re-encodes with the reader as writer, and that decodes
 *     back to the same bytes (decode . encode is the identity);
 *   - for a stage's message, dp_msg_decode (the stages' own entry point)
 *     does the same, and every field reads by name.
 */
#include <string.h>

#include "avro_codec.h"
#include "docmsg.h"
#include "support_fuzz.h"

#define MAX_SCHEMAS 64

static dp_avro_registry *reg;
static dp_msgcodec *codec;            /* schemas/ only, as the stages load it */
static uint64_t fps[MAX_SCHEMAS];
static int stage[MAX_SCHEMAS];
static size_t nschemas;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[512], dir[4096];
    reg = dp_avro_registry_new();
    nschemas = fuzz_avro_schemas(reg, fps, NULL, stage, MAX_SCHEMAS);
    snprintf(dir, sizeof(dir), "%s/schemas", fuzz_source_dir());
    FUZZ_CHECK(dp_msgcodec_open(dir, &codec, err, sizeof(err)) == DP_OK, err);
    return 0;
}

/* Encodes v as a value of schema fp; the bytes must come out. */
static uint8_t *encode(uint64_t fp, avro_value_t *v, size_t *len)
{
    void *buf = NULL;
    char err[512];
    FUZZ_CHECK(dp_avro_encode(reg, fp, v, &buf, len, err, sizeof(err)) == DP_OK, err);
    return buf;
}

static int same_bytes(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    return alen == blen && memcmp(a, b, alen) == 0;
}

/* The stages' path: dp_msg_decode by schema name, fields read by name. */
static void check_docmsg(size_t r, const uint8_t *buf, size_t len, dp_err expect)
{
    avro_schema_t schema = dp_avro_registry_schema(reg, fps[r]);
    avro_value_t *v = NULL;
    char err[512];
    dp_err rc = dp_msg_decode(codec, avro_schema_name(schema), buf, len, &v, err,
                              sizeof(err));
    /* docmsg knows only schemas/, so a fixture writer is unknown there. */
    FUZZ_CHECK(rc == expect || (rc == DP_ERR_POISON && expect == DP_OK),
               "dp_msg_decode disagrees with dp_avro_decode");
    if (rc != DP_OK)
        return;
    for (size_t i = 0; i < avro_schema_record_size(schema); i++) {
        const char *field = avro_schema_record_field_name(schema, (int)i);
        (void)dp_msg_str(v, field);
        (void)dp_msg_long(v, field);
    }
    dp_msg_free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t r = data[0] % nschemas;
    const uint8_t *buf = data + 2;
    size_t len = size - 2;
    uint8_t *framed = NULL;
    if (data[1] < nschemas) {
        framed = malloc(DP_AVRO_HEADER_SIZE + len);
        FUZZ_CHECK(framed != NULL, "out of memory");
        framed[0] = 0xC3;
        framed[1] = 0x01;
        for (int i = 0; i < 8; i++)
            framed[2 + i] = (uint8_t)(fps[data[1]] >> (8 * i));
        memcpy(framed + DP_AVRO_HEADER_SIZE, buf, len);
        buf = framed;
        len += DP_AVRO_HEADER_SIZE;
    }

    char err[512], err2[512];
    avro_value_t v;
    dp_err rc = dp_avro_decode(reg, fps[r], buf, len, &v, err, sizeof(err));
    FUZZ_CHECK(rc == DP_OK || rc == DP_ERR_POISON, "decode: neither ok nor poison");
    FUZZ_CHECK(rc == DP_OK || v.iface == NULL, "failed decode left a value");
    /* A value reused only within one input: avro-c's generic records pack
     * pointers unaligned, where LeakSanitizer cannot see them, so a value
     * kept across inputs would be reported as leaking what it holds. */
    avro_value_t into;
    FUZZ_CHECK(dp_avro_value_new(reg, fps[r], &into, err2, sizeof(err2)) == DP_OK, err2);
    for (int pass = 0; pass < 2; pass++) {
        dp_err rc2 = dp_avro_decode_into(reg, fps[r], buf, len, &into, err2, sizeof(err2));
        FUZZ_CHECK(rc2 == rc, "decode_into disagrees with decode");
    }

    if (rc == DP_OK) {
        size_t l1, l2, l3;
        uint8_t *b1 = encode(fps[r], &v, &l1);
        uint8_t *b2 = encode(fps[r], &into, &l2);
        FUZZ_CHECK(same_bytes(b1, l1, b2, l2), "decode_into gave another value");

        avro_value_t again;
        FUZZ_CHECK(dp_avro_decode(reg, fps[r], b1, l1, &again, err, sizeof(err)) == DP_OK,
                   err);
        uint8_t *b3 = encode(fps[r], &again, &l3);
        FUZZ_CHECK(same_bytes(b1, l1, b3, l3), "decode(encode(v)) is not v");
        avro_value_decref(&again);
        free(b1);
        free(b2);
        free(b3);
        avro_value_decref(&v);
    }
    avro_value_decref(&into);
    if (stage[r])
        check_docmsg(r, buf, len, rc);
    free(framed);
    return 0;
}
