#!/usr/bin/env bash
# Restore benchmark, one run against the real broker (tansu): how long a node without local state
# takes to own a partition, replaying the partition's whole history versus restoring the snapshot.
#   1. produce EVENTS events over ACCOUNTS accounts (SECONDS_PER_EVENT apart in event time) to a
#      fresh topic of PARTITIONS partitions (default 1);
#   2. node R (empty state dir) replays the whole history, timed, writing snapshot rounds every
#      REPLAY_SNAPSHOT_INTERVAL (default 60 s) as any owner does; once a round covers the end it stops;
#   3. node S (empty state dir, same group and snapshot topic) restores from that snapshot, timed;
#   both are timed from process start (group join included) to every record checkpointed, and both
#   are verified against the generator's expected balances.
# The replaying node is also the one that wrote the snapshot, so the history is read twice, not
# three times; its time includes writing its snapshot rounds, as any replaying owner's would.
# Usage: scripts/bench-restore.sh [EVENTS] [ACCOUNTS] [SECONDS_PER_EVENT]
# PARTITIONS (default 1) spreads the history over that many partitions: each node then replays or
# restores all of them at once, and every partition holds EVENTS/PARTITIONS of the history
# (tansu 0.6 fetched from one 10M-record partition at about 1k records/s here).
#   defaults: 10000000 events, 100000 accounts (~100 per account), 10 s apart (the default 7-day
#   dedupe window then holds ~60k transaction ids, which the snapshot carries).
# BENCH_HISTORY=DIR keeps the produced history for later runs: the first run with an empty DIR
# produces as usual and records the topic in DIR; later runs against the same broker
# (LEDGERD_TEST_BROKERS) reuse that topic and its expected balances instead of producing again.
# REPLAY_SNAPSHOT_INTERVAL (default 60s, ledgerd's default) is node R's snapshot.interval.
# BENCH_DEAD_LETTERS=0 generates no malformed or conflicting records (nothing for the DLQ, whose
# acknowledgements a large tansu database answers slowly). BENCH_PROFILE=dev uses the test build;
# BENCH_KEEP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EVENTS="${1:-10000000}"
ACCOUNTS="${2:-100000}"
SECONDS_PER_EVENT="${3:-10}"
PARTITIONS="${PARTITIONS:-1}"
# Node R writes its rounds at ledgerd's default interval, as an owner left at its defaults would.
# Each round rewrites every account changed since the last (with an even load, all of them), and
# tansu does not compact the snapshot topic during a run (scripts/broker.sh), so node S reads every
# round R wrote: shorter intervals make the restore read more. (A round every 5 s also kept a
# 10M-event catch-up's tansu so busy that produce round trips reached 10 s.)
REPLAY_SNAPSHOT_INTERVAL="${REPLAY_SNAPSHOT_INTERVAL:-60s}"
WORK="$(mktemp -d -t ledgerd-bench-restore.XXXXXX)"
PIDS=()
source scripts/bench-common.sh
now() { date +%s.%N; }
TOPIC="restore-$(date +%s)-$$"

HISTORY="${BENCH_HISTORY:-}"
if [[ -n "$HISTORY" && -f "$HISTORY/topic" ]]; then
    TOPIC="$(<"$HISTORY/topic")"
    cp "$HISTORY/expected.json" "$HISTORY/produce.json" "$WORK/"
    echo "reusing the history in $TOPIC (from $HISTORY) on $BROKERS"
else
    produce_history "$PARTITIONS" --seconds-per-event "$SECONDS_PER_EVENT"
    if [[ -n "$HISTORY" ]]; then
        mkdir -p "$HISTORY"
        cp "$WORK/expected.json" "$WORK/produce.json" "$HISTORY/"
        echo "$TOPIC" >"$HISTORY/topic"
    fi
fi
# Each run's own group and snapshot topic: a reused history is replayed from scratch every time.
RUN="$(date +%s)-$$"
TOTAL="$(json "$WORK/produce.json" produced)"

# timed_node NAME SNAPSHOT_INTERVAL: starts a node without state in the benchmark's group, times
# it from start to every record checkpointed (ELAPSED), notes the snapshot records it restored
# (RESTORED) and verifies its balances into verify-NAME.json. The node keeps running (NODE_PID).
timed_node() {
    local name="$1" started
    started="$(now)"
    start_node "$name" "g-$TOPIC-$RUN" "info,librdkafka=warn" "[snapshot]
topic = \"$TOPIC-snapshots-$RUN\"
interval = \"$2\""
    "$BIN/ledgerd-bench" watch --url "$NODE_URL" --total "$TOTAL" --pid "$NODE_PID" --timeout-secs 7200 >/dev/null
    ELAPSED="$(python3 -c "print($(now) - $started)")"
    RESTORED="$(metric "$NODE_URL" ledgerd_restore_records_total)"
    "$BIN/ledgerd-bench" verify --url "$NODE_URL" --expected "$WORK/expected.json" >"$WORK/verify-$name.json"
}

echo "node R: replaying the whole history (and writing snapshot rounds every $REPLAY_SNAPSHOT_INTERVAL) ..."
timed_node r "$REPLAY_SNAPSHOT_INTERVAL"
REPLAY_SECONDS="$ELAPSED"
deadline=$((SECONDS + 600))
until [[ "$(metric "$NODE_URL" ledgerd_snapshot_offset)" -ge "$TOTAL" ]]; do
    if ((SECONDS > deadline)); then echo "no snapshot round covered the input within 600s" >&2; exit 1; fi
    sleep 1
done
kill -TERM "$NODE_PID"; wait "$NODE_PID" || true

echo "node S: restoring from the snapshot ..."
timed_node s 1h
RESTORE_SECONDS="$ELAPSED"
RESTORED_RECORDS="$RESTORED"
kill -TERM "$NODE_PID"; wait "$NODE_PID" || true

python3 - "$WORK" "$RESTORE_SECONDS" "$REPLAY_SECONDS" "$RESTORED_RECORDS" "$PROFILE" "$PARTITIONS" <<'PY'
import json, sys
work, restore, replay, restored, profile = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
partitions = int(sys.argv[6])
load = lambda name: json.load(open(f"{work}/{name}.json"))
produce, b, c = load("produce"), load("verify-s"), load("verify-r")
print()
print(f"build profile: {profile}")
where = "one partition" if partitions == 1 else f"{partitions} partitions"
print(f"history: {produce['produced']} records over {produce['accounts']} accounts in {where}")
print("| measure | value |")
print("|---|---|")
print(f"| restore via snapshot ({restored:,.0f} snapshot records read), start to all checkpointed | {restore:.1f}s |")
print(f"| full replay of the history, start to all checkpointed | {replay:.1f}s |")
print(f"| replay / restore | {replay / restore:.1f}x |")
print(f"| balances verified after restore | {b['accounts'] - b['wrong']} / {b['accounts']} exact |")
print(f"| balances verified after replay | {c['accounts'] - c['wrong']} / {c['accounts']} exact |")
PY
