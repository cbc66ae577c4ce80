#!/usr/bin/env bash
# The connection settings docpipe reads, for the services that
# scripts/test-env.sh (or kafka.sh, postgres.sh, tika.sh) starts.
#
#   source scripts/env.sh      export them into the current shell (and print them)
#   scripts/env.sh             print them as `export NAME=value` lines
#   eval "$(scripts/env.sh)"   the same as sourcing
#
# Follows the same port overrides as the service scripts
# (DOCPIPE_BROKER_PORT, DOCPIPE_PG_PORT, DOCPIPE_TIKA_PORT). A setting that is
# already in the environment is kept.
# No `set -e` here: when sourced it would change the caller's shell.

DOCPIPE_BROKERS="${DOCPIPE_BROKERS:-127.0.0.1:${DOCPIPE_BROKER_PORT:-39092}}"
DOCPIPE_DATABASE_URL="${DOCPIPE_DATABASE_URL:-postgresql://postgres@127.0.0.1:${DOCPIPE_PG_PORT:-55432}/docpipe}"
DOCPIPE_TIKA_URL="${DOCPIPE_TIKA_URL:-http://127.0.0.1:${DOCPIPE_TIKA_PORT:-39998}}"
export DOCPIPE_BROKERS DOCPIPE_DATABASE_URL DOCPIPE_TIKA_URL

# The broker's jars (kafka-<version>-*, not kafka-sasl-*: an older Kafka for
# the SASL test), once scripts/kafka.sh fetched them: test_lag runs
# Kafka's own consumer-group command from them. (Not DOCPIPE_KAFKA_*:
# docpipe hands those to librdkafka.)
if [[ -z "${DOCPIPE_TEST_KAFKA_JARS:-}" ]]; then
    for _dp_done in "${DOCPIPE_CACHE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.cache}"/kafka-[0-9]*/.complete; do
        if [[ -f "$_dp_done" ]]; then
            DOCPIPE_TEST_KAFKA_JARS="${_dp_done%/.complete}/jars"
        fi
    done
    unset _dp_done
fi
if [[ -n "${DOCPIPE_TEST_KAFKA_JARS:-}" ]]; then
    export DOCPIPE_TEST_KAFKA_JARS
fi

printf 'export DOCPIPE_BROKERS=%q\n' "$DOCPIPE_BROKERS"
printf 'export DOCPIPE_DATABASE_URL=%q\n' "$DOCPIPE_DATABASE_URL"
printf 'export DOCPIPE_TIKA_URL=%q\n' "$DOCPIPE_TIKA_URL"
if [[ -n "${DOCPIPE_TEST_KAFKA_JARS:-}" ]]; then
    printf 'export DOCPIPE_TEST_KAFKA_JARS=%q\n' "$DOCPIPE_TEST_KAFKA_JARS"
fi
