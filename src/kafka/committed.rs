//! The group's committed input offsets, which preparing a partition compares with its local state
//! (see `prepare`). One client serves every partition of the instance and connects to the group
//! coordinator while the group join is still in flight, so an assignment does not wait for a new
//! client's bootstrap, metadata and coordinator lookup (about 0.4 s per partition on tansu).

use super::{non_member_client_config, KafkaContext};
use crate::config::Config;
use crate::metrics::{ErrorKind, Metrics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;

/// How long the start-up lookup that connects the client may take; it only warms the client.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Looks up the group's committed offsets for the input topic. It never joins the group (it never
/// subscribes) and never commits.
pub(super) struct CommittedOffsets {
    consumer: BaseConsumer<KafkaContext>,
    input_topic: String,
}

impl CommittedOffsets {
    pub fn new(config: &Config, context: KafkaContext) -> Result<CommittedOffsets, KafkaError> {
        let consumer = non_member_client_config(&config.kafka).create_with_context(context)?;
        Ok(CommittedOffsets { consumer, input_topic: config.kafka.input_topic.clone() })
    }

    fn metrics(&self) -> &Metrics {
        &self.consumer.context().metrics
    }

    /// The group's committed input offset for `partition` (`None` when there is none).
    pub fn lookup(&self, partition: i32, timeout: Duration) -> Result<Option<i64>, KafkaError> {
        // The client never consumes: take whatever librdkafka queued for it (error events of a
        // broker connection), so nothing piles up over a long run.
        while let Some(event) = self.consumer.poll(Duration::ZERO) {
            if let Err(e) = event {
                self.metrics().handled_error(ErrorKind::KafkaClient, &format_args!("committed-offset client: {e}"));
            }
        }
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.input_topic, partition);
        let committed = self.consumer.committed_offsets(list, timeout)?;
        Ok(committed.find_partition(&self.input_topic, partition).and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }))
    }

    /// Connects the client in the background with one lookup of `partitions` (the ones this
    /// instance has state for), whose answers are dropped: they would be stale by the time the
    /// partitions are assigned, which is when [`CommittedOffsets::lookup`] asks again.
    pub fn warm_up(self: &Arc<Self>, partitions: Vec<i32>) {
        if partitions.is_empty() {
            // No local state: preparing a partition never looks its committed offset up.
            return;
        }
        let client = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("ledgerd-committed".into()).spawn(move || {
            let mut list = TopicPartitionList::new();
            for partition in partitions {
                list.add_partition(&client.input_topic, partition);
            }
            if let Err(e) = client.consumer.committed_offsets(list, WARM_UP_TIMEOUT) {
                // Nothing to retry here: each assigned partition looks its offset up again.
                client.metrics().handled_error(
                    ErrorKind::KafkaClient,
                    &format_args!("warming up the committed-offset client: {e}"),
                );
            }
        });
        if let Err(e) = spawned {
            self.metrics().handled_error(
                ErrorKind::KafkaClient,
                &format_args!("cannot start warming up the committed-offset client: {e}"),
            );
        }
    }
}
