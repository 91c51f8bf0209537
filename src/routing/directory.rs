//! Which instance serves which partition, learned from the routing topic.

use super::{now_ms, Announcement};
use crate::config::Config;
use crate::kafka::{client_config, KafkaContext};
use crate::metrics::{ErrorKind, Metrics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Announcements expire after this many announce intervals without a newer one.
const EXPIRY_INTERVALS: i64 = 3;

/// The newest announcement of every instance.
#[derive(Default)]
pub struct Directory {
    instances: RwLock<HashMap<String, Announcement>>,
}

/// Who serves a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub instance_id: String,
    pub url: String,
}

impl Directory {
    /// Records `announcement` unless an equally new or newer one of that instance is known.
    pub fn learn(&self, announcement: Announcement) {
        let mut instances = self.instances.write().unwrap_or_else(|e| e.into_inner());
        match instances.get(&announcement.instance_id) {
            Some(known) if known.sent_at_ms > announcement.sent_at_ms => {}
            _ => {
                instances.insert(announcement.instance_id.clone(), announcement);
            }
        }
    }

    /// The instance serving `partition` at wall-clock time `now_ms`: among unexpired
    /// announcements that claim it, the newest (the previous owner's claim is older, and expires).
    pub fn owner_at(&self, partition: i32, now_ms: i64) -> Option<Owner> {
        let instances = self.instances.read().unwrap_or_else(|e| e.into_inner());
        instances
            .values()
            .filter(|a| !a.leaving && a.partitions.contains(&partition))
            .filter(|a| now_ms - a.sent_at_ms <= EXPIRY_INTERVALS * i64::try_from(a.interval_ms).unwrap_or(i64::MAX))
            .max_by_key(|a| a.sent_at_ms)
            .map(|a| Owner { instance_id: a.instance_id.clone(), url: a.url.clone() })
    }

    pub fn owner(&self, partition: i32) -> Option<Owner> {
        self.owner_at(partition, now_ms())
    }
}

/// Reads the routing topic from its beginning into `directory` until `shutdown`. Blocking: run
/// it on its own thread. Errors are logged, counted and retried by librdkafka.
pub fn run(config: &Config, directory: &Directory, metrics: &Metrics, shutdown: &CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    let consumer = loop {
        match reader(config, metrics) {
            Ok(consumer) => break consumer,
            Err(e) => {
                metrics.handled_error(
                    ErrorKind::Routing,
                    &format_args!("cannot read {}: {e}; retrying in {backoff:?}", config.routing.topic),
                );
                if shutdown.is_cancelled() {
                    return;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    while !shutdown.is_cancelled() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => match message.payload().map(serde_json::from_slice::<Announcement>) {
                Some(Ok(announcement)) if announcement.input_topic == config.kafka.input_topic => {
                    directory.learn(announcement)
                }
                // Another deployment sharing the topic.
                Some(Ok(_)) => {}
                // A tombstone: compaction removes the instance's entry; it expired long before.
                None => {}
                Some(Err(e)) => metrics.handled_error(
                    ErrorKind::Routing,
                    &format_args!("undecodable announcement at offset {}: {e}", message.offset()),
                ),
            },
            Some(Err(e)) => {
                metrics.handled_error(ErrorKind::Routing, &format_args!("reading {}: {e}", config.routing.topic));
                std::thread::sleep(Duration::from_millis(500));
            }
            None => {}
        }
    }
}

/// A consumer assigned the routing topic's partition from its beginning.
fn reader(config: &Config, metrics: &Metrics) -> Result<BaseConsumer<KafkaContext>, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer<KafkaContext> = client_config(&config.kafka)
        // librdkafka needs a group id even for assign(); this one never joins or commits.
        .set("group.id", format!("{}.routing", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(KafkaContext { metrics: metrics.clone() })?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&config.routing.topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    Ok(consumer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement(id: &str, partitions: &[i32], sent_at_ms: i64) -> Announcement {
        Announcement {
            instance_id: id.into(),
            input_topic: "transactions".into(),
            url: format!("http://{id}"),
            partitions: partitions.to_vec(),
            sent_at_ms,
            interval_ms: 1_000,
            leaving: false,
        }
    }

    #[test]
    fn the_newest_unexpired_claim_wins_and_leaving_or_silent_instances_serve_nothing() {
        let directory = Directory::default();
        directory.learn(announcement("a", &[0, 1], 10_000));
        directory.learn(announcement("b", &[2], 10_500));
        assert_eq!(directory.owner_at(1, 11_000).unwrap().instance_id, "a");
        assert_eq!(directory.owner_at(5, 11_000), None);
        // Partition 1 moves to b: b's newer claim wins while a's is still unexpired.
        directory.learn(announcement("b", &[1, 2], 11_000));
        assert_eq!(directory.owner_at(1, 11_100).unwrap().instance_id, "b");
        // An older announcement arriving late changes nothing.
        directory.learn(announcement("b", &[2], 10_900));
        assert_eq!(directory.owner_at(1, 11_100).unwrap().instance_id, "b");
        // a expires three intervals after its last announcement.
        assert_eq!(directory.owner_at(0, 13_000).unwrap().instance_id, "a");
        assert_eq!(directory.owner_at(0, 13_001), None);
        let mut leaving = announcement("b", &[1, 2], 12_000);
        leaving.leaving = true;
        directory.learn(leaving);
        assert_eq!(directory.owner_at(2, 12_001), None);
    }
}
