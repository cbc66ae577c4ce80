#!/usr/bin/env bash
# The main job on local defaults: the whole pipeline on the sample documents.
#
#   1. install missing Debian packages (scripts/deps.sh),
#   2. start PostgreSQL, Kafka and Apache Tika server (or reuse running ones),
#   3. build docpipe (build/), apply migrations, create the topics,
#   4. start the local embedding service and `docpipe run all`,
#   5. submit samples/ (or the files and folders given as arguments),
#      wait until every document is complete, and show their status,
#   6. stop the pipeline and the embedding service; services this script
#      started are stopped too unless DOCPIPE_KEEP_SERVICES=1.
#
#   scripts/demo.sh [FILE|DIR...]
set -euo pipefail
DP_NAME=demo.sh
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

STARTED=()
PIDS=()
cleanup() {
    local pid i
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    done
    if [[ "${DOCPIPE_KEEP_SERVICES:-0}" != 1 ]]; then
        for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
            scripts/"${STARTED[i]}".sh stop || true
        done
    fi
}
trap cleanup EXIT

use_service() {
    if scripts/"$1".sh status >/dev/null 2>&1; then
        say "reusing the running $1"
    else
        STARTED+=("$1")
        scripts/"$1".sh start
    fi
}

scripts/deps.sh
use_service postgres
use_service kafka
use_service tika
source scripts/env.sh

say "building docpipe in build/"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "${DOCPIPE_BUILD_JOBS:-2}" >/dev/null
DOCPIPE=build/docpipe

export DOCPIPE_STORAGE_DIR="${DOCPIPE_STORAGE_DIR:-$RUN_DIR/storage}"
mkdir -p "$RUN_DIR/demo" "$DOCPIPE_STORAGE_DIR"
$DOCPIPE migrate
$DOCPIPE topics

say "starting the local embedding service"
build/tools/docpipe-embedserver --port 0 --quiet >"$RUN_DIR/demo/embed.out" 2>"$RUN_DIR/demo/embed.log" &
PIDS+=($!)
dp_wait 10 "embedding service" grep -q listening "$RUN_DIR/demo/embed.out"
DOCPIPE_EMBED_URL="http://$(sed -n 's/^listening on //p' "$RUN_DIR/demo/embed.out" | head -1)"
export DOCPIPE_EMBED_URL

say "starting every stage: docpipe run all (log: .run/demo/pipeline.log)"
$DOCPIPE run all 2>"$RUN_DIR/demo/pipeline.log" &
PIDS+=($!)

if (($# == 0)); then set -- samples; fi
say "submitting $*"
$DOCPIPE submit "$@" | tee "$RUN_DIR/demo/submitted.tsv"

say "waiting until every document is complete"
ids=$(cut -f1 "$RUN_DIR/demo/submitted.tsv")
# shellcheck disable=SC2086
if ! $DOCPIPE wait --timeout 300 $ids; then
    say "not every document completed; see .run/demo/pipeline.log"
    $DOCPIPE status
    exit 1
fi
for id in $ids; do
    echo
    $DOCPIPE status "$id"
done
echo
$DOCPIPE status
say "done: chunks and vectors are in upload_pipeline.document_chunks"
