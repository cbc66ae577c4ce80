/*
 * test_rate_key: the key the embedding rate limit is shared under
 * (embed_rate_scope=shared) tells accounts apart without revealing the API
 * key or a password in embed_url; embed_rate_scope takes shared or process.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "embed_client.h"

static dp_config cfg_of(const char *url, const char *model, const char *api_key)
{
    dp_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.embed_url = (char *)url;
    cfg.embed_model = (char *)model;
    cfg.embed_api_key = (char *)api_key;
    return cfg;
}

static void key_of(const char *url, const char *model, const char *api_key, char *out)
{
    dp_config cfg = cfg_of(url, model, api_key);
    cr_assert_eq(dp_embed_rate_key(&cfg, out, 600), 0);
}

Test(rate_key, names_service_and_model_and_never_the_api_key)
{
    char k[600];
    key_of("https://api.example.test/", "text-embedding-3-small",
           "sk-secret-0123456789abcdef", k);
    cr_assert_null(strstr(k, "sk-secret"), "%s", k);
    cr_assert_null(strstr(k, "0123456789abcdef"), "%s", k);
    cr_assert_not_null(strstr(k, "https://api.example.test "), "%s", k);
    cr_assert_not_null(strstr(k, " text-embedding-3-small "), "%s", k);
    const char *h = strstr(k, "key:");
    cr_assert_not_null(h);
    cr_assert_eq(strlen(h + 4), 16, "16 hex digits of the key's hash: %s", k);
    cr_assert_eq(strspn(h + 4, "0123456789abcdef"), 16);
}

Test(rate_key, a_password_in_the_url_is_masked)
{
    char k[600];
    key_of("https://user:hunter2pass@api.example.test", "m", "", k);
    cr_assert_null(strstr(k, "hunter2pass"), "%s", k);
    cr_assert_not_null(strstr(k, "key:none"), "%s", k);
}

Test(rate_key, one_account_one_key_another_key_another_limit)
{
    char a[600], b[600], c[600], d[600], e[600];
    key_of("http://127.0.0.1:39980", "m", "sk-one", a);
    key_of("http://127.0.0.1:39980/", "m", "sk-one", b);
    key_of("http://127.0.0.1:39980", "m", "sk-two", c);
    key_of("http://127.0.0.1:39980", "other", "sk-one", d);
    key_of("http://127.0.0.1:39981", "m", "sk-one", e);
    cr_assert_str_eq(a, b, "a trailing slash is the same service");
    cr_assert_str_neq(a, c);
    cr_assert_str_neq(a, d);
    cr_assert_str_neq(a, e);
}

Test(rate_key, embed_rate_scope_is_shared_by_default_and_checked)
{
    unsetenv("DOCPIPE_CONFIG");
    unsetenv("DOCPIPE_EMBED_RATE_SCOPE");
    dp_config c;
    char err[256];
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_str_eq(c.embed_rate_scope, "shared");
    dp_config_free(&c);
    setenv("DOCPIPE_EMBED_RATE_SCOPE", "process", 1);
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_str_eq(c.embed_rate_scope, "process");
    dp_config_free(&c);
    setenv("DOCPIPE_EMBED_RATE_SCOPE", "cluster", 1);
    cr_assert_eq(dp_config_load(&c, err, sizeof(err)), DP_ERR_PERMANENT);
    cr_assert_not_null(strstr(err, "embed_rate_scope"), "%s", err);
    cr_assert_not_null(strstr(err, "cluster"), "%s", err);
    dp_config_free(&c); /* a failed load is freed too (config.h) */
    unsetenv("DOCPIPE_EMBED_RATE_SCOPE");
}
