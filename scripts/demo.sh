#!/usr/bin/env bash
# Zero-setup demo: installs the system packages the build needs (if missing), builds ledgerd and runs
# `ledgerd demo` (in-process mock Kafka cluster, seed events, the real pipeline and HTTP API).
# Extra arguments go to the demo, e.g. `scripts/demo.sh --exit-after 20`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/system-packages.sh
install_system_packages
# Build the way scripts/test.sh does (all targets): the same feature set shares one RocksDB build,
# where a plain `cargo build` would compile RocksDB's C++ a second time.
cargo build --all-targets --quiet
exec target/debug/ledgerd demo "$@"
