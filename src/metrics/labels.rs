//! The fixed label values: error kinds (`ledgerd_errors_total{kind}`) and event outcomes
//! (`ledgerd_events_total{outcome}`). `docs/metrics.md` names each one; a test checks it does.

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
    /// Asking RocksDB to flush a memtable over the shared memtable budget failed (the checkpoint
    /// itself was written); asked again at the partition's next checkpoint.
    MemtableFlush,
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
    /// Announcing this instance's partitions, or reading the others' announcements, failed;
    /// retried at the next announce interval.
    Routing,
    /// Forwarding an API request to the instance that owns the account failed (answered 503).
    Forward,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::KafkaClient,
        ErrorKind::ConsumerPoll,
        ErrorKind::TopicSetup,
        ErrorKind::DlqDelivery,
        ErrorKind::CheckpointWrite,
        ErrorKind::MemtableFlush,
        ErrorKind::StateRead,
        ErrorKind::StateOpen,
        ErrorKind::StateSetAside,
        ErrorKind::GroupCommit,
        ErrorKind::Rebalance,
        ErrorKind::SnapshotWrite,
        ErrorKind::Restore,
        ErrorKind::StateCleanup,
        ErrorKind::Routing,
        ErrorKind::Forward,
    ];

    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::KafkaClient => "kafka_client",
            ErrorKind::ConsumerPoll => "consumer_poll",
            ErrorKind::TopicSetup => "topic_setup",
            ErrorKind::DlqDelivery => "dlq_delivery",
            ErrorKind::CheckpointWrite => "checkpoint_write",
            ErrorKind::MemtableFlush => "memtable_flush",
            ErrorKind::StateRead => "state_read",
            ErrorKind::StateOpen => "state_open",
            ErrorKind::StateSetAside => "state_set_aside",
            ErrorKind::GroupCommit => "group_commit",
            ErrorKind::Rebalance => "rebalance",
            ErrorKind::SnapshotWrite => "snapshot_write",
            ErrorKind::Restore => "restore",
            ErrorKind::StateCleanup => "state_cleanup",
            ErrorKind::Routing => "routing",
            ErrorKind::Forward => "forward",
        }
    }

    /// Whether an operator must act or data is at risk (logged at ERROR rather than WARN).
    pub(super) fn is_severe(self) -> bool {
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
