#!/usr/bin/env bash
# The services docpipe's integration tests need, in one command.
#
#   scripts/test-env.sh up     start (or reuse) PostgreSQL and Kafka, and Tika
#                              when DOCPIPE_WITH_TIKA=1; then print the settings
#   scripts/test-env.sh down   stop what those scripts started from this tree
#
# Packages are not installed here: run scripts/deps.sh once first.
# Typical use:  scripts/test-env.sh up && eval "$(scripts/env.sh)"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

case "${1:-}" in
    up)
        scripts/postgres.sh start
        scripts/kafka.sh start
        if [[ "${DOCPIPE_WITH_TIKA:-0}" == 1 ]]; then scripts/tika.sh start; fi
        scripts/env.sh
        ;;
    down)
        scripts/tika.sh stop
        scripts/kafka.sh stop
        scripts/postgres.sh stop
        ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
