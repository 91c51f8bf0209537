//! Everything that talks to Kafka for the input: client settings, topic setup, the dead-letter
//! producer, and the consumer-group thread that owns partitions and drives them (`group` bridges
//! rebalances, `prepare` readies an assigned partition's state, `early` opens local states while
//! the group join is in flight, `committed` reads the group's offsets for it). Snapshot I/O lives
//! in `snapshot`. `producer` is the producer type of every producer in ledgerd (dead letters,
//! snapshots, routing announcements).

mod committed;
pub mod consumer;
pub mod dead_letter;
mod early;
mod group;
mod prepare;
pub mod producer;
pub mod topics;

use crate::config::KafkaConfig;
use crate::metrics::{ErrorKind, Metrics};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Deserialize;
use std::collections::HashMap;

/// Settings every client shares: the brokers and the user's passthrough properties (TLS, SASL, …).
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap_servers);
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

/// Sets `property` to ledgerd's `value` unless `kafka.properties` sets it: there, the user's wins.
pub fn set_unless_configured(client: &mut ClientConfig, config: &KafkaConfig, property: &str, value: &str) {
    if !config.properties.contains_key(property) {
        client.set(property, value);
    }
}

/// [`client_config`] for every producer of ledgerd (dead letters, snapshots, announcements):
/// `acks=all`, so acknowledged means replicated, and not idempotent. librdkafka 2.12 lets an
/// idempotent producer have 5 *messages* (not requests) in flight per partition, so one batch, and
/// while the next batch is ready its broker thread busy-polls until the response arrives: against
/// a slow broker that burnt a whole core, first in the dead-letter producer, then in the snapshot
/// producer (measured: docs/BENCHMARKS.md). Each producer's user says why duplicates and
/// reordering by retries are harmless to it.
pub fn producer_client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = client_config(config);
    client.set("acks", "all").set("enable.idempotence", "false");
    client
}

/// How long a fetch that finds nothing new may wait at the broker (librdkafka's default: 500 ms).
/// A consumer learns that it read a partition to its end (librdkafka's partition EOF) only from
/// such a fetch, so the end of a catch-up (its last checkpoint) and the end of a snapshot restore
/// each waited for one: about 0.4 s on tansu (docs/BENCHMARKS.md). An idle consumer now sends up
/// to ten fetches a second per broker instead of two. A `fetch.wait.max.ms` in
/// `kafka.properties` wins.
const FETCH_WAIT_MAX_MS: &str = "100";

/// How long librdkafka postpones a partition's next fetch once its queue of fetched records is
/// over `queued.min.messages` or `queued.max.messages.kbytes` (librdkafka's default: 1000 ms).
/// A catch-up from a broker that answers faster than ledgerd applies fills those queues, and with
/// the default the fetcher then slept a whole second while ledgerd emptied them in less and
/// waited: against a broker serving 1.2M–1.3M records/s, ledgerd caught up at 134k–153k
/// records/s with the machine mostly idle, and at 398k–468k with 100 ms (docs/BENCHMARKS.md,
/// forty-third session). The queues' bounds stay as they are; a postponed fetch costs only the
/// check. A `fetch.queue.backoff.ms` in `kafka.properties` wins.
const FETCH_QUEUE_BACKOFF_MS: &str = "100";

/// [`client_config`] for a consumer that reads partitions to their end.
fn end_reading_client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = client_config(config);
    set_unless_configured(&mut client, config, "fetch.wait.max.ms", FETCH_WAIT_MAX_MS);
    set_unless_configured(&mut client, config, "fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    client
}

/// [`client_config`] for a consumer that reads without being a group member: it carries the
/// group's id (librdkafka needs one for `assign()` and to look up the group's committed offsets)
/// but never subscribes, so it never joins the group, and it never commits or stores offsets.
pub fn non_member_client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = end_reading_client_config(config);
    client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    client
}

/// How often librdkafka reports the group consumer's statistics, whose per-partition high
/// watermarks feed `ledgerd_consumer_lag_records`. A `statistics.interval.ms` in `kafka.properties`
/// wins ("0" turns the lag metrics off).
const STATISTICS_INTERVAL_MS: &str = "5000";

/// [`client_config`] for the group consumer: with statistics, for the consumer lag. Other clients
/// go without: their statistics would queue up unread on clients that never poll for them.
pub fn group_client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = end_reading_client_config(config);
    set_unless_configured(&mut client, config, "statistics.interval.ms", STATISTICS_INTERVAL_MS);
    client
}

/// Routes librdkafka's logs to `tracing` and counts its errors.
#[derive(Clone)]
pub struct KafkaContext {
    pub metrics: Metrics,
}

impl KafkaContext {
    /// Takes the input partitions' high watermarks from the group consumer's statistics (JSON,
    /// every `statistics.interval.ms`, delivered by `poll` on the consumer thread).
    pub fn consumer_statistics(&self, input_topic: &str, json: &[u8]) {
        match high_watermarks(input_topic, json) {
            Ok(marks) => self.metrics.record_high_watermarks(marks),
            Err(e) => self
                .metrics
                .handled_error(ErrorKind::KafkaClient, &format_args!("unreadable librdkafka statistics: {e}")),
        }
    }
}

/// The part of librdkafka's statistics JSON (see its STATISTICS.md) the lag needs.
#[derive(Deserialize)]
struct Statistics {
    #[serde(default)]
    topics: HashMap<String, TopicStatistics>,
}

#[derive(Deserialize)]
struct TopicStatistics {
    #[serde(default)]
    partitions: HashMap<String, PartitionStatistics>,
}

#[derive(Deserialize)]
struct PartitionStatistics {
    partition: i32,
    /// -1 until the partition was fetched.
    hi_offset: i64,
}

/// `(partition, high watermark)` of every fetched partition of `topic`. librdkafka lists an internal
/// partition -1 (unassigned messages), skipped.
fn high_watermarks(topic: &str, json: &[u8]) -> Result<Vec<(i32, i64)>, serde_json::Error> {
    let statistics: Statistics = serde_json::from_slice(json)?;
    let Some(topic) = statistics.topics.get(topic) else { return Ok(Vec::new()) };
    Ok(topic
        .partitions
        .values()
        .filter(|p| p.partition >= 0 && p.hi_offset >= 0)
        .map(|p| (p.partition, p.hi_offset))
        .collect())
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    /// Client-level errors (brokers down, authentication failures). librdkafka keeps retrying.
    fn error(&self, error: KafkaError, reason: &str) {
        // Reaching the end of a partition is how the snapshot reader knows it is done, not an error.
        if matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            return;
        }
        self.metrics.handled_error(ErrorKind::KafkaClient, &format_args!("{error}: {reason}"));
    }

    /// Only the group consumer asks for statistics ([`group_client_config`]); its context reads
    /// them with [`KafkaContext::consumer_statistics`]. Anything else is dropped unparsed.
    fn stats_raw(&self, _statistics: &[u8]) {}
}

/// For consumers that never join a group (the snapshot reader): default rebalance handling.
impl ConsumerContext for KafkaContext {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A consumer report in the shape librdkafka's STATISTICS.md documents, trimmed: the input topic
    /// with two fetched partitions, one not fetched yet and the internal partition -1, and a
    /// topic that is not the input.
    const STATISTICS: &str = r#"{
        "name": "rdkafka#consumer-1", "type": "consumer", "ts": 5123456789, "time": 1718000000,
        "brokers": {"127.0.0.1:9092/1": {"name": "127.0.0.1:9092/1", "nodeid": 1, "state": "UP"}},
        "topics": {
            "transactions": {"topic": "transactions", "age": 5002, "metadata_age": 4000, "partitions": {
                "0": {"partition": 0, "fetch_state": "active", "hi_offset": 1200, "ls_offset": 1200,
                      "app_offset": 1100, "committed_offset": 1000, "consumer_lag": 200},
                "1": {"partition": 1, "fetch_state": "active", "hi_offset": 0, "consumer_lag": -1},
                "2": {"partition": 2, "fetch_state": "none", "hi_offset": -1, "consumer_lag": -1},
                "-1": {"partition": -1, "fetch_state": "none", "hi_offset": -1}
            }},
            "balance-snapshots": {"topic": "balance-snapshots", "partitions": {
                "0": {"partition": 0, "hi_offset": 77}
            }}
        },
        "cgrp": {"state": "up", "join_state": "steady", "assignment_size": 3}
    }"#;

    #[test]
    fn producers_are_replicated_and_never_idempotent_whatever_the_properties_say() {
        let mut config = KafkaConfig::default();
        config.properties.insert("enable.idempotence".into(), "true".into());
        config.properties.insert("acks".into(), "1".into());
        config.properties.insert("client.id".into(), "kept".into());
        let client = producer_client_config(&config);
        assert_eq!(client.get("enable.idempotence"), Some("false"));
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("client.id"), Some("kept"));
    }

    #[test]
    fn consumers_reading_to_the_end_fetch_again_soon_unless_the_properties_say_otherwise() {
        let mut config = KafkaConfig::default();
        for client in [group_client_config(&config), non_member_client_config(&config)] {
            assert_eq!(client.get("fetch.wait.max.ms"), Some(FETCH_WAIT_MAX_MS));
            assert_eq!(client.get("fetch.queue.backoff.ms"), Some(FETCH_QUEUE_BACKOFF_MS));
        }
        config.properties.insert("fetch.queue.backoff.ms".into(), "1000".into());
        config.properties.insert("fetch.wait.max.ms".into(), "500".into());
        for client in [group_client_config(&config), non_member_client_config(&config)] {
            assert_eq!(client.get("fetch.wait.max.ms"), Some("500"));
            assert_eq!(client.get("fetch.queue.backoff.ms"), Some("1000"));
        }
    }

    #[test]
    fn high_watermarks_come_from_the_input_topics_fetched_partitions() {
        let mut marks = high_watermarks("transactions", STATISTICS.as_bytes()).unwrap();
        marks.sort_unstable();
        assert_eq!(marks, vec![(0, 1200), (1, 0)]);
        assert_eq!(high_watermarks("elsewhere", STATISTICS.as_bytes()).unwrap(), vec![]);
        assert!(high_watermarks("transactions", b"{not json").is_err());
    }

    #[test]
    fn statistics_set_the_lag_of_owned_partitions_only() {
        let metrics = Metrics::new();
        metrics.for_partition(0).checkpointed_offset.set(1150);
        let context = KafkaContext { metrics: metrics.clone() };
        context.consumer_statistics("transactions", STATISTICS.as_bytes());
        let text = metrics.render();
        assert!(text.contains(r#"ledgerd_high_watermark_offset{partition="0"} 1200"#), "{text}");
        assert!(text.contains(r#"ledgerd_consumer_lag_records{partition="0"} 50"#), "{text}");
        assert!(!text.contains(r#"partition="1""#), "partition 1 is not owned here:\n{text}");

        context.consumer_statistics("transactions", br#"{"topics": {"transactions": {"partitions": [1]}}}"#);
        assert_eq!(metrics.error_count(ErrorKind::KafkaClient), 1);
    }
}
