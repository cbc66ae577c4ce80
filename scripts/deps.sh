#!/usr/bin/env bash
# Install every Debian package docpipe needs to build, test and run its
# test services (Debian 12). Quick when all are installed already: it checks
# with dpkg first and only then runs apt-get update + install.
#
#   scripts/deps.sh            install what is missing (as root, or via sudo)
#   DOCPIPE_SKIP_APT=1 ...     do nothing (machines managed some other way)
set -euo pipefail
DP_NAME=deps.sh
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(
    # C toolchain and build
    build-essential cmake pkg-config
    # libraries the code links against
    librdkafka-dev libavro-dev libcurl4-openssl-dev libjansson-dev
    libmicrohttpd-dev libssl-dev libpq-dev
    # tests
    libcriterion-dev
    # a real parser of the Prometheus text format (test_observe)
    python3-prometheus-client
    # a headless browser that renders the dashboard (test_ui)
    chromium
    # YAML for tests/compose/check_compose.py (docker-compose.yml, deploy/)
    python3-yaml
    # fuzzing (scripts/fuzz.sh): clang, and its libFuzzer and sanitizer
    # runtimes, which clang only recommends
    clang libclang-rt-14-dev
    # test services: PostgreSQL, and Kafka/Tika run from Maven jars
    postgresql-15 postgresql-client-15 openjdk-17-jre-headless maven
    # tools the scripts use
    kcat curl procps
)
# Go builds toxiproxy (scripts/toxiproxy.sh, the network-fault tests): a Go
# already there (/usr/local/go) is used, else Debian's golang-go.
if ! command -v go >/dev/null && [[ ! -x /usr/local/go/bin/go ]]; then
    PACKAGES+=(golang-go)
fi

if [[ "${DOCPIPE_SKIP_APT:-0}" == 1 ]]; then
    say "DOCPIPE_SKIP_APT=1: not installing packages"
    exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != installed ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]} == 0)); then
    say "all ${#PACKAGES[@]} packages already installed"
    exit 0
fi

sudo=()
if ((EUID != 0)); then
    command -v sudo >/dev/null || die "not root and no sudo; install: ${missing[*]}"
    sudo=(sudo)
fi
say "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q </dev/null
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends -o Dpkg::Options::=--force-confold \
    "${missing[@]}" </dev/null
say "installed ${#missing[@]} packages"
