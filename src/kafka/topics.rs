//! Topic setup at start-up: the input must exist (ledgerd never creates its source); the dead-letter
//! topic is created when missing, with the input's partition count so record p's copy lands in p;
//! the snapshot topic is created log-compacted with the input's partition count, and an existing
//! one with another partition count or cleanup policy stops start-up (snapshots would be lost to
//! retention, or written to partitions restores never read).

use super::{client_config, KafkaContext};
use crate::config::{Config, KafkaConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::Duration;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Kafka answers DescribeConfigs in milliseconds; a broker that cannot is not waited on for long.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Partition counts found or created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    pub input_partitions: i32,
    pub dlq_partitions: i32,
    /// Why the snapshot topic's cleanup policy could not be checked, if it could not.
    pub unverified: Option<String>,
}

/// Settings of the snapshot topic ledgerd creates.
const SNAPSHOT_TOPIC_SETTINGS: &[(&str, &str)] = &[("cleanup.policy", "compact")];
/// Settings of the routing topic: compacted, one record per instance survives.
const ROUTING_TOPIC_SETTINGS: &[(&str, &str)] = &[("cleanup.policy", "compact")];

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("input topic {0:?} does not exist (create it; ledgerd never creates its input)")]
    InputMissing(String),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("metadata lookup failed: {0}")]
    MetadataTask(String),
    #[error("creating topic {topic:?}: {code}")]
    Create { topic: String, code: RDKafkaErrorCode },
    /// Not retried: an operator must fix the topic or the configuration.
    #[error("{0}")]
    Misconfigured(String),
}

impl TopicError {
    /// Whether retrying can help (a misconfigured topic stays misconfigured).
    pub fn is_fatal(&self) -> bool {
        matches!(self, TopicError::Misconfigured(_))
    }
}

pub struct TopicAdmin {
    admin: AdminClient<KafkaContext>,
    config: KafkaConfig,
    snapshot_topic: String,
    routing_topic: String,
}

impl TopicAdmin {
    pub fn new(config: &Config, context: KafkaContext) -> Result<TopicAdmin, KafkaError> {
        let admin = client_config(&config.kafka)
            // Looking up a missing topic must not create it with the broker's defaults (a snapshot
            // topic must be compacted, with the input's partition count).
            .set("allow.auto.create.topics", "false")
            .create_with_context(context)?;
        Ok(TopicAdmin {
            admin,
            config: config.kafka.clone(),
            snapshot_topic: config.snapshot.topic.clone(),
            routing_topic: config.routing.topic.clone(),
        })
    }

    /// The topic's `cleanup.policy`; brokers that list only explicitly set configs mean the default,
    /// `delete`, when it is absent.
    async fn cleanup_policy(&self, topic: &str) -> Result<String, TopicError> {
        let options = AdminOptions::new().request_timeout(Some(DESCRIBE_TIMEOUT));
        let results = self.admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options).await?;
        let mut policy = None;
        for result in results {
            let resource = result.map_err(|code| TopicError::Kafka(KafkaError::AdminOp(code)))?;
            if let Some(entry) = resource.get("cleanup.policy") {
                policy = entry.value.clone();
            }
        }
        Ok(policy.unwrap_or_else(|| "delete".into()))
    }

    /// Partition count of `topic`, or `None` when the broker does not know it. Blocking.
    pub fn partition_count(&self, topic: &str) -> Result<Option<i32>, KafkaError> {
        let metadata = self.admin.inner().fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else { return Ok(None) };
        match found.error() {
            None if !found.partitions().is_empty() => Ok(Some(found.partitions().len() as i32)),
            None => Ok(None),
            Some(code) if RDKafkaErrorCode::from(code) == RDKafkaErrorCode::UnknownTopicOrPartition => Ok(None),
            Some(code) => Err(KafkaError::MetadataFetch(code.into())),
        }
    }

    /// Creates `topic` with `partitions` unless it exists; a concurrent creation by another
    /// instance counts as success.
    pub async fn create(&self, topic: &str, partitions: i32, settings: &[(&str, &str)]) -> Result<(), TopicError> {
        let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(self.config.replication_factor));
        for (key, value) in settings {
            new_topic = new_topic.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
        for result in self.admin.create_topics([&new_topic], &options).await? {
            match result {
                Ok(_) => tracing::info!(topic, partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(TopicError::Create { topic, code }),
            }
        }
        Ok(())
    }

    /// Checks the input, makes sure the dead-letter topic exists, and makes sure the snapshot topic
    /// exists with the right layout.
    pub async fn ensure(self: &Arc<Self>) -> Result<TopicLayout, TopicError> {
        let input = self.config.input_topic.clone();
        let dlq = self.config.dlq_topic.clone();
        let routing = self.routing_topic.clone();
        let snapshot = self.snapshot_topic.clone();
        // The four lookups at once, not one after another: one after another they were most of a
        // restarted instance's time before it joined the group (docs/BENCHMARKS.md, recovery).
        let (input_count, dlq_count, routing_count, snapshot_count) = tokio::join!(
            self.blocking_count(&input),
            self.blocking_count(&dlq),
            self.blocking_count(&routing),
            self.blocking_count(&snapshot)
        );
        let input_partitions = input_count?.ok_or(TopicError::InputMissing(input))?;
        let dlq_partitions = match dlq_count? {
            Some(n) => n,
            None => {
                self.create(&dlq, input_partitions, &[]).await?;
                input_partitions
            }
        };
        if dlq_partitions != input_partitions {
            tracing::warn!(
                dlq_topic = %dlq, dlq_partitions, input_partitions,
                "dead-letter topic has a different partition count; copies are spread by key instead of by source partition"
            );
        }
        if routing_count?.is_none() {
            // One partition: every instance reads all announcements.
            self.create(&routing, 1, ROUTING_TOPIC_SETTINGS).await?;
        }
        match snapshot_count? {
            None => self.create(&snapshot, input_partitions, SNAPSHOT_TOPIC_SETTINGS).await?,
            Some(n) if n != input_partitions => {
                return Err(TopicError::Misconfigured(format!(
                    "snapshot topic {snapshot:?} has {n} partitions but input topic {:?} has {input_partitions}: \
                     snapshot partition p must hold input partition p. Recreate it with {input_partitions} \
                     partitions (or delete it and let ledgerd create it), or set snapshot.topic to another name",
                    self.config.input_topic
                )))
            }
            Some(_) => match self.cleanup_policy(&snapshot).await {
                Ok(policy) if policy.split(',').map(str::trim).eq(["compact"]) => {}
                Ok(policy) => {
                    return Err(TopicError::Misconfigured(format!(
                        "snapshot topic {snapshot:?} has cleanup.policy={policy:?}; it must be \"compact\" or \
                         snapshots are deleted by retention. Alter the topic (cleanup.policy=compact) or set \
                         snapshot.topic to another name"
                    )))
                }
                // A broker that cannot describe configs (e.g. librdkafka's mock cluster) must not
                // keep ledgerd down; the caller logs and counts it.
                Err(e) => return Ok(TopicLayout { input_partitions, dlq_partitions, unverified: Some(e.to_string()) }),
            },
        }
        Ok(TopicLayout { input_partitions, dlq_partitions, unverified: None })
    }

    async fn blocking_count(self: &Arc<Self>, topic: &str) -> Result<Option<i32>, TopicError> {
        // fetch_metadata blocks for up to METADATA_TIMEOUT: run it off the async workers, so the
        // caller can abandon it (e.g. on shutdown) without waiting.
        let (admin, topic) = (Arc::clone(self), topic.to_owned());
        match tokio::task::spawn_blocking(move || admin.partition_count(&topic)).await {
            Ok(count) => Ok(count?),
            Err(e) => Err(TopicError::MetadataTask(e.to_string())),
        }
    }
}
