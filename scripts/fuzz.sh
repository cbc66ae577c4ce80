#!/usr/bin/env bash
# Build the libFuzzer harnesses with clang (ASan + UBSan) in build-fuzz/ and
# run each for a bounded time, failing on any crash, leak, undefined
# behaviour, broken FUZZ_CHECK or timeout.
#
#   scripts/fuzz.sh [TARGET...]        default: every tests/fuzz/fuzz_*.c
#
# Environment:
#   FUZZ_SECONDS=20      seconds per target (CI); for a real hunt use e.g.
#                        FUZZ_SECONDS=3600 scripts/fuzz.sh avro
#   FUZZ_JOBS=1          parallel fuzzing processes per target (-fork)
#   FUZZ_BUILD=build-fuzz  build folder; CC=clang unless set to another clang
#
# Each target fuzzes with its seeds tests/fuzz/corpus/<target> (and the
# libFuzzer dictionary tests/fuzz/<target>.dict, if there is one) and the
# inputs that once crashed, tests/fuzz/regressions/<target> (both only
# read); what it learns goes to build-fuzz/corpus/<target>, reused next
# time. A crash is saved as build-fuzz/artifacts/<target>/crash-<sha1>;
# reproduce it with build-fuzz/tests/fuzz/fuzz_<target> FILE, fix the code,
# and keep FILE in tests/fuzz/regressions/<target>/ (the normal ctest then
# replays it forever). Exit status: 0 only when every target ran clean.
set -euo pipefail
DP_NAME=fuzz.sh
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

SECONDS_EACH="${FUZZ_SECONDS:-20}"
BUILD="${FUZZ_BUILD:-build-fuzz}"
JOBS="${DOCPIPE_BUILD_JOBS:-2}"
export CC="${CC:-clang}"
[[ "$CC" == *clang* ]] || CC=clang
command -v "$CC" >/dev/null || die "$CC not found (scripts/deps.sh installs clang)"

targets=("$@")
if ((${#targets[@]} == 0)); then
    for src in tests/fuzz/fuzz_*.c; do
        name=$(basename "$src" .c)
        targets+=("${name#fuzz_}")
    done
fi

say "building ${targets[*]} with $CC in $BUILD/"
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDOCPIPE_FUZZ=ON >/dev/null
cmake --build "$BUILD" -j "$JOBS" --target "${targets[@]/#/fuzz_}"

export ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$REPO/scripts/lsan.supp:print_suppressions=0"
export DOCPIPE_SOURCE_DIR="$REPO"

failed=()
for t in "${targets[@]}"; do
    learned="$BUILD/corpus/$t"
    artifacts="$BUILD/artifacts/$t"
    mkdir -p "$learned" "$artifacts"
    dirs=("$learned" "tests/fuzz/corpus/$t")
    [[ -d "tests/fuzz/regressions/$t" ]] && dirs+=("tests/fuzz/regressions/$t")
    say "== fuzz_$t for ${SECONDS_EACH}s"
    args=(-max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048
          -artifact_prefix="$artifacts/" -print_final_stats=1)
    [[ -f "tests/fuzz/$t.dict" ]] && args+=(-dict="tests/fuzz/$t.dict")
    [[ "${FUZZ_JOBS:-1}" -gt 1 ]] && args+=(-fork="$FUZZ_JOBS" -ignore_crashes=0)
    if "$BUILD/tests/fuzz/fuzz_$t" "${args[@]}" "${dirs[@]}" \
            >"$BUILD/fuzz_$t.log" 2>&1; then
        say "fuzz_$t: clean ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' \
            "$BUILD/fuzz_$t.log" | grep -o '[0-9]*$' || echo '?') runs)"
    else
        failed+=("$t")
        tail -n 60 "$BUILD/fuzz_$t.log" >&2
        say "fuzz_$t FAILED: log $BUILD/fuzz_$t.log, inputs in $artifacts/"
    fi
done

if ((${#failed[@]})); then
    say "failed: ${failed[*]}"
    exit 1
fi
say "all ${#targets[@]} targets ran ${SECONDS_EACH}s each without a failure"
