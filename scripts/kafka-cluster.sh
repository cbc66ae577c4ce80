#!/usr/bin/env bash
# A throwaway three-broker Apache Kafka cluster for docpipe's system tests:
# three KRaft nodes, each both broker and controller (a three-voter
# controller quorum), listening on 127.0.0.1 only, beside the single test
# broker of scripts/kafka.sh (which it leaves alone).
#
#   scripts/kafka-cluster.sh start         start every node not running, or
#                                          reuse a cluster that answers
#   scripts/kafka-cluster.sh stop          stop the nodes this tree started
#   scripts/kafka-cluster.sh status        exit 0 when all three nodes answer
#   scripts/kafka-cluster.sh env           print `export DOCPIPE_BROKERS=...`
#   scripts/kafka-cluster.sh kill N        SIGKILL node N (1-3), as a crash
#   scripts/kafka-cluster.sh stop-node N   stop node N cleanly (SIGTERM)
#   scripts/kafka-cluster.sh start-node N  start node N again, wait for it
#   scripts/kafka-cluster.sh pid N         print node N's process id
#
# Node N listens for clients on 39191+N and for the controllers on 39194+N
# (39192-39194 and 39195-39197; DOCPIPE_CLUSTER_PORT_BASE moves both).
# The internal topics have three replicas; the topics docpipe
# creates take their replication factor and configs from `docpipe topics`
# (DOCPIPE_TOPIC_REPLICATION=3 DOCPIPE_TOPIC_CONFIGS=min.insync.replicas=2).
# The jars are those of scripts/kafka.sh (the same pom, the same cache).
# State: .run/kafka-cluster/nodeN/{server.properties,data,server.log,
# stdout.log,kafka.pid}. Environment: KAFKA_HEAP_OPTS (512 MiB per node).
set -euo pipefail
DP_NAME=kafka-cluster.sh
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BASE="${DOCPIPE_CLUSTER_PORT_BASE:-39191}"
NODES=(1 2 3)
POM="$REPO/scripts/kafka/pom.xml"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
CDIR="$RUN_DIR/kafka-cluster"
START_TIMEOUT=180

port() { echo $((BASE + $1)); }
cport() { echo $((BASE + 3 + $1)); }
ndir() { echo "$CDIR/node$1"; }
pidfile() { echo "$CDIR/node$1/kafka.pid"; }
# What a node's command line contains: its own config file (so a pid is
# recognised as this node's, and never as kafka.sh's broker).
pattern() { echo "$CDIR/node$1/server.properties"; }

bootstrap() {
    local n list=""
    for n in "${NODES[@]}"; do list+="${list:+,}127.0.0.1:$(port "$n")"; done
    echo "$list"
}
voters() {
    local n list=""
    for n in "${NODES[@]}"; do list+="${list:+,}$n@127.0.0.1:$(cport "$n")"; done
    echo "$list"
}

jars() { dp_jars "$POM" "kafka-$VERSION" dependency:copy-dependencies; }

# node_answers N: node N answers metadata requests on its own listener.
node_answers() { kcat -b "127.0.0.1:$(port "$1")" -m 3 -L >/dev/null 2>&1; }
# node_registered N: the cluster's metadata (asked of any node) lists
# broker N, i.e. it has rejoined and the controllers know it.
node_registered() {
    kcat -b "$(bootstrap)" -m 3 -L 2>/dev/null |
        grep -qE "^ +broker $1 at 127\.0\.0\.1:$(port "$1")"
}
node_up() { node_answers "$1" && node_registered "$1"; }
node_running() { dp_pid_alive "$(pidfile "$1")" "$(pattern "$1")"; }
all_up() {
    local n
    for n in "${NODES[@]}"; do node_up "$n" || return 1; done
}

check_node() {
    [[ "${1:-}" =~ ^[123]$ ]] || { echo "usage: $0 $2 1|2|3" >&2; exit 2; }
}

# java_cmd LOGFILE MAINCLASS ARGS...: set JAVA_CMD to the JVM command line
# running a Kafka class with its log going to LOGFILE.
java_cmd() {
    local logfile=$1
    shift
    # shellcheck disable=SC2206 # KAFKA_HEAP_OPTS is a list of flags
    local heap=(${KAFKA_HEAP_OPTS:--Xmx512m -Xms512m})
    # C1 only: a node restarted by a test is up in about half the time on a
    # busy machine (14-16 s against 23-40 s here), and a test broker needs
    # no peak throughput.
    JAVA_CMD=(java "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:TieredStopAtLevel=1 -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$REPO/scripts/kafka/log4j2.xml"
        -Ddocpipe.log.file="$logfile"
        -cp "$JARS/*" "$@")
}

write_config() {
    local n=$1 d
    d="$(ndir "$n")"
    mkdir -p "$d/data"
    cat >"$d/server.properties" <<EOF
# Written by scripts/kafka-cluster.sh on every start; edit the script, not
# this file.
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(voters)
listeners=PLAINTEXT://127.0.0.1:$(port "$n"),CONTROLLER://127.0.0.1:$(cport "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(port "$n"),CONTROLLER://127.0.0.1:$(cport "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$d/data
# The cluster's own topics: three replicas, two of them needed for a
# write, so one node down (a crash, a rolling restart) still takes writes.
# docpipe's topics get theirs from docpipe topics (the broker defaults,
# one replica and min.insync.replicas=1, stay as they are, so a test sees
# what docpipe asked for).
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
# Never elect a replica that missed acknowledged writes.
unclean.leader.election.enable=false
# Tests: no rebalance delay, few partitions, topics made on purpose only.
group.initial.rebalance.delay.ms=0
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
num.partitions=4
auto.create.topics.enable=false
# A node that went away is noticed in seconds, not the default 9 s / 30 s.
broker.session.timeout.ms=6000
replica.lag.time.max.ms=10000
EOF
}

# Format every node's storage once, with one cluster id. The voters'
# addresses are part of the quorum, and the controllers keep some settings
# of their first start in the metadata log (min.insync.replicas becomes a
# cluster-wide config), so other ports or another LAYOUT need fresh
# (throwaway) data folders: all three are wiped together.
LAYOUT=2
format_storage() {
    local stamp n formatted=1
    stamp="ports $BASE version $VERSION voters $(voters) layout $LAYOUT"
    for n in "${NODES[@]}"; do
        if [[ ! -f "$(ndir "$n")/data/meta.properties" ||
            "$(cat "$(ndir "$n")/formatted" 2>/dev/null)" != "$stamp" ]]; then
            formatted=0
        fi
    done
    ((formatted)) && return 0
    for n in "${NODES[@]}"; do
        if node_running "$n"; then
            die "node $n (pid $(<"$(pidfile "$n")")) runs on storage that needs formatting; stop the cluster first"
        fi
    done
    say "formatting the storage of all three nodes"
    local cluster_id
    java_cmd "$CDIR/tools.log" kafka.tools.StorageTool random-uuid
    cluster_id="$("${JAVA_CMD[@]}")"
    for n in "${NODES[@]}"; do
        rm -rf "$(ndir "$n")/data"
        write_config "$n"
        java_cmd "$CDIR/tools.log" kafka.tools.StorageTool format \
            -t "$cluster_id" -c "$(ndir "$n")/server.properties"
        "${JAVA_CMD[@]}" >>"$CDIR/tools.log" 2>&1 ||
            { tail -n 20 "$CDIR/tools.log" >&2; die "formatting node $n failed"; }
        printf '%s\n' "$stamp" >"$(ndir "$n")/formatted"
    done
    say "formatted storage in $CDIR/node{1,2,3}/data (cluster $cluster_id)"
}

# spawn_node N: start node N's JVM unless it runs already (no waiting).
spawn_node() {
    local n=$1 d
    d="$(ndir "$n")"
    if node_running "$n"; then
        return 0
    fi
    if node_answers "$n"; then
        die "something not started by this tree answers on 127.0.0.1:$(port "$n")"
    fi
    write_config "$n"
    java_cmd "$d/server.log" kafka.Kafka "$d/server.properties"
    say "starting node $n on 127.0.0.1:$(port "$n") (controller 127.0.0.1:$(cport "$n"))"
    dp_spawn "$(pidfile "$n")" "$d/stdout.log" "${JAVA_CMD[@]}"
}

# wait_nodes N...: wait until every node named answers and is registered;
# a node that dies meanwhile fails the wait with its log.
wait_nodes() {
    local n t0=$SECONDS
    for n in "$@"; do
        if ! dp_wait "$START_TIMEOUT" "node $n" up_or_died "$n" || ! node_up "$n"; then
            say "last lines of $(ndir "$n")/server.log and stdout.log:"
            tail -n 30 "$(ndir "$n")/server.log" >&2 2>/dev/null || true
            tail -n 20 "$(ndir "$n")/stdout.log" >&2 2>/dev/null || true
            die "node $n did not start"
        fi
    done
    say "nodes $* up ($((SECONDS - t0))s)"
}
up_or_died() { node_up "$1" || ! node_running "$1"; }

start() {
    if all_up; then
        say "reusing the cluster already answering on $(bootstrap)"
        return 0
    fi
    command -v java >/dev/null || die "java not found (run scripts/deps.sh)"
    command -v kcat >/dev/null || die "kcat not found (run scripts/deps.sh)"
    mkdir -p "$CDIR"
    JARS="$(jars)"
    format_storage
    local n
    # All three at once: a quorum of two is needed before any of them is
    # ready.
    for n in "${NODES[@]}"; do spawn_node "$n"; done
    wait_nodes "${NODES[@]}"
    say "Kafka $VERSION cluster is up on $(bootstrap)"
}

start_node() {
    check_node "${1:-}" start-node
    mkdir -p "$CDIR"
    JARS="$(jars)"
    format_storage
    spawn_node "$1"
    wait_nodes "$1"
}

kill_node() {
    check_node "${1:-}" kill
    local pf pid
    pf="$(pidfile "$1")"
    node_running "$1" || die "node $1 is not running (or not started by this tree)"
    pid=$(<"$pf")
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    rm -f "$pf"
    say "node $1 (pid $pid) killed with SIGKILL"
}

stop_node() {
    check_node "${1:-}" stop-node
    dp_stop_pid "$(pidfile "$1")" "$(pattern "$1")" "node $1" 60 ||
        say "node $1 is not running"
}

stop() {
    local n stopped=0
    # All at once: the last node alone has no controller quorum left and
    # would wait out its controlled shutdown if stopped after the others.
    for n in "${NODES[@]}"; do
        if node_running "$n"; then
            kill -TERM -- "-$(<"$(pidfile "$n")")" 2>/dev/null || true
        fi
    done
    for n in "${NODES[@]}"; do
        if dp_stop_pid "$(pidfile "$n")" "$(pattern "$n")" "node $n" 60; then
            stopped=1
        fi
    done
    ((stopped)) || say "no node of this tree is running"
}

status() {
    local n bad=0
    for n in "${NODES[@]}"; do
        if node_up "$n"; then
            say "node $n answers on 127.0.0.1:$(port "$n")"
        else
            say "node $n does not answer on 127.0.0.1:$(port "$n")"
            bad=1
        fi
    done
    return "$bad"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) printf 'export DOCPIPE_BROKERS=%s\n' "$(bootstrap)" ;;
    kill) kill_node "${2:-}" ;;
    stop-node) stop_node "${2:-}" ;;
    start-node) start_node "${2:-}" ;;
    pid) check_node "${2:-}" pid; node_running "$2" && cat "$(pidfile "$2")" ;;
    *) echo "usage: $0 start|stop|status|env|kill N|stop-node N|start-node N|pid N" >&2
       exit 2 ;;
esac
