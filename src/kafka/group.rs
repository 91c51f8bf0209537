//! The bridge between librdkafka's rebalance callbacks and ledgerd's partition states.
//!
//! librdkafka runs rebalance callbacks inside `poll()`, on the dedicated consumer thread (never a
//! tokio worker). An assigned partition is first *prepared* on a thread of its own (state opened,
//! checked, restored from the snapshot if needed: see `prepare`), and only then added to the
//! consumer's assignment with the start offset its state dictates, so the partitions that did not
//! move keep processing during a restore. A revoked partition stops its snapshot round, confirms
//! its dead letters and checkpoints before `incremental_unassign` releases it.
//!
//! States of an assigned partition: `Preparing` (in `pending`) → `Consuming` (in `owned`) →
//! released (in `released`, its local state deleted after `state.release_grace` unless it returns).

use super::committed::CommittedOffsets;
use super::consumer::ConsumerParts;
use super::dead_letter::{DeadLetterProducer, PendingLetter};
use super::early::EarlyStates;
use super::prepare::{self, Prepared};
use super::topics::TopicGate;
use super::KafkaContext;
use crate::config::Config;
use crate::metrics::{ErrorKind, Metrics};
use crate::partition::PartitionState;
use crate::registry::{PartitionHandle, PartitionRegistry};
use crate::store::{CheckpointWriter, StoreEnv};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Longest a revoke waits for the partition's snapshot round to stop.
const ROUND_STOP_WAIT: Duration = Duration::from_secs(3);

/// Longest a checkpoint that must happen (release, back-pressure) waits for dead letters while
/// ledgerd is shutting down; otherwise it waits until they are acknowledged.
const SHUTDOWN_LETTER_WAIT: Duration = Duration::from_secs(5);

/// A partition this instance consumes.
pub(super) struct Owned {
    pub state: PartitionState,
    /// Dead letters of records not yet sealed, not yet acknowledged.
    pub letters: Vec<PendingLetter>,
    /// Dead letters of the sealed batch, not yet acknowledged: it is written once this is empty.
    sealed_letters: Vec<PendingLetter>,
    handle: Arc<PartitionHandle>,
    /// When this partition's checkpointed offset was last sent to the group as its commit.
    commit_sent: Option<Instant>,
}

impl Owned {
    /// The consumer read the partition to its end: its checkpoint comes sooner, and the snapshot
    /// writer learns that it is not catching up.
    pub fn reached_end(&mut self) {
        self.state.reached_end();
        self.handle.mark_reached_end(self.state.next_offset());
    }

    /// The offset to commit to the group now, if any: `written` (a checkpoint just written), or
    /// else the checkpointed offset while the group has not acknowledged it and the last commit
    /// went out at least [`RECOMMIT_AFTER`] ago (a failed commit, or local state found ahead of
    /// the group's committed offset at assignment). The API serves a checkpoint only once the
    /// group has it, so an idle partition must not stay behind. Never an offset at or below the
    /// acknowledged one: a state replaying towards it must not move the group's offset back.
    pub fn commit_due(&mut self, written: Option<i64>, now: Instant) -> Option<i64> {
        let acknowledged = self.handle.group_committed();
        let resend = || {
            let checkpointed = self.state.checkpointed_offset();
            let quiet = self.commit_sent.is_none_or(|sent| now.duration_since(sent) >= RECOMMIT_AFTER);
            (checkpointed > acknowledged && quiet).then_some(checkpointed)
        };
        let due = written.filter(|&next| next > acknowledged).or_else(resend)?;
        self.commit_sent = Some(now);
        Some(due)
    }
}

/// Sends an asynchronous commit whose answer comes back through `commit_callback`. The rdkafka
/// crate's own asynchronous commit passes librdkafka no queue for the answer, so none ever comes
/// (fede1024/rust-rdkafka#856, open); with the consumer's queue as the reply queue the answer is an
/// offset-commit event, which the consumer's `poll` hands to the context.
fn commit_async_reported(consumer: &BaseConsumer<GroupContext>, list: &TopicPartitionList) -> KafkaResult<()> {
    use rdkafka::bindings as rd;
    let client = consumer.client().native_ptr();
    // SAFETY: `client` and `list` are live for the whole call (borrowed from the consumer and the
    // caller); librdkafka copies the list before returning. The queue handle is a new reference
    // to the consumer's queue, released here; the commit holds its own reference until answered.
    let err = unsafe {
        let queue = rd::rd_kafka_queue_get_consumer(client);
        if queue.is_null() {
            return Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::InvalidArgument));
        }
        let err = rd::rd_kafka_commit_queue(client, list.ptr(), queue, None, std::ptr::null_mut());
        rd::rd_kafka_queue_destroy(queue);
        err
    };
    match RDKafkaErrorCode::from(err) {
        RDKafkaErrorCode::NoError => Ok(()),
        code => Err(KafkaError::ConsumerCommit(code)),
    }
}

/// How long an unacknowledged commit waits before it is sent again (see [`Owned::commit_due`]).
const RECOMMIT_AFTER: Duration = Duration::from_secs(1);

/// How a checkpoint step treats unacknowledged dead letters of the sealed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LetterWait {
    /// Look, and leave the batch sealed if some are pending (the routine checkpoint scan).
    Poll,
    /// Wait until they are acknowledged (bounded once shutting down): at release, and for
    /// back-pressure when the work since the seal has reached `checkpoint.max_records`.
    Block,
}

/// An assigned partition whose state is being prepared.
struct Pending {
    generation: u64,
    cancel: CancellationToken,
}

/// Everything the consumer thread and its rebalance callbacks share.
pub(super) struct Shared {
    pub config: Arc<Config>,
    pub env: Arc<StoreEnv>,
    pub metrics: Metrics,
    pub dead_letters: DeadLetterProducer,
    /// Start-up's topic setup: a restore waits for the snapshot topic to be checked.
    pub topics: Arc<TopicGate>,
    pub registry: Arc<PartitionRegistry>,
    pub shutdown: CancellationToken,
    /// The group's committed offsets, for every partition's preparation.
    pub committed: Arc<CommittedOffsets>,
    /// Local states opened while the group join is in flight, for their partitions' preparation.
    pub early: Arc<EarlyStates>,
    /// Writes the checkpoints the routine scan seals while the consumer thread applies on
    /// (`checkpoint.writer_thread`; without it they are written on the consumer thread).
    writer: Option<CheckpointWriter>,
    /// Locked by the poll loop per record and by callbacks inside `poll()`; both on the same
    /// thread, never across a `poll()`, so it is never contended.
    owned: Mutex<BTreeMap<i32, Owned>>,
    pending: Mutex<BTreeMap<i32, Pending>>,
    /// `pending`'s size, read by the poll loop on every record without taking the lock.
    pending_count: AtomicUsize,
    generation: AtomicU64,
    /// Prepared partitions travel to the consumer thread through here.
    prepared: Mutex<Sender<Prepared>>,
    /// Partitions whose state stays here though they are not owned, and since when.
    released: Mutex<BTreeMap<i32, Instant>>,
    /// Set when the instance cannot go on (e.g. state cannot be opened); the thread then stops.
    pub fatal: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(parts: ConsumerParts, prepared: Sender<Prepared>) -> Result<Shared, KafkaError> {
        let ConsumerParts { config, env, metrics, registry, dead_letters, topics, shutdown } = parts;
        let local = env.local_partitions(&config.kafka.input_topic);
        let early = EarlyStates::open(&env, &config.kafka.input_topic, &local, &metrics);
        let committed = Arc::new(CommittedOffsets::new(&config, KafkaContext { metrics: metrics.clone() })?);
        // Connects while the group join is in flight: a restarted instance then checks its
        // partitions' state against the group without a client's start-up in between.
        committed.warm_up(local.clone());
        // State left from earlier runs counts as released now: deleted after the grace period
        // unless its partition is assigned here again.
        let now = Instant::now();
        let released = local.into_iter().map(|p| (p, now)).collect();
        let writer = match config.checkpoint.writer_thread.then(CheckpointWriter::start).transpose() {
            Ok(writer) => writer,
            Err(e) => {
                let message =
                    format_args!("cannot start the checkpoint writer thread; the consumer thread writes: {e}");
                metrics.handled_error(ErrorKind::CheckpointWrite, &message);
                None
            }
        };
        Ok(Shared {
            config,
            env,
            metrics,
            dead_letters,
            topics,
            registry,
            shutdown,
            committed,
            early,
            writer,
            owned: Mutex::default(),
            pending: Mutex::default(),
            pending_count: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            prepared: Mutex::new(prepared),
            released: Mutex::new(released),
            fatal: Mutex::default(),
        })
    }

    pub fn owned(&self) -> MutexGuard<'_, BTreeMap<i32, Owned>> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self) -> MutexGuard<'_, BTreeMap<i32, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a checkpoint write's answer is still to be taken: its partition's next scan takes it.
    pub fn writing(&self) -> bool {
        self.writer.as_ref().is_some_and(CheckpointWriter::busy)
    }

    /// Whether an assigned partition is still being prepared.
    pub fn preparing(&self) -> bool {
        self.pending_count.load(Ordering::Relaxed) > 0
    }

    /// Publishes how many partitions are being prepared (called with `pending` locked, after a change).
    fn pending_changed(&self, pending: &BTreeMap<i32, Pending>) {
        self.pending_count.store(pending.len(), Ordering::Relaxed);
        self.metrics.restoring_partitions.set(pending.len() as i64);
    }

    pub(super) fn send_prepared(&self, prepared: Prepared) {
        // The receiver is gone only when the consumer thread has stopped; the state just closes.
        let _ = self.prepared.lock().unwrap_or_else(|e| e.into_inner()).send(prepared);
    }

    pub(super) fn fail(&self, message: String) {
        tracing::error!(%message, "stopping: cannot continue");
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).replace(message);
        self.shutdown.cancel();
    }

    /// Advances the partition's checkpoint: writes the sealed batch once its dead letters are
    /// acknowledged, then, when `seal` is set, seals the work since and writes that too if its
    /// letters are acknowledged as well. Returns the newest checkpointed next offset written here.
    ///
    /// With [`LetterWait::Poll`] (the routine scan) the write goes to the checkpoint writer's
    /// thread and this returns at once; a later scan takes its answer, and returns its offset,
    /// before anything new is sealed. With [`LetterWait::Block`] the write is done, or the one in
    /// flight waited for, before this returns.
    pub fn checkpoint(&self, owned: &mut Owned, seal: bool, wait: LetterWait) -> Option<i64> {
        let mut written = None;
        let mut seal = seal;
        let started = Instant::now();
        loop {
            if owned.state.has_sealed() {
                if wait == LetterWait::Poll && owned.state.write_in_flight() {
                    // The next batch is sealed at a later scan, once the caller has kept the view
                    // of this checkpoint for its commit.
                    return match owned.state.poll_sealed_write() {
                        None => written,
                        Some(Ok(next)) => {
                            self.after_write(owned);
                            Some(next)
                        }
                        Some(Err(e)) => {
                            self.metrics.handled_error(
                                ErrorKind::CheckpointWrite,
                                &format_args!("partition {}: {e}", owned.state.partition()),
                            );
                            // Written again here, with the backoff of any other failed write.
                            self.commit_sealed(owned)
                        }
                    };
                }
                let pending = match wait {
                    LetterWait::Poll => self.dead_letters.poll(&mut owned.sealed_letters),
                    LetterWait::Block => self.dead_letters.wait(&mut owned.sealed_letters, Duration::from_millis(100)),
                };
                if pending > 0 {
                    let gave_up = self.shutdown.is_cancelled() && started.elapsed() >= SHUTDOWN_LETTER_WAIT;
                    if wait == LetterWait::Poll || gave_up {
                        return written;
                    }
                    continue;
                }
                if let (LetterWait::Poll, Some(writer)) = (wait, &self.writer) {
                    match owned.state.submit_sealed(writer) {
                        Ok(()) => return written,
                        Err(e) => self.metrics.handled_error(
                            ErrorKind::CheckpointWrite,
                            &format_args!("partition {}: {e}", owned.state.partition()),
                        ),
                    }
                }
                match self.commit_sealed(owned) {
                    Some(next) => written = Some(next),
                    None => return written,
                }
            }
            if !seal || !owned.state.seal() {
                return written;
            }
            owned.sealed_letters = std::mem::take(&mut owned.letters);
            seal = false;
        }
    }

    /// After a checkpoint became durable: keeps the memtables within their shared budget.
    fn after_write(&self, owned: &Owned) {
        if let Err(e) = owned.state.store().flush_largest_memtables_over_budget() {
            self.metrics
                .handled_error(ErrorKind::MemtableFlush, &format_args!("partition {}: {e}", owned.state.partition()));
        }
    }

    /// Writes the sealed batch, retrying a failing write with backoff (None: shutting down).
    fn commit_sealed(&self, owned: &mut Owned) -> Option<i64> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match owned.state.commit_sealed() {
                Ok(next) => {
                    if next.is_some() {
                        self.after_write(owned);
                    }
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

    /// Commits checkpointed offsets to the group, for lag tooling and for the API, which serves a
    /// checkpoint once the group acknowledged it ([`Shared::commit_answered`]). Processing never
    /// resumes from it: the stored offset is the truth.
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
        let committed = match mode {
            CommitMode::Async => commit_async_reported(consumer, &list),
            // Answered here, not through `commit_callback`.
            CommitMode::Sync => consumer
                .commit(&list, mode)
                .map(|()| offsets.iter().for_each(|&(partition, next)| self.acknowledge_commit(partition, next))),
        };
        if let Err(e) = committed {
            self.metrics.handled_error(ErrorKind::GroupCommit, &e);
        }
    }

    /// The group's answer to a commit: acknowledged offsets let the API serve the checkpoints up to
    /// them; failures are logged and counted (the next checkpoint, or [`Owned::commit_due`],
    /// commits again).
    fn commit_answered(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            self.metrics.handled_error(ErrorKind::GroupCommit, &e);
            return;
        }
        for element in offsets.elements_for_topic(&self.config.kafka.input_topic) {
            match (element.error(), element.offset()) {
                (Err(e), _) => self
                    .metrics
                    .handled_error(ErrorKind::GroupCommit, &format_args!("partition {}: {e}", element.partition())),
                (Ok(()), Offset::Offset(next)) => self.acknowledge_commit(element.partition(), next),
                (Ok(()), _) => {}
            }
        }
    }

    /// Keeps a view of `partition`'s state as it is now, a checkpoint whose offset goes to the
    /// group as its commit, for the API to answer from once the group acknowledges it
    /// ([`crate::store::PartitionStore::keep_view_for_commit`]; none while the API does not read
    /// acknowledged checkpoints, as with `http.read_committed = false`).
    pub fn keep_view_for_commit(&self, partition: i32, entry: &Owned) {
        if let Err(e) = entry.state.store().keep_view_for_commit(entry.handle.group_committed()) {
            // The API then reads the newest state, and waits for its commit.
            self.metrics
                .handled_error(ErrorKind::StateRead, &format_args!("partition {partition}: view for the API: {e}"));
        }
    }

    /// Lets the API serve `partition`'s checkpoints up to `next`, if it is still owned here.
    fn acknowledge_commit(&self, partition: i32, next: i64) {
        if let Some(handle) = self.registry.owned(partition) {
            handle.acknowledge_commit(next);
        }
    }

    /// Starts preparing newly assigned partitions. They join the consumer's assignment when ready
    /// ([`Shared::start_consuming`]); until then `/readyz` reports not ready.
    fn on_assign(self: &Arc<Self>, consumer: &BaseConsumer<GroupContext>, list: &TopicPartitionList) {
        let topic = &self.config.kafka.input_topic;
        let local = self.env.local_partitions(topic);
        let assigned: Vec<i32> = list.elements_for_topic(topic).iter().map(|e| e.partition()).collect();
        self.early.keep_only(&assigned);
        let mut look_up = Vec::new();
        let mut pending = self.pending();
        for partition in assigned {
            self.released.lock().unwrap_or_else(|e| e.into_inner()).remove(&partition);
            let generation = self.generation.fetch_add(1, Ordering::Relaxed);
            let cancel = self.shutdown.child_token();
            if let Some(previous) = pending.insert(partition, Pending { generation, cancel: cancel.clone() }) {
                previous.cancel.cancel();
            }
            self.registry.mark_preparing(partition);
            if local.contains(&partition) {
                // Only preparing local state compares it with the group's committed offset.
                look_up.push((partition, generation));
            }
            tracing::info!(partition, "partition assigned; preparing its state");
            let shared = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name(format!("ledgerd-prepare-{partition}"))
                .spawn(move || prepare::run(shared, partition, generation, cancel));
            if let Err(e) = spawned {
                self.fail(format!("cannot start preparing partition {partition}: {e}"));
            }
        }
        self.pending_changed(&pending);
        drop(pending);
        self.committed.look_up_ahead(look_up, prepare::COMMITTED_TIMEOUT);
        self.metrics.rebalance("assign");
        // Completes librdkafka's side of the rebalance; partitions are added as they become ready.
        if let Err(e) = consumer.incremental_assign(&TopicPartitionList::new()) {
            self.metrics.handled_error(ErrorKind::Rebalance, &e);
        }
        self.registry.mark_joined();
    }

    /// Adds a prepared partition to the consumer's assignment at the offset its state dictates.
    pub fn start_consuming(&self, consumer: &BaseConsumer<GroupContext>, prepared: Prepared) {
        let partition = prepared.partition;
        let current = {
            let mut pending = self.pending();
            let current = pending.get(&partition).is_some_and(|p| p.generation == prepared.generation);
            if current {
                pending.remove(&partition);
                self.pending_changed(&pending);
            }
            current
        };
        if !current {
            // Revoked (and perhaps assigned again) while it was being prepared. Preparing made the
            // partition's gauges (at 0); left behind, they would report a partition this instance
            // does not consume, stuck at offset 0. Unless it is here again by now: a newer
            // assignment's gauges are the same series, and removing them would orphan its handles.
            // Both guards live to the end of the statement: `owned` first, as everywhere else.
            let again = self.owned().contains_key(&partition) || self.pending().contains_key(&partition);
            if !again {
                self.metrics.remove_partition(partition);
            }
            return;
        }
        let topic = &self.config.kafka.input_topic;
        // Never resume from the group's committed offset: it may lag the state (the commit
        // follows the checkpoint) or belong to state that no longer exists here.
        let offset = match prepared.state.store().stored_next_offset() {
            Some(next) => Offset::Offset(next),
            None => Offset::Beginning,
        };
        let mut list = TopicPartitionList::new();
        if let Err(e) = list.add_partition_offset(topic, partition, offset) {
            self.metrics.handled_error(ErrorKind::Rebalance, &e);
        }
        prepared.state.announce();
        let handle =
            Arc::new(PartitionHandle::serving_from(partition, Arc::clone(prepared.state.store()), prepared.committed));
        tracing::info!(
            partition,
            next_offset = prepared.state.next_offset(),
            from = prepared.source,
            "partition consuming"
        );
        let mut owned = self.owned();
        let entry = Owned {
            state: prepared.state,
            letters: Vec::new(),
            sealed_letters: Vec::new(),
            handle: Arc::clone(&handle),
            commit_sent: None,
        };
        owned.insert(partition, entry);
        self.metrics.assigned_partitions.set(owned.len() as i64);
        drop(owned);
        self.registry.insert(handle);
        if let Err(e) = consumer.incremental_assign(&list) {
            self.metrics.handled_error(ErrorKind::Rebalance, &e);
        }
    }

    /// Deletes the state of partitions released longer than `state.release_grace` ago.
    pub fn delete_released_state(&self) {
        let grace = self.config.state.release_grace;
        // on_assign takes a partition out of `released`, so none here should be in use; checked
        // anyway, because deleting a live partition's state would lose data. Read before locking
        // `released`, so no two of these locks are ever held together.
        let in_use: Vec<i32> = self.owned().keys().chain(self.pending().keys()).copied().collect();
        let mut released = self.released.lock().unwrap_or_else(|e| e.into_inner());
        let due: Vec<i32> = released.iter().filter(|(_, since)| since.elapsed() >= grace).map(|(p, _)| *p).collect();
        for partition in due {
            if in_use.contains(&partition) {
                released.remove(&partition);
                continue;
            }
            // Opened early but never assigned: closed first (an open still in flight is left
            // for the next scan).
            if !self.early.close(partition) {
                continue;
            }
            match self.env.delete_partition(&self.config.kafka.input_topic, partition) {
                Ok(()) => {
                    released.remove(&partition);
                    tracing::info!(partition, "deleted the state of a partition owned elsewhere");
                }
                Err(e) => {
                    self.metrics.handled_error(ErrorKind::StateCleanup, &format_args!("partition {partition}: {e}"));
                    // Try again after another grace period, not on every scan.
                    released.insert(partition, Instant::now());
                }
            }
        }
    }

    /// Checkpoints and releases the partitions in `list` (all owned ones when `list` is `None`).
    /// Returns the partitions that were consuming (and so are in the consumer's assignment).
    pub fn release(&self, consumer: &BaseConsumer<GroupContext>, list: Option<&TopicPartitionList>) -> Vec<i32> {
        let partitions: Vec<i32> = match list {
            Some(list) => {
                list.elements_for_topic(&self.config.kafka.input_topic).iter().map(|e| e.partition()).collect()
            }
            None => self.owned().keys().chain(self.pending().keys()).copied().collect(),
        };
        let mut pending = self.pending();
        for partition in &partitions {
            if let Some(preparing) = pending.remove(partition) {
                preparing.cancel.cancel();
                // Its preparation may not have taken the state opened early yet.
                self.early.close(*partition);
                self.registry.remove(*partition);
                tracing::info!(partition, "partition released while preparing");
            }
        }
        self.pending_changed(&pending);
        drop(pending);

        let mut owned = self.owned();
        let mut committed = Vec::new();
        let mut consuming = Vec::new();
        for partition in partitions {
            let Some(mut entry) = owned.remove(&partition) else { continue };
            consuming.push(partition);
            // No snapshot round of this partition should run once another instance can own it. The
            // wait is bounded so the consumer never misses its poll deadline; a round still running
            // then stops at its next record without a marker (see `snapshot` on why that is safe).
            if !entry.handle.release(ROUND_STOP_WAIT) {
                tracing::warn!(partition, "released while a snapshot round is still confirming its records");
            }
            if let Some(next) = self.checkpoint(&mut entry, true, LetterWait::Block) {
                committed.push((partition, next));
            }
            self.registry.remove(partition);
            self.metrics.remove_partition(partition);
            self.released.lock().unwrap_or_else(|e| e.into_inner()).insert(partition, Instant::now());
            tracing::info!(partition, next_offset = entry.state.checkpointed_offset(), "partition released");
        }
        self.metrics.assigned_partitions.set(owned.len() as i64);
        drop(owned);
        self.commit(consumer, &committed, CommitMode::Sync);
        consuming
    }

    fn on_revoke(&self, consumer: &BaseConsumer<GroupContext>, list: &TopicPartitionList) {
        self.metrics.rebalance("revoke");
        let consuming = self.release(consumer, Some(list));
        // Only partitions that made it into the consumer's assignment can be unassigned.
        let mut assigned = TopicPartitionList::with_capacity(consuming.len());
        for partition in consuming {
            assigned.add_partition(&self.config.kafka.input_topic, partition);
        }
        let result = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(&assigned),
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

    fn stats_raw(&self, statistics: &[u8]) {
        self.client.consumer_statistics(&self.shared.config.kafka.input_topic, statistics)
    }
}

impl ConsumerContext for GroupContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.shared.commit_answered(result, offsets);
    }

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
