//! The consumer-group thread: owns the `BaseConsumer`, polls records, applies them to their
//! partition's state, and checkpoints on the configured schedule.
//!
//! Everything happens on this one dedicated thread (rebalance callbacks run inside `poll()`), so a
//! partition's state is never touched concurrently and blocking here never stalls a tokio worker.

use super::dead_letter::DeadLetterProducer;
use super::group::{GroupContext, LetterWait, Shared};
use super::topics::{self, TopicGate};
use super::{group_client_config, KafkaContext};
use crate::config::Config;
use crate::input::{self, InputFormat};
use crate::metrics::{ErrorKind, Metrics};
use crate::partition::Disposition;
use crate::registry::PartitionRegistry;
use crate::store::StoreEnv;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Upper bound on one `poll()` wait, so shutdown and checkpoint deadlines are noticed promptly.
const MAX_POLL_WAIT: Duration = Duration::from_millis(100);
/// The poll wait while partitions are being prepared or checkpoints written: short, so a prepared
/// partition starts consuming within it (a restart measured up to a whole `MAX_POLL_WAIT` there
/// otherwise), and a written checkpoint is taken up within it at the end of a catch-up.
const SHORT_POLL_WAIT: Duration = Duration::from_millis(5);
/// How often, at most, the loop scans partitions for interval-driven checkpoints while busy.
const CHECKPOINT_SCAN_EVERY: Duration = Duration::from_millis(10);
/// How long one look-up of the input topic before joining may block: short, so shutdown is not held.
const INPUT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the loop looks for released partitions whose state is due for deletion.
const CLEANUP_SCAN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Fatal(String),
}

/// What the consumer thread needs.
pub struct ConsumerParts {
    pub config: Arc<Config>,
    pub env: Arc<StoreEnv>,
    pub metrics: Metrics,
    pub registry: Arc<PartitionRegistry>,
    pub dead_letters: DeadLetterProducer,
    /// Start-up's topic setup, which runs while this thread joins the group.
    pub topics: Arc<TopicGate>,
    pub shutdown: CancellationToken,
}

/// Joins the group and processes until `shutdown` fires; then checkpoints every owned partition,
/// commits, and leaves the group. Blocking: run it on its own thread.
pub fn run(parts: ConsumerParts) -> Result<(), ConsumerError> {
    // Every record is applied and checkpointed on this thread.
    crate::store::stop_perf_counters_on_this_thread();
    let (config, metrics, topics, shutdown) =
        (Arc::clone(&parts.config), parts.metrics.clone(), Arc::clone(&parts.topics), parts.shutdown.clone());
    let (prepared_tx, prepared_rx) = std::sync::mpsc::channel();
    let shared = Arc::new(Shared::new(parts, prepared_tx)?);
    let mut client = group_client_config(&config.kafka);
    client
        .set("group.id", &config.kafka.group_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Offsets are committed by ledgerd after each checkpoint, never automatically.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Start positions come from the state; this only applies if a stored offset is out of
        // range (e.g. retention deleted it), and then the earliest data is the safe choice.
        .set("auto.offset.reset", "earliest")
        // A partition that reaches the end of its input checkpoints soon after, not at the next
        // interval (`PartitionState::checkpoint_due`).
        .set("enable.partition.eof", "true");
    if !config.kafka.group_instance_id.is_empty() {
        client.set("group.instance.id", &config.kafka.group_instance_id);
    }
    let context = GroupContext { client: KafkaContext { metrics: metrics.clone() }, shared: Arc::clone(&shared) };
    let consumer: BaseConsumer<GroupContext> = client.create_with_context(context)?;
    if !await_input(&consumer, &config.kafka.input_topic, &topics, &shutdown) {
        return Ok(());
    }
    consumer.subscribe(&[&config.kafka.input_topic])?;
    tracing::info!(topic = %config.kafka.input_topic, group = %config.kafka.group_id, "joined consumer group");

    let format = config.input.format;
    let interval = config.checkpoint.interval;
    let max_records = config.checkpoint.max_records;
    let mut next_scan = Instant::now();
    let mut next_cleanup = Instant::now();
    let mut poll_error_backoff = Duration::ZERO;
    while !shutdown.is_cancelled() {
        while let Ok(prepared) = prepared_rx.try_recv() {
            shared.start_consuming(&consumer, prepared);
        }
        // A partition prepared meanwhile starts consuming only once the poll returns, and a
        // checkpoint written meanwhile counts (and goes to the group) only at the scan after it.
        let wait = if shared.preparing() || shared.writing() { SHORT_POLL_WAIT } else { MAX_POLL_WAIT };
        match consumer.poll(wait) {
            Some(Ok(message)) => {
                poll_error_backoff = Duration::ZERO;
                if handle(&shared, &message, format, max_records) {
                    next_scan = Instant::now();
                }
            }
            // Read to the end: the partition's unwritten work is due sooner, so scan at once.
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                reached_end(&shared, partition);
                next_scan = Instant::now();
            }
            Some(Err(e)) => {
                // E.g. the topic vanished or a partition is unavailable; librdkafka keeps retrying.
                metrics.handled_error(ErrorKind::ConsumerPoll, &e);
                poll_error_backoff = (poll_error_backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(5));
                std::thread::sleep(poll_error_backoff);
            }
            None => {}
        }
        let now = Instant::now();
        if now >= next_scan {
            checkpoint_due(&shared, &consumer, now, interval, max_records);
            next_scan = now + CHECKPOINT_SCAN_EVERY;
        }
        if now >= next_cleanup {
            shared.delete_released_state();
            next_cleanup = now + CLEANUP_SCAN_EVERY;
        }
    }

    tracing::info!("shutting down: checkpointing owned partitions");
    shared.registry.mark_stopping();
    shared.release(&consumer, None);
    shared.dead_letters.flush(Duration::from_secs(5));
    // Dropping the consumer closes it: it leaves the group (its revoke callback finds nothing left).
    // librdkafka first waits for an in-flight JoinGroup, which the coordinator may hold until
    // every member rejoins (up to the rebalance timeout), so this step is logged on its own.
    tracing::info!("state checkpointed; leaving the consumer group");
    let leaving = Instant::now();
    drop(consumer);
    tracing::info!(seconds = leaving.elapsed().as_secs_f64(), "left the consumer group");
    let fatal = shared.fatal.lock().unwrap_or_else(|e| e.into_inner()).take();
    match fatal {
        Some(message) => Err(ConsumerError::Fatal(message)),
        None => Ok(()),
    }
}

/// Waits until the input topic exists, so the subscription finds it at once: librdkafka looks for
/// a subscribed topic that was missing only at its next metadata refresh, minutes later. Returns
/// false when shutdown came first.
///
/// The rest of start-up's topic setup (the dead-letter, snapshot and routing topics) goes on
/// meanwhile; a restarted instance joins, opens its state and fetches during it.
fn await_input(
    consumer: &BaseConsumer<GroupContext>,
    input_topic: &str,
    topics: &TopicGate,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        if topics.layout().is_some() {
            return true;
        }
        match topics::partition_count(consumer.client(), input_topic, INPUT_LOOKUP_TIMEOUT) {
            Ok(Some(_)) => return true,
            // Not counted here: start-up's topic setup logs and counts the same condition.
            Ok(None) => tracing::debug!(topic = input_topic, "input topic not found yet; joining once it exists"),
            Err(e) => tracing::debug!(topic = input_topic, error = %e, "cannot look the input topic up yet"),
        }
        let _ = topics.wait_for(backoff, shutdown);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    false
}

/// Applies one record. Returns true when its partition reached `max_records` since its checkpoint.
fn handle(shared: &Shared, message: &BorrowedMessage<'_>, format: InputFormat, max_records: u64) -> bool {
    let mut owned = shared.owned();
    let Some(entry) = owned.get_mut(&message.partition()) else {
        // A record of a partition released in this poll's rebalance: the next owner reads it.
        return false;
    };
    if message.offset() < entry.state.next_offset() {
        // Already reflected in the state (possible only around seeks); applying it again would double it.
        return false;
    }
    let content_type = match format {
        InputFormat::Auto => content_type(message),
        _ => None,
    };
    let decoded = input::decode(format, message.key(), message.payload(), content_type);
    let mut backoff = Duration::from_millis(50);
    let disposition = loop {
        match entry.state.process(message.offset(), message.key(), &decoded) {
            Ok(disposition) => break disposition,
            Err(e) => {
                shared.metrics.handled_error(
                    ErrorKind::StateRead,
                    &format_args!("partition {} offset {}: {e}", message.partition(), message.offset()),
                );
                if shared.shutdown.is_cancelled() {
                    return false;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    if let Disposition::DeadLetter(rejection) = disposition {
        tracing::debug!(partition = message.partition(), offset = message.offset(), reason = %rejection.reason, "dead-lettering record");
        entry.letters.push(shared.dead_letters.send(message, &rejection));
    }
    entry.state.reached_max_records(max_records)
}

/// Marks `partition` as read to its end (a partition released in this poll's rebalance has no entry).
fn reached_end(shared: &Shared, partition: i32) {
    if let Some(entry) = shared.owned().get_mut(&partition) {
        entry.reached_end();
    }
}

fn content_type<'m>(message: &'m BorrowedMessage<'_>) -> Option<&'m [u8]> {
    message.headers()?.iter().find(|h| h.key.eq_ignore_ascii_case("content-type")).and_then(|h| h.value)
}

fn checkpoint_due(
    shared: &Shared,
    consumer: &BaseConsumer<GroupContext>,
    now: Instant,
    interval: Duration,
    max_records: u64,
) {
    let mut owned = shared.owned();
    let mut committed = Vec::new();
    for (partition, entry) in owned.iter_mut() {
        let mut written = None;
        if entry.state.has_sealed() && entry.state.reached_max_records(max_records) {
            // Back-pressure: while a sealed batch waits for its dead letters or its write, the
            // work since may grow to max_records; then processing waits too, so unwritten work
            // stays bounded.
            written = shared.checkpoint(entry, false, LetterWait::Block);
        }
        // Not after a checkpoint just written: the view kept for its commit (below) must not
        // hold a later batch, which a write handed to the writer thread now could finish into.
        // The work since is sealed at the next scan, a record or a few milliseconds on.
        if written.is_none() {
            let seal = entry.state.checkpoint_due(now, interval, max_records);
            if seal || entry.state.has_sealed() {
                written = shared.checkpoint(entry, seal, LetterWait::Poll);
            }
        }
        if let Some(next) = entry.commit_due(written, now) {
            shared.keep_view_for_commit(*partition, entry);
            committed.push((*partition, next));
        }
    }
    drop(owned);
    shared.commit(consumer, &committed, CommitMode::Async);
}
