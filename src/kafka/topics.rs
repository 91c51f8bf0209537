//! Topic setup at start-up: the input must exist (ledgerd never creates its source); the dead-letter
//! topic is created when missing, with the input's partition count so record p's copy lands in p;
//! the snapshot topic is created log-compacted with the input's partition count, and an existing
//! one with another partition count or cleanup policy stops start-up (snapshots would be lost to
//! retention, or written to partitions restores never read).

use super::{client_config, KafkaContext};
use crate::config::{Config, KafkaConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

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

/// Start-up's topic setup as the rest of the pipeline sees it. The consumer joins the group while
/// the topics are checked: one after the other, the two were most of a restarted instance's time
/// before it processed again (docs/BENCHMARKS.md, crash recovery). What needs the checked topics
/// waits here: restoring from the snapshot topic, and placing a dead letter.
#[derive(Default)]
pub struct TopicGate {
    layout: OnceLock<TopicLayout>,
    lock: Mutex<()>,
    opened: Condvar,
}

impl TopicGate {
    /// Records the checked layout and wakes everything waiting for it.
    pub fn open(&self, layout: TopicLayout) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.layout.set(layout);
        self.opened.notify_all();
    }

    /// The checked layout, once the topics are checked.
    pub fn layout(&self) -> Option<&TopicLayout> {
        self.layout.get()
    }

    /// Waits until the topics are checked; `None` when `stop` fires first.
    pub fn wait(&self, stop: &CancellationToken) -> Option<&TopicLayout> {
        self.wait_until(None, stop)
    }

    /// Like [`TopicGate::wait`], for at most `max`.
    pub fn wait_for(&self, max: Duration, stop: &CancellationToken) -> Option<&TopicLayout> {
        self.wait_until(Instant::now().checked_add(max), stop)
    }

    fn wait_until(&self, deadline: Option<Instant>, stop: &CancellationToken) -> Option<&TopicLayout> {
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(layout) = self.layout.get() {
                return Some(layout);
            }
            let left = deadline.map_or(STOP_CHECK_EVERY, |d| d.saturating_duration_since(Instant::now()));
            if stop.is_cancelled() || left.is_zero() {
                return None;
            }
            // A cancellation token cannot wake a condition variable: look at it now and then.
            let wait = left.min(STOP_CHECK_EVERY);
            guard = self.opened.wait_timeout(guard, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// How often a wait for the topics looks at its stop token.
const STOP_CHECK_EVERY: Duration = Duration::from_millis(100);

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
        partition_count(self.admin.inner(), topic, METADATA_TIMEOUT)
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

/// Partition count of `topic` as `client` sees it, or `None` when the broker does not know it.
/// Blocks for up to `timeout`.
pub fn partition_count<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<i32>, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else { return Ok(None) };
    match found.error() {
        None if !found.partitions().is_empty() => Ok(Some(found.partitions().len() as i32)),
        None => Ok(None),
        Some(code) if RDKafkaErrorCode::from(code) == RDKafkaErrorCode::UnknownTopicOrPartition => Ok(None),
        Some(code) => Err(KafkaError::MetadataFetch(code.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> TopicLayout {
        TopicLayout { input_partitions: 3, dlq_partitions: 3, unverified: None }
    }

    #[test]
    fn a_waiter_wakes_when_the_topics_are_checked() {
        let gate = Arc::new(TopicGate::default());
        let stop = CancellationToken::new();
        assert!(gate.layout().is_none());
        assert!(gate.wait_for(Duration::from_millis(20), &stop).is_none(), "nothing checked yet");
        let opener = Arc::clone(&gate);
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            opener.open(layout());
        });
        assert_eq!(gate.wait(&stop), Some(&layout()));
        // Woken by the opening, not by the next look at the stop token only.
        assert!(started.elapsed() < Duration::from_secs(5));
        thread.join().unwrap();
        assert_eq!(gate.wait_for(Duration::ZERO, &stop), Some(&layout()));
    }

    #[test]
    fn a_stop_ends_the_wait() {
        let gate = TopicGate::default();
        let stop = CancellationToken::new();
        let canceller = stop.clone();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            canceller.cancel();
        });
        assert!(gate.wait(&stop).is_none());
        thread.join().unwrap();
    }
}
