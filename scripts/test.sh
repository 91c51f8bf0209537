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
cargo test "$@"

banner "all checks passed"
