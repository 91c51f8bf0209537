//! Reading a snapshot partition to its end for a restore.
//!
//! The end is found from the fetch response (partition EOF), not only from ListOffsets: some brokers
//! report a high watermark that is not the end of the partition, and EOF is right on all of them.

use super::codec;
use super::round::{ForeignSnapshot, RestoreCollector, RestorePlan};
use crate::config::{Config, KafkaConfig};
use crate::kafka::{non_member_client_config, set_unless_configured, KafkaContext};
use crate::metrics::{ErrorKind, RestoreMetrics};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const POLL_WAIT: Duration = Duration::from_millis(100);
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("snapshot partition {partition} offset {offset}: {source}")]
    Record { partition: i32, offset: i64, source: codec::SnapshotCodecError },
    #[error(transparent)]
    Foreign(#[from] ForeignSnapshot),
    #[error("cancelled")]
    Cancelled,
}

impl RestoreError {
    /// Errors of the snapshot's content: retrying reads the same records again.
    pub fn is_permanent(&self) -> bool {
        matches!(self, RestoreError::Record { .. } | RestoreError::Foreign(_))
    }
}

/// Reads snapshot partitions. It never joins the group and never commits.
pub struct SnapshotReader {
    consumer: BaseConsumer<KafkaContext>,
    snapshot_topic: String,
    input_topic: String,
}

/// What reading a snapshot partition found.
pub struct ReadOutcome {
    pub plan: Option<RestorePlan>,
    pub records: u64,
    pub elapsed: Duration,
}

/// The snapshot reader's client. A restore reads a whole snapshot partition at once, so it asks
/// for more per fetch than librdkafka's defaults; sizes set in `kafka.properties` win.
fn reader_client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = non_member_client_config(config);
    client.set("enable.partition.eof", "true").set("auto.offset.reset", "earliest");
    set_unless_configured(&mut client, config, "fetch.max.bytes", "52428800");
    set_unless_configured(&mut client, config, "max.partition.fetch.bytes", "10485760");
    client
}

impl SnapshotReader {
    pub fn new(config: &Config, context: KafkaContext) -> Result<SnapshotReader, KafkaError> {
        let consumer = reader_client_config(&config.kafka).create_with_context(context)?;
        Ok(SnapshotReader {
            consumer,
            snapshot_topic: config.snapshot.topic.clone(),
            input_topic: config.kafka.input_topic.clone(),
        })
    }

    /// Reads snapshot partition `partition` from its beginning to its end.
    pub fn read(
        &self,
        partition: i32,
        metrics: &RestoreMetrics,
        cancel: &CancellationToken,
    ) -> Result<ReadOutcome, RestoreError> {
        let started = Instant::now();
        let (_, high) = self.consumer.fetch_watermarks(&self.snapshot_topic, partition, WATERMARK_TIMEOUT)?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.snapshot_topic, partition, Offset::Beginning)?;
        self.consumer.assign(&list)?;
        let result = self.read_assigned(partition, high, metrics, cancel);
        if let Err(e) = self.consumer.unassign() {
            // Harmless for the result (the next assign replaces the assignment), but visible.
            self.consumer.context().metrics.handled_error(ErrorKind::Restore, &format_args!("unassign: {e}"));
        }
        metrics.remaining.set(0);
        let (collector, records) = result?;
        Ok(ReadOutcome { plan: collector.finish(), records, elapsed: started.elapsed() })
    }

    fn read_assigned(
        &self,
        partition: i32,
        high: i64,
        metrics: &RestoreMetrics,
        cancel: &CancellationToken,
    ) -> Result<(RestoreCollector, u64), RestoreError> {
        let mut collector = RestoreCollector::new(&self.input_topic, partition);
        let mut records = 0u64;
        let mut last_log = Instant::now();
        loop {
            if cancel.is_cancelled() {
                return Err(RestoreError::Cancelled);
            }
            match self.consumer.poll(POLL_WAIT) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(p))) if p == partition => return Ok((collector, records)),
                Some(Err(KafkaError::PartitionEOF(_))) => continue,
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(message)) => {
                    let offset = message.offset();
                    let entry = codec::decode(message.key().unwrap_or_default(), message.payload())
                        .map_err(|source| RestoreError::Record { partition, offset, source })?;
                    if let Some(entry) = entry {
                        collector.add(entry)?;
                    }
                    records += 1;
                    metrics.records.inc();
                    metrics.remaining.set((high - offset - 1).max(0));
                    if last_log.elapsed() >= Duration::from_secs(5) {
                        tracing::info!(partition, records, remaining = (high - offset - 1).max(0), "restoring");
                        last_log = Instant::now();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readers_fetch_sizes_give_way_to_kafka_properties() {
        let mut config = KafkaConfig::default();
        let client = reader_client_config(&config);
        assert_eq!(client.get("fetch.max.bytes"), Some("52428800"));
        assert_eq!(client.get("max.partition.fetch.bytes"), Some("10485760"));

        config.properties.insert("fetch.max.bytes".into(), "2097152".into());
        let client = reader_client_config(&config);
        assert_eq!(client.get("fetch.max.bytes"), Some("2097152"));
        assert_eq!(client.get("max.partition.fetch.bytes"), Some("10485760"));
    }
}
