#!/usr/bin/env bash
# Run docpipe's whole test suite, the way CI does (.ci/run execs this):
#
#   1. install missing Debian packages (scripts/deps.sh),
#   2. start PostgreSQL, Kafka and Tika, or reuse ones already answering,
#   3. build in build/ (RelWithDebInfo) and run ctest; build a Release
#      build (build-release/) too, which must compile with -Werror,
#   4. build in build-asan/ with -DDOCPIPE_SANITIZE=ON (ASan + UBSan) and
#      run ctest again, failing on any leak report too,
#   5. build the libFuzzer harnesses with clang in build-fuzz/ and run each
#      for FUZZ_SECONDS (default 10 here, 20 in scripts/fuzz.sh) seconds,
#   6. stop the services this run started (the SASL broker test_sasl
#      starts, toxiproxy and its broker, which test_netfaults starts, and
#      the cluster test_cluster starts, too); ones it reused keep running.
#
#   scripts/test.sh [CTEST_ARGS...]   e.g. scripts/test.sh -L unit
#
# ctest runs DOCPIPE_TEST_JOBS (default 2) tests at once: most of a test's
# time is waiting for a pipeline, and the tests keep to their own topics,
# users, folders and ports (test_observe, which restarts PostgreSQL, runs
# alone). The sanitizer pass leaves out the system tests (label system: a
# broker cluster, toxiproxy, SASL, fairness and liveness at the rate
# limits), which exercise the same code as the plain pass for minutes; run
# them there with DOCPIPE_ASAN_SYSTEM=1.
#
# Environment: DOCPIPE_SKIP_ASAN=1 skips step 4; DOCPIPE_SKIP_FUZZ=1 skips
# step 5; DOCPIPE_SKIP_APT=1 skips step 1; the port overrides of the
# service scripts apply.
# Exit status: 0 only when every build and every test passed.
set -euo pipefail
DP_NAME=test.sh
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

JOBS="${DOCPIPE_BUILD_JOBS:-2}"
STARTED=()
RESULTS=()
FAILED=0

stop_started() {
    local i
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        scripts/"${STARTED[i]}".sh stop || say "could not stop ${STARTED[i]}"
    done
}
trap stop_started EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# use_service NAME: reuse a running service, or start it and remember to
# stop it at the end (remembered first, so a half-started one is stopped too).
use_service() {
    if scripts/"$1".sh status >/dev/null 2>&1; then
        say "reusing the running $1"
    else
        STARTED+=("$1")
        scripts/"$1".sh start
    fi
}

# step NAME CMD...: run CMD, record its outcome, keep going.
step() {
    local name=$1 t0=$SECONDS
    shift
    say "== $name"
    if "$@"; then
        RESULTS+=("ok      $name ($((SECONDS - t0))s)")
        return 0
    fi
    RESULTS+=("FAILED  $name ($((SECONDS - t0))s)")
    FAILED=1
    return 1
}

run_ctest() {
    ctest -j "${DOCPIPE_TEST_JOBS:-2}" "$@"
}

build() {
    local dir=$1
    shift
    cmake -S . -B "$dir" "$@" && cmake --build "$dir" -j "$JOBS"
}

# Criterion reports a test as passed even when LeakSanitizer finds leaks in
# it at exit (the worker's exit status is not looked at), so read the log.
no_leaks() {
    local log=$1/Testing/Temporary/LastTest.log
    [[ -f "$log" ]] || return 0
    if grep -q 'ERROR: LeakSanitizer' "$log"; then
        say "LeakSanitizer reports in $log:"
        awk '/ERROR: LeakSanitizer/,/SUMMARY: AddressSanitizer/' "$log" >&2
        return 1
    fi
}

scripts/deps.sh
# The servers the tests start listen on fixed loopback ports (39000-39999:
# Kafka, the cluster, the SASL broker, toxiproxy, Tika; 55432-55599:
# PostgreSQL) inside Linux's ephemeral range, where any outgoing connection
# may hold one for a moment: toxiproxy once failed to open its proxy port
# so. Keep the kernel from handing them out (root only; best effort).
if [[ -w /proc/sys/net/ipv4/ip_local_reserved_ports ]]; then
    echo 39000-39999,55432-55599 >/proc/sys/net/ipv4/ip_local_reserved_ports ||
        say "could not reserve the test ports"
fi
use_service postgres
use_service kafka
use_service tika
# tests/system/test_sasl starts the SASL/SCRAM broker (scripts/kafka-sasl.sh)
# when it does not answer: one that was not running now is stopped at the end.
scripts/kafka-sasl.sh status >/dev/null 2>&1 || STARTED+=(kafka-sasl)
source scripts/env.sh
# test_netfaults starts toxiproxy and a broker of its own
# (scripts/toxiproxy.sh): built here, stopped at the end unless they were
# running before.
if scripts/toxiproxy.sh status >/dev/null 2>&1; then
    say "reusing the running toxiproxy"
else
    STARTED+=(toxiproxy)
fi
step "build toxiproxy (.cache/)" scripts/toxiproxy.sh build || true

# tests/system/test_cluster starts the three-broker cluster
# (scripts/kafka-cluster.sh, the same jars as kafka.sh) when none answers:
# one that was not running now is stopped at the end like the services.
scripts/kafka-cluster.sh status >/dev/null 2>&1 || STARTED+=(kafka-cluster)

if step "build (build/)" build build -DCMAKE_BUILD_TYPE=RelWithDebInfo; then
    step "ctest (build/)" run_ctest --test-dir build --output-on-failure "$@" || true
fi
# What users build: gcc -O3 with -Werror must pass too (no tests: it has
# no fault points).
step "build Release (build-release/)" build build-release -DCMAKE_BUILD_TYPE=Release || true

if [[ "${DOCPIPE_SKIP_ASAN:-0}" != 1 ]]; then
    export ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1:strict_string_checks=1"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    export LSAN_OPTIONS="suppressions=$REPO/scripts/lsan.supp:print_suppressions=0"
    ASAN_EXCLUDE=(-LE system)
    [[ "${DOCPIPE_ASAN_SYSTEM:-0}" == 1 ]] && ASAN_EXCLUDE=()
    if step "build with sanitizers (build-asan/)" \
            build build-asan -DCMAKE_BUILD_TYPE=Debug -DDOCPIPE_SANITIZE=ON; then
        step "ctest with sanitizers (build-asan/)" \
            run_ctest --test-dir build-asan --output-on-failure "${ASAN_EXCLUDE[@]}" "$@" || true
        step "no leaks reported (build-asan/)" no_leaks build-asan || true
    fi
fi

if [[ "${DOCPIPE_SKIP_FUZZ:-0}" != 1 ]]; then
    # 10 s a harness here (FUZZ_SECONDS); longer runs: scripts/fuzz.sh alone.
    FUZZ_SECONDS="${FUZZ_SECONDS:-10}" step "fuzz (build-fuzz/)" scripts/fuzz.sh || true
fi

say "summary:"
printf '  %s\n' "${RESULTS[@]}" >&2
if ((FAILED)); then
    say "FAILED"
    exit 1
fi
say "all passed"
