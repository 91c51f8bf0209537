#!/usr/bin/env bash
# The whole test suite: system packages, a local tansu broker, then fmt,
# clippy and every cargo test (unit, integration, doc). Extra arguments go to
# `cargo test`, e.g. `scripts/test.sh -- --nocapture`.
#
# The broker is a throwaway: a fresh data dir on a free port, stopped and
# removed on exit. Tests find it through LEDGERD_TEST_BROKERS.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

banner() {
    printf '\n==== %s ====\n' "$*"
}

# shellcheck source=scripts/system-packages.sh
source scripts/system-packages.sh

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

banner "system packages"
install_system_packages

banner "tansu broker"
scripts/broker.sh install
BROKER_DIR="$(mktemp -d -t ledgerd-broker.XXXXXX)"
cleanup() {
    local status=$?
    if [[ $status -ne 0 && -f "$BROKER_DIR/tansu.log" ]]; then
        # A failing end-to-end test is often the broker's fault (tansu 0.6 has crashed its storage
        # task under load here): show whether it panicked.
        echo "--- tansu: $(grep -c panicked "$BROKER_DIR/tansu.log" || true) panics; last lines of its log:" >&2
        tail -n 20 "$BROKER_DIR/tansu.log" >&2
    fi
    scripts/broker.sh stop "$BROKER_DIR" || true
    rm -rf "$BROKER_DIR"
}
trap cleanup EXIT
BROKER_PORT="$(free_port)"
scripts/broker.sh start "$BROKER_PORT" "$BROKER_DIR"
export LEDGERD_TEST_BROKERS="127.0.0.1:$BROKER_PORT"
echo "LEDGERD_TEST_BROKERS=$LEDGERD_TEST_BROKERS"

banner "cargo fmt --check"
cargo fmt --all -- --check

# --all-targets so benches and examples are compiled and linted too.
banner "cargo clippy"
cargo clippy --all-targets -- -D warnings

# Plain `cargo test` runs unit, integration and doc tests; --all-targets would
# skip the doc tests.
banner "cargo test"
# One test at a time: the end-to-end tests start several ledgerd processes each against one
# tansu broker on a small machine, and two such tests at once starved the broker's group
# coordinator (sessions timing out, partitions churning) rather than testing ledgerd.
RUST_TEST_THREADS="${RUST_TEST_THREADS:-1}" cargo test "$@"

banner "all checks passed"
