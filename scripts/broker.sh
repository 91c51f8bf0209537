#!/usr/bin/env bash
# Manage a local tansu broker (a Kafka-protocol broker in one process, SQLite
# storage) for the end-to-end tests.
#
#   scripts/broker.sh install                 cargo install tansu unless present
#   scripts/broker.sh start PORT DATA_DIR     start one, wait until it answers Kafka
#   scripts/broker.sh stop DATA_DIR           SIGTERM, then SIGKILL after 10 s
#   scripts/broker.sh status DATA_DIR         exit 0 if running, 3 if not
#
# Environment:
#   TANSU_VERSION          version to install (default 0.6.0)
#   BROKER_START_TIMEOUT   seconds to wait for the broker to answer (default 60)
#   RUST_LOG               passed to tansu (default warn: it is chatty at info)
#   TANSU_STORAGE          sqlite (default: survives kill -9 and restarts) or memory (faster,
#                          lost on restart, and broken for ledgerd: a fetch from an offset inside
#                          a record batch returns nothing, so a consumer resuming mid-batch skips
#                          the rest of that batch; found by the kill -9 test)
#   TANSU_MAINTENANCE      how often the sqlite engine runs retention and compaction (default
#                          1day, tansu's own default is 10m). Each run is a set of queries over
#                          every stored record: with a few hundred thousand records it kept tansu
#                          at 100% CPU for minutes, and every client's requests waited (heartbeats
#                          timed out, produce round trips took 10+ s). Tests and benchmarks are
#                          shorter than a day, so no compaction happens during them; ledgerd's
#                          snapshot restore is exact with or without it (see docs/snapshots.md).
# tansu also reads CLUSTER_ID, LISTENER_URL, STORAGE_ENGINE etc. from the
# environment; every one that matters is passed as a flag, which wins.
set -euo pipefail

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
# dynostore gives the memory:// engine, libsql the sqlite:// one.
TANSU_FEATURES="dynostore,libsql"
START_TIMEOUT="${BROKER_START_TIMEOUT:-60}"
STOP_TIMEOUT=10

# cargo installs into ~/.cargo/bin, which a fresh shell may not have on PATH.
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
case ":$PATH:" in
    *":$CARGO_BIN:"*) ;;
    *) PATH="$PATH:$CARGO_BIN" ;;
esac

log() { echo "broker.sh: $*" >&2; }
die() { log "$*"; exit 1; }

usage() {
    echo "usage: $0 install | start PORT DATA_DIR | stop DATA_DIR | status DATA_DIR" >&2
    exit 2
}

cmd_install() {
    if command -v tansu >/dev/null 2>&1; then
        log "tansu already installed: $(command -v tansu)"
        return 0
    fi
    log "installing tansu $TANSU_VERSION (10-25 minutes on 2 cores, longer beside another build)"
    cargo install "tansu@$TANSU_VERSION" --locked --features "$TANSU_FEATURES"
}

# The pid in DATA_DIR/tansu.pid, if that process is alive and is tansu (not an
# unrelated process that reused the pid after a crash).
running_pid() {
    local pid_file="$1/tansu.pid" pid
    [[ -f "$pid_file" ]] || return 1
    pid="$(<"$pid_file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null || echo tansu)" == tansu ]] || return 1
    echo "$pid"
}

# True once the broker answers a Kafka ApiVersions v0 request: an open port
# alone is not enough, the storage engine may still be initialising.
kafka_ready() {
    local port="$1" bytes
    # size 15 | api_key 18 | api_version 0 | correlation_id 1 | client_id "probe"
    # shellcheck disable=SC2016 # the inner script expands its own $1
    bytes="$(
        timeout 3 bash -c '
            exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
            printf "\x00\x00\x00\x0f\x00\x12\x00\x00\x00\x00\x00\x01\x00\x05probe" >&3
            head -c 8 <&3 | wc -c
        ' _ "$port" 2>/dev/null
    )" || return 1
    [[ "$bytes" -eq 8 ]]
}

cmd_start() {
    local port="$1" dir="$2" pid waited=0
    [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
    command -v tansu >/dev/null 2>&1 || die "tansu not found; run: $0 install"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"

    if pid="$(running_pid "$dir")"; then
        log "already running (pid $pid, port $(cat "$dir/tansu.port" 2>/dev/null || echo '?'))"
        return 0
    fi

    local storage_url
    case "${TANSU_STORAGE:-sqlite}" in
        sqlite) storage_url="sqlite://tansu.db?maintenance_interval=${TANSU_MAINTENANCE:-1day}" ;;
        memory) storage_url="memory://tansu/" ;;
        *) die "TANSU_STORAGE must be sqlite or memory, not '${TANSU_STORAGE}'" ;;
    esac

    # tansu reads its settings from the environment as well as from flags;
    # flags win, and every one that matters is given here. The SQLite file is
    # resolved against the working directory, hence the cd.
    (
        cd "$dir"
        NO_COLOR=1 RUST_LOG="${RUST_LOG:-warn}" exec tansu broker \
            --cluster-id ledgerd-test \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "$storage_url"
    ) >"$dir/tansu.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/tansu.pid"
    echo "$port" >"$dir/tansu.port"

    while ! kafka_ready "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "tansu exited during start-up; last lines of $dir/tansu.log:"
            tail -n 40 "$dir/tansu.log" >&2 || true
            rm -f "$dir/tansu.pid"
            exit 1
        fi
        if ((waited >= START_TIMEOUT * 5)); then
            log "tansu did not answer on port $port within ${START_TIMEOUT}s; last lines of $dir/tansu.log:"
            tail -n 40 "$dir/tansu.log" >&2 || true
            cmd_stop "$dir"
            exit 1
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    log "started tansu (pid $pid) on 127.0.0.1:$port, data in $dir"
}

cmd_stop() {
    local dir="$1" pid i
    if ! pid="$(running_pid "$dir")"; then
        log "not running ($dir)"
        rm -f "$dir/tansu.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "tansu (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/tansu.pid"
    log "stopped tansu (pid $pid)"
}

cmd_status() {
    local dir="$1" pid
    if pid="$(running_pid "$dir")"; then
        echo "running: pid $pid, port $(cat "$dir/tansu.port" 2>/dev/null || echo '?'), data $dir"
        return 0
    fi
    echo "not running: $dir"
    return 3
}

case "${1:-}" in
    install) [[ $# -eq 1 ]] || usage; cmd_install ;;
    start) [[ $# -eq 3 ]] || usage; cmd_start "$2" "$3" ;;
    stop) [[ $# -eq 2 ]] || usage; cmd_stop "$2" ;;
    status) [[ $# -eq 2 ]] || usage; cmd_status "$2" ;;
    *) usage ;;
esac
