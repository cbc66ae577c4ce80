#!/usr/bin/env bash
# A throwaway Apache Tika server (the parser service behind docpipe's parse
# stage), listening on 127.0.0.1 only.
#
#   scripts/tika.sh start     start it, or reuse one that answers
#   scripts/tika.sh stop      stop the server this tree started
#   scripts/tika.sh status    exit 0 when GET /tika answers
#   scripts/tika.sh check     PUT a small HTML page and a small PDF, expect their text back
#
# The server is the tika-server-standard jar named in scripts/tika/pom.xml
# (less the RAR library), fetched once by Maven into
# $CACHE_DIR/tika-<version>-<hash>/jars; settings in scripts/tika/tika-config.xml.
# State: .run/tika/{server.log,tika.pid}.
# Environment: DOCPIPE_TIKA_PORT (39998), TIKA_HEAP_OPTS (the watchdog JVM;
# the parsing child's heap is in the config). The version is the pom's.
set -euo pipefail
DP_NAME=tika.sh
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${DOCPIPE_TIKA_PORT:-39998}"
URL="http://127.0.0.1:$PORT"
POM="$REPO/scripts/tika/pom.xml"
VERSION="$(sed -n 's:.*<tika.version>\(.*\)</tika.version>.*:\1:p' "$POM")"
TDIR="$RUN_DIR/tika"
PIDFILE="$TDIR/tika.pid"
START_TIMEOUT=120

answers() { curl -fsS -m 3 "$URL/tika" >/dev/null 2>&1; }
answers_or_died() { answers || ! dp_pid_alive "$PIDFILE" TikaServerCli; }

start() {
    if answers; then
        say "reusing the Tika server already answering on $URL"
        return 0
    fi
    if dp_pid_alive "$PIDFILE" TikaServerCli; then
        if [[ "$(cat "$TDIR/port" 2>/dev/null)" != "$PORT" ]]; then
            die "the Tika server of this tree (pid $(<"$PIDFILE")) runs on port $(cat "$TDIR/port" 2>/dev/null); stop it first"
        fi
        say "Tika pid $(<"$PIDFILE") is running but not answering yet"
    else
        command -v java >/dev/null || die "java not found (run scripts/deps.sh)"
        mkdir -p "$TDIR"
        local jars
        jars="$(dp_jars "$POM" "tika-$VERSION" dependency:copy antrun:run)"
        # shellcheck disable=SC2206 # TIKA_HEAP_OPTS is a list of flags
        local heap=(${TIKA_HEAP_OPTS:--Xmx256m})
        say "starting Tika $VERSION on $URL"
        dp_spawn "$PIDFILE" "$TDIR/server.log" java "${heap[@]}" -Djava.awt.headless=true \
            -cp "$jars/*" org.apache.tika.server.core.TikaServerCli \
            --host 127.0.0.1 --port "$PORT" -c "$REPO/scripts/tika/tika-config.xml"
        printf '%s\n' "$PORT" >"$TDIR/port"
    fi
    local t0=$SECONDS
    if ! dp_wait "$START_TIMEOUT" "Tika on $URL" answers_or_died || ! answers; then
        say "last lines of $TDIR/server.log:"
        tail -n 30 "$TDIR/server.log" >&2 || true
        dp_stop_pid "$PIDFILE" TikaServerCli Tika 10 || true
        die "Tika did not start"
    fi
    say "Tika is up on $URL (pid $(<"$PIDFILE"), ready in $((SECONDS - t0))s)"
}

stop() {
    if dp_stop_pid "$PIDFILE" TikaServerCli Tika 30; then
        return 0
    fi
    if answers; then
        say "a Tika server answers on $URL but was not started from this tree; leaving it"
    else
        say "Tika is not running"
    fi
}

status() {
    if answers; then
        say "Tika answers on $URL"
        return 0
    fi
    say "Tika does not answer on $URL"
    return 1
}

# make_pdf TEXT: print a one-page PDF showing TEXT (ASCII, no parentheses
# or backslashes), with a correct cross-reference table.
make_pdf() {
    local LC_ALL=C text=$1 out="" i
    local content="BT /F1 18 Tf 20 100 Td ($text) Tj ET"
    local -a objs=(
        "<< /Type /Catalog /Pages 2 0 R >>"
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>"
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 144] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>"
        "<< /Length ${#content} >>"$'\n'"stream"$'\n'"$content"$'\n'"endstream"
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    )
    local -a offsets=()
    out="%PDF-1.4"$'\n'
    for i in "${!objs[@]}"; do
        offsets+=("${#out}")
        out+="$((i + 1)) 0 obj"$'\n'"${objs[i]}"$'\n'"endobj"$'\n'
    done
    local xref=${#out}
    out+="xref"$'\n'"0 $((${#objs[@]} + 1))"$'\n'"0000000000 65535 f "$'\n'
    for i in "${offsets[@]}"; do
        out+="$(printf '%010d 00000 n ' "$i")"$'\n'
    done
    out+="trailer"$'\n'"<< /Size $((${#objs[@]} + 1)) /Root 1 0 R >>"$'\n'"startxref"$'\n'"$xref"$'\n'"%%EOF"$'\n'
    printf '%s' "$out"
}

# put_expect FILE CONTENT_TYPE WORDS: PUT FILE to /tika, expect WORDS in the text.
put_expect() {
    local file=$1 type=$2 words=$3 text
    text="$(curl -fsS -m 60 -X PUT -H "Content-Type: $type" -H "Accept: text/plain" \
        --data-binary @"$file" "$URL/tika")" || die "PUT $type to $URL/tika failed"
    if ! grep -qF "$words" <<<"$text"; then
        say "expected '$words' in the text of $file, got:"
        printf '%s\n' "$text" >&2
        return 1
    fi
    say "ok: $type -> '$words'"
}

check() {
    answers || die "Tika does not answer on $URL (run scripts/tika.sh start)"
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    printf '<html><head><title>t</title></head><body><h1>Hello docpipe</h1><p>HTML works.</p></body></html>\n' >"$tmp/doc.html"
    make_pdf "Hello docpipe PDF works" >"$tmp/doc.pdf"
    put_expect "$tmp/doc.html" text/html "HTML works."
    put_expect "$tmp/doc.pdf" application/pdf "Hello docpipe PDF works"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    check) check ;;
    *) echo "usage: $0 start|stop|status|check" >&2; exit 2 ;;
esac
