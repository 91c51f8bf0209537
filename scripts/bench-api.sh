#!/usr/bin/env bash
# Query API benchmark, one run against the real broker (tansu): requests/s and latency of
# single-account reads, answered locally and forwarded to the owning instance.
#   1. produce EVENTS generated events (fixed seed) over ACCOUNTS accounts to a 6-partition topic;
#   2. instance a catches up on every partition, then instance b joins the group and takes some;
#      a's answers for every account are verified against the expectation (forwarded ones too);
#   3. the accounts are split into those a serves itself and those it forwards to b;
#   4. wrk (Debian's) loads a: /livez (the HTTP stack alone, for scale), then local account reads,
#      then forwarded ones, each for DURATION seconds with CONNECTIONS connections on one thread.
# Any non-2xx answer fails the run: a fast 503 is not a read.
# Usage: scripts/bench-api.sh [EVENTS] [ACCOUNTS]   (uses $LEDGERD_TEST_BROKERS, or starts a broker)
# Environment: DURATION (default 20), CONNECTIONS (default 32), BENCH_PROFILE=dev, BENCH_KEEP=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EVENTS="${1:-100000}"
ACCOUNTS="${2:-10000}"
DURATION="${DURATION:-20}"
CONNECTIONS="${CONNECTIONS:-32}"
WORK="$(mktemp -d -t ledgerd-bench-api.XXXXXX)"
PIDS=()
source scripts/bench-common.sh
command -v wrk >/dev/null || { echo "wrk not found (Debian package wrk)" >&2; exit 1; }
TOPIC="api-$(date +%s)-$$"

produce_history 6

# node NAME: starts ledgerd as instance NAME of the benchmark's group (sets NODE_PID/NODE_URL).
node() {
    start_node "$1" "g-$TOPIC" warn "[snapshot]
topic = \"$TOPIC-snapshots\"
[routing]
topic = \"$TOPIC-instances\"
instance_id = \"$1\""
}

echo "instance a: catching up ..."
node a
A_PID="$NODE_PID"
A_URL="$NODE_URL"
"$BIN/ledgerd-bench" watch --url "$A_URL" --total "$TOTAL" --pid "$A_PID" >/dev/null

echo "instance b: joining the group ..."
node b
B_URL="$NODE_URL"
deadline=$((SECONDS + 180))
until [[ "$(metric "$B_URL" ledgerd_assigned_partitions)" -gt 0 ]] \
    && curl -fsS "$A_URL/readyz" >/dev/null 2>&1 && curl -fsS "$B_URL/readyz" >/dev/null 2>&1 \
    && "$BIN/ledgerd-bench" targets --url "$A_URL" --instance a --expected "$WORK/expected.json" \
        --local "$WORK/local.txt" --forwarded "$WORK/forwarded.txt" >"$WORK/targets.json" 2>/dev/null; do
    if ((SECONDS > deadline)); then echo "the two instances did not settle within 180s" >&2; exit 1; fi
    sleep 1
done
"$BIN/ledgerd-bench" verify --url "$A_URL" --expected "$WORK/expected.json" >"$WORK/verify.json"
echo "/livez" >"$WORK/livez.txt"

# load NAME PATHS_FILE: wrk against instance a, output in wrk-NAME.txt.
load() {
    echo "wrk: $1 ..."
    WRK_PATHS="$2" wrk --threads 1 --connections "$CONNECTIONS" --duration "${DURATION}s" --latency \
        --script scripts/wrk-paths.lua "$A_URL" >"$WORK/wrk-$1.txt"
}
load livez "$WORK/livez.txt"
load local "$WORK/local.txt"
load forwarded "$WORK/forwarded.txt"

python3 - "$WORK" "$PROFILE" "$CONNECTIONS" "$DURATION" <<'PY'
import json, re, sys
work, profile, connections, duration = sys.argv[1:5]
load = lambda name: json.load(open(f"{work}/{name}.json"))
produce, targets, verify = load("produce"), load("targets"), load("verify")
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}

def wrk(name):
    text = open(f"{work}/wrk-{name}.txt").read()
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    if bad or errors:
        sys.exit(f"{name}: {bad.group(0) if bad else ''} {errors.group(0) if errors else ''}\n{text}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    def pct(p):
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
        return float(value) * UNITS[unit]
    return rate, pct(50), pct(99)

print()
print(f"build profile: {profile}; wrk: 1 thread, {connections} connections, {duration} s per route")
print(f"{produce['produced']} records over {produce['accounts']} accounts, 6 partitions; instance a serves "
      f"{targets['local']} accounts itself and forwards {targets['forwarded']} to b; "
      f"{verify['accounts'] - verify['wrong']} / {verify['accounts']} balances exact through a")
print("| requests | requests/s | p50 | p99 |")
print("|---|---|---|---|")
for name, label in [("livez", "`/livez` (HTTP stack alone)"), ("local", "account read, served locally"),
                    ("forwarded", "account read, forwarded to the owner")]:
    rate, p50, p99 = wrk(name)
    print(f"| {label} | {rate:,.0f} | {p50:.2f} ms | {p99:.2f} ms |")
PY
