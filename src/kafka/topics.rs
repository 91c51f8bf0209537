//! Topic setup at start-up: the input must exist (ledgerd never creates its source); the dead-letter
//! topic is created when missing, with the input's partition count so record p's copy lands in p.

use super::{client_config, KafkaContext};
use crate::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::Duration;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Partition counts found or created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLayout {
    pub input_partitions: i32,
    pub dlq_partitions: i32,
}

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
}

pub struct TopicAdmin {
    admin: AdminClient<KafkaContext>,
    config: KafkaConfig,
}

impl TopicAdmin {
    pub fn new(config: &KafkaConfig, context: KafkaContext) -> Result<TopicAdmin, KafkaError> {
        let admin = client_config(config).create_with_context(context)?;
        Ok(TopicAdmin { admin, config: config.clone() })
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

    /// Checks the input and makes sure the dead-letter topic exists.
    pub async fn ensure(self: &Arc<Self>) -> Result<TopicLayout, TopicError> {
        let input = self.config.input_topic.clone();
        let input_partitions = self.blocking_count(&input).await?.ok_or(TopicError::InputMissing(input))?;
        let dlq = self.config.dlq_topic.clone();
        let dlq_partitions = match self.blocking_count(&dlq).await? {
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
        Ok(TopicLayout { input_partitions, dlq_partitions })
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
