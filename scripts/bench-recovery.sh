#!/usr/bin/env bash
# Crash-recovery benchmark, one run against the real broker (tansu):
#   1. produce EVENTS generated events (fixed seed) over ACCOUNTS accounts to a topic of PARTITIONS
#      partitions (default 6);
#   2. ledgerd catches up from empty state; once KILL_AT of the records are processed it is killed
#      with SIGKILL and started again at once on the same state directory and HTTP address (as a
#      StatefulSet pod restarts; its group below);
#   3. reported: seconds from the kill until the new process answers HTTP and until it processes
#      its first record, and how many records it processed a second time, against the bound
#      the checkpoint settings give (checkpoint.max_records per partition, twice that while dead
#      letters are pending or a checkpoint's write is in flight), and the peak RSS of each process: the killed one's just before the
#      kill, the restarted one's once caught up and again after step 4 (a restart replays the
#      write-ahead logs of every partition at once);
#   4. every balance is verified against the generator's expectation after the restarted process
#      has caught up: nothing lost, nothing applied twice.
# On tansu 0.6 the restarted process joins a new group (RESTART_GROUP=same to rejoin the old one):
# there a member restarted after kill -9, static (same group.instance.id) or dynamic, got its
# partitions, lost them when the dead member's session expired, and was never assigned again
# (seen here; the end-to-end tests restart into a group of their own for the same reason). On
# Apache Kafka a static member rejoins its group at once (KIP-345). Positions come from the state
# directory, never from the group, so the measure is the same either way: open the state, join,
# process.
# Usage: scripts/bench-recovery.sh [EVENTS] [ACCOUNTS]   (uses $LEDGERD_TEST_BROKERS, or starts a broker)
# Environment: PARTITIONS (default 6); KILL_AT (default 0.5); RESTART_GROUP=same;
# RESTART_MEMBER=dynamic restarts without group.instance.id (see below); SESSION_TIMEOUT_MS
# (default 10000, see below);
# BENCH_DEAD_LETTERS=0 generates no malformed or conflicting records (at 2M records tansu answered
# the dead-letter producer so slowly that its messages timed out and checkpoints stalled);
# BENCH_KAFKA_PROPERTIES ("KEY=VALUE ...", as in bench.sh; before the forty-third session TOML
# lines) adds librdkafka properties to both processes' [kafka.properties], to try a knob;
# RECOVERY_POLL_MS (default 20): how often the restarted process's /metrics is scraped until it
# processes, the resolution of "processes again" (until the forty-eighth session every 2 ms: each
# scrape costs ledgerd about a millisecond of CPU, which the restart it timed paid for);
# BENCH_PROFILE=dev, BENCH_BIN=DIR, BENCH_KEEP=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EVENTS="${1:-1000000}"
ACCOUNTS="${2:-10000}"
KILL_AT="${KILL_AT:-0.5}"
PARTITIONS="${PARTITIONS:-6}"
WORK="$(mktemp -d -t ledgerd-bench-recovery.XXXXXX)"
PIDS=()
source scripts/bench-common.sh
TOPIC="recovery-$(date +%s)-$$"

produce_history "$PARTITIONS"

# 10 s, as in the tests. 6 s lost the first process its partitions in 3 of 21 runs: tansu 0.6 holds
# a static member's JoinGroup and its SyncGroup for up to 3 s each, so its first heartbeat can come
# more than 6 s after the join it last heard from it; tansu then counts a missed heartbeat, starts
# a rebalance, answers the rejoin with "unknown member", and never assigns the partitions again
# (librdkafka's cgrp debug log of such a run). A restart into the old group (RESTART_GROUP=same)
# waits this long for the dead member.
SESSION_TIMEOUT_MS="${SESSION_TIMEOUT_MS:-10000}"
kafka_properties
PORT="$(free_port)"
URL="http://127.0.0.1:$PORT"
cat >"$WORK/ledgerd.toml" <<TOML
[kafka]
bootstrap_servers = "$BROKERS"
group_id = "g-$TOPIC"
group_instance_id = "recovery-0"
input_topic = "$TOPIC"
dlq_topic = "$TOPIC-dlq"
[kafka.properties]
"session.timeout.ms" = "$SESSION_TIMEOUT_MS"
$KAFKA_PROPERTIES_TOML
[snapshot]
topic = "$TOPIC-snapshots"
[routing]
topic = "$TOPIC-instances"
[state]
dir = "$WORK/state"
[http]
listen = "127.0.0.1:$PORT"
[log]
filter = "info"
TOML

RESTART_CONFIG="$WORK/ledgerd-restart.toml"
cp "$WORK/ledgerd.toml" "$RESTART_CONFIG"
if [[ "${RESTART_GROUP:-new}" != same ]]; then
    sed -i -e "s/^group_id = .*/group_id = \"g-$TOPIC-restarted\"/" "$RESTART_CONFIG"
fi
if [[ "${RESTART_MEMBER:-static}" == dynamic ]]; then
    # tansu 0.6 holds every JoinGroup of a static member for 3 s (PAUSE_MS in its group
    # coordinator), twice per join here; a dynamic member (no group.instance.id) is not held.
    sed -i -e '/^group_instance_id = /d' "$RESTART_CONFIG"
fi

echo "ledgerd: catching up, killed with SIGKILL at $KILL_AT of $TOTAL records, restarted ..."
"$BIN/ledgerd-bench" recovery --ledgerd "$BIN/ledgerd" --config "$WORK/ledgerd.toml" \
    --restart-config "$RESTART_CONFIG" --url "$URL" \
    --total "$TOTAL" --kill-at "$KILL_AT" --poll-ms "${RECOVERY_POLL_MS:-20}" --log "$WORK/ledgerd" \
    >"$WORK/recovery.json"
RESTARTED_PID="$(json "$WORK/recovery.json" pid)"
PIDS+=("$RESTARTED_PID")
# A wrong balance fails the run, after the table: the other measures stand (the memory engine's
# restarts lose records to a tansu fault, see scripts/broker.sh, and still show ledgerd's memory).
VERIFIED=0
"$BIN/ledgerd-bench" verify --url "$URL" --expected "$WORK/expected.json" >"$WORK/verify.json" || VERIFIED=$?
# The balance check reads every account over HTTP, through the block cache.
PEAK_RSS_WITH_CHECK_KB="$(awk '/VmHWM/ {print $2}' "/proc/$RESTARTED_PID/status")"
MAX_RECORDS="$(awk -F' *= *' '/^max_records/ {print $2}' config/ledgerd.toml)"

python3 - "$WORK" "$PROFILE" "$MAX_RECORDS" "${RESTART_GROUP:-new} group, ${RESTART_MEMBER:-static} member" \
    "$PARTITIONS" "$PEAK_RSS_WITH_CHECK_KB" <<'PY'
import json, sys
work, profile, max_records, restart = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
partitions, rss_with_check_kb = int(sys.argv[5]), int(sys.argv[6])
load = lambda name: json.load(open(f"{work}/{name}.json"))
produce, r, verify = load("produce"), load("recovery"), load("verify")
print()
print(f"build profile: {profile}")
print(f"restarted into: {restart}")
print(f"records: {produce['produced']} over {produce['accounts']} accounts, {partitions} partitions")
print("| measure | value |")
print("|---|---|")
print(f"| killed (SIGKILL) after | {r['processed_before_kill']:,} records processed, {r['checkpointed_before_kill']:,} checkpointed (last scrape) |")
print(f"| kill → restarted process answers HTTP | {r['seconds_to_http']:.2f} s |")
print(f"| kill → restarted process processes again | {r['seconds_to_processing']:.2f} s (metrics scraped every {r['poll_ms']} ms) |")
print(f"| restarted from (checkpoint, all partitions) | {r['resumed_from']:,} |")
print(f"| records processed twice | {r['reread_records']:,} (bound: {partitions} partitions × max_records {max_records:,} = "
      f"{partitions * max_records:,}, twice that while dead letters are pending or a write is in flight) |")
print(f"| peak RSS: killed process, just before the kill | {r['peak_rss_kib_before_kill'] / 1024:.0f} MiB |")
print(f"| peak RSS: restarted process, caught up | {r['peak_rss_kib_restarted'] / 1024:.0f} MiB "
      f"({rss_with_check_kb / 1024:.0f} MiB including the balance check) |")
print(f"| balances verified after catch-up | {produce['accounts'] - verify['wrong']:,} / {produce['accounts']:,} exact |")
PY
if ((VERIFIED != 0)); then
    echo "bench-recovery: balances wrong after the restart (above): a fast wrong answer is a failure" >&2
    exit 1
fi
