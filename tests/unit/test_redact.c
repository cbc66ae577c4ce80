/*
 * redact: the secret settings a configuration holds (the API key, a
 * password in a URL, sasl.password and its kin) never appear in an error
 * value or a URL shown, whatever message carries them.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "dp_error.h"
#include "redact.h"

Test(redact, test_url_passwords_are_masked_in_every_url_form)
{
    char out[256];
    cr_assert_str_eq(dp_redact_url("postgresql://app:pw-UrlForm-1@db:5432/docpipe?sslmode=require",
                                   out, sizeof(out)),
                     "postgresql://app:***@db:5432/docpipe?sslmode=require");
    cr_assert_str_eq(dp_redact_url("postgresql://app@db/docpipe?sslmode=disable&password=pw-Query-2",
                                   out, sizeof(out)),
                     "postgresql://app@db/docpipe?sslmode=disable&password=***");
    cr_assert_str_eq(dp_redact_url("host=db user=app password = 'pw Quoted 3' dbname=docpipe",
                                   out, sizeof(out)),
                     "host=db user=app password = '***' dbname=docpipe");
    cr_assert_str_eq(dp_redact_url("host=db password=pw-Plain-4 dbname=x", out, sizeof(out)),
                     "host=db password=*** dbname=x");
    cr_assert_str_eq(dp_redact_url("https://user:p%40ss-Enc-5@embed.example/v1", out, sizeof(out)),
                     "https://user:***@embed.example/v1");
    /* Nothing to hide: the URL as it is. */
    cr_assert_str_eq(dp_redact_url("postgresql://postgres@127.0.0.1:55432/docpipe", out,
                                   sizeof(out)),
                     "postgresql://postgres@127.0.0.1:55432/docpipe");
}

Test(redact, test_secret_settings_loaded_are_masked_in_error_values)
{
    setenv("DOCPIPE_EMBED_API_KEY", "sk-unit-SECRET-APIKEY-11aa", 1);
    setenv("DOCPIPE_DATABASE_URL", "postgresql://app:pg-unit-SECRET-p%40ss@db/docpipe", 1);
    setenv("DOCPIPE_KAFKA_SASL_PASSWORD", "sasl-unit-SECRET-PASSWORD-22bb", 1);
    setenv("DOCPIPE_KAFKA_SASL_USERNAME", "unit-user", 1);
    setenv("DOCPIPE_TIKA_URL", "http://tika:tika-unit-SECRET-33cc@tika:9998", 1);
    dp_config cfg;
    char err[512];
    cr_assert_eq(dp_config_load(&cfg, err, sizeof(err)), DP_OK, "%s", err);
    char msg[1024];
    dp_errf(DP_ERR_PERMANENT, msg, sizeof(msg),
            "key %s, url %s, decoded %s, sasl %s, tika %s, user %s", cfg.embed_api_key,
            cfg.database_url, "pg-unit-SECRET-p@ss", "sasl-unit-SECRET-PASSWORD-22bb",
            cfg.tika_url, "unit-user");
    cr_assert_null(strstr(msg, "SECRET"), "a secret survived: %s", msg);
    cr_assert_str_eq(msg, "key ***, url postgresql://app:***@db/docpipe, decoded ***, "
                          "sasl ***, tika http://tika:***@tika:9998, user unit-user");
    /* A refused Kafka property names itself, never its secret value. */
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    setenv("DOCPIPE_KAFKA_NOT_A_SECRET", "ssl-unit-SECRET-44dd", 1);
    dp_config_free(&cfg);
    cr_assert_eq(dp_config_load(&cfg, err, sizeof(err)), DP_OK, "%s", err);
    cr_assert_eq(dp_config_apply_kafka(&cfg, conf, 0, err, sizeof(err)), DP_ERR_PERMANENT);
    cr_assert(strstr(err, "not.a.secret=***"), "%s", err);
    cr_assert_null(strstr(err, "SECRET"), "%s", err);
    rd_kafka_conf_destroy(conf);
    dp_config_free(&cfg);
}

Test(redact, test_a_password_that_is_shown_anyway_is_not_masked)
{
    setenv("DOCPIPE_DATABASE_URL", "postgresql://postgres:docpipe@postgres:5432/docpipe", 1);
    setenv("DOCPIPE_EMBED_API_KEY", "sk-unit-SECRET-APIKEY-55ee", 1);
    dp_config cfg;
    char err[512];
    cr_assert_eq(dp_config_load(&cfg, err, sizeof(err)), DP_OK, "%s", err);
    char msg[256];
    dp_errf(DP_ERR_PERMANENT, msg, sizeof(msg), "topic %sparsed, key %s", cfg.topic_prefix,
            cfg.embed_api_key);
    cr_assert_str_eq(msg, "topic docpipe.parsed, key ***");
    dp_config_free(&cfg);
}

Test(redact, test_short_values_are_not_masked_and_names_tell_secrets)
{
    dp_redact_add("abc");
    char msg[64];
    dp_errf(DP_ERR_PERMANENT, msg, sizeof(msg), "abc stays");
    cr_assert_str_eq(msg, "abc stays");
    cr_assert(dp_redact_is_secret_name("sasl.password"));
    cr_assert(dp_redact_is_secret_name("ssl.keystore.password"));
    cr_assert(dp_redact_is_secret_name("sasl.oauthbearer.client.secret"));
    cr_assert(dp_redact_is_secret_name("embed_api_key"));
    cr_assert_not(dp_redact_is_secret_name("sasl.username"));
    cr_assert_not(dp_redact_is_secret_name("fetch.max.bytes"));
}
