/*
 * docmsg: the document stages' Kafka messages.
 *
 * One Avro schema per topic (schemas/<topic>.avsc), all loaded into one
 * registry at start.  Values travel in Avro single-object encoding, so a
 * reader knows the writer's schema by its fingerprint and resolves it to its
 * own (added fields with defaults in either direction); bytes of an unknown
 * schema are poison.  Stages build a message from a small field list and
 * read decoded fields by name.
 */
#ifndef DP_DOCMSG_H
#define DP_DOCMSG_H

#include <avro.h>
#include <stdint.h>

#include "dp_error.h"

typedef struct dp_msgcodec dp_msgcodec;

typedef struct dp_field {
    const char *name;
    char type;          /* 's' string, 'l' long or int */
    const char *s;
    int64_t l;
} dp_field;

#define DP_FS(n, v) ((dp_field){(n), 's', (v), 0})
#define DP_FL(n, v) ((dp_field){(n), 'l', NULL, (int64_t)(v)})

/* Loads every .avsc file of schema_dir. */
dp_err dp_msgcodec_open(const char *schema_dir, dp_msgcodec **out, char *err,
                        size_t errlen);
void dp_msgcodec_free(dp_msgcodec *c);

/* Encodes a value of the record schema `name` (e.g. "ParseRequested");
 * every field of the schema must be given.  *buf is malloc'd. */
dp_err dp_msg_encode(dp_msgcodec *c, const char *name, const dp_field *fields,
                     size_t n, void **buf, size_t *len, char *err,
                     size_t errlen);

/* Decodes bytes into a heap value of reader schema `name`; poison if they
 * are not a known single-object encoding.  Free with dp_msg_free. */
dp_err dp_msg_decode(dp_msgcodec *c, const char *name, const void *buf,
                     size_t len, avro_value_t **out, char *err, size_t errlen);
void dp_msg_free(avro_value_t *v);

/* Field getters: "" / 0 when absent. */
const char *dp_msg_str(avro_value_t *v, const char *field);
int64_t dp_msg_long(avro_value_t *v, const char *field);

#endif
