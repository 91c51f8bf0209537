//! Routing: any instance answers for any account.
//!
//! An account lives in the input partition the producers' partitioner picked for its key
//! ([`Partitioner`]). Every instance announces, on a small log-compacted topic
//! (`routing.topic`, one partition, key = instance id), which partitions it serves right now
//! and at which URL ([`announcer`]); every instance reads that topic ([`directory`]) and so knows
//! where to forward a request. Only partitions that are restored, consuming, and checkpointed as far
//! as their previous owner had are announced (see `PartitionHandle::is_serving`), an
//! announcement expires after three announce intervals without a successor, and an instance that
//! leaves announces that first: a partition nobody claims is *moving*, and the API answers 503
//! with `Retry-After` instead of a guess.

pub mod announcer;
pub mod directory;
pub mod partitioner;

pub use directory::Directory;
pub use partitioner::Partitioner;

use serde::{Deserialize, Serialize};

/// What one instance serves, as written to the routing topic (JSON, key = `instance_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub instance_id: String,
    /// The input topic whose partitions are meant; readers ignore other deployments' records.
    pub input_topic: String,
    /// Where its HTTP API is reached by other instances, e.g. `http://ledgerd-0.ledgerd:8080`.
    pub url: String,
    /// Input partitions it serves (restored, consuming, caught up with their previous owner).
    pub partitions: Vec<i32>,
    /// Sender's wall clock, milliseconds since the Unix epoch.
    pub sent_at_ms: i64,
    /// The sender announces at least this often; three missed intervals expire the announcement.
    pub interval_ms: u64,
    /// Sent once when the instance stops: it serves nothing any more.
    #[serde(default)]
    pub leaving: bool,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
