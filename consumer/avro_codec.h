/*
 * avro_codec: Avro single-object encoding of Kafka record values.
 *
 * Every record value on the wire is
 *
 *     C3 01 | fingerprint (8 bytes, little-endian) | Avro binary body
 *
 * where the fingerprint is the CRC-64-AVRO (Rabin) fingerprint of the
 * writer schema's Parsing Canonical Form.  A registry holds every schema the
 * process knows, keyed by fingerprint; any registered schema can be a writer
 * and any can be a reader.  Decoding resolves the writer named by the bytes
 * into the reader schema the caller asks for (Avro schema resolution:
 * writer-only fields are skipped, reader-only fields take their default,
 * int->long->float->double and string<->bytes promotions, enum symbols by
 * name, union branches by type).
 *
 * Record bytes are untrusted: anything that cannot be decoded (no marker,
 * unknown fingerprint, truncated or malformed body, trailing bytes, a writer
 * that cannot be resolved to the reader, nesting deeper than
 * DP_AVRO_MAX_DEPTH) is DP_ERR_POISON with a message, and decoding allocates
 * at most in proportion to the record's size: all arrays and maps of a record
 * together may hold at most as many items as its body has bytes (only arrays
 * of zero-byte items, such as null, could legitimately need more).
 *
 * Values are avro-c generic values (avro_value_t).  Ownership: a value from
 * dp_avro_value_new() or dp_avro_decode() belongs to the caller, who releases
 * it with avro_value_decref(); it stays valid after the registry is freed.
 *
 * Thread-safety: after registration, one registry may be shared by any number
 * of threads calling decode/encode/value_new concurrently (an internal mutex
 * guards the fingerprint table and the resolution cache).  A single
 * avro_value_t must not be used from two threads at once.
 */
#ifndef DP_AVRO_CODEC_H
#define DP_AVRO_CODEC_H

#include <avro.h>
#include <stddef.h>
#include <stdint.h>

#include "dp_error.h"

/* Marker (2 bytes) plus fingerprint (8 bytes) in front of every body. */
#define DP_AVRO_HEADER_SIZE 10

/* CRC-64-AVRO of zero bytes, the seed of every fingerprint. */
#define DP_AVRO_CRC64_EMPTY UINT64_C(0xc15d213aa4d7a795)

/* Deepest nesting of records, arrays and maps decode will follow (the
 * outermost value is depth 0). */
#define DP_AVRO_MAX_DEPTH 128

typedef struct dp_avro_registry dp_avro_registry;

dp_avro_registry *dp_avro_registry_new(void);
void dp_avro_registry_free(dp_avro_registry *reg);

/* Registers a schema given as JSON text (or the path of an .avsc file) and
 * stores its fingerprint in *fp.  Registering the same schema again is a
 * no-op that returns the same fingerprint.  Invalid JSON, an invalid schema,
 * or a field default that does not match its type is DP_ERR_PERMANENT. */
dp_err dp_avro_registry_add_json(dp_avro_registry *reg, const char *json,
                                 uint64_t *fp, char *err, size_t errlen);
dp_err dp_avro_registry_add_file(dp_avro_registry *reg, const char *path,
                                 uint64_t *fp, char *err, size_t errlen);

/* The avro-c schema registered under fp, or NULL.  Borrowed: valid until
 * dp_avro_registry_free(); avro_schema_incref() it to keep it longer. */
avro_schema_t dp_avro_registry_schema(dp_avro_registry *reg, uint64_t fp);

/* Creates an empty generic value of the schema registered under fp, for
 * building a record to encode or a reusable target for
 * dp_avro_decode_into().  The caller owns *out (avro_value_decref). */
dp_err dp_avro_value_new(dp_avro_registry *reg, uint64_t fp, avro_value_t *out,
                         char *err, size_t errlen);

/* Parsing Canonical Form of a schema, per the Avro specification.  Returns a
 * malloc'd string the caller frees, or NULL with a message in err. */
char *dp_avro_canonical_form(const char *schema_json, char *err, size_t errlen);

/* CRC-64-AVRO of len bytes; the fingerprint of a schema is the CRC-64-AVRO
 * of its canonical form. */
uint64_t dp_avro_crc64(const void *data, size_t len);

/* Reads the writer fingerprint out of a single-object header without
 * decoding the body.  DP_ERR_POISON if buf is not single-object encoded. */
dp_err dp_avro_peek_fingerprint(const void *buf, size_t len, uint64_t *fp,
                                char *err, size_t errlen);

/* Encodes value, which must be a value of the schema registered under
 * writer_fp, as header + body into a malloc'd buffer the caller frees.
 * Unknown writer_fp, a value of another schema, or a value avro-c cannot
 * write (e.g. a union with no branch selected) is DP_ERR_PERMANENT. */
dp_err dp_avro_encode(dp_avro_registry *reg, uint64_t writer_fp,
                      avro_value_t *value, void **buf, size_t *len,
                      char *err, size_t errlen);

/* Decodes single-object bytes into a fresh value of the reader schema
 * reader_fp, resolving from whichever registered writer the fingerprint
 * names.  Undecodable bytes are DP_ERR_POISON; a reader_fp that is not
 * registered is DP_ERR_PERMANENT (a caller bug, not the record's fault).
 * On success the caller owns *out (avro_value_decref); on failure *out is
 * left empty (iface == NULL) and there is nothing to release. */
dp_err dp_avro_decode(dp_avro_registry *reg, uint64_t reader_fp,
                      const void *buf, size_t len, avro_value_t *out,
                      char *err, size_t errlen);

/* Same, but decodes into dest, an existing value of the reader schema (from
 * dp_avro_value_new), which is reset first: reusing one value per consumer
 * thread avoids re-allocating the record's skeleton for every message.  On
 * failure dest holds a partial value; reset or release it. */
dp_err dp_avro_decode_into(dp_avro_registry *reg, uint64_t reader_fp,
                           const void *buf, size_t len, avro_value_t *dest,
                           char *err, size_t errlen);

#endif
