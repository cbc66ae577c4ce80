#!/usr/bin/env bash
# A second throwaway Kafka broker whose client listener asks for SASL/SCRAM:
# the one tests/system/test_sasl.c runs the pipeline against. The broker of
# scripts/kafka.sh (PLAINTEXT, port 39092) is not touched.
#
#   scripts/kafka-sasl.sh start     start it, or reuse one that answers
#   scripts/kafka-sasl.sh stop      stop the broker this tree started
#   scripts/kafka-sasl.sh status    exit 0 when it accepts the test user
#
# Kafka 3.9.1 (scripts/kafka-sasl/pom.xml, resolved like kafka.sh's jars):
# Kafka 4.x refuses the SCRAM proof of librdkafka before 2.6.1, and docpipe
# is built against 2.0.2 (docs/operations.md, "Security: secrets and SASL").
# One KRaft node, broker and controller: SASL_PLAINTEXT://127.0.0.1:39292
# (mechanism SCRAM-SHA-512; the broker reaches itself there too, as the
# admin user) and a PLAINTEXT controller listener on 127.0.0.1:39293. Its
# users are written into the metadata log when the storage is formatted
# (kafka-storage format --add-scram): DOCPIPE_SASL_USER (docpipe) with
# DOCPIPE_SASL_PASSWORD, and docpipe-admin for the broker itself. Changing
# a password formats the (throwaway) storage again.
# State: .run/kafka-sasl/{server.properties,data,server.log,stdout.log,kafka.pid}.
# Environment: DOCPIPE_SASL_BROKER_PORT (39292), DOCPIPE_SASL_CONTROLLER_PORT
# (39293), DOCPIPE_SASL_USER, DOCPIPE_SASL_PASSWORD, KAFKA_HEAP_OPTS (512 MiB).
set -euo pipefail
DP_NAME=kafka-sasl.sh
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${DOCPIPE_SASL_BROKER_PORT:-39292}"
CPORT="${DOCPIPE_SASL_CONTROLLER_PORT:-39293}"
BOOTSTRAP="127.0.0.1:$PORT"
MECH=SCRAM-SHA-512
USER_NAME="${DOCPIPE_SASL_USER:-docpipe}"
# The test user's password: a test broker's, on loopback only. It is
# distinctive so that tests can search docpipe's output for it.
PASSWORD="${DOCPIPE_SASL_PASSWORD:-sasl-docpipe-SECRET-PASSWORD-5d1e}"
ADMIN=docpipe-admin
ADMIN_PASSWORD=docpipe-admin-broker-only
POM="$REPO/scripts/kafka-sasl/pom.xml"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
KDIR="$RUN_DIR/kafka-sasl"
DATA="$KDIR/data"
PIDFILE="$KDIR/kafka.pid"
CONFIG="$KDIR/server.properties"
START_TIMEOUT=180

jars() { dp_jars "$POM" "kafka-sasl-$VERSION" dependency:copy-dependencies; }

# kcat with the test user's credentials; the password goes through a
# configuration file (mode 600), never the command line.
kcat_conf() {
    mkdir -p "$KDIR"
    umask 077
    cat >"$KDIR/kcat.conf" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanisms=$MECH
sasl.username=$USER_NAME
sasl.password=$PASSWORD
EOF
}
answers() { kcat -F "$KDIR/kcat.conf" -b "$BOOTSTRAP" -m 5 -L >/dev/null 2>&1; }

java_cmd() {
    local logfile=$1
    shift
    # shellcheck disable=SC2206 # KAFKA_HEAP_OPTS is a list of flags
    local heap=(${KAFKA_HEAP_OPTS:--Xmx512m -Xms512m})
    JAVA_CMD=(java "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$REPO/scripts/kafka/log4j2.xml"
        -Ddocpipe.log.file="$logfile"
        -cp "$JARS/*" "$@")
}

write_config() {
    mkdir -p "$DATA"
    umask 077
    cat >"$CONFIG" <<EOF
# Written by scripts/kafka-sasl.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=SASL_PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms=$MECH
sasl.mechanism.inter.broker.protocol=$MECH
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$ADMIN" password="$ADMIN_PASSWORD";
log.dirs=$DATA
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
num.partitions=4
auto.create.topics.enable=false
EOF
}

# The users are part of the formatted metadata log, so the stamp holds a
# hash of them: another password formats a fresh storage folder.
format_storage() {
    local stamp
    stamp="ports $PORT $CPORT version $VERSION users $(printf '%s' "$USER_NAME:$PASSWORD" | sha256sum | cut -c1-16)"
    if [[ -f "$DATA/meta.properties" ]]; then
        if [[ "$(cat "$KDIR/formatted" 2>/dev/null)" == "$stamp" ]]; then
            return 0
        fi
        say "storage was formatted for other ports, version or users; wiping $DATA"
        rm -rf "$DATA"
        mkdir -p "$DATA"
    fi
    local cluster_id
    java_cmd "$KDIR/tools.log" kafka.tools.StorageTool random-uuid
    cluster_id="$("${JAVA_CMD[@]}")"
    java_cmd "$KDIR/tools.log" kafka.tools.StorageTool format --standalone \
        -t "$cluster_id" -c "$CONFIG" \
        --add-scram "$MECH=[name=$ADMIN,password=$ADMIN_PASSWORD]" \
        --add-scram "$MECH=[name=$USER_NAME,password=$PASSWORD]"
    "${JAVA_CMD[@]}" >>"$KDIR/tools.log" 2>&1 ||
        { tail -n 20 "$KDIR/tools.log" >&2; die "formatting storage failed"; }
    printf '%s\n' "$stamp" >"$KDIR/formatted"
    say "formatted storage in $DATA (cluster $cluster_id, $MECH users $ADMIN and $USER_NAME)"
}

answers_or_died() { answers || ! dp_pid_alive "$PIDFILE" kafka.Kafka; }

start() {
    kcat_conf
    if answers; then
        say "reusing the SASL broker already answering on $BOOTSTRAP"
        return 0
    fi
    if dp_pid_alive "$PIDFILE" kafka.Kafka; then
        say "SASL broker pid $(<"$PIDFILE") is running but not answering yet"
    else
        command -v java >/dev/null || die "java not found (run scripts/deps.sh)"
        command -v kcat >/dev/null || die "kcat not found (run scripts/deps.sh)"
        JARS="$(jars)"
        write_config
        format_storage
        java_cmd "$KDIR/server.log" kafka.Kafka "$CONFIG"
        say "starting Kafka $VERSION with SASL/$MECH on $BOOTSTRAP (controller 127.0.0.1:$CPORT)"
        dp_spawn "$PIDFILE" "$KDIR/stdout.log" "${JAVA_CMD[@]}"
    fi
    local t0=$SECONDS
    if ! dp_wait "$START_TIMEOUT" "Kafka (SASL) on $BOOTSTRAP" answers_or_died || ! answers; then
        tail -n 30 "$KDIR/server.log" >&2 2>/dev/null || true
        tail -n 20 "$KDIR/stdout.log" >&2 2>/dev/null || true
        dp_stop_pid "$PIDFILE" kafka.Kafka "Kafka (SASL)" 10 || true
        die "Kafka (SASL) did not start (logs in $KDIR)"
    fi
    say "Kafka (SASL) is up on $BOOTSTRAP (pid $(<"$PIDFILE"), ready in $((SECONDS - t0))s)"
}

stop() {
    dp_stop_pid "$PIDFILE" kafka.Kafka "Kafka (SASL)" 60 || say "Kafka (SASL) of this tree is not running"
}

status() {
    kcat_conf
    if answers; then
        say "Kafka (SASL) answers on $BOOTSTRAP"
        return 0
    fi
    say "Kafka (SASL) does not answer on $BOOTSTRAP"
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
