/*
 * redact: secrets never leave the process in text.
 *
 * Settings that hold secrets (the embedding API key, a password inside
 * database_url or a service URL, librdkafka properties such as
 * sasl.password) are registered here when the configuration is loaded.
 * dp_redact() then replaces every registered value with "***" in a piece of
 * text, and the two places every message passes through call it: dp_errf()
 * (so an error value, and whatever stores it: a job's error, a dead
 * letter's headers and row, an event) and the logger (every JSON line,
 * librdkafka's own log lines included). A secret that a service echoes back
 * in its reply is caught the same way.
 *
 * Values shorter than DP_REDACT_MIN bytes are not registered, nor values
 * that are part of text shown anyway (dp_redact_set_public): masking "ab"
 * or "docpipe" everywhere would garble messages and hide nothing. The
 * registry only grows; values are copied and live as long as the process.
 */
#ifndef DP_REDACT_H
#define DP_REDACT_H

#include <stddef.h>

#define DP_REDACT_MIN 4
#define DP_REDACT_MASK "***"

/* Registers one secret value (copied; NULL, short or known values are
 * ignored, and so is a value found in the public text). Thread-safe. */
void dp_redact_add(const char *secret);

/* Text that is shown anyway (the topic prefix, user and database names,
 * hosts, "docpipe"): a "secret" found in it is not registered, since
 * masking it would garble every message and hide nothing (a database
 * password "docpipe" where the database and every topic are named
 * docpipe). Replaces the previous public text; copied. */
void dp_redact_set_public(const char *text);

/* Registers the password of a URL (scheme://user:password@host/...) or of
 * a PostgreSQL connection string (URI, ?password=... or key=value form),
 * both as written and percent-decoded. */
void dp_redact_add_url(const char *url);

/* Replaces every registered secret in the NUL-terminated text, in place
 * (the text never grows: every secret is longer than the mask). */
void dp_redact(char *text);

/* Writes url with its password (userinfo, password= parameter or key=value
 * pair) replaced by "***" into out; returns out. For showing a URL. */
char *dp_redact_url(const char *url, char *out, size_t outlen);

/* Whether a librdkafka property (or setting) name holds a secret:
 * sasl.password, ssl.key.password, ssl.keystore.password,
 * sasl.oauthbearer.client.secret, sasl.oauthbearer.config, api keys ... */
int dp_redact_is_secret_name(const char *name);

#endif
