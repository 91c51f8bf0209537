# Shared set-up of the benchmark scripts (sourced, not run). Before sourcing, set WORK (a fresh
# directory) and PIDS (an array of processes to kill on exit); set TOPIC (the input topic) before
# calling start_node. Afterwards BIN holds the binaries, PROFILE the profile, and BROKERS the broker
# ($LEDGERD_TEST_BROKERS, or a fresh tansu started in $WORK/broker). BENCH_KEEP=1 keeps $WORK.
#
# BENCH_PROFILE picks the build:
#   release   (default) `cargo build --release`;
#   dev       the test build as it is (ledgerd's own code unoptimised).
# BENCH_BIN=DIR skips the build and runs the binaries already in DIR (say which with BENCH_PROFILE).

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

# kafka_properties: BENCH_KAFKA_PROPERTIES ("KEY=VALUE ...", librdkafka properties) as lines for
# ledgerd's [kafka.properties] table in KAFKA_PROPERTIES_TOML, and as `ledgerd-bench drain`
# arguments in DRAIN_ARGS, so ledgerd and the bare consumer get the same.
kafka_properties() {
    local property properties
    KAFKA_PROPERTIES_TOML=""
    DRAIN_ARGS=()
    read -ra properties <<<"${BENCH_KAFKA_PROPERTIES:-}"
    for property in "${properties[@]}"; do
        if [[ "$property" != *=* ]]; then
            echo "BENCH_KAFKA_PROPERTIES: $property is not KEY=VALUE (e.g. fetch.wait.max.ms=10)" >&2
            exit 2
        fi
        KAFKA_PROPERTIES_TOML+="\"${property%%=*}\" = \"${property#*=}\""$'\n'
        DRAIN_ARGS+=(--property "$property")
    done
}

# Sum of a metric's series at a ledgerd URL, as an integer (awk would print large sums as 1e+07).
metric() { curl -fsS "$1/metrics" | awk -v m="$2" '$1 ~ "^"m {s += $2} END {printf "%d\n", s}'; }

# produce_history PARTITIONS [PRODUCE_ARGS...]: creates $TOPIC with PARTITIONS partitions and
# produces $EVENTS generated events over $ACCOUNTS accounts to it; the expected balances go to
# $WORK/expected.json, the generator's counts to $WORK/produce.json, the record count to TOTAL.
# BENCH_DEAD_LETTERS=0 generates no malformed or conflicting records (no dead-letter traffic,
# which a large tansu database answers slowly).
produce_history() {
    local partitions="$1" bad=()
    shift
    if [[ "${BENCH_DEAD_LETTERS:-1}" == 0 ]]; then bad=(--malformed-rate 0 --conflict-rate 0); fi
    echo "producing $EVENTS events over $ACCOUNTS accounts to $TOPIC on $BROKERS ..."
    "$BIN/ledgerd-bench" produce --brokers "$BROKERS" --topic "$TOPIC" --partitions "$partitions" \
        --events "$EVENTS" --accounts "$ACCOUNTS" "${bad[@]}" "$@" --expected "$WORK/expected.json" \
        >"$WORK/produce.json"
    TOTAL="$(json "$WORK/produce.json" produced)"
}

# start_node NAME GROUP LOG_FILTER [EXTRA_TOML]: writes $WORK/NAME.toml (input $TOPIC and its DLQ,
# state in $WORK/state-NAME, HTTP on a free port, then EXTRA_TOML's tables), starts ledgerd with
# it (log in $WORK/NAME.log) and sets NODE_PID and NODE_URL.
start_node() {
    local name="$1" group="$2" filter="$3" extra="${4:-}" port
    port="$(free_port)"
    cat >"$WORK/$name.toml" <<TOML
[kafka]
bootstrap_servers = "$BROKERS"
group_id = "$group"
input_topic = "$TOPIC"
dlq_topic = "$TOPIC-dlq"
[state]
dir = "$WORK/state-$name"
[http]
listen = "127.0.0.1:$port"
[log]
filter = "$filter"
$extra
TOML
    "$BIN/ledgerd" run --config "$WORK/$name.toml" 2>"$WORK/$name.log" &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    NODE_URL="http://127.0.0.1:$port"
}

source scripts/system-packages.sh
install_system_packages >/dev/null
PROFILE="${BENCH_PROFILE:-release}"
case "${BENCH_BIN:+prebuilt}:$PROFILE" in
    prebuilt:*)
        # Binaries built beforehand (e.g. while another build holds cargo's lock); PROFILE names them.
        BIN="$BENCH_BIN"
        PROFILE="$PROFILE (prebuilt in $BIN)"
        ;;
    :release)
        cargo build --release --quiet --bin ledgerd --bin ledgerd-bench
        BIN=target/release
        ;;
    :dev)
        # The test profile, so the dependencies `cargo test` built are reused.
        cargo build --all-targets --profile test --quiet
        BIN=target/debug
        ;;
    *)
        echo "BENCH_PROFILE must be release or dev, not '$PROFILE'" >&2
        exit 2
        ;;
esac

if [[ -z "${LEDGERD_TEST_BROKERS:-}" ]]; then
    scripts/broker.sh install
    port="$(free_port)"
    scripts/broker.sh start "$port" "$WORK/broker" >/dev/null
    STARTED_BROKER=1
    LEDGERD_TEST_BROKERS="127.0.0.1:$port"
fi
BROKERS="$LEDGERD_TEST_BROKERS"
