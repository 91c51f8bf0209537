//! The bridge between librdkafka's rebalance callbacks and ledgerd's partition states.
//!
//! librdkafka runs rebalance callbacks inside `poll()`, on the dedicated consumer thread (never a
//! tokio worker), so they may block: an assigned partition's state is opened and its start offset
//! is taken from the store before `incremental_assign`; a revoked partition confirms its dead
//! letters and checkpoints before `incremental_unassign` releases it.

use super::dead_letter::{DeadLetterProducer, InFlight};
use super::KafkaContext;
use crate::config::Config;
use crate::metrics::{ErrorKind, Metrics};
use crate::partition::PartitionState;
use crate::registry::PartitionRegistry;
use crate::store::StoreEnv;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a failing state open is retried before the instance gives up (and exits non-zero).
const OPEN_ATTEMPTS: u32 = 5;

/// A partition this instance owns.
pub(super) struct Owned {
    pub state: PartitionState,
    /// Dead letters sent for records below `state.next_offset()`, not yet confirmed.
    pub in_flight: Vec<InFlight>,
}

/// Everything the consumer thread and its rebalance callbacks share.
pub(super) struct Shared {
    pub config: Arc<Config>,
    pub env: Arc<StoreEnv>,
    pub metrics: Metrics,
    pub dead_letters: DeadLetterProducer,
    pub registry: Arc<PartitionRegistry>,
    pub shutdown: CancellationToken,
    /// Locked by the poll loop per record and by callbacks inside `poll()`; both on the same
    /// thread, never across a `poll()`, so it is never contended.
    owned: Mutex<BTreeMap<i32, Owned>>,
    /// Set when the instance cannot go on (e.g. state cannot be opened); the thread then stops.
    pub fatal: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(
        config: Arc<Config>,
        env: Arc<StoreEnv>,
        metrics: Metrics,
        dead_letters: DeadLetterProducer,
        registry: Arc<PartitionRegistry>,
        shutdown: CancellationToken,
    ) -> Shared {
        Shared {
            config,
            env,
            metrics,
            dead_letters,
            registry,
            shutdown,
            owned: Mutex::default(),
            fatal: Mutex::default(),
        }
    }

    pub fn owned(&self) -> MutexGuard<'_, BTreeMap<i32, Owned>> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, message: String) {
        tracing::error!(%message, "stopping: cannot continue");
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).replace(message);
        self.shutdown.cancel();
    }

    /// Confirms the partition's dead letters, then writes its checkpoint, retrying a failing write
    /// with backoff. Returns the checkpointed next offset (None: nothing new, or shutting down).
    pub fn checkpoint(&self, owned: &mut Owned) -> Option<i64> {
        if !owned.state.is_dirty() {
            return None;
        }
        let timer = std::time::Instant::now();
        if self.dead_letters.confirm(std::mem::take(&mut owned.in_flight), &self.shutdown).is_err() {
            return None;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match owned.state.checkpoint() {
                Ok(next) => {
                    owned.state.observe_checkpoint_duration(timer.elapsed());
                    return next;
                }
                Err(e) => {
                    self.metrics.handled_error(
                        ErrorKind::CheckpointWrite,
                        &format_args!("partition {}: {e}", owned.state.partition()),
                    );
                    if self.shutdown.is_cancelled() {
                        return None;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Commits checkpointed offsets to the group, for lag tooling only: the stored offset is the truth.
    pub fn commit(&self, consumer: &BaseConsumer<GroupContext>, offsets: &[(i32, i64)], mode: CommitMode) {
        if offsets.is_empty() || consumer.assignment_lost() {
            return;
        }
        let mut list = TopicPartitionList::with_capacity(offsets.len());
        for (partition, next) in offsets {
            if let Err(e) = list.add_partition_offset(&self.config.kafka.input_topic, *partition, Offset::Offset(*next))
            {
                self.metrics.handled_error(ErrorKind::GroupCommit, &e);
                return;
            }
        }
        if let Err(e) = consumer.commit(&list, mode) {
            self.metrics.handled_error(ErrorKind::GroupCommit, &e);
        }
    }

    fn open(&self, partition: i32) -> Option<Owned> {
        let topic = &self.config.kafka.input_topic;
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=OPEN_ATTEMPTS {
            match self.env.open_partition(topic, partition) {
                Ok((store, set_aside)) => {
                    if let Some(aside) = set_aside {
                        self.metrics.handled_error(
                            ErrorKind::StateSetAside,
                            &format_args!(
                                "partition {partition}: state {} ({}); rebuilding from the input",
                                aside.moved_to.display(),
                                aside.reason
                            ),
                        );
                    }
                    let state = PartitionState::new(
                        partition,
                        Arc::new(store),
                        0,
                        self.config.dedupe.window,
                        self.metrics.for_partition(partition),
                    );
                    return Some(Owned { state, in_flight: Vec::new() });
                }
                Err(e) => {
                    self.metrics.handled_error(
                        ErrorKind::StateOpen,
                        &format_args!("partition {partition}, attempt {attempt}/{OPEN_ATTEMPTS}: {e}"),
                    );
                    std::thread::sleep(backoff);
                    backoff *= 2;
                }
            }
        }
        self.fail(format!("cannot open the state of partition {partition}"));
        None
    }

    fn on_assign(&self, consumer: &BaseConsumer<GroupContext>, list: &mut TopicPartitionList) {
        let topic = self.config.kafka.input_topic.clone();
        let mut owned = self.owned();
        let partitions: Vec<i32> = list.elements_for_topic(&topic).iter().map(|e| e.partition()).collect();
        for partition in partitions {
            let Some(entry) = self.open(partition) else { continue };
            // Never resume from the group's committed offset: it may lag the state (the commit
            // follows the checkpoint) or belong to state that no longer exists here.
            let (offset, from) = match entry.state.store().stored_next_offset() {
                Some(next) => (Offset::Offset(next), "state"),
                None => (Offset::Beginning, "beginning"),
            };
            if let Err(e) = list.set_partition_offset(&topic, partition, offset) {
                self.metrics.handled_error(ErrorKind::Rebalance, &e);
            }
            tracing::info!(partition, next_offset = entry.state.next_offset(), from, "partition assigned");
            self.registry.insert(partition, Arc::clone(entry.state.store()));
            owned.insert(partition, entry);
        }
        self.metrics.assigned_partitions.set(owned.len() as i64);
        drop(owned);
        self.metrics.rebalance("assign");
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(list),
            _ => consumer.assign(list),
        };
        if let Err(e) = result {
            self.metrics.handled_error(ErrorKind::Rebalance, &e);
        }
        self.registry.mark_joined();
    }

    /// Checkpoints and releases the partitions in `list` (all owned ones when `list` is `None`).
    pub fn release(&self, consumer: &BaseConsumer<GroupContext>, list: Option<&TopicPartitionList>) {
        let mut owned = self.owned();
        let partitions: Vec<i32> = match list {
            Some(list) => {
                list.elements_for_topic(&self.config.kafka.input_topic).iter().map(|e| e.partition()).collect()
            }
            None => owned.keys().copied().collect(),
        };
        let mut committed = Vec::new();
        for partition in partitions {
            let Some(mut entry) = owned.remove(&partition) else { continue };
            if let Some(next) = self.checkpoint(&mut entry) {
                committed.push((partition, next));
            }
            self.registry.remove(partition);
            self.metrics.remove_partition(partition);
            tracing::info!(partition, next_offset = entry.state.checkpointed_offset(), "partition released");
        }
        self.metrics.assigned_partitions.set(owned.len() as i64);
        drop(owned);
        self.commit(consumer, &committed, CommitMode::Sync);
    }

    fn on_revoke(&self, consumer: &BaseConsumer<GroupContext>, list: &TopicPartitionList) {
        self.metrics.rebalance("revoke");
        self.release(consumer, Some(list));
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(list),
            _ => consumer.unassign(),
        };
        if let Err(e) = result {
            self.metrics.handled_error(ErrorKind::Rebalance, &e);
        }
    }
}

/// The consumer's librdkafka context.
pub(super) struct GroupContext {
    pub client: KafkaContext,
    pub shared: Arc<Shared>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.client.log(level, facility, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client.error(error, reason)
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, list: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.shared.on_assign(consumer, list),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.shared.on_revoke(consumer, list),
            other => {
                self.shared.metrics.rebalance("error");
                self.shared.metrics.handled_error(ErrorKind::Rebalance, &format_args!("rebalance error {other:?}"));
                // As librdkafka requires after a rebalance error: give the partitions back.
                self.shared.on_revoke(consumer, list);
            }
        }
    }
}
