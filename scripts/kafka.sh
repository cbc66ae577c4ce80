#!/usr/bin/env bash
# A throwaway Apache Kafka broker for docpipe's tests: one KRaft node that is
# both broker and controller, listening on 127.0.0.1 only.
#
#   scripts/kafka.sh start            start it, or reuse one that answers
#   scripts/kafka.sh stop             stop the broker this tree started
#   scripts/kafka.sh status           exit 0 when the broker answers
#   scripts/kafka.sh kill             SIGKILL the broker this tree started (the soak)
#   scripts/kafka.sh topic NAME N     create topic NAME with N partitions
#
# The broker's jars are the dependency closure of scripts/kafka/pom.xml,
# resolved once by Maven into $CACHE_DIR/kafka-<version>-<hash>/jars.
# State: .run/kafka/{server.properties,data,server.log,stdout.log,kafka.pid}.
# Environment: DOCPIPE_BROKER_PORT (39092), DOCPIPE_CONTROLLER_PORT
# (39093), KAFKA_HEAP_OPTS (1 GiB), DOCPIPE_RUN_DIR (lib.sh). The version is the pom's kafka.version.
# A second broker of the same tree (scripts/toxiproxy.sh starts one) takes
# DOCPIPE_KAFKA_NAME (its folder under .run, "kafka"), DOCPIPE_KAFKA_ADVERTISED
# (host:port the listener advertises, e.g. a proxy's; its own by default) and
# DOCPIPE_KAFKA_DIRECT_PORT (an extra listener advertised as itself).
set -euo pipefail
DP_NAME=kafka.sh
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${DOCPIPE_BROKER_PORT:-39092}"
CPORT="${DOCPIPE_CONTROLLER_PORT:-39093}"
BOOTSTRAP="127.0.0.1:$PORT"
POM="$REPO/scripts/kafka/pom.xml"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
KDIR="$RUN_DIR/${DOCPIPE_KAFKA_NAME:-kafka}"
ADVERTISED="${DOCPIPE_KAFKA_ADVERTISED:-127.0.0.1:$PORT}"
DIRECT_PORT="${DOCPIPE_KAFKA_DIRECT_PORT:-}"
DATA="$KDIR/data"
PIDFILE="$KDIR/kafka.pid"
CONFIG="$KDIR/server.properties"
START_TIMEOUT=120

jars() { dp_jars "$POM" "kafka-$VERSION" dependency:copy-dependencies; }

answers() { kcat -b "$BOOTSTRAP" -m 3 -L >/dev/null 2>&1; }

# java_cmd LOGFILE MAINCLASS ARGS...: set JAVA_CMD to the JVM command line
# running a Kafka class with its log going to LOGFILE.
java_cmd() {
    local logfile=$1
    shift
    # shellcheck disable=SC2206 # KAFKA_HEAP_OPTS is a list of flags
    local heap=(${KAFKA_HEAP_OPTS:--Xmx1g -Xms1g})
    JAVA_CMD=(java "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$REPO/scripts/kafka/log4j2.xml"
        -Ddocpipe.log.file="$logfile"
        -cp "$JARS/*" "$@")
}

write_config() {
    mkdir -p "$DATA"
    local listeners="PLAINTEXT://127.0.0.1:$PORT" advertised="PLAINTEXT://$ADVERTISED"
    local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT" inter=PLAINTEXT
    if [[ -n "$DIRECT_PORT" ]]; then
        inter=DIRECT # the broker's own connections bypass the proxy
        listeners+=",DIRECT://127.0.0.1:$DIRECT_PORT"
        advertised+=",DIRECT://127.0.0.1:$DIRECT_PORT"
        protocols+=",DIRECT:PLAINTEXT"
    fi
    cat >"$CONFIG" <<EOF
# Written by scripts/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=$listeners,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=$advertised,CONTROLLER://127.0.0.1:$CPORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=$inter
listener.security.protocol.map=$protocols
log.dirs=$DATA
# One node: every internal topic has one replica, or the group and
# transaction coordinators never become available.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests: no rebalance delay, few partitions, topics made on purpose only.
group.initial.rebalance.delay.ms=0
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
num.partitions=4
auto.create.topics.enable=false
EOF
}

# Format the storage once. The standalone controller's own address is
# written into the log at format time, so a changed controller port needs
# a fresh (throwaway) data folder.
format_storage() {
    local stamp="ports $PORT $CPORT version $VERSION"
    if [[ -f "$DATA/meta.properties" ]]; then
        if [[ "$(cat "$KDIR/formatted" 2>/dev/null)" == "$stamp" ]]; then
            return 0
        fi
        say "storage was formatted for other ports or version; wiping $DATA"
        rm -rf "$DATA"
        mkdir -p "$DATA"
    fi
    local cluster_id
    java_cmd "$KDIR/tools.log" kafka.tools.StorageTool random-uuid
    cluster_id="$("${JAVA_CMD[@]}")"
    java_cmd "$KDIR/tools.log" kafka.tools.StorageTool format --standalone \
        -t "$cluster_id" -c "$CONFIG"
    "${JAVA_CMD[@]}" >>"$KDIR/tools.log" 2>&1 ||
        { tail -n 20 "$KDIR/tools.log" >&2; die "formatting storage failed"; }
    printf '%s\n' "$stamp" >"$KDIR/formatted"
    say "formatted storage in $DATA (cluster $cluster_id)"
}

start() {
    if answers; then
        say "reusing the broker already answering on $BOOTSTRAP"
        return 0
    fi
    if dp_pid_alive "$PIDFILE" kafka.Kafka; then
        if [[ "$(cat "$KDIR/ports" 2>/dev/null)" != "$PORT $CPORT" ]]; then
            die "the broker of this tree (pid $(<"$PIDFILE")) runs on other ports ($(cat "$KDIR/ports" 2>/dev/null)); stop it first"
        fi
        # Started but not answering yet (or hung): wait for it below.
        say "broker pid $(<"$PIDFILE") is running but not answering yet"
    else
        command -v java >/dev/null || die "java not found (run scripts/deps.sh)"
        command -v kcat >/dev/null || die "kcat not found (run scripts/deps.sh)"
        mkdir -p "$KDIR"
        JARS="$(jars)"
        write_config
        format_storage
        java_cmd "$KDIR/server.log" kafka.Kafka "$CONFIG"
        say "starting Kafka $VERSION on $BOOTSTRAP (controller 127.0.0.1:$CPORT)"
        dp_spawn "$PIDFILE" "$KDIR/stdout.log" "${JAVA_CMD[@]}"
        printf '%s\n' "$PORT $CPORT" >"$KDIR/ports"
    fi
    local t0=$SECONDS
    if ! dp_wait "$START_TIMEOUT" "Kafka on $BOOTSTRAP" answers_or_died; then
        say "last lines of $KDIR/server.log and stdout.log:"
        tail -n 30 "$KDIR/server.log" >&2 2>/dev/null || true
        tail -n 20 "$KDIR/stdout.log" >&2 2>/dev/null || true
        dp_stop_pid "$PIDFILE" kafka.Kafka Kafka 10 || true
        die "Kafka did not start"
    fi
    if ! answers; then
        tail -n 30 "$KDIR/server.log" >&2 2>/dev/null || true
        tail -n 20 "$KDIR/stdout.log" >&2 2>/dev/null || true
        die "Kafka exited during start-up (logs in $KDIR)"
    fi
    say "Kafka is up on $BOOTSTRAP (pid $(<"$PIDFILE"), ready in $((SECONDS - t0))s)"
}

# Succeeds when the broker answers, and also when it has died (so the wait
# ends early); start() tells the two apart afterwards.
answers_or_died() { answers || ! dp_pid_alive "$PIDFILE" kafka.Kafka; }

stop() {
    if dp_stop_pid "$PIDFILE" kafka.Kafka Kafka 60; then
        return 0
    fi
    if answers; then
        say "a broker answers on $BOOTSTRAP but was not started from this tree; leaving it"
    else
        say "Kafka is not running"
    fi
}

# A crash: SIGKILL to the broker's whole session, no clean shutdown; start
# recovers its logs.
kill_broker() {
    dp_pid_alive "$PIDFILE" kafka.Kafka || die "no broker of this tree runs"
    local pid
    pid=$(<"$PIDFILE")
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
    dp_wait 30 "broker pid $pid to go" bash -c "! kill -0 $pid" || die "broker pid $pid still runs"
    rm -f "$PIDFILE"
    say "broker (pid $pid) killed"
}

status() {
    if answers; then
        say "Kafka answers on $BOOTSTRAP"
        return 0
    fi
    say "Kafka does not answer on $BOOTSTRAP"
    return 1
}

topic() {
    local name=${1:?usage: kafka.sh topic NAME PARTITIONS} parts=${2:?usage: kafka.sh topic NAME PARTITIONS}
    answers || die "Kafka does not answer on $BOOTSTRAP (run scripts/kafka.sh start)"
    if kcat -b "$BOOTSTRAP" -m 5 -L -t "$name" 2>/dev/null | grep -q "topic \"$name\" with [1-9]"; then
        say "topic $name exists"
        return 0
    fi
    mkdir -p "$KDIR"
    JARS="$(jars)"
    KAFKA_HEAP_OPTS="-Xmx256m" java_cmd "$KDIR/tools.log" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
        --topic "$name" --partitions "$parts" --replication-factor 1
    "${JAVA_CMD[@]}" >&2
    say "created topic $name ($parts partitions)"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    kill) kill_broker ;;
    topic) shift; topic "$@" ;;
    *) echo "usage: $0 start|stop|status|kill|topic NAME PARTITIONS" >&2; exit 2 ;;
esac
