//! Every Prometheus metric ledgerd exposes, defined in one place, and the one function through which
//! every handled error is both logged and counted.
//!
//! Labels are bounded: `partition` (the input's partition count), `outcome`, `reason` (the fixed set
//! of [`RejectReason`] codes) and `kind` (the fixed set of [`ErrorKind`]s). Never an account id.

use crate::ledger::RejectReason;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::fmt::Display;

/// Kinds of handled errors: the `kind` label of `ledgerd_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// librdkafka reported a client-level error (broker down, authentication, …). It retries itself.
    KafkaClient,
    /// Polling the consumer returned an error (e.g. the input topic does not exist yet).
    ConsumerPoll,
    /// Creating or inspecting topics failed; retried with backoff.
    TopicSetup,
    /// A dead-letter record was not acknowledged; it is re-sent before the offset is checkpointed.
    DlqDelivery,
    /// Writing a checkpoint to RocksDB failed; retried, the partition does not advance meanwhile.
    CheckpointWrite,
    /// Reading state from RocksDB failed; retried.
    StateRead,
    /// Opening a partition's state failed.
    StateOpen,
    /// Local state was unusable and was set aside.
    StateSetAside,
    /// Committing offsets to the consumer group failed (informational: the stored offset is the truth).
    GroupCommit,
    /// A rebalance callback reported an error.
    Rebalance,
    /// Writing a snapshot round failed; the round is retried at the next interval.
    SnapshotWrite,
    /// Restoring a partition from the snapshot topic failed; retried with backoff.
    Restore,
    /// Deleting the state of a partition that moved away failed; retried later.
    StateCleanup,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::KafkaClient,
        ErrorKind::ConsumerPoll,
        ErrorKind::TopicSetup,
        ErrorKind::DlqDelivery,
        ErrorKind::CheckpointWrite,
        ErrorKind::StateRead,
        ErrorKind::StateOpen,
        ErrorKind::StateSetAside,
        ErrorKind::GroupCommit,
        ErrorKind::Rebalance,
        ErrorKind::SnapshotWrite,
        ErrorKind::Restore,
        ErrorKind::StateCleanup,
    ];

    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::KafkaClient => "kafka_client",
            ErrorKind::ConsumerPoll => "consumer_poll",
            ErrorKind::TopicSetup => "topic_setup",
            ErrorKind::DlqDelivery => "dlq_delivery",
            ErrorKind::CheckpointWrite => "checkpoint_write",
            ErrorKind::StateRead => "state_read",
            ErrorKind::StateOpen => "state_open",
            ErrorKind::StateSetAside => "state_set_aside",
            ErrorKind::GroupCommit => "group_commit",
            ErrorKind::Rebalance => "rebalance",
            ErrorKind::SnapshotWrite => "snapshot_write",
            ErrorKind::Restore => "restore",
            ErrorKind::StateCleanup => "state_cleanup",
        }
    }

    /// Whether an operator must act or data is at risk (logged at ERROR rather than WARN).
    fn is_severe(self) -> bool {
        matches!(self, ErrorKind::CheckpointWrite | ErrorKind::StateOpen | ErrorKind::StateRead | ErrorKind::Restore)
    }
}

/// Outcome label values of `ledgerd_events_total`.
pub mod outcome {
    pub const APPLIED: &str = "applied";
    pub const DUPLICATE: &str = "duplicate";
    /// Skipped after a restore: already reflected in the snapshot the partition was restored from.
    pub const IN_SNAPSHOT: &str = "in_snapshot";
    pub const DEAD_LETTERED: &str = "dead_lettered";
}

/// All of ledgerd's metrics, registered in their own registry (no process-wide globals).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    dead_lettered: IntCounterVec,
    checkpointed_offset: IntGaugeVec,
    checkpoint_duration: HistogramVec,
    checkpoint_records: HistogramVec,
    errors: IntCounterVec,
    rebalances: IntCounterVec,
    pub assigned_partitions: IntGauge,
    pub http_requests: IntCounterVec,
    snapshot_records: IntCounterVec,
    snapshot_rounds: IntCounterVec,
    snapshot_age: prometheus::GaugeVec,
    snapshot_offset: IntGaugeVec,
    snapshot_truncated: IntCounter,
    restore_records: IntCounterVec,
    restore_duration: prometheus::GaugeVec,
    restore_remaining: IntGaugeVec,
    pub restoring_partitions: IntGauge,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry.register(Box::new(metric.clone())).expect("metric names are constants defined once in this module");
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let events = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "ledgerd_events_total",
                    "Input records processed, by partition and outcome (applied, duplicate, dead_lettered).",
                ),
                &["partition", "outcome"],
            )
            .expect("valid metric"),
        );
        let dead_lettered = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "ledgerd_dead_lettered_total",
                    "Input records copied to the dead-letter topic, by partition and reason code.",
                ),
                &["partition", "reason"],
            )
            .expect("valid metric"),
        );
        let checkpointed_offset = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "ledgerd_checkpointed_offset",
                    "Next input offset to read, as durably stored with the partition's state.",
                ),
                &["partition"],
            )
            .expect("valid metric"),
        );
        let checkpoint_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "ledgerd_checkpoint_duration_seconds",
                    "Time from sealing a checkpoint to its durable write (its dead letters acknowledged, WriteBatch synced); processing goes on meanwhile.",
                )
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0]),
                &["partition"],
            )
            .expect("valid metric"),
        );
        let checkpoint_records = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new("ledgerd_checkpoint_records", "Input records covered by one checkpoint.")
                    .buckets(prometheus::exponential_buckets(1.0, 4.0, 10).expect("valid buckets")),
                &["partition"],
            )
            .expect("valid metric"),
        );
        let errors = register(
            &registry,
            IntCounterVec::new(
                Opts::new("ledgerd_errors_total", "Handled errors by kind; each is also logged."),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let rebalances = register(
            &registry,
            IntCounterVec::new(
                Opts::new("ledgerd_rebalances_total", "Rebalance callbacks by kind (assign, revoke, error)."),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let assigned_partitions = register(
            &registry,
            IntGauge::new("ledgerd_assigned_partitions", "Input partitions currently owned by this instance.")
                .expect("valid metric"),
        );
        let http_requests = register(
            &registry,
            IntCounterVec::new(
                Opts::new("ledgerd_http_requests_total", "HTTP requests by route and status code."),
                &["route", "status"],
            )
            .expect("valid metric"),
        );
        let snapshot_records = register(
            &registry,
            IntCounterVec::new(
                Opts::new("ledgerd_snapshot_records_total", "Account records written to the snapshot topic."),
                &["partition"],
            )
            .expect("valid metric"),
        );
        let snapshot_rounds = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "ledgerd_snapshot_rounds_total",
                    "Snapshot rounds by result (complete: marker acknowledged; failed; abandoned: partition moved).",
                ),
                &["partition", "result"],
            )
            .expect("valid metric"),
        );
        let snapshot_age = register(
            &registry,
            prometheus::GaugeVec::new(
                Opts::new(
                    "ledgerd_snapshot_age_seconds",
                    "Seconds since the partition's last complete snapshot round (or since it was assigned).",
                ),
                &["partition"],
            )
            .expect("valid metric"),
        );
        let snapshot_offset = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "ledgerd_snapshot_offset",
                    "Input offset the partition's last complete snapshot round is valid through: a restore replays from here.",
                ),
                &["partition"],
            )
            .expect("valid metric"),
        );
        let snapshot_truncated = register(
            &registry,
            IntCounter::new(
                "ledgerd_snapshot_transactions_truncated_total",
                "Snapshot records that could not hold all of an account's remembered transaction ids.",
            )
            .expect("valid metric"),
        );
        let restore_records = register(
            &registry,
            IntCounterVec::new(
                Opts::new("ledgerd_restore_records_total", "Snapshot records read while restoring partitions."),
                &["partition"],
            )
            .expect("valid metric"),
        );
        let restore_duration = register(
            &registry,
            prometheus::GaugeVec::new(
                Opts::new(
                    "ledgerd_restore_duration_seconds",
                    "Duration of the partition's last restore from the snapshot topic.",
                ),
                &["partition"],
            )
            .expect("valid metric"),
        );
        let restore_remaining = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "ledgerd_restore_remaining_records",
                    "Snapshot records (offsets) still to read by a restore in progress.",
                ),
                &["partition"],
            )
            .expect("valid metric"),
        );
        let restoring_partitions = register(
            &registry,
            IntGauge::new(
                "ledgerd_restoring_partitions",
                "Assigned partitions still being prepared (state opened, checked, or restored).",
            )
            .expect("valid metric"),
        );
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("ledgerd_build_info", "Always 1; labels carry the build's version."),
                &["version"],
            )
            .expect("valid metric"),
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process metrics registered once");

        // Pre-create error series so a zero is visible before the first error.
        for kind in ErrorKind::ALL {
            errors.with_label_values(&[kind.code()]);
        }

        Metrics {
            registry,
            events,
            dead_lettered,
            checkpointed_offset,
            checkpoint_duration,
            checkpoint_records,
            errors,
            rebalances,
            assigned_partitions,
            http_requests,
            snapshot_records,
            snapshot_rounds,
            snapshot_age,
            snapshot_offset,
            snapshot_truncated,
            restore_records,
            restore_duration,
            restore_remaining,
            restoring_partitions,
        }
    }

    /// Pre-resolved snapshot metric handles for one partition.
    pub fn snapshot_for_partition(&self, partition: i32) -> SnapshotMetrics {
        let p = partition.to_string();
        SnapshotMetrics {
            records: self.snapshot_records.with_label_values(&[&p]),
            complete: self.snapshot_rounds.with_label_values(&[&p, "complete"]),
            failed: self.snapshot_rounds.with_label_values(&[&p, "failed"]),
            abandoned: self.snapshot_rounds.with_label_values(&[&p, "abandoned"]),
            age: self.snapshot_age.with_label_values(&[&p]),
            offset: self.snapshot_offset.with_label_values(&[&p]),
            truncated: self.snapshot_truncated.clone(),
        }
    }

    /// Pre-resolved restore metric handles for one partition.
    pub fn restore_for_partition(&self, partition: i32) -> RestoreMetrics {
        let p = partition.to_string();
        RestoreMetrics {
            records: self.restore_records.with_label_values(&[&p]),
            duration: self.restore_duration.with_label_values(&[&p]),
            remaining: self.restore_remaining.with_label_values(&[&p]),
        }
    }

    /// Pre-resolved handles for one partition, so the per-event path does no label lookups.
    pub fn for_partition(&self, partition: i32) -> PartitionMetrics {
        let p = partition.to_string();
        PartitionMetrics {
            applied: self.events.with_label_values(&[&p, outcome::APPLIED]),
            in_snapshot: self.events.with_label_values(&[&p, outcome::IN_SNAPSHOT]),
            duplicate: self.events.with_label_values(&[&p, outcome::DUPLICATE]),
            dead_lettered_total: self.events.with_label_values(&[&p, outcome::DEAD_LETTERED]),
            dead_lettered: self.dead_lettered.clone(),
            partition_label: p.clone(),
            checkpointed_offset: self.checkpointed_offset.with_label_values(&[&p]),
            checkpoint_duration: self.checkpoint_duration.with_label_values(&[&p]),
            checkpoint_records: self.checkpoint_records.with_label_values(&[&p]),
        }
    }

    /// Forgets a partition's gauges when it moves away (counters keep their history).
    pub fn remove_partition(&self, partition: i32) {
        let p = partition.to_string();
        let _ = self.checkpointed_offset.remove_label_values(&[&p]);
        let _ = self.snapshot_age.remove_label_values(&[&p]);
        let _ = self.snapshot_offset.remove_label_values(&[&p]);
        let _ = self.restore_remaining.remove_label_values(&[&p]);
    }

    /// The checkpointed next offset of an owned partition (0 when not owned).
    pub fn checkpointed_offset(&self, partition: i32) -> i64 {
        self.checkpointed_offset.get_metric_with_label_values(&[&partition.to_string()]).map_or(0, |g| g.get())
    }

    pub fn rebalance(&self, kind: &str) {
        self.rebalances.with_label_values(&[kind]).inc();
    }

    /// Logs and counts a handled error. Every error ledgerd recovers from goes through here.
    pub fn handled_error(&self, kind: ErrorKind, error: &dyn Display) {
        self.errors.with_label_values(&[kind.code()]).inc();
        if kind.is_severe() {
            tracing::error!(kind = kind.code(), error = %error, "handled error");
        } else {
            tracing::warn!(kind = kind.code(), error = %error, "handled error");
        }
    }

    pub fn error_count(&self, kind: ErrorKind) -> u64 {
        self.errors.with_label_values(&[kind.code()]).get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding into a Vec does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One partition's snapshot-writer metric handles.
#[derive(Clone)]
pub struct SnapshotMetrics {
    pub records: IntCounter,
    pub complete: IntCounter,
    pub failed: IntCounter,
    pub abandoned: IntCounter,
    pub age: prometheus::Gauge,
    pub offset: IntGauge,
    pub truncated: IntCounter,
}

/// One partition's restore metric handles.
#[derive(Clone)]
pub struct RestoreMetrics {
    pub records: IntCounter,
    pub duration: prometheus::Gauge,
    pub remaining: IntGauge,
}

/// One partition's metric handles.
#[derive(Clone)]
pub struct PartitionMetrics {
    pub applied: IntCounter,
    pub in_snapshot: IntCounter,
    pub duplicate: IntCounter,
    dead_lettered_total: IntCounter,
    dead_lettered: IntCounterVec,
    partition_label: String,
    pub checkpointed_offset: IntGauge,
    pub checkpoint_duration: Histogram,
    pub checkpoint_records: Histogram,
}

impl PartitionMetrics {
    pub fn dead_lettered(&self, reason: RejectReason) {
        self.dead_lettered_total.inc();
        self.dead_lettered.with_label_values(&[&self.partition_label, reason.code()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_by_partition_and_outcome() {
        let metrics = Metrics::new();
        let p3 = metrics.for_partition(3);
        p3.applied.inc_by(2);
        p3.dead_lettered(RejectReason::ConflictingDuplicate);
        metrics.handled_error(ErrorKind::DlqDelivery, &"broker gone");
        let text = metrics.render();
        assert!(text.contains(r#"ledgerd_events_total{outcome="applied",partition="3"} 2"#), "{text}");
        assert!(
            text.contains(r#"ledgerd_dead_lettered_total{partition="3",reason="conflicting_duplicate"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"ledgerd_errors_total{kind="dlq_delivery"} 1"#), "{text}");
        assert!(text.contains("ledgerd_build_info"), "{text}");
    }
}
