# Shared set-up of the benchmark scripts (sourced, not run). Before sourcing, set WORK (a fresh
# directory) and PIDS (an array of processes to kill on exit). Afterwards BIN holds the binaries
# (release unless BENCH_PROFILE=dev), PROFILE the profile, and BROKERS the broker
# ($LEDGERD_TEST_BROKERS, or a fresh tansu started in $WORK/broker). BENCH_KEEP=1 keeps $WORK.

STARTED_BROKER=""

bench_cleanup() {
    for pid in "${PIDS[@]}"; do
        if [[ -n "$pid" ]]; then kill -9 "$pid" 2>/dev/null || true; fi
    done
    if [[ -n "$STARTED_BROKER" ]]; then scripts/broker.sh stop "$WORK/broker" >/dev/null 2>&1 || true; fi
    if [[ -z "${BENCH_KEEP:-}" ]]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
}
trap bench_cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

source scripts/system-packages.sh
install_system_packages >/dev/null
PROFILE="${BENCH_PROFILE:-release}"
if [[ "$PROFILE" == release ]]; then
    cargo build --release --quiet --bin ledgerd --bin ledgerd-bench
    BIN=target/release
else
    cargo build --all-targets --quiet
    BIN=target/debug
fi

if [[ -z "${LEDGERD_TEST_BROKERS:-}" ]]; then
    scripts/broker.sh install
    port="$(free_port)"
    scripts/broker.sh start "$port" "$WORK/broker" >/dev/null
    STARTED_BROKER=1
    LEDGERD_TEST_BROKERS="127.0.0.1:$port"
fi
BROKERS="$LEDGERD_TEST_BROKERS"
