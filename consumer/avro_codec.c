/*
 * avro_codec: single-object Avro encoding, fingerprints, schema resolution.
 *
 * The file has four parts, in this order:
 *
 *   1. Schemas.  Each registered schema is parsed twice: by avro-c (for the
 *      generic value classes callers build and read values with, and for the
 *      encoder) and by this file from the jansson tree into a small graph of
 *      snodes.  The snode graph exists because avro-c 1.11 keeps neither
 *      field defaults nor enough of the JSON to compute the Parsing
 *      Canonical Form.  After parsing, the two are checked to have the same
 *      shape, so field, branch and symbol indexes agree between them.
 *
 *   2. Parsing Canonical Form and CRC-64-AVRO, straight from the spec.
 *
 *   3. Resolution plans.  For each (writer, reader) pair seen, a plan graph
 *      is compiled once and cached: which reader field each writer field
 *      lands in, which reader fields take defaults, how enum symbols and
 *      union branches map, which promotions apply.  A pair that cannot be
 *      resolved keeps its reason in the plan; reading through it is poison.
 *
 *   4. The decoder walks a plan over the body bytes and stores straight into
 *      the reader's generic value.  It is ours rather than avro-c's
 *      avro_value_read() + avro_resolved_writer because, in avro-c 1.11.1:
 *        - the resolver refuses a reader field missing from the writer even
 *          when it has a default ("Reader field x doesn't appear in writer");
 *        - the binary decoder mallocs whatever a string/bytes length prefix
 *          says before checking it against the input (a hostile length is a
 *          multi-GB allocation, or an abort under ASan), leaks that buffer
 *          when the read then comes up short, negates INT64_MIN block counts,
 *          and loops for as long as a block count says on zero-byte items.
 *      The walker checks every length against the bytes left, caps the
 *      number of array/map items by the body size (so allocation stays
 *      proportional to the input), caps nesting at DP_AVRO_MAX_DEPTH and
 *      rejects trailing bytes.  Encoding trusts its input and uses avro-c.
 *
 * Invariants: registry entries and plans are immutable once published and
 * live until dp_avro_registry_free(); the mutex only guards the two lookup
 * tables.  Decoding never calls avro_strerror(): libavro is built without
 * THREADSAFE, so its error buffer is one global.
 */
#include "avro_codec.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest .avsc file dp_avro_registry_add_file() will read. */
#define SCHEMA_FILE_MAX (1 << 20)
/* Nesting limit for checking and filling default values. */
#define DEFAULT_MAX_DEPTH 64

/* Appends p to a growable array of pointers; false when out of memory. */
static bool ptrvec_push(void ***items, size_t *n, size_t *cap, void *p)
{
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        void **grown = realloc(*items, ncap * sizeof(*grown));
        if (!grown)
            return false;
        *items = grown;
        *cap = ncap;
    }
    (*items)[(*n)++] = p;
    return true;
}

/* ------------------------------------------------------------------------
 * 1. Schemas
 * ------------------------------------------------------------------------ */

typedef struct snode snode;

typedef struct sfield {
    char *name;
    snode *type;
    json_t *def;            /* borrowed from the schema's JSON; NULL: none */
    char **aliases;
    size_t naliases;
} sfield;

struct snode {
    avro_type_t type;       /* never AVRO_LINK: references point at the node */
    char *fullname;         /* record, enum, fixed */
    char **aliases;         /* named types: fullnames */
    size_t naliases;
    sfield *fields;         /* record */
    size_t nfields;
    char **symbols;         /* enum */
    size_t nsymbols;
    int enum_default;       /* enum: index of the default symbol, or -1 */
    snode *items;           /* array items, map values */
    snode **branches;       /* union */
    size_t nbranches;
    int64_t size;           /* fixed */
};

/* One parsed schema: a graph of snodes (cyclic for recursive types). */
typedef struct schema {
    snode *root;
    snode **nodes;          /* every node, for lookup and freeing */
    size_t nnodes, capnodes;
    json_t *json;           /* owns the default values the fields point at */
} schema;

static const struct {
    const char *name;
    avro_type_t type;
} primitives[] = {
    {"null", AVRO_NULL},     {"boolean", AVRO_BOOLEAN}, {"int", AVRO_INT32},
    {"long", AVRO_INT64},    {"float", AVRO_FLOAT},     {"double", AVRO_DOUBLE},
    {"bytes", AVRO_BYTES},   {"string", AVRO_STRING},
};

static int primitive_type(const char *name)
{
    for (size_t i = 0; i < sizeof(primitives) / sizeof(primitives[0]); i++)
        if (strcmp(primitives[i].name, name) == 0)
            return (int)primitives[i].type;
    return -1;
}

static const char *type_name(avro_type_t t)
{
    switch (t) {
    case AVRO_NULL: return "null";
    case AVRO_BOOLEAN: return "boolean";
    case AVRO_INT32: return "int";
    case AVRO_INT64: return "long";
    case AVRO_FLOAT: return "float";
    case AVRO_DOUBLE: return "double";
    case AVRO_BYTES: return "bytes";
    case AVRO_STRING: return "string";
    case AVRO_RECORD: return "record";
    case AVRO_ENUM: return "enum";
    case AVRO_FIXED: return "fixed";
    case AVRO_ARRAY: return "array";
    case AVRO_MAP: return "map";
    case AVRO_UNION: return "union";
    default: return "?";
    }
}

/* "record docpipe.Document", "array", ... for messages. */
static const char *node_label(const snode *n)
{
    return n->fullname ? n->fullname : type_name(n->type);
}

static bool is_named(avro_type_t t)
{
    return t == AVRO_RECORD || t == AVRO_ENUM || t == AVRO_FIXED;
}

static void strv_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void snode_free(snode *n)
{
    free(n->fullname);
    strv_free(n->aliases, n->naliases);
    for (size_t i = 0; i < n->nfields; i++) {
        free(n->fields[i].name);
        strv_free(n->fields[i].aliases, n->fields[i].naliases);
    }
    free(n->fields);
    strv_free(n->symbols, n->nsymbols);
    free(n->branches);
    free(n);
}

static void schema_free(schema *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nnodes; i++)
        snode_free(s->nodes[i]);
    free(s->nodes);
    json_decref(s->json);
    free(s);
}

typedef struct parser {
    schema *s;
    char *err;
    size_t errlen;
    bool failed;
} parser;

static void *parse_fail(parser *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void *parse_fail(parser *p, const char *fmt, ...)
{
    if (!p->failed && p->err && p->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err, p->errlen, fmt, ap);
        va_end(ap);
    }
    p->failed = true;
    return NULL;
}

static snode *new_node(parser *p, avro_type_t type)
{
    snode *n = calloc(1, sizeof(*n));
    if (!n || !ptrvec_push((void ***)&p->s->nodes, &p->s->nnodes,
                           &p->s->capnodes, n)) {
        free(n);
        return parse_fail(p, "out of memory");
    }
    n->type = type;
    n->enum_default = -1;
    return n;
}

/* [A-Za-z_][A-Za-z0-9_]* */
static bool valid_name(const char *s, size_t len)
{
    if (len == 0 || !(s[0] == '_' || (s[0] >= 'A' && s[0] <= 'Z') ||
                      (s[0] >= 'a' && s[0] <= 'z')))
        return false;
    for (size_t i = 1; i < len; i++) {
        char c = s[i];
        if (!(c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9')))
            return false;
    }
    return true;
}

/* Dot-separated names; every part must be a valid name. */
static bool valid_fullname(const char *s)
{
    for (;;) {
        const char *dot = strchr(s, '.');
        size_t len = dot ? (size_t)(dot - s) : strlen(s);
        if (!valid_name(s, len))
            return false;
        if (!dot)
            return true;
        s = dot + 1;
    }
}

/* Fullname of name as written inside namespace ns (NULL or "" for none):
 * a dotted name is already full. */
static char *make_fullname(const char *name, const char *ns)
{
    char *out;
    if (strchr(name, '.') || !ns || !*ns)
        return strdup(name);
    if (asprintf(&out, "%s.%s", ns, name) < 0)
        return NULL;
    return out;
}

static snode *find_named(const schema *s, const char *fullname)
{
    for (size_t i = 0; i < s->nnodes; i++)
        if (s->nodes[i]->fullname && strcmp(s->nodes[i]->fullname, fullname) == 0)
            return s->nodes[i];
    return NULL;
}

/* A type name in a schema: a primitive, or a named type defined earlier,
 * looked up in the enclosing namespace first and the null namespace second
 * (as the Java implementation does). */
static snode *parse_type_name(parser *p, const char *name, const char *ns)
{
    int prim = primitive_type(name);
    if (prim >= 0)
        return new_node(p, (avro_type_t)prim);

    char *full = make_fullname(name, ns);
    if (!full)
        return parse_fail(p, "out of memory");
    snode *n = find_named(p->s, full);
    free(full);
    if (!n && !strchr(name, '.'))
        n = find_named(p->s, name);
    if (!n)
        return parse_fail(p, "unknown type \"%s\"", name);
    return n;
}

static snode *parse_node(parser *p, json_t *j, const char *ns);

/* Reads an optional array of names into a string vector; with ns set, each
 * name is made a fullname (type aliases), otherwise kept as is (field
 * aliases). */
static bool parse_aliases(parser *p, json_t *obj, const char *ns, bool full,
                          char ***out, size_t *nout)
{
    json_t *a = json_object_get(obj, "aliases");
    if (!a)
        return true;
    if (!json_is_array(a)) {
        parse_fail(p, "\"aliases\" must be an array of names");
        return false;
    }
    *out = calloc(json_array_size(a) + 1, sizeof(char *));
    if (!*out) {
        parse_fail(p, "out of memory");
        return false;
    }
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) {
        const char *s = json_string_value(v);
        if (!s || !(full ? valid_fullname(s) : valid_name(s, strlen(s)))) {
            parse_fail(p, "invalid alias in \"aliases\"");
            return false;
        }
        (*out)[i] = full ? make_fullname(s, ns) : strdup(s);
        if (!(*out)[i]) {
            parse_fail(p, "out of memory");
            return false;
        }
        *nout = i + 1;
    }
    return true;
}

static snode *parse_fields(parser *p, snode *n, json_t *j, const char *ns)
{
    json_t *fields = json_object_get(j, "fields");
    if (!json_is_array(fields))
        return parse_fail(p, "record %s: \"fields\" must be an array", n->fullname);
    n->fields = calloc(json_array_size(fields) + 1, sizeof(sfield));
    if (!n->fields)
        return parse_fail(p, "out of memory");

    size_t i;
    json_t *f;
    json_array_foreach(fields, i, f) {
        sfield *sf = &n->fields[i];
        const char *name = json_string_value(json_object_get(f, "name"));
        if (!json_is_object(f) || !name || !valid_name(name, strlen(name)))
            return parse_fail(p, "record %s: field %zu needs a valid \"name\"",
                              n->fullname, i);
        for (size_t k = 0; k < i; k++)
            if (strcmp(n->fields[k].name, name) == 0)
                return parse_fail(p, "record %s: duplicate field \"%s\"",
                                  n->fullname, name);
        if (!(sf->name = strdup(name)))
            return parse_fail(p, "out of memory");
        n->nfields = i + 1;
        json_t *type = json_object_get(f, "type");
        if (!type)
            return parse_fail(p, "record %s: field \"%s\" has no \"type\"",
                              n->fullname, name);
        if (!(sf->type = parse_node(p, type, ns)))
            return NULL;
        sf->def = json_object_get(f, "default");
        if (!parse_aliases(p, f, NULL, false, &sf->aliases, &sf->naliases))
            return NULL;
    }
    return n;
}

static snode *parse_enum(parser *p, snode *n, json_t *j)
{
    json_t *syms = json_object_get(j, "symbols");
    if (!json_is_array(syms))
        return parse_fail(p, "enum %s: \"symbols\" must be an array", n->fullname);
    n->symbols = calloc(json_array_size(syms) + 1, sizeof(char *));
    if (!n->symbols)
        return parse_fail(p, "out of memory");
    size_t i;
    json_t *v;
    json_array_foreach(syms, i, v) {
        const char *s = json_string_value(v);
        if (!s || !valid_name(s, strlen(s)))
            return parse_fail(p, "enum %s: invalid symbol at %zu", n->fullname, i);
        for (size_t k = 0; k < i; k++)
            if (strcmp(n->symbols[k], s) == 0)
                return parse_fail(p, "enum %s: duplicate symbol \"%s\"",
                                  n->fullname, s);
        if (!(n->symbols[i] = strdup(s)))
            return parse_fail(p, "out of memory");
        n->nsymbols = i + 1;
    }
    json_t *def = json_object_get(j, "default");
    if (def) {
        const char *d = json_string_value(def);
        for (size_t k = 0; d && k < n->nsymbols; k++)
            if (strcmp(n->symbols[k], d) == 0)
                n->enum_default = (int)k;
        if (n->enum_default < 0)
            return parse_fail(p, "enum %s: default is not one of its symbols",
                              n->fullname);
    }
    return n;
}

/* record, enum or fixed: defines its fullname, then parses its body with its
 * own namespace as the enclosing one. */
static snode *parse_named(parser *p, avro_type_t type, json_t *j, const char *ns)
{
    const char *name = json_string_value(json_object_get(j, "name"));
    json_t *jns = json_object_get(j, "namespace");
    if (!name)
        return parse_fail(p, "%s needs a \"name\"", type_name(type));
    if (jns && !json_is_string(jns) && !json_is_null(jns))
        return parse_fail(p, "%s: \"namespace\" must be a string", name);
    if (json_is_string(jns))
        ns = json_string_value(jns);
    if (*ns && !strchr(name, '.') && !valid_fullname(ns))
        return parse_fail(p, "%s: invalid namespace \"%s\"", name, ns);

    snode *n = new_node(p, type);
    if (!n)
        return NULL;
    if (!(n->fullname = make_fullname(name, ns)))
        return parse_fail(p, "out of memory");
    if (!valid_fullname(n->fullname))
        return parse_fail(p, "invalid name \"%s\"", n->fullname);
    const char *last = strrchr(n->fullname, '.');
    if (primitive_type(last ? last + 1 : n->fullname) >= 0)
        return parse_fail(p, "\"%s\" redefines a primitive type", n->fullname);
    for (size_t i = 0; i + 1 < p->s->nnodes; i++)
        if (p->s->nodes[i]->fullname &&
            strcmp(p->s->nodes[i]->fullname, n->fullname) == 0)
            return parse_fail(p, "type \"%s\" is defined twice", n->fullname);

    /* Nested names resolve in this type's namespace. */
    char *inner = strndup(n->fullname, last ? (size_t)(last - n->fullname) : 0);
    if (!inner)
        return parse_fail(p, "out of memory");
    snode *ok = n;
    if (!parse_aliases(p, j, inner, true, &n->aliases, &n->naliases))
        ok = NULL;
    else if (type == AVRO_RECORD)
        ok = parse_fields(p, n, j, inner);
    else if (type == AVRO_ENUM)
        ok = parse_enum(p, n, j);
    else {
        json_t *size = json_object_get(j, "size");
        if (!json_is_integer(size) || json_integer_value(size) < 0 ||
            json_integer_value(size) > INT32_MAX)
            ok = parse_fail(p, "fixed %s: \"size\" must be a non-negative int",
                            n->fullname);
        else
            n->size = json_integer_value(size);
    }
    free(inner);
    return ok;
}

static snode *parse_union(parser *p, json_t *j, const char *ns)
{
    snode *n = new_node(p, AVRO_UNION);
    if (!n)
        return NULL;
    n->branches = calloc(json_array_size(j) + 1, sizeof(snode *));
    if (!n->branches)
        return parse_fail(p, "out of memory");
    size_t i;
    json_t *v;
    json_array_foreach(j, i, v) {
        snode *b = parse_node(p, v, ns);
        if (!b)
            return NULL;
        if (b->type == AVRO_UNION)
            return parse_fail(p, "a union may not directly contain a union");
        for (size_t k = 0; k < i; k++) {
            const snode *o = n->branches[k];
            if (o->type == b->type &&
                (!is_named(b->type) || strcmp(o->fullname, b->fullname) == 0))
                return parse_fail(p, "union contains %s twice", node_label(b));
        }
        n->branches[i] = b;
        n->nbranches = i + 1;
    }
    return n;
}

static snode *parse_node(parser *p, json_t *j, const char *ns)
{
    if (json_is_string(j))
        return parse_type_name(p, json_string_value(j), ns);
    if (json_is_array(j))
        return parse_union(p, j, ns);
    if (!json_is_object(j))
        return parse_fail(p, "a schema must be a string, an array or an object");

    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type)
        return parse_fail(p, "schema object needs a string \"type\"");
    int prim = primitive_type(type);
    if (prim >= 0)
        return new_node(p, (avro_type_t)prim);
    if (strcmp(type, "record") == 0)
        return parse_named(p, AVRO_RECORD, j, ns);
    if (strcmp(type, "enum") == 0)
        return parse_named(p, AVRO_ENUM, j, ns);
    if (strcmp(type, "fixed") == 0)
        return parse_named(p, AVRO_FIXED, j, ns);
    if (strcmp(type, "array") == 0 || strcmp(type, "map") == 0) {
        bool array = type[0] == 'a';
        json_t *inner = json_object_get(j, array ? "items" : "values");
        if (!inner)
            return parse_fail(p, "%s needs \"%s\"", type, array ? "items" : "values");
        snode *n = new_node(p, array ? AVRO_ARRAY : AVRO_MAP);
        if (!n || !(n->items = parse_node(p, inner, ns)))
            return NULL;
        return n;
    }
    return parse_type_name(p, type, ns);
}

/* Decodes a JSON default for bytes/fixed: each code point is one byte
 * (0-255), as the spec says.  Returns the byte count or -1. */
static long latin1_decode(const char *s, size_t len, uint8_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        uint8_t c = (uint8_t)s[i];
        if (c < 0x80) {
            if (out)
                out[n] = c;
            i++;
        } else if ((c == 0xC2 || c == 0xC3) && i + 1 < len &&
                   ((uint8_t)s[i + 1] & 0xC0) == 0x80) {
            if (out)
                out[n] = (uint8_t)(((c & 0x03) << 6) | ((uint8_t)s[i + 1] & 0x3F));
            i += 2;
        } else {
            return -1;
        }
    }
    return (long)n;
}

static int symbol_index(const snode *n, const char *sym)
{
    for (size_t i = 0; sym && i < n->nsymbols; i++)
        if (strcmp(n->symbols[i], sym) == 0)
            return (int)i;
    return -1;
}

/* Whether JSON value j is a valid default for type t.  Union defaults match
 * the first branch (Avro 1.11 rule). */
static bool default_valid(const snode *t, json_t *j, int depth)
{
    if (depth > DEFAULT_MAX_DEPTH)
        return false;
    switch (t->type) {
    case AVRO_NULL: return json_is_null(j);
    case AVRO_BOOLEAN: return json_is_boolean(j);
    case AVRO_INT32:
        return json_is_integer(j) && json_integer_value(j) >= INT32_MIN &&
               json_integer_value(j) <= INT32_MAX;
    case AVRO_INT64: return json_is_integer(j);
    case AVRO_FLOAT:
    case AVRO_DOUBLE: return json_is_number(j);
    case AVRO_STRING: return json_is_string(j);
    case AVRO_BYTES:
        return json_is_string(j) &&
               latin1_decode(json_string_value(j), json_string_length(j), NULL) >= 0;
    case AVRO_FIXED:
        return json_is_string(j) &&
               latin1_decode(json_string_value(j), json_string_length(j), NULL) ==
                   (long)t->size;
    case AVRO_ENUM: return symbol_index(t, json_string_value(j)) >= 0;
    case AVRO_ARRAY: {
        size_t i;
        json_t *v;
        if (!json_is_array(j))
            return false;
        json_array_foreach(j, i, v) {
            if (!default_valid(t->items, v, depth + 1))
                return false;
        }
        return true;
    }
    case AVRO_MAP: {
        const char *k;
        json_t *v;
        if (!json_is_object(j))
            return false;
        json_object_foreach(j, k, v) {
            if (!default_valid(t->items, v, depth + 1))
                return false;
        }
        return true;
    }
    case AVRO_RECORD:
        if (!json_is_object(j))
            return false;
        for (size_t i = 0; i < t->nfields; i++) {
            json_t *v = json_object_get(j, t->fields[i].name);
            if (!v)
                v = t->fields[i].def;
            if (!v || !default_valid(t->fields[i].type, v, depth + 1))
                return false;
        }
        return true;
    case AVRO_UNION:
        return t->nbranches > 0 && default_valid(t->branches[0], j, depth + 1);
    default: return false;
    }
}

/* Parses schema JSON into an snode graph; NULL with a message on error. */
static schema *schema_parse(const char *text, char *err, size_t errlen)
{
    json_error_t jerr;
    schema *s = calloc(1, sizeof(*s));
    if (!s) {
        dp_errf(DP_ERR_PERMANENT, err, errlen, "out of memory");
        return NULL;
    }
    s->json = json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (!s->json) {
        dp_errf(DP_ERR_PERMANENT, err, errlen, "schema is not valid JSON: %s (line %d)",
                jerr.text, jerr.line);
        schema_free(s);
        return NULL;
    }
    parser p = {.s = s, .err = err, .errlen = errlen};
    s->root = parse_node(&p, s->json, "");
    for (size_t i = 0; s->root && i < s->nnodes; i++) {
        const snode *n = s->nodes[i];
        for (size_t k = 0; k < n->nfields; k++)
            if (n->fields[k].def && !default_valid(n->fields[k].type, n->fields[k].def, 0))
                s->root = parse_fail(&p, "record %s: default of field \"%s\" is not a valid %s",
                                     n->fullname, n->fields[k].name,
                                     node_label(n->fields[k].type));
    }
    if (!s->root) {
        schema_free(s);
        return NULL;
    }
    return s;
}

/* Whether avro-c parsed the schema into the same shape as we did, so that
 * field, branch and symbol indexes mean the same thing on both sides. */
static bool same_shape(const snode *n, avro_schema_t a, const snode ***seen,
                       size_t *nseen, size_t *capseen)
{
    while (a && is_avro_link(a))
        a = avro_schema_link_target(a);
    if (!a || avro_typeof(a) != n->type)
        return false;
    if (n->fullname) {
        for (size_t i = 0; i < *nseen; i++)
            if ((*seen)[i] == n)
                return true;
        if (!ptrvec_push((void ***)seen, nseen, capseen, (void *)n))
            return false;
    }
    switch (n->type) {
    case AVRO_RECORD:
        if (avro_schema_record_size(a) != n->nfields)
            return false;
        for (size_t i = 0; i < n->nfields; i++) {
            const char *name = avro_schema_record_field_name(a, (int)i);
            if (!name || strcmp(name, n->fields[i].name) != 0 ||
                !same_shape(n->fields[i].type,
                            avro_schema_record_field_get_by_index(a, (int)i),
                            seen, nseen, capseen))
                return false;
        }
        return true;
    case AVRO_ENUM:
        if ((size_t)avro_schema_enum_number_of_symbols(a) != n->nsymbols)
            return false;
        for (size_t i = 0; i < n->nsymbols; i++) {
            const char *sym = avro_schema_enum_get(a, (int)i);
            if (!sym || strcmp(sym, n->symbols[i]) != 0)
                return false;
        }
        return true;
    case AVRO_FIXED: return avro_schema_fixed_size(a) == n->size;
    case AVRO_ARRAY:
        return same_shape(n->items, avro_schema_array_items(a), seen, nseen, capseen);
    case AVRO_MAP:
        return same_shape(n->items, avro_schema_map_values(a), seen, nseen, capseen);
    case AVRO_UNION:
        if (avro_schema_union_size(a) != n->nbranches)
            return false;
        for (size_t i = 0; i < n->nbranches; i++)
            if (!same_shape(n->branches[i], avro_schema_union_branch(a, (int)i),
                            seen, nseen, capseen))
                return false;
        return true;
    default: return true;
    }
}

/* ------------------------------------------------------------------------
 * 2. Parsing Canonical Form and CRC-64-AVRO
 * ------------------------------------------------------------------------ */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sbuf_add(sbuf *b, const char *s)
{
    size_t n = strlen(s);
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 64;
        while (ncap < b->len + n + 1)
            ncap *= 2;
        char *grown = realloc(b->p, ncap);
        if (!grown) {
            b->oom = true;
            return;
        }
        b->p = grown;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
}

/* Names and symbols are [A-Za-z0-9_.] only, so no JSON escaping is needed. */
static void sbuf_quoted(sbuf *b, const char *s)
{
    sbuf_add(b, "\"");
    sbuf_add(b, s);
    sbuf_add(b, "\"");
}

/* Writes n in canonical form: a named type in full at its first occurrence,
 * by fullname afterwards; attributes in the order name, type, fields,
 * symbols, items, values, size; everything else dropped. */
static void pcf_emit(sbuf *b, const snode *n, const snode ***seen, size_t *nseen,
                     size_t *capseen)
{
    if (n->fullname) {
        for (size_t i = 0; i < *nseen; i++) {
            if ((*seen)[i] == n) {
                sbuf_quoted(b, n->fullname);
                return;
            }
        }
        if (!ptrvec_push((void ***)seen, nseen, capseen, (void *)n)) {
            b->oom = true;
            return;
        }
        sbuf_add(b, "{\"name\":");
        sbuf_quoted(b, n->fullname);
        sbuf_add(b, ",\"type\":");
        sbuf_quoted(b, type_name(n->type));
    }
    char num[32];
    switch (n->type) {
    case AVRO_RECORD:
        sbuf_add(b, ",\"fields\":[");
        for (size_t i = 0; i < n->nfields; i++) {
            sbuf_add(b, i ? ",{\"name\":" : "{\"name\":");
            sbuf_quoted(b, n->fields[i].name);
            sbuf_add(b, ",\"type\":");
            pcf_emit(b, n->fields[i].type, seen, nseen, capseen);
            sbuf_add(b, "}");
        }
        sbuf_add(b, "]}");
        break;
    case AVRO_ENUM:
        sbuf_add(b, ",\"symbols\":[");
        for (size_t i = 0; i < n->nsymbols; i++) {
            if (i)
                sbuf_add(b, ",");
            sbuf_quoted(b, n->symbols[i]);
        }
        sbuf_add(b, "]}");
        break;
    case AVRO_FIXED:
        snprintf(num, sizeof(num), ",\"size\":%" PRId64 "}", n->size);
        sbuf_add(b, num);
        break;
    case AVRO_ARRAY:
    case AVRO_MAP:
        sbuf_add(b, n->type == AVRO_ARRAY ? "{\"type\":\"array\",\"items\":"
                                          : "{\"type\":\"map\",\"values\":");
        pcf_emit(b, n->items, seen, nseen, capseen);
        sbuf_add(b, "}");
        break;
    case AVRO_UNION:
        sbuf_add(b, "[");
        for (size_t i = 0; i < n->nbranches; i++) {
            if (i)
                sbuf_add(b, ",");
            pcf_emit(b, n->branches[i], seen, nseen, capseen);
        }
        sbuf_add(b, "]");
        break;
    default:
        sbuf_quoted(b, type_name(n->type));
        break;
    }
}

static char *pcf_of(const schema *s, char *err, size_t errlen)
{
    sbuf b = {0};
    const snode **seen = NULL;
    size_t nseen = 0, capseen = 0;
    pcf_emit(&b, s->root, &seen, &nseen, &capseen);
    free(seen);
    if (b.oom || !b.p) {
        free(b.p);
        dp_errf(DP_ERR_PERMANENT, err, errlen, "out of memory");
        return NULL;
    }
    return b.p;
}

char *dp_avro_canonical_form(const char *schema_json, char *err, size_t errlen)
{
    schema *s = schema_parse(schema_json, err, errlen);
    if (!s)
        return NULL;
    char *pcf = pcf_of(s, err, errlen);
    schema_free(s);
    return pcf;
}

/* Bitwise CRC-64-AVRO as in the spec's reference code.  Only schemas are
 * fingerprinted (at registration), so no table is kept. */
uint64_t dp_avro_crc64(const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t fp = DP_AVRO_CRC64_EMPTY;
    for (size_t i = 0; i < len; i++) {
        fp ^= p[i];
        for (int k = 0; k < 8; k++)
            fp = (fp >> 1) ^ (DP_AVRO_CRC64_EMPTY & (0 - (fp & 1)));
    }
    return fp;
}

/* ------------------------------------------------------------------------
 * Registry
 * ------------------------------------------------------------------------ */

typedef struct entry {
    uint64_t fp;
    schema *s;
    avro_schema_t avro;
    avro_value_iface_t *iface;      /* generic class of avro */
} entry;

typedef struct plan plan;

/* The compiled resolution of one (writer, reader) pair. */
typedef struct resolution {
    const entry *writer, *reader;
    plan *root;
    plan **plans;                   /* every plan node, for memo and freeing */
    size_t nplans, capplans;
} resolution;

struct dp_avro_registry {
    pthread_mutex_t lock;
    entry **entries;
    size_t nentries, capentries;
    resolution **res;
    size_t nres, capres;
};

static void resolution_free(resolution *r);

dp_avro_registry *dp_avro_registry_new(void)
{
    dp_avro_registry *reg = calloc(1, sizeof(*reg));
    if (reg && pthread_mutex_init(&reg->lock, NULL) != 0) {
        free(reg);
        return NULL;
    }
    return reg;
}

static void entry_free(entry *e)
{
    if (!e)
        return;
    if (e->iface)
        avro_value_iface_decref(e->iface);
    if (e->avro)
        avro_schema_decref(e->avro);
    schema_free(e->s);
    free(e);
}

void dp_avro_registry_free(dp_avro_registry *reg)
{
    if (!reg)
        return;
    for (size_t i = 0; i < reg->nres; i++)
        resolution_free(reg->res[i]);
    free(reg->res);
    for (size_t i = 0; i < reg->nentries; i++)
        entry_free(reg->entries[i]);
    free(reg->entries);
    pthread_mutex_destroy(&reg->lock);
    free(reg);
}

/* Caller holds the lock. */
static entry *find_entry(const dp_avro_registry *reg, uint64_t fp)
{
    for (size_t i = 0; i < reg->nentries; i++)
        if (reg->entries[i]->fp == fp)
            return reg->entries[i];
    return NULL;
}

static entry *lookup_entry(dp_avro_registry *reg, uint64_t fp)
{
    pthread_mutex_lock(&reg->lock);
    entry *e = find_entry(reg, fp);
    pthread_mutex_unlock(&reg->lock);
    return e;
}

dp_err dp_avro_registry_add_json(dp_avro_registry *reg, const char *json,
                                 uint64_t *fp, char *err, size_t errlen)
{
    entry *e = calloc(1, sizeof(*e));
    if (!e)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "out of memory");
    if (!(e->s = schema_parse(json, err, errlen))) {
        entry_free(e);
        return DP_ERR_PERMANENT;
    }
    char *pcf = pcf_of(e->s, err, errlen);
    if (!pcf) {
        entry_free(e);
        return DP_ERR_PERMANENT;
    }
    uint64_t fingerprint = e->fp = dp_avro_crc64(pcf, strlen(pcf));

    /* avro-c gets the original text, not the canonical form: the canonical
     * form drops "namespace":"", so a null-namespace type nested in a
     * namespaced one would re-parse under the wrong name.  Its parser and
     * error buffer are not thread-safe: parse under the lock, which also
     * makes check-then-insert atomic. */
    dp_err rc = DP_OK;
    pthread_mutex_lock(&reg->lock);
    if (find_entry(reg, e->fp)) {
        entry_free(e);
        e = NULL;
    } else if (avro_schema_from_json_length(json, strlen(json), &e->avro) != 0) {
        e->avro = NULL;
        rc = dp_errf(DP_ERR_PERMANENT, err, errlen, "avro-c rejects schema %s: %s",
                     node_label(e->s->root), avro_strerror());
    } else {
        const snode **seen = NULL;
        size_t nseen = 0, capseen = 0;
        bool same = same_shape(e->s->root, e->avro, &seen, &nseen, &capseen);
        free(seen);
        if (!same)
            rc = dp_errf(DP_ERR_PERMANENT, err, errlen,
                         "avro-c reads schema %s differently (name resolution?)",
                         node_label(e->s->root));
        else if (!(e->iface = avro_generic_class_from_schema(e->avro)))
            rc = dp_errf(DP_ERR_PERMANENT, err, errlen,
                         "avro-c cannot build values of schema %s: %s",
                         node_label(e->s->root), avro_strerror());
        else if (!ptrvec_push((void ***)&reg->entries, &reg->nentries,
                              &reg->capentries, e))
            rc = dp_errf(DP_ERR_PERMANENT, err, errlen, "out of memory");
    }
    pthread_mutex_unlock(&reg->lock);
    if (rc == DP_OK && fp)
        *fp = fingerprint;
    if (rc != DP_OK)
        entry_free(e);
    free(pcf);
    return rc;
}

dp_err dp_avro_registry_add_file(dp_avro_registry *reg, const char *path,
                                 uint64_t *fp, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "cannot open schema %s: %s",
                       path, strerror(errno));
    char *text = malloc(SCHEMA_FILE_MAX + 1);
    size_t n = text ? fread(text, 1, SCHEMA_FILE_MAX + 1, f) : 0;
    bool bad = !text || ferror(f) || n > SCHEMA_FILE_MAX;
    fclose(f);
    if (bad) {
        free(text);
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "cannot read schema %s (unreadable or over %d bytes)", path,
                       SCHEMA_FILE_MAX);
    }
    text[n] = '\0';
    char why[256];
    dp_err rc = dp_avro_registry_add_json(reg, text, fp, why, sizeof(why));
    free(text);
    if (rc != DP_OK)
        return dp_errf(rc, err, errlen, "%s: %s", path, why);
    return DP_OK;
}

avro_schema_t dp_avro_registry_schema(dp_avro_registry *reg, uint64_t fp)
{
    entry *e = lookup_entry(reg, fp);
    return e ? e->avro : NULL;
}

dp_err dp_avro_value_new(dp_avro_registry *reg, uint64_t fp, avro_value_t *out,
                         char *err, size_t errlen)
{
    entry *e = lookup_entry(reg, fp);
    out->iface = NULL;
    out->self = NULL;
    if (!e)
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "schema %016" PRIx64 " is not registered", fp);
    if (avro_generic_value_new(e->iface, out) != 0) {
        out->iface = NULL;
        out->self = NULL;
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "out of memory");
    }
    return DP_OK;
}

/* ------------------------------------------------------------------------
 * 3. Resolution plans
 * ------------------------------------------------------------------------ */

typedef enum plan_kind {
    PLAN_READ,      /* neither side a union: read the writer type, store as reader */
    PLAN_WUNION,    /* writer is a union: pick branches[discriminant] */
    PLAN_SELECT,    /* reader is a union: select rbranch, then run inner */
} plan_kind;

typedef struct plan_field {
    int rindex;     /* reader field the writer field lands in; -1: skip it */
    plan *p;
} plan_field;

struct plan {
    plan_kind kind;
    const snode *w, *r;
    bool bad;               /* the pair cannot be resolved: reading is poison */
    char why[240];          /* ... because */
    plan **branches;        /* WUNION */
    int rbranch;            /* SELECT */
    plan *inner;            /* SELECT */
    plan_field *fields;     /* READ record: one per writer field */
    size_t *defaults;       /* READ record: reader fields filled from defaults */
    size_t ndefaults;
    int *symbols;           /* READ enum: writer symbol -> reader symbol or -1 */
    plan *items;            /* READ array items / map values */
};

static void plan_free(plan *p)
{
    free(p->branches);
    free(p->fields);
    free(p->defaults);
    free(p->symbols);
    free(p);
}

static void resolution_free(resolution *r)
{
    for (size_t i = 0; i < r->nplans; i++)
        plan_free(r->plans[i]);
    free(r->plans);
    free(r);
}

static void plan_fail(plan *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void plan_fail(plan *p, const char *fmt, ...)
{
    if (p->bad)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->why, sizeof(p->why), fmt, ap);
    va_end(ap);
    p->bad = true;
}

static plan *resolve(resolution *res, const snode *w, const snode *r);

static bool names_match(const snode *w, const snode *r)
{
    if (strcmp(w->fullname, r->fullname) == 0)
        return true;
    const char *wn = strrchr(w->fullname, '.'), *rn = strrchr(r->fullname, '.');
    if (strcmp(wn ? wn + 1 : w->fullname, rn ? rn + 1 : r->fullname) == 0)
        return true;
    for (size_t i = 0; i < r->naliases; i++)
        if (strcmp(r->aliases[i], w->fullname) == 0)
            return true;
    return false;
}

static bool promotable(avro_type_t w, avro_type_t r)
{
    switch (w) {
    case AVRO_INT32: return r == AVRO_INT64 || r == AVRO_FLOAT || r == AVRO_DOUBLE;
    case AVRO_INT64: return r == AVRO_FLOAT || r == AVRO_DOUBLE;
    case AVRO_FLOAT: return r == AVRO_DOUBLE;
    case AVRO_STRING: return r == AVRO_BYTES;
    case AVRO_BYTES: return r == AVRO_STRING;
    default: return false;
    }
}

static int reader_field(const snode *r, const char *wname)
{
    for (size_t i = 0; i < r->nfields; i++)
        if (strcmp(r->fields[i].name, wname) == 0)
            return (int)i;
    for (size_t i = 0; i < r->nfields; i++)
        for (size_t k = 0; k < r->fields[i].naliases; k++)
            if (strcmp(r->fields[i].aliases[k], wname) == 0)
                return (int)i;
    return -1;
}

static void resolve_record(resolution *res, plan *p)
{
    const snode *w = p->w, *r = p->r;
    bool *used = calloc(r->nfields + 1, sizeof(bool));
    p->fields = calloc(w->nfields + 1, sizeof(plan_field));
    p->defaults = calloc(r->nfields + 1, sizeof(size_t));
    if (!used || !p->fields || !p->defaults) {
        free(used);
        plan_fail(p, "out of memory");
        return;
    }
    for (size_t i = 0; i < w->nfields; i++) {
        int ri = reader_field(r, w->fields[i].name);
        p->fields[i].rindex = ri;
        if (ri < 0)
            continue;
        used[ri] = true;
        p->fields[i].p = resolve(res, w->fields[i].type, r->fields[ri].type);
        if (!p->fields[i].p)
            plan_fail(p, "out of memory");
        else if (p->fields[i].p->bad)
            plan_fail(p, "field \"%s\": %s", w->fields[i].name, p->fields[i].p->why);
    }
    for (size_t i = 0; i < r->nfields; i++) {
        if (used[i])
            continue;
        if (!r->fields[i].def)
            plan_fail(p, "reader field \"%s\" of %s is not in the writer and has "
                      "no default", r->fields[i].name, r->fullname);
        p->defaults[p->ndefaults++] = i;
    }
    free(used);
}

static void resolve_read(resolution *res, plan *p)
{
    const snode *w = p->w, *r = p->r;
    if (w->type != r->type) {
        if (!promotable(w->type, r->type))
            plan_fail(p, "writer %s cannot be read as %s", node_label(w), node_label(r));
        return;
    }
    if (is_named(w->type) && !names_match(w, r)) {
        plan_fail(p, "writer %s cannot be read as %s", node_label(w), node_label(r));
        return;
    }
    switch (w->type) {
    case AVRO_RECORD:
        resolve_record(res, p);
        break;
    case AVRO_ENUM:
        if (!(p->symbols = calloc(w->nsymbols + 1, sizeof(int)))) {
            plan_fail(p, "out of memory");
            break;
        }
        for (size_t i = 0; i < w->nsymbols; i++) {
            int k = symbol_index(r, w->symbols[i]);
            p->symbols[i] = k >= 0 ? k : r->enum_default;
        }
        break;
    case AVRO_FIXED:
        if (w->size != r->size)
            plan_fail(p, "fixed %s has size %" PRId64 " in the writer, %" PRId64
                      " in the reader", w->fullname, w->size, r->size);
        break;
    case AVRO_ARRAY:
    case AVRO_MAP:
        if (!(p->items = resolve(res, w->items, r->items)))
            plan_fail(p, "out of memory");
        else if (p->items->bad)
            plan_fail(p, "%s %s: %s", type_name(w->type),
                      w->type == AVRO_ARRAY ? "items" : "values", p->items->why);
        break;
    default:
        break;
    }
}

/* Reader is a union, writer is not: the first branch of the same type (and
 * name) that resolves, else the first branch that resolves at all. */
static void resolve_select(resolution *res, plan *p)
{
    const snode *w = p->w, *r = p->r;
    plan *exact_failure = NULL;
    for (int pass = 0; pass < 2 && !p->inner; pass++) {
        for (size_t i = 0; i < r->nbranches; i++) {
            const snode *b = r->branches[i];
            bool exact = b->type == w->type &&
                         (!is_named(w->type) || names_match(w, b));
            if (pass == 0 && !exact)
                continue;
            plan *sub = resolve(res, w, b);
            if (!sub) {
                plan_fail(p, "out of memory");
                return;
            }
            if (!sub->bad) {
                p->inner = sub;
                p->rbranch = (int)i;
                break;
            }
            if (exact && !exact_failure)
                exact_failure = sub;
        }
    }
    if (!p->inner) {
        if (exact_failure)
            plan_fail(p, "%s", exact_failure->why);
        else
            plan_fail(p, "writer %s matches no branch of the reader's union",
                      node_label(w));
    }
}

/* The plan for reading writer type w as reader type r, memoized per pair so
 * recursive schemas terminate.  NULL only when out of memory. */
static plan *resolve(resolution *res, const snode *w, const snode *r)
{
    for (size_t i = 0; i < res->nplans; i++)
        if (res->plans[i]->w == w && res->plans[i]->r == r)
            return res->plans[i];

    plan *p = calloc(1, sizeof(*p));
    if (!p || !ptrvec_push((void ***)&res->plans, &res->nplans, &res->capplans, p)) {
        free(p);
        return NULL;
    }
    p->w = w;
    p->r = r;
    if (w->type == AVRO_UNION) {
        p->kind = PLAN_WUNION;
        if (!(p->branches = calloc(w->nbranches + 1, sizeof(plan *)))) {
            plan_fail(p, "out of memory");
            return p;
        }
        size_t readable = 0;
        for (size_t i = 0; i < w->nbranches; i++) {
            if (!(p->branches[i] = resolve(res, w->branches[i], r))) {
                plan_fail(p, "out of memory");
                return p;
            }
            readable += !p->branches[i]->bad;
        }
        if (readable == 0)
            plan_fail(p, "no branch of the writer's union can be read as %s",
                      node_label(r));
    } else if (r->type == AVRO_UNION) {
        p->kind = PLAN_SELECT;
        resolve_select(res, p);
    } else {
        p->kind = PLAN_READ;
        resolve_read(res, p);
    }
    return p;
}

/* The cached resolution of writer_fp into reader_fp, compiling it on first
 * use.  Unknown reader: permanent (caller bug); unknown writer: poison. */
static dp_err get_resolution(dp_avro_registry *reg, uint64_t wfp, uint64_t rfp,
                             resolution **out, char *err, size_t errlen)
{
    dp_err rc = DP_OK;
    *out = NULL;
    pthread_mutex_lock(&reg->lock);
    for (size_t i = 0; i < reg->nres; i++) {
        if (reg->res[i]->writer->fp == wfp && reg->res[i]->reader->fp == rfp) {
            *out = reg->res[i];
            break;
        }
    }
    if (!*out) {
        const entry *r = find_entry(reg, rfp), *w = find_entry(reg, wfp);
        resolution *res = NULL;
        if (!r)
            rc = dp_errf(DP_ERR_PERMANENT, err, errlen,
                         "reader schema %016" PRIx64 " is not registered", rfp);
        else if (!w)
            rc = dp_errf(DP_ERR_POISON, err, errlen,
                         "unknown writer schema fingerprint %016" PRIx64, wfp);
        else if (!(res = calloc(1, sizeof(*res))))
            rc = dp_errf(DP_ERR_RETRYABLE, err, errlen, "out of memory");
        if (res) {
            res->writer = w;
            res->reader = r;
            res->root = resolve(res, w->s->root, r->s->root);
            if (!res->root ||
                !ptrvec_push((void ***)&reg->res, &reg->nres, &reg->capres, res)) {
                resolution_free(res);
                rc = dp_errf(DP_ERR_RETRYABLE, err, errlen, "out of memory");
            } else {
                *out = res;
            }
        }
    }
    pthread_mutex_unlock(&reg->lock);
    if (rc == DP_OK && (*out)->root->bad)
        rc = dp_errf(DP_ERR_POISON, err, errlen,
                     "writer schema %016" PRIx64 " (%s) cannot be read as reader "
                     "schema %016" PRIx64 " (%s): %s", wfp,
                     node_label((*out)->writer->s->root), rfp,
                     node_label((*out)->reader->s->root), (*out)->root->why);
    return rc;
}

/* ------------------------------------------------------------------------
 * 4. Decoding
 * ------------------------------------------------------------------------ */

typedef struct cursor {
    const uint8_t *start, *p, *end;
    size_t budget;          /* array items and map entries still allowed */
    const char *field;      /* innermost record field, for messages */
    char *scratch;          /* NUL-terminated copies of strings and map keys */
    size_t scratchcap;
    bool scratch_owned;     /* scratch was malloc'd (else it is on the stack) */
    char *err;
    size_t errlen;
} cursor;

static dp_err poison(cursor *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static dp_err poison(cursor *c, const char *fmt, ...)
{
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (c->field)
        return dp_errf(DP_ERR_POISON, c->err, c->errlen,
                       "%s (body byte %td, field \"%s\")", what, c->p - c->start,
                       c->field);
    return dp_errf(DP_ERR_POISON, c->err, c->errlen, "%s (body byte %td)", what,
                   c->p - c->start);
}

/* A store into the generic value failed: avro-c only does that when it
 * cannot allocate.  Its message is not read (global buffer, see top). */
static dp_err store_failed(cursor *c, int rval)
{
    return poison(c, "avro-c could not store the value (error %d)", rval);
}

static size_t left(const cursor *c)
{
    return (size_t)(c->end - c->p);
}

static dp_err read_long(cursor *c, int64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
        if (c->p == c->end)
            return poison(c, "truncated varint");
        uint8_t b = *c->p++;
        if (shift == 63 && b > 1)
            return poison(c, "varint longer than 64 bits");
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            break;
    }
    *out = (int64_t)((v >> 1) ^ (0 - (v & 1)));
    return DP_OK;
}

/* A bytes/string length: never negative, never more than the bytes left. */
static dp_err read_length(cursor *c, const char *what, size_t *out)
{
    int64_t n = 0;
    dp_err rc = read_long(c, &n);
    if (rc != DP_OK)
        return rc;
    if (n < 0)
        return poison(c, "negative %s length %" PRId64, what, n);
    if ((uint64_t)n > left(c))
        return poison(c, "%s length %" PRId64 " exceeds the %zu bytes left", what, n,
                      left(c));
    *out = (size_t)n;
    return DP_OK;
}

/* The item count of the next array/map block (0 at the end), charged to the
 * budget so that a few bytes cannot ask for billions of items. */
static dp_err read_block(cursor *c, size_t *count)
{
    int64_t n = 0, bytes = 0;
    dp_err rc = read_long(c, &n);
    if (rc != DP_OK)
        return rc;
    if (n < 0) {
        if (n == INT64_MIN)
            return poison(c, "invalid block count");
        n = -n;
        if ((rc = read_long(c, &bytes)) != DP_OK)
            return rc;
        if (bytes < 0 || (uint64_t)bytes > left(c))
            return poison(c, "block size %" PRId64 " exceeds the %zu bytes left",
                          bytes, left(c));
    }
    if ((uint64_t)n > c->budget)
        return poison(c, "block of %" PRId64 " items is more than the record can hold",
                      n);
    c->budget -= (size_t)n;
    *count = (size_t)n;
    return DP_OK;
}

static dp_err read_fixed_bytes(cursor *c, size_t n, const char *what,
                               const uint8_t **out)
{
    if (n > left(c))
        return poison(c, "truncated %s", what);
    *out = c->p;
    c->p += n;
    return DP_OK;
}

/* Reads a union discriminant of writer union w. */
static dp_err read_branch(cursor *c, const snode *w, size_t *out)
{
    int64_t d = 0;
    dp_err rc = read_long(c, &d);
    if (rc != DP_OK)
        return rc;
    if (d < 0 || (uint64_t)d >= w->nbranches)
        return poison(c, "union branch %" PRId64 " out of range (%zu branches)", d,
                      w->nbranches);
    *out = (size_t)d;
    return DP_OK;
}

static dp_err read_enum(cursor *c, const snode *w, size_t *out)
{
    int64_t i = 0;
    dp_err rc = read_long(c, &i);
    if (rc != DP_OK)
        return rc;
    if (i < 0 || (uint64_t)i >= w->nsymbols)
        return poison(c, "enum %s index %" PRId64 " out of range", w->fullname, i);
    *out = (size_t)i;
    return DP_OK;
}

static dp_err check_depth(cursor *c, int depth)
{
    if (depth > DP_AVRO_MAX_DEPTH)
        return poison(c, "nested deeper than %d", DP_AVRO_MAX_DEPTH);
    return DP_OK;
}

/* Validates and skips a value of writer type w (a field the reader lacks). */
static dp_err skip(cursor *c, const snode *w, int depth)
{
    const uint8_t *unused;
    size_t n = 0, k = 0;
    int64_t v;
    dp_err rc = check_depth(c, depth);
    if (rc != DP_OK)
        return rc;
    switch (w->type) {
    case AVRO_NULL: return DP_OK;
    case AVRO_BOOLEAN: return read_fixed_bytes(c, 1, "boolean", &unused);
    case AVRO_INT32:
    case AVRO_INT64: return read_long(c, &v);
    case AVRO_FLOAT: return read_fixed_bytes(c, 4, "float", &unused);
    case AVRO_DOUBLE: return read_fixed_bytes(c, 8, "double", &unused);
    case AVRO_BYTES:
    case AVRO_STRING:
        if ((rc = read_length(c, type_name(w->type), &n)) != DP_OK)
            return rc;
        c->p += n;
        return DP_OK;
    case AVRO_FIXED: return read_fixed_bytes(c, (size_t)w->size, "fixed", &unused);
    case AVRO_ENUM: return read_enum(c, w, &n);
    case AVRO_UNION:
        if ((rc = read_branch(c, w, &n)) != DP_OK)
            return rc;
        return skip(c, w->branches[n], depth);
    case AVRO_RECORD:
        for (size_t i = 0; i < w->nfields; i++)
            if ((rc = skip(c, w->fields[i].type, depth + 1)) != DP_OK)
                return rc;
        return DP_OK;
    case AVRO_ARRAY:
    case AVRO_MAP:
        while ((rc = read_block(c, &n)) == DP_OK && n > 0) {
            for (size_t i = 0; i < n; i++) {
                if (w->type == AVRO_MAP) {
                    if ((rc = read_length(c, "map key", &k)) != DP_OK)
                        return rc;
                    c->p += k;
                }
                if ((rc = skip(c, w->items, depth + 1)) != DP_OK)
                    return rc;
            }
        }
        return rc;
    default: return poison(c, "unsupported writer type");
    }
}

/* A NUL-terminated copy of the next n body bytes (n <= left(c)) in the
 * cursor's scratch buffer, grown on demand and freed after the decode. */
static char *scratch_copy(cursor *c, size_t n)
{
    if (n + 1 > c->scratchcap) {
        char *grown = c->scratch_owned ? realloc(c->scratch, n + 1) : malloc(n + 1);
        if (!grown)
            return NULL;
        c->scratch = grown;
        c->scratchcap = n + 1;
        c->scratch_owned = true;
    }
    memcpy(c->scratch, c->p, n);
    c->scratch[n] = '\0';
    return c->scratch;
}

/* Stores the next n body bytes as the reader's string.  avro-c strings count
 * their NUL in their size and the wire bytes have none, so they go through
 * scratch; avro-c then copies them into the value's own buffer, which a
 * reused value keeps.  (Handing avro-c a wrapped buffer instead would avoid
 * one copy, but its generic records pack fields unaligned, so the buffer's
 * free callback would get a misaligned struct.) */
static int set_string(cursor *c, avro_value_t *dest, size_t n)
{
    char *copy = scratch_copy(c, n);
    if (!copy)
        return ENOMEM;
    return avro_value_set_string_len(dest, copy, n + 1);
}

static int store_long(avro_value_t *dest, avro_type_t rtype, int64_t v)
{
    switch (rtype) {
    case AVRO_INT32: return avro_value_set_int(dest, (int32_t)v);
    case AVRO_INT64: return avro_value_set_long(dest, v);
    case AVRO_FLOAT: return avro_value_set_float(dest, (float)v);
    default: return avro_value_set_double(dest, (double)v);
    }
}

static int store_bytes(cursor *c, avro_value_t *dest, avro_type_t rtype, size_t n)
{
    if (rtype == AVRO_STRING)
        return set_string(c, dest, n);
    return avro_value_set_bytes(dest, (void *)c->p, n);
}

/* Writes JSON default j of reader type t into dest (validated at
 * registration, so only avro-c allocation can fail). */
static int fill_default(const snode *t, json_t *j, avro_value_t *dest)
{
    avro_value_t child;
    int rval = 0;
    switch (t->type) {
    case AVRO_NULL: return avro_value_set_null(dest);
    case AVRO_BOOLEAN: return avro_value_set_boolean(dest, json_is_true(j));
    case AVRO_INT32:
    case AVRO_INT64: return store_long(dest, t->type, json_integer_value(j));
    case AVRO_FLOAT: return avro_value_set_float(dest, (float)json_number_value(j));
    case AVRO_DOUBLE: return avro_value_set_double(dest, json_number_value(j));
    case AVRO_STRING:
        return avro_value_set_string_len(dest, json_string_value(j),
                                         json_string_length(j) + 1);
    case AVRO_BYTES:
    case AVRO_FIXED: {
        uint8_t *raw = malloc(json_string_length(j) + 1);
        if (!raw)
            return ENOMEM;
        long n = latin1_decode(json_string_value(j), json_string_length(j), raw);
        rval = t->type == AVRO_BYTES ? avro_value_set_bytes(dest, raw, (size_t)n)
                                     : avro_value_set_fixed(dest, raw, (size_t)n);
        free(raw);
        return rval;
    }
    case AVRO_ENUM: return avro_value_set_enum(dest, symbol_index(t, json_string_value(j)));
    case AVRO_ARRAY: {
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) {
            if ((rval = avro_value_append(dest, &child, NULL)) != 0 ||
                (rval = fill_default(t->items, v, &child)) != 0)
                return rval;
        }
        return 0;
    }
    case AVRO_MAP: {
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) {
            if ((rval = avro_value_add(dest, k, &child, NULL, NULL)) != 0 ||
                (rval = fill_default(t->items, v, &child)) != 0)
                return rval;
        }
        return 0;
    }
    case AVRO_RECORD:
        for (size_t i = 0; i < t->nfields; i++) {
            json_t *v = json_object_get(j, t->fields[i].name);
            if ((rval = avro_value_get_by_index(dest, i, &child, NULL)) != 0 ||
                (rval = fill_default(t->fields[i].type, v ? v : t->fields[i].def,
                                     &child)) != 0)
                return rval;
        }
        return 0;
    case AVRO_UNION:
        if ((rval = avro_value_set_branch(dest, 0, &child)) != 0)
            return rval;
        return fill_default(t->branches[0], j, &child);
    default: return EINVAL;
    }
}

static dp_err walk(const plan *p, cursor *c, avro_value_t *dest, int depth);

static dp_err read_record(const plan *p, cursor *c, avro_value_t *dest, int depth)
{
    const snode *w = p->w, *r = p->r;
    const char *outer = c->field;
    avro_value_t child;
    dp_err rc = DP_OK;
    int rval;
    for (size_t i = 0; i < w->nfields && rc == DP_OK; i++) {
        c->field = w->fields[i].name;
        if (p->fields[i].rindex < 0)
            rc = skip(c, w->fields[i].type, depth + 1);
        else if ((rval = avro_value_get_by_index(dest, (size_t)p->fields[i].rindex,
                                                 &child, NULL)) != 0)
            rc = store_failed(c, rval);
        else
            rc = walk(p->fields[i].p, c, &child, depth + 1);
    }
    for (size_t i = 0; i < p->ndefaults && rc == DP_OK; i++) {
        const sfield *f = &r->fields[p->defaults[i]];
        c->field = f->name;
        if ((rval = avro_value_get_by_index(dest, p->defaults[i], &child, NULL)) != 0 ||
            (rval = fill_default(f->type, f->def, &child)) != 0)
            rc = store_failed(c, rval);
    }
    if (rc == DP_OK)
        c->field = outer;
    return rc;
}

static dp_err read_array_or_map(const plan *p, cursor *c, avro_value_t *dest, int depth)
{
    size_t n = 0, klen = 0;
    avro_value_t child;
    dp_err rc;
    int rval;
    while ((rc = read_block(c, &n)) == DP_OK && n > 0) {
        for (size_t i = 0; i < n; i++) {
            if (p->w->type == AVRO_ARRAY) {
                if ((rval = avro_value_append(dest, &child, NULL)) != 0)
                    return store_failed(c, rval);
            } else {
                if ((rc = read_length(c, "map key", &klen)) != DP_OK)
                    return rc;
                if (memchr(c->p, '\0', klen))
                    return poison(c, "map key contains a NUL byte");
                char *key = scratch_copy(c, klen);
                if (!key)
                    return store_failed(c, ENOMEM);
                c->p += klen;
                int is_new = 1;
                rval = avro_value_add(dest, key, &child, NULL, &is_new);
                if (rval == 0 && !is_new) /* repeated key: the last one wins */
                    rval = avro_value_reset(&child);
                if (rval != 0)
                    return store_failed(c, rval);
            }
            if ((rc = walk(p->items, c, &child, depth + 1)) != DP_OK)
                return rc;
        }
    }
    return rc;
}

static dp_err read_value(const plan *p, cursor *c, avro_value_t *dest, int depth)
{
    const uint8_t *b = NULL;
    size_t n = 0;
    int64_t v = 0;
    dp_err rc;
    int rval;
    avro_type_t rtype = p->r->type;

    switch (p->w->type) {
    case AVRO_NULL:
        rval = avro_value_set_null(dest);
        break;
    case AVRO_BOOLEAN:
        if ((rc = read_fixed_bytes(c, 1, "boolean", &b)) != DP_OK)
            return rc;
        if (*b > 1)
            return poison(c, "boolean byte is %u, not 0 or 1", *b);
        rval = avro_value_set_boolean(dest, *b);
        break;
    case AVRO_INT32:
    case AVRO_INT64:
        if ((rc = read_long(c, &v)) != DP_OK)
            return rc;
        if (p->w->type == AVRO_INT32 && (v < INT32_MIN || v > INT32_MAX))
            return poison(c, "int value %" PRId64 " out of range", v);
        rval = store_long(dest, rtype, v);
        break;
    case AVRO_FLOAT: {
        uint32_t bits;
        float f;
        if ((rc = read_fixed_bytes(c, 4, "float", &b)) != DP_OK)
            return rc;
        bits = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
               (uint32_t)b[3] << 24;
        memcpy(&f, &bits, sizeof(f));
        rval = rtype == AVRO_FLOAT ? avro_value_set_float(dest, f)
                                   : avro_value_set_double(dest, f);
        break;
    }
    case AVRO_DOUBLE: {
        uint64_t bits = 0;
        double d;
        if ((rc = read_fixed_bytes(c, 8, "double", &b)) != DP_OK)
            return rc;
        for (int i = 7; i >= 0; i--)
            bits = bits << 8 | b[i];
        memcpy(&d, &bits, sizeof(d));
        rval = avro_value_set_double(dest, d);
        break;
    }
    case AVRO_BYTES:
    case AVRO_STRING:
        if ((rc = read_length(c, type_name(p->w->type), &n)) != DP_OK)
            return rc;
        rval = store_bytes(c, dest, rtype, n);
        c->p += n;
        break;
    case AVRO_FIXED:
        if ((rc = read_fixed_bytes(c, (size_t)p->w->size, "fixed", &b)) != DP_OK)
            return rc;
        rval = avro_value_set_fixed(dest, (void *)b, (size_t)p->w->size);
        break;
    case AVRO_ENUM:
        if ((rc = read_enum(c, p->w, &n)) != DP_OK)
            return rc;
        if (p->symbols[n] < 0)
            return poison(c, "enum symbol %s is unknown to the reader's %s",
                          p->w->symbols[n], p->r->fullname);
        rval = avro_value_set_enum(dest, p->symbols[n]);
        break;
    case AVRO_RECORD:
        if ((rc = check_depth(c, depth)) != DP_OK)
            return rc;
        return read_record(p, c, dest, depth);
    case AVRO_ARRAY:
    case AVRO_MAP:
        if ((rc = check_depth(c, depth)) != DP_OK)
            return rc;
        return read_array_or_map(p, c, dest, depth);
    default:
        return poison(c, "unsupported writer type");
    }
    return rval == 0 ? DP_OK : store_failed(c, rval);
}

/* Reads one value of plan p's writer type into dest, a value of its reader
 * type.  depth counts records, arrays and maps. */
static dp_err walk(const plan *p, cursor *c, avro_value_t *dest, int depth)
{
    avro_value_t branch;
    size_t d = 0;
    dp_err rc;
    int rval;
    if (p->bad)
        return poison(c, "%s", p->why);
    switch (p->kind) {
    case PLAN_WUNION:
        if ((rc = read_branch(c, p->w, &d)) != DP_OK)
            return rc;
        return walk(p->branches[d], c, dest, depth);
    case PLAN_SELECT:
        if ((rval = avro_value_set_branch(dest, p->rbranch, &branch)) != 0)
            return store_failed(c, rval);
        return walk(p->inner, c, &branch, depth);
    default:
        return read_value(p, c, dest, depth);
    }
}

dp_err dp_avro_peek_fingerprint(const void *buf, size_t len, uint64_t *fp,
                                char *err, size_t errlen)
{
    const uint8_t *b = buf;
    if (len < DP_AVRO_HEADER_SIZE || b[0] != 0xC3 || b[1] != 0x01)
        return dp_errf(DP_ERR_POISON, err, errlen,
                       "not Avro single-object encoded (%zu bytes, no C3 01 header)",
                       len);
    uint64_t v = 0;
    for (int i = 9; i >= 2; i--)
        v = v << 8 | b[i];
    *fp = v;
    return DP_OK;
}

/* Reads the body of buf, whose header named res's writer, into dest. */
static dp_err decode_body(const resolution *res, const void *buf, size_t len,
                          avro_value_t *dest, char *err, size_t errlen)
{
    const uint8_t *body = (const uint8_t *)buf + DP_AVRO_HEADER_SIZE;
    char small[512];
    cursor c = {
        .start = body, .p = body, .end = body + (len - DP_AVRO_HEADER_SIZE),
        .budget = len - DP_AVRO_HEADER_SIZE, .scratch = small,
        .scratchcap = sizeof(small), .err = err, .errlen = errlen,
    };
    dp_err rc = walk(res->root, &c, dest, 0);
    if (rc == DP_OK && c.p != c.end)
        rc = dp_errf(DP_ERR_POISON, err, errlen, "%zu trailing bytes after the %s body",
                     left(&c), node_label(res->writer->s->root));
    if (c.scratch_owned)
        free(c.scratch);
    return rc;
}

static dp_err prepare(dp_avro_registry *reg, uint64_t reader_fp, const void *buf,
                      size_t len, const resolution **res, char *err, size_t errlen)
{
    uint64_t wfp = 0;  /* set on DP_OK; -O3 cannot see that dp_errf never returns DP_OK */
    resolution *r = NULL;
    dp_err rc = dp_avro_peek_fingerprint(buf, len, &wfp, err, errlen);
    if (rc == DP_OK)
        rc = get_resolution(reg, wfp, reader_fp, &r, err, errlen);
    if (rc == DP_OK)
        *res = r;
    return rc;
}

dp_err dp_avro_decode(dp_avro_registry *reg, uint64_t reader_fp, const void *buf,
                      size_t len, avro_value_t *out, char *err, size_t errlen)
{
    const resolution *res;
    avro_value_t v;
    out->iface = NULL;
    out->self = NULL;
    dp_err rc = prepare(reg, reader_fp, buf, len, &res, err, errlen);
    if (rc != DP_OK)
        return rc;
    if (avro_generic_value_new(res->reader->iface, &v) != 0)
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "out of memory");
    if ((rc = decode_body(res, buf, len, &v, err, errlen)) != DP_OK) {
        avro_value_decref(&v);
        return rc;
    }
    *out = v;
    return DP_OK;
}

dp_err dp_avro_decode_into(dp_avro_registry *reg, uint64_t reader_fp,
                           const void *buf, size_t len, avro_value_t *dest,
                           char *err, size_t errlen)
{
    const resolution *res;
    dp_err rc = prepare(reg, reader_fp, buf, len, &res, err, errlen);
    if (rc != DP_OK)
        return rc;
    avro_schema_t have = avro_value_get_schema(dest);
    if (have != res->reader->avro && !avro_schema_equal(have, res->reader->avro))
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "decode target is not a value of reader schema %016" PRIx64,
                       reader_fp);
    if (avro_value_reset(dest) != 0)
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "cannot reset the target value");
    return decode_body(res, buf, len, dest, err, errlen);
}

/* ------------------------------------------------------------------------
 * Encoding
 * ------------------------------------------------------------------------ */

dp_err dp_avro_encode(dp_avro_registry *reg, uint64_t writer_fp, avro_value_t *value,
                      void **buf, size_t *len, char *err, size_t errlen)
{
    *buf = NULL;
    *len = 0;
    entry *e = lookup_entry(reg, writer_fp);
    if (!e)
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "writer schema %016" PRIx64 " is not registered", writer_fp);
    avro_schema_t have = avro_value_get_schema(value);
    if (have != e->avro && !avro_schema_equal(have, e->avro))
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "value is not of writer schema %016" PRIx64 " (%s)", writer_fp,
                       node_label(e->s->root));

    size_t size;
    if (avro_value_sizeof(value, &size) != 0)
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "cannot encode %s value (incomplete union or string?)",
                       node_label(e->s->root));
    uint8_t *out = malloc(DP_AVRO_HEADER_SIZE + size);
    if (!out)
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "out of memory");
    out[0] = 0xC3;
    out[1] = 0x01;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(writer_fp >> (8 * i));

    avro_writer_t w = avro_writer_memory((const char *)out + DP_AVRO_HEADER_SIZE,
                                         (int64_t)size);
    int rval = w ? avro_value_write(w, value) : ENOMEM;
    if (w)
        avro_writer_free(w);
    if (rval != 0) {
        free(out);
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "cannot encode %s value (error %d)",
                       node_label(e->s->root), rval);
    }
    *buf = out;
    *len = DP_AVRO_HEADER_SIZE + size;
    return DP_OK;
}
