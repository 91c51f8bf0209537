//! ledgerd: exactly-once account balances from an event-sourced Kafka topic.
//!
//! The pipeline, one module per stage:
//! - [`config`]: the strict, documented configuration (TOML + `LEDGERD_*` environment overrides).
//! - [`input`]: record bytes (JSON or protobuf) to validated events.
//! - [`ledger`]: domain rules — exact money, events, the balance reducer. No Kafka, no RocksDB.
//! - [`kafka`]: topic setup, the consumer-group thread and its rebalance bridge, the dead-letter producer,
//!   and the producer type every producer uses (delivery reports served by a thread that parks when idle).
//! - [`partition`]: one owned partition — apply records, build atomic checkpoints.
//! - [`store`]: per-partition RocksDB state and filters of its keys; the only module that imports `rocksdb`.
//! - [`snapshot`]: balance snapshots on a log-compacted topic, and exact restores from them.
//! - [`registry`]: which partitions this instance owns, shared with the API.
//! - [`routing`]: which instance serves which partition (announcements, the producers' partitioner).
//! - [`api`]: HTTP balances, history, metrics, liveness and readiness; forwards to the owner.
//! - [`metrics`]: every Prometheus metric, and the one place handled errors are logged and counted.
//! - [`logging`]: tracing set-up (pretty or JSON lines).
//! - [`app`]: wires the above together: [`app::start`] / [`app::run`].
//! - [`demo`]: the zero-setup demo on an in-process mock cluster.
//! - [`loadgen`]: generated workloads with independently computed expected balances.

// The library is the daemon's, not an API for other crates: its docs are read with
// `cargo doc --document-private-items`, where links to private items resolve.
#![allow(rustdoc::private_intra_doc_links)]

pub mod api;
pub mod app;
mod arena;
pub mod config;
pub mod demo;
pub mod input;
pub mod kafka;
pub mod ledger;
pub mod loadgen;
pub mod logging;
pub mod metrics;
pub mod partition;
pub mod registry;
pub mod routing;
pub mod snapshot;
pub mod store;

/// Code generated from `proto/ledgerd/v1/*.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/ledgerd.v1.rs"));
}

pub use app::{run, start, Running};
pub use config::Config;
