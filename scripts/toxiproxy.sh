#!/usr/bin/env bash
# Toxiproxy between docpipe's stages and the services they talk to, for the
# network-fault tests (tests/system/test_netfaults.c).
#
#   scripts/toxiproxy.sh build     build toxiproxy's server at the pinned
#                                  version with Go, into .cache (once)
#   scripts/toxiproxy.sh start     start the proxy server, its proxies and a
#                                  Kafka broker of its own (below); reuses
#                                  whatever already answers
#   scripts/toxiproxy.sh stop      stop what start started
#   scripts/toxiproxy.sh status    exit 0 when the proxy and its broker answer
#
# Proxies (listen -> upstream), managed through the HTTP API on
# 127.0.0.1:$DOCPIPE_TOXIPROXY_PORT (39474):
#   kafka     127.0.0.1:39475 -> the broker below, 127.0.0.1:39392
#   postgres  127.0.0.1:39476 -> PostgreSQL, 127.0.0.1:55432
#   tika      127.0.0.1:39477 -> Apache Tika, 127.0.0.1:39998
#   embed     127.0.0.1:39478 -> set by the test (its embedding service)
#
# Kafka needs a broker of its own: a client bootstraps, then connects to
# the address the broker advertises. The shared broker advertises itself,
# so after bootstrap a client would bypass any proxy. This broker
# (scripts/kafka.sh with DOCPIPE_KAFKA_NAME=kafka-netfaults) listens on
# 39392 and advertises the proxy, 127.0.0.1:39475, so every connection of a
# client bootstrapped through the proxy goes through it; a second listener,
# DIRECT on 39394, advertises itself, for the test's own reads and for
# submitting documents, which must not suffer the faults.
#
# Go: `go` on PATH or /usr/local/go/bin/go (Debian's golang-go also builds
# it: scripts/deps.sh installs that where no Go is present). Modules come
# through Go's module proxy (GOPROXY as configured), into Go's module cache.
set -euo pipefail
DP_NAME=toxiproxy.sh
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION=v2.5.0
MODULE=github.com/Shopify/toxiproxy/v2
BIN_DIR="$CACHE_DIR/toxiproxy-$VERSION/bin"
SERVER="$BIN_DIR/server"
API_PORT="${DOCPIPE_TOXIPROXY_PORT:-39474}"
API="http://127.0.0.1:$API_PORT"
TDIR="$RUN_DIR/toxiproxy"
PIDFILE="$TDIR/toxiproxy.pid"
PG_PORT="${DOCPIPE_PG_PORT:-55432}"
TIKA_PORT="${DOCPIPE_TIKA_PORT:-39998}"
# The broker of its own: listener, controller, direct listener, proxy port.
KAFKA_ENV=(DOCPIPE_KAFKA_NAME=kafka-netfaults DOCPIPE_BROKER_PORT=39392
    DOCPIPE_CONTROLLER_PORT=39393 DOCPIPE_KAFKA_DIRECT_PORT=39394
    DOCPIPE_KAFKA_ADVERTISED=127.0.0.1:39475
    "KAFKA_HEAP_OPTS=${DOCPIPE_NETFAULTS_KAFKA_HEAP:--Xmx512m -Xms256m}")

go_bin() {
    if command -v go >/dev/null; then
        command -v go
    elif [[ -x /usr/local/go/bin/go ]]; then
        echo /usr/local/go/bin/go
    else
        die "go not found (run scripts/deps.sh)"
    fi
}

build() {
    if [[ -x "$SERVER" ]]; then
        return 0
    fi
    local go t0=$SECONDS
    go="$(go_bin)"
    mkdir -p "$BIN_DIR"
    say "building toxiproxy $VERSION with $("$go" version | cut -d' ' -f3) into $BIN_DIR"
    if ! GOFLAGS=-mod=mod GOBIN="$BIN_DIR" "$go" install "$MODULE/cmd/server@$VERSION" \
            >"$BIN_DIR.log" 2>&1; then
        tail -n 30 "$BIN_DIR.log" >&2
        die "building toxiproxy failed (log: $BIN_DIR.log)"
    fi
    say "built toxiproxy in $((SECONDS - t0))s"
}

api_answers() { curl -fsS -m 2 "$API/version" >/dev/null 2>&1; }

# proxy NAME LISTEN_PORT UPSTREAM_PORT: create it, or set it back to
# enabled, without toxics, pointing at the upstream.
proxy() {
    local name=$1 listen=$2 upstream=$3
    curl -fsS -m 5 -X DELETE "$API/proxies/$name" >/dev/null 2>&1 || true
    curl -fsS -m 5 -X POST "$API/proxies" -H 'Content-Type: application/json' \
        -d "{\"name\":\"$name\",\"listen\":\"127.0.0.1:$listen\",\"upstream\":\"127.0.0.1:$upstream\",\"enabled\":true}" \
        >/dev/null || die "could not create proxy $name"
}

start() {
    build
    mkdir -p "$TDIR"
    if api_answers; then
        say "reusing the toxiproxy already answering on $API"
    else
        dp_spawn "$PIDFILE" "$TDIR/server.log" "$SERVER" -host 127.0.0.1 -port "$API_PORT"
        dp_wait 30 "toxiproxy on $API" api_answers || die "toxiproxy did not start (log: $TDIR/server.log)"
        say "toxiproxy is up on $API (pid $(<"$PIDFILE"))"
    fi
    proxy kafka 39475 39392
    proxy postgres 39476 "$PG_PORT"
    proxy tika 39477 "$TIKA_PORT"
    # The test points this one at its embedding service.
    proxy embed 39478 9
    env "${KAFKA_ENV[@]}" "$REPO/scripts/kafka.sh" start
}

stop() {
    env "${KAFKA_ENV[@]}" "$REPO/scripts/kafka.sh" stop || true
    dp_stop_pid "$PIDFILE" "$SERVER" toxiproxy 10 || say "toxiproxy of this tree is not running"
}

status() {
    api_answers || { say "toxiproxy does not answer on $API"; return 1; }
    env "${KAFKA_ENV[@]}" "$REPO/scripts/kafka.sh" status
}

case "${1:-}" in
    build) build ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 build|start|stop|status" >&2; exit 2 ;;
esac
