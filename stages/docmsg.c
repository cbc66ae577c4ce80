/* docmsg: per-topic Avro messages (see docmsg.h). */
#include "docmsg.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "avro_codec.h"

typedef struct named_fp {
    char *name;
    uint64_t fp;
} named_fp;

struct dp_msgcodec {
    dp_avro_registry *reg;
    named_fp *names;
    size_t n;
};

dp_err dp_msgcodec_open(const char *schema_dir, dp_msgcodec **out, char *err,
                        size_t errlen)
{
    DIR *d = opendir(schema_dir);
    if (!d)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "open %s: %s",
                       schema_dir, strerror(errno));
    dp_msgcodec *c = calloc(1, sizeof(*c));
    c->reg = dp_avro_registry_new();
    struct dirent *de;
    dp_err e = DP_OK;
    while (e == DP_OK && (de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".avsc") != 0)
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", schema_dir, de->d_name);
        uint64_t fp;
        e = dp_avro_registry_add_file(c->reg, path, &fp, err, errlen);
        if (e)
            break;
        avro_schema_t s = dp_avro_registry_schema(c->reg, fp);
        c->names = realloc(c->names, (c->n + 1) * sizeof(named_fp));
        c->names[c->n].name = strdup(avro_schema_name(s));
        c->names[c->n].fp = fp;
        c->n++;
    }
    closedir(d);
    if (e) {
        dp_msgcodec_free(c);
        return e;
    }
    *out = c;
    return DP_OK;
}

void dp_msgcodec_free(dp_msgcodec *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        free(c->names[i].name);
    free(c->names);
    dp_avro_registry_free(c->reg);
    free(c);
}

static int find_fp(dp_msgcodec *c, const char *name, uint64_t *fp)
{
    /* The newest registration of a name wins (files are read in directory
     * order; one file per schema name in practice). */
    for (size_t i = c->n; i-- > 0;)
        if (strcmp(c->names[i].name, name) == 0) {
            *fp = c->names[i].fp;
            return 1;
        }
    return 0;
}

dp_err dp_msg_encode(dp_msgcodec *c, const char *name, const dp_field *fields,
                     size_t n, void **buf, size_t *len, char *err,
                     size_t errlen)
{
    uint64_t fp;
    if (!find_fp(c, name, &fp))
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "no schema named %s",
                       name);
    avro_value_t v;
    dp_err e = dp_avro_value_new(c->reg, fp, &v, err, errlen);
    if (e)
        return e;
    for (size_t i = 0; i < n && e == DP_OK; i++) {
        avro_value_t f;
        if (avro_value_get_by_name(&v, fields[i].name, &f, NULL) != 0) {
            e = dp_errf(DP_ERR_PERMANENT, err, errlen, "%s has no field %s",
                        name, fields[i].name);
            break;
        }
        int rc;
        if (fields[i].type == 's')
            rc = avro_value_set_string(&f, fields[i].s ? fields[i].s : "");
        else if (avro_value_get_type(&f) == AVRO_INT32)
            rc = avro_value_set_int(&f, (int32_t)fields[i].l);
        else
            rc = avro_value_set_long(&f, fields[i].l);
        if (rc)
            e = dp_errf(DP_ERR_PERMANENT, err, errlen, "%s.%s: wrong type",
                        name, fields[i].name);
    }
    if (e == DP_OK)
        e = dp_avro_encode(c->reg, fp, &v, buf, len, err, errlen);
    avro_value_decref(&v);
    return e;
}

dp_err dp_msg_decode(dp_msgcodec *c, const char *name, const void *buf,
                     size_t len, avro_value_t **out, char *err, size_t errlen)
{
    uint64_t fp;
    if (!find_fp(c, name, &fp))
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "no schema named %s",
                       name);
    avro_value_t *v = malloc(sizeof(*v));
    dp_err e = dp_avro_decode(c->reg, fp, buf, len, v, err, errlen);
    if (e) {
        free(v);
        return e;
    }
    *out = v;
    return DP_OK;
}

void dp_msg_free(avro_value_t *v)
{
    if (!v)
        return;
    avro_value_decref(v);
    free(v);
}

const char *dp_msg_str(avro_value_t *v, const char *field)
{
    avro_value_t f;
    const char *s;
    size_t sl;
    if (avro_value_get_by_name(v, field, &f, NULL) == 0 &&
        avro_value_get_string(&f, &s, &sl) == 0 && s)
        return s;
    return "";
}

int64_t dp_msg_long(avro_value_t *v, const char *field)
{
    avro_value_t f;
    if (avro_value_get_by_name(v, field, &f, NULL) != 0)
        return 0;
    if (avro_value_get_type(&f) == AVRO_INT32) {
        int32_t i = 0;
        avro_value_get_int(&f, &i);
        return i;
    }
    int64_t l = 0;
    avro_value_get_long(&f, &l);
    return l;
}
