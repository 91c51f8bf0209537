#!/usr/bin/env bash
# End-to-end benchmark, one run against the real broker (tansu):
#   1. produce EVENTS generated events (fixed seed) over ACCOUNTS accounts to a fresh topic (PARTITIONS, default 6);
#   2. a bare rdkafka consumer drains the topic (before and after ledgerd: the broker's ceiling);
#   3. ledgerd catches up on the same topic: rate from its first processed record to every record
#      checkpointed, CPU seconds (user+sys) per million events (and by thread), peak RSS (at the
#      catch-up's end and after step 4), the share of balance reads the balance cache answered;
#   4. every balance is verified against the generator's expectation (a fast wrong answer fails).
# Usage: scripts/bench.sh [EVENTS] [ACCOUNTS]   (uses $LEDGERD_TEST_BROKERS, or starts a broker)
# PARTITIONS (default 6) sets the topic's partition count. BENCH_DEAD_LETTERS=0 generates no
# malformed or conflicting records (no dead-letter traffic, which a large tansu answers slowly).
# BENCH_PROFILE=dev measures the test build (dependencies optimised, ledgerd's own code not)
# instead of the release build; the default is release. BENCH_KEEP=1 keeps the work directory.
# BENCH_EXTRA_TOML is appended to ledgerd's generated config (tables after [log]).
# BENCH_KAFKA_PROPERTIES ("KEY=VALUE ...") sets librdkafka properties for ledgerd (its
# [kafka.properties], so BENCH_EXTRA_TOML must not have that table too) and for the bare consumer
# alike: the bare consumer always runs with ledgerd's client settings. fetch.wait.max.ms=10 sees
# past tansu's memory engine, whose pace follows that setting (docs/BENCHMARKS.md, forty-third session).
# SNAPSHOT_INTERVAL sets ledgerd's snapshot.interval (unset: ledgerd's default), e.g. 1h to measure
# a catch-up without snapshot rounds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EVENTS="${1:-1000000}"
ACCOUNTS="${2:-10000}"
PARTITIONS="${PARTITIONS:-6}"
WORK="$(mktemp -d -t ledgerd-bench.XXXXXX)"
PIDS=()
source scripts/bench-common.sh
TOPIC="bench-$(date +%s)-$$"

produce_history "$PARTITIONS"

# Before and after each phase: the broker's CPU seconds (when this script started it) and the
# machine's idle seconds. ledgerd and the broker share this machine's cores, so what ledgerd makes
# the broker do (fetches, commits, snapshot records) counts against the catch-up too.
BROKER_PID=""
if [[ -n "$STARTED_BROKER" ]]; then BROKER_PID="$(cat "$WORK/broker/tansu.pid")"; fi
cpu_mark() {
    python3 - "$BROKER_PID" >>"$WORK/marks.txt" <<'PY'
import os, sys
ticks = os.sysconf("SC_CLK_TCK")
broker = -1.0
if sys.argv[1]:
    stat = open(f"/proc/{sys.argv[1]}/stat").read()
    fields = stat[stat.rindex(")") + 2 :].split()
    broker = (int(fields[11]) + int(fields[12])) / ticks
idle = sum(int(v) for v in open("/proc/stat").readline().split()[4:6]) / ticks  # idle + iowait
print(broker, idle)
PY
}

kafka_properties
PROPERTIES_TOML=""
if [[ -n "$KAFKA_PROPERTIES_TOML" ]]; then PROPERTIES_TOML=$'[kafka.properties]\n'"$KAFKA_PROPERTIES_TOML"; fi

echo "bare consumer drain (1/2) ..."
cpu_mark
"$BIN/ledgerd-bench" drain --brokers "$BROKERS" --topic "$TOPIC" --partitions "$PARTITIONS" "${DRAIN_ARGS[@]}" >"$WORK/drain1.json"
cpu_mark

HTTP_PORT="$(free_port)"
cat >"$WORK/ledgerd.toml" <<TOML
[kafka]
bootstrap_servers = "$BROKERS"
group_id = "bench-$TOPIC"
input_topic = "$TOPIC"
dlq_topic = "$TOPIC-dlq"
[snapshot]
topic = "$TOPIC-snapshots"
${SNAPSHOT_INTERVAL:+interval = \"$SNAPSHOT_INTERVAL\"}
[state]
dir = "$WORK/state"
[http]
listen = "127.0.0.1:$HTTP_PORT"
[log]
filter = "warn"
TOML
# BENCH_EXTRA_TOML: more settings for ledgerd; librdkafka knobs go in BENCH_KAFKA_PROPERTIES, which
# the bare consumer gets too.
printf '%s\n' "${BENCH_EXTRA_TOML:-}" "$PROPERTIES_TOML" >>"$WORK/ledgerd.toml"
echo "ledgerd catch-up ..."
cpu_mark
"$BIN/ledgerd" run --config "$WORK/ledgerd.toml" 2>"$WORK/ledgerd.log" &
LEDGERD_PID=$!
PIDS+=("$LEDGERD_PID")
if ! "$BIN/ledgerd-bench" watch --url "http://127.0.0.1:$HTTP_PORT" --total "$TOTAL" --pid "$LEDGERD_PID" >"$WORK/watch.json"; then
    tail -20 "$WORK/ledgerd.log" >&2
    exit 1
fi
# CPU of the whole process life so far (start-up and group join included), in total and by
# thread name (numbers dropped), read together from one parser of /proc's stat lines; peak RSS.
python3 - "$LEDGERD_PID" >"$WORK/cpu.json" <<'PY'
import collections, json, os, re, sys
proc = f"/proc/{sys.argv[1]}"
def name_and_seconds(stat_path):
    stat = open(stat_path).read()
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state); utime and stime are 14 and 15
    return stat[stat.index("(") + 1 : stat.rindex(")")], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
threads = collections.Counter()
for tid in os.listdir(f"{proc}/task"):
    try:
        name, seconds = name_and_seconds(f"{proc}/task/{tid}/stat")
    except OSError:
        continue  # the thread ended meanwhile
    threads[re.sub(r"[-_:]?\d+$", "", name)] += seconds
json.dump({"seconds": name_and_seconds(f"{proc}/stat")[1], "threads": threads}, sys.stdout)
PY
# The balance cache's hits and misses over the catch-up (read before the balance check's reads).
python3 - "http://127.0.0.1:$HTTP_PORT/metrics" >"$WORK/cache.json" <<'PY'
import json, re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
lookups = dict(re.findall(r'^ledgerd_state_balance_cache_lookups_total\{result="(\w+)"\} (\S+)$', text, re.M))
json.dump({result: float(count) for result, count in lookups.items()}, sys.stdout)
PY
cpu_mark
PEAK_RSS_KB="$(awk '/VmHWM/ {print $2}' "/proc/$LEDGERD_PID/status")"
"$BIN/ledgerd-bench" verify --url "http://127.0.0.1:$HTTP_PORT" --expected "$WORK/expected.json" >"$WORK/verify.json"
# The peak again once every balance has been read over HTTP (the API's reads use the block cache).
PEAK_RSS_WITH_CHECK_KB="$(awk '/VmHWM/ {print $2}' "/proc/$LEDGERD_PID/status")"
kill -TERM "$LEDGERD_PID"
wait "$LEDGERD_PID"

echo "bare consumer drain (2/2) ..."
cpu_mark
"$BIN/ledgerd-bench" drain --brokers "$BROKERS" --topic "$TOPIC" --partitions "$PARTITIONS" "${DRAIN_ARGS[@]}" >"$WORK/drain2.json"
cpu_mark

python3 - "$WORK" "$PEAK_RSS_KB" "$PROFILE" "$PEAK_RSS_WITH_CHECK_KB" <<'PY'
import json, os, sys
work, rss_kb, rss_with_check_kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[4])
load = lambda name: json.load(open(f"{work}/{name}.json"))
produce, d1, d2, watch, verify = load("produce"), load("drain1"), load("drain2"), load("watch"), load("verify")
bare = (d1["records_per_second"] + d2["records_per_second"]) / 2
cpu_read = load("cpu")
cpu = cpu_read["seconds"]
events = produce["produced"]
print()
print(f"build profile: {sys.argv[3]}")
properties = os.environ.get("BENCH_KAFKA_PROPERTIES") or "ledgerd's defaults"
print(f"librdkafka properties (ledgerd and the bare consumer): {properties}")
print(f"records: {events} ({produce['applied']} applied, {produce['duplicates']} duplicates, "
      f"{produce['dead_letters']} dead letters) over {produce['accounts']} accounts; "
      f"produced in {produce['seconds']:.1f}s")
print(f"| measure | value |")
print(f"|---|---|")
print(f"| bare rdkafka consumer drain | {bare:,.0f} records/s (runs: {d1['records_per_second']:,.0f}, {d2['records_per_second']:,.0f}) |")
print(f"| ledgerd catch-up (first processed -> all checkpointed) | {watch['records_per_second']:,.0f} records/s ({watch['seconds']:.2f}s) |")
print(f"| of which after every record was processed (last checkpoints) | {watch['seconds_after_all_processed']:.2f}s |")
print(f"| ledgerd / bare consumer | {watch['records_per_second'] / bare:.2f}x |")
print(f"| ledgerd CPU (user+sys, whole process) | {cpu:.2f}s = {cpu / (events / 1e6):.2f} CPU-s per million events |")
bare_cpu = min(d1["cpu_seconds"], d2["cpu_seconds"])
print(f"| bare consumer CPU (user+sys, the cheaper run) | {bare_cpu:.2f}s = {bare_cpu / (events / 1e6):.2f} CPU-s per million events |")
threads = cpu_read["threads"]
# The total was read after the threads, so it covers them; the rest is threads that ended before.
ended = max(cpu - sum(threads.values()), 0.0)
by_thread = sorted(threads.items(), key=lambda item: -item[1])
shown = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in by_thread[:6] if seconds >= 0.01)
print(f"| ledgerd CPU by thread | {shown}; threads that ended {ended:.2f}s |")
# Phases from marks.txt: drain 1, catch-up (ledgerd start to every record checkpointed), drain 2.
marks = [tuple(map(float, line.split())) for line in open(f"{work}/marks.txt")]
phases = {"bare drain 1": marks[0:2], "ledgerd catch-up": marks[2:4], "bare drain 2": marks[4:6]}
if marks[0][0] >= 0:
    spent = ", ".join(f"{name} {(b[0] - a[0]) / (events / 1e6):.2f}" for name, (a, b) in phases.items())
    print(f"| broker CPU per million events | {spent} |")
idle = ", ".join(f"{name} {b[1] - a[1]:.1f}s" for name, (a, b) in phases.items())
print(f"| machine idle (all cores) | {idle} |")
print(f"| ledgerd peak RSS | {rss_kb / 1024:.0f} MiB ({rss_with_check_kb / 1024:.0f} MiB including the balance check) |")
cache = load("cache")
reads = cache.get("hit", 0) + cache.get("miss", 0)
if reads:
    print(f"| balance reads the balance cache answered | {cache.get('hit', 0) / reads:.1%} of {reads:,.0f} (the rest read RocksDB) |")
print(f"| balances verified | {verify['accounts'] - verify['wrong']} / {verify['accounts']} exact |")
# ledgerd's librdkafka threads do what the bare consumer does plus a few produces; far more means
# a client busy-polling, as the idempotent snapshot producer did (docs/BENCHMARKS.md, 2026-12-04).
rdkafka = sum(seconds for name, seconds in threads.items() if name.startswith("rdk:"))
if rdkafka > 2 * bare_cpu:
    print(f"warning: librdkafka threads took {rdkafka:.2f}s, over twice the bare consumer's whole "
          f"{bare_cpu:.2f}s: look for a client that busy-polls (perf the rdk:broker threads)")
PY
