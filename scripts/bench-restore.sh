#!/usr/bin/env bash
# Restore benchmark, one run against the real broker (tansu): how long a node without local state
# takes to own a partition, restoring the snapshot versus replaying the partition's whole history.
#   1. produce EVENTS events over ACCOUNTS accounts (SECONDS_PER_EVENT apart in event time) to a
#      fresh 1-partition topic;
#   2. node A processes the history and writes snapshot rounds (every 30 s); it stops once a round
#      covers the end;
#   3. node B (empty state dir, same group and snapshot topic) restores from the snapshot;
#   4. node C (empty state dir, new group, empty snapshot topic) replays the whole history;
#   B and C are timed from process start to every record checkpointed, and both are verified
#   against the generator's expected balances.
# Usage: scripts/bench-restore.sh [EVENTS] [ACCOUNTS] [SECONDS_PER_EVENT]
#   defaults: 10000000 events, 100000 accounts (~100 per account), 10 s apart (the default 7-day
#   dedupe window then holds ~60k transaction ids, which the snapshot carries).
# BENCH_PROFILE=dev uses the test build; BENCH_KEEP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EVENTS="${1:-10000000}"
ACCOUNTS="${2:-100000}"
SECONDS_PER_EVENT="${3:-10}"
WORK="$(mktemp -d -t ledgerd-bench-restore.XXXXXX)"
PIDS=()
source scripts/bench-common.sh
now() { date +%s.%N; }
TOPIC="restore-$(date +%s)-$$"

echo "producing $EVENTS events over $ACCOUNTS accounts to $TOPIC on $BROKERS ..."
"$BIN/ledgerd-bench" produce --brokers "$BROKERS" --topic "$TOPIC" --partitions 1 \
    --events "$EVENTS" --accounts "$ACCOUNTS" --seconds-per-event "$SECONDS_PER_EVENT" \
    --expected "$WORK/expected.json" >"$WORK/produce.json"
TOTAL="$(json "$WORK/produce.json" produced)"

# node NAME GROUP SNAPSHOT_TOPIC INTERVAL: writes a config, starts ledgerd, sets NODE_PID/NODE_URL.
node() {
    local name="$1" group="$2" snapshots="$3" interval="$4" port
    port="$(free_port)"
    cat >"$WORK/$name.toml" <<TOML
[kafka]
bootstrap_servers = "$BROKERS"
group_id = "$group"
input_topic = "$TOPIC"
dlq_topic = "$TOPIC-dlq"
[state]
dir = "$WORK/state-$name"
[snapshot]
topic = "$snapshots"
interval = "$interval"
[http]
listen = "127.0.0.1:$port"
[log]
filter = "info,librdkafka=warn"
TOML
    "$BIN/ledgerd" run --config "$WORK/$name.toml" 2>"$WORK/$name.log" &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    NODE_URL="http://127.0.0.1:$port"
}

# Sum of a metric's series, as an integer (awk would print large sums as 1e+07).
metric() { curl -fsS "$1/metrics" | awk -v m="$2" '$1 ~ "^"m {s += $2} END {printf "%d\n", s}'; }

# timed_node NAME GROUP SNAPSHOT_TOPIC: starts a node without state, times it from start to every
# record checkpointed (ELAPSED), notes the snapshot records it restored (RESTORED), verifies its
# balances into verify-NAME.json, and stops it.
timed_node() {
    local name="$1" started
    started="$(now)"
    node "$name" "$2" "$3" 1h
    "$BIN/ledgerd-bench" watch --url "$NODE_URL" --total "$TOTAL" --pid "$NODE_PID" --timeout-secs 3600 >/dev/null
    ELAPSED="$(python3 -c "print($(now) - $started)")"
    RESTORED="$(metric "$NODE_URL" ledgerd_restore_records_total)"
    "$BIN/ledgerd-bench" verify --url "$NODE_URL" --expected "$WORK/expected.json" >"$WORK/verify-$name.json"
    kill -TERM "$NODE_PID"; wait "$NODE_PID" || true
}

echo "node A: processing the history and writing snapshots ..."
# Rounds every 30 s: node A is not timed, only its last round matters, and a 10M-event catch-up
# with a round every 5 s kept tansu so busy that produce round trips reached 10 s.
node a "g-$TOPIC" "$TOPIC-snapshots" 30s
"$BIN/ledgerd-bench" watch --url "$NODE_URL" --total "$TOTAL" --pid "$NODE_PID" --timeout-secs 3600 >"$WORK/a.json"
deadline=$((SECONDS + 600))
until [[ "$(metric "$NODE_URL" ledgerd_snapshot_offset)" -ge "$TOTAL" ]]; do
    if ((SECONDS > deadline)); then echo "no snapshot round covered the input within 600s" >&2; exit 1; fi
    sleep 1
done
kill -TERM "$NODE_PID"; wait "$NODE_PID" || true

echo "node B: restoring from the snapshot ..."
timed_node b "g-$TOPIC" "$TOPIC-snapshots"
RESTORE_SECONDS="$ELAPSED"
RESTORED_RECORDS="$RESTORED"

echo "node C: replaying the whole history ..."
timed_node c "g2-$TOPIC" "$TOPIC-snapshots-empty"
REPLAY_SECONDS="$ELAPSED"

python3 - "$WORK" "$RESTORE_SECONDS" "$REPLAY_SECONDS" "$RESTORED_RECORDS" "$PROFILE" <<'PY'
import json, sys
work, restore, replay, restored, profile = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
load = lambda name: json.load(open(f"{work}/{name}.json"))
produce, b, c = load("produce"), load("verify-b"), load("verify-c")
print()
print(f"build profile: {profile}")
print(f"history: {produce['produced']} records over {produce['accounts']} accounts in one partition")
print("| measure | value |")
print("|---|---|")
print(f"| restore via snapshot ({restored:,.0f} snapshot records read), start to all checkpointed | {restore:.1f}s |")
print(f"| full replay of the history, start to all checkpointed | {replay:.1f}s |")
print(f"| replay / restore | {replay / restore:.1f}x |")
print(f"| balances verified after restore | {b['accounts'] - b['wrong']} / {b['accounts']} exact |")
print(f"| balances verified after replay | {c['accounts'] - c['wrong']} / {c['accounts']} exact |")
PY
