# shellcheck shell=bash
# Helpers shared by the service scripts (kafka.sh, postgres.sh, tika.sh).
# Sourced, never run. It sets REPO, RUN_DIR and CACHE_DIR and knows how to:
#   - print what a script does (say) and fail with a message (die),
#   - resolve a small pom's dependency closure into a cached jar folder once,
#   - start a Java server detached in its own session with a pid file, and
#     stop it by that pid (the whole session, SIGTERM then SIGKILL).
# Runtime state lives under $REPO/.run (DOCPIPE_RUN_DIR: elsewhere, e.g. a
# second set of servers on other ports beside the first), caches under $REPO/.cache unless
# DOCPIPE_CACHE_DIR says otherwise; Maven keeps its own local repository
# (~/.m2 by default) so a fresh clone on the same machine downloads nothing.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${DOCPIPE_RUN_DIR:-$REPO/.run}"
CACHE_DIR="${DOCPIPE_CACHE_DIR:-$REPO/.cache}"

say() { printf '%s: %s\n' "${DP_NAME:-docpipe}" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# dp_wait SECONDS WHAT CMD...: run CMD every half second until it succeeds.
dp_wait() {
    local timeout=$1 what=$2 waited=0
    shift 2
    while ! "$@" >/dev/null 2>&1; do
        if ((waited >= timeout * 2)); then
            say "$what not ready after ${timeout}s"
            return 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
}

# dp_jars POM NAME MAVEN_ARGS...: print a folder of jars made by running
# `mvn MAVEN_ARGS` on POM with -Ddocpipe.out=FOLDER (the pom puts its jars
# in ${docpipe.out}/jars), unless that was done before. FOLDER is
# $CACHE_DIR/NAME-<hash of POM and MAVEN_ARGS>, so editing either refetches.
# A lock file keeps two scripts from fetching into the same folder at once.
dp_jars() {
    local pom=$1 key dir
    key="$2-$( (cat "$pom"; printf '%s\n' "${@:3}") | sha256sum | cut -c1-8)"
    dir="$CACHE_DIR/$key"
    shift 2
    if [[ -f "$dir/.complete" ]]; then
        printf '%s\n' "$dir/jars"
        return 0
    fi
    mkdir -p "$CACHE_DIR"
    local lock
    exec {lock}>"$dir.lock"
    flock "$lock"
    if [[ -f "$dir/.complete" ]]; then
        exec {lock}>&-
        printf '%s\n' "$dir/jars"
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (run scripts/deps.sh)"
    say "fetching $key with Maven into $dir (first time only)"
    rm -rf "$dir"
    mkdir -p "$dir"
    local start=$SECONDS
    if ! mvn -B -q -Dstyle.color=never -f "$pom" -Ddocpipe.out="$dir" "$@" \
            </dev/null >"$dir.mvn.log" 2>&1; then
        tail -n 40 "$dir.mvn.log" >&2
        die "maven could not resolve $pom (log: $dir.mvn.log)"
    fi
    compgen -G "$dir/jars/*.jar" >/dev/null || die "maven left no jars in $dir/jars"
    touch "$dir/.complete"
    exec {lock}>&-
    say "fetched $(find "$dir/jars" -name '*.jar' | wc -l) jars ($(du -sh "$dir/jars" | cut -f1)) in $((SECONDS - start))s"
    printf '%s\n' "$dir/jars"
}

# dp_short_hash STRING: 10 hex digits naming STRING (e.g. the repo path).
dp_short_hash() { printf '%s' "$1" | sha256sum | cut -c1-10; }

# dp_pid_alive PIDFILE PATTERN: true when PIDFILE names a live process
# whose command line contains PATTERN (guards against recycled pids).
dp_pid_alive() {
    local pidfile=$1 pattern=$2 pid
    [[ -f "$pidfile" ]] || return 1
    pid=$(<"$pidfile")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern"
}

# dp_spawn PIDFILE LOGFILE CMD...: start CMD detached, in a new session
# (so the process id is also its process group id), stdin closed, output
# to LOGFILE, and record its pid in PIDFILE.
dp_spawn() {
    local pidfile=$1 logfile=$2
    shift 2
    rm -f "$pidfile"
    # The inner shell writes its own pid and then becomes CMD via exec.
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
        </dev/null >>"$logfile" 2>&1 &
    local i
    for i in $(seq 1 50); do
        [[ -s "$pidfile" ]] && return 0
        sleep 0.1
    done
    die "could not start $1"
}

# dp_stop_pid PIDFILE PATTERN NAME [SECONDS]: stop the process group that
# PIDFILE names (if it still runs PATTERN): SIGTERM, wait, then SIGKILL.
dp_stop_pid() {
    local pidfile=$1 pattern=$2 name=$3 timeout=${4:-30} pid i
    if ! dp_pid_alive "$pidfile" "$pattern"; then
        rm -f "$pidfile"
        return 1
    fi
    pid=$(<"$pidfile")
    say "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 4; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then break; fi
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name did not stop in ${timeout}s; sending SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    # Children of the group (Tika's forked parser JVM) go with it.
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
    say "$name stopped"
}
