//! Preparing an assigned partition, on a thread of its own so the partitions that did not move keep
//! processing meanwhile: open the local state, decide whether it is usable, and restore from the
//! snapshot topic when it is missing or stale.
//!
//! Local state is used as is when the group's committed offset (which follows checkpoints) is not
//! ahead of it. Otherwise another instance processed the partition further than this state, and
//! the snapshot partition is read: if its restore point is ahead of the local state, the local
//! state is set aside and the snapshot loaded; if not, the local state is kept (replaying from it
//! is exact, only slower). With neither, the input is replayed from its beginning.

use super::group::Shared;
use crate::kafka::KafkaContext;
use crate::metrics::{ErrorKind, Metrics};
use crate::partition::PartitionState;
use crate::snapshot::restore::{ReadOutcome, RestoreError, SnapshotReader};
use crate::snapshot::round;
use crate::store::{PartitionStore, SetAside, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a failing state open is retried before the instance gives up (and exits non-zero).
const OPEN_ATTEMPTS: u32 = 6;
/// How long preparing a partition waits for the group's committed offset.
pub(super) const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);

/// A partition whose state is ready; the consumer thread assigns it for consumption.
pub(super) struct Prepared {
    pub partition: i32,
    /// Which assignment this belongs to; a stale one (revoked and assigned again since) is dropped.
    pub generation: u64,
    pub state: PartitionState,
    /// Where the start offset comes from: "state", "snapshot" or "beginning".
    pub source: &'static str,
    /// The group's committed offset at assignment, if it could be read: the API serves the
    /// partition once its state is checkpointed that far (see `PartitionHandle::serving_from`).
    pub committed: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum PrepareError {
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Fatal(String),
}

/// Runs on its own thread; sends the prepared partition to the consumer thread.
pub(super) fn run(shared: Arc<Shared>, partition: i32, generation: u64, cancel: CancellationToken) {
    let _span = tracing::info_span!("partition", partition).entered();
    let started = Instant::now();
    match prepare(&shared, partition, generation, &cancel) {
        Ok((state, source, committed)) => {
            tracing::info!(partition, source, seconds = started.elapsed().as_secs_f64(), "partition prepared");
            shared.send_prepared(Prepared { partition, generation, state, source, committed });
        }
        Err(PrepareError::Cancelled) => tracing::info!(partition, "preparation cancelled: partition revoked"),
        Err(PrepareError::Fatal(message)) => shared.fail(message),
    }
}

fn prepare(
    shared: &Shared,
    partition: i32,
    generation: u64,
    cancel: &CancellationToken,
) -> Result<(PartitionState, &'static str, Option<i64>), PrepareError> {
    let opening = Instant::now();
    let store = open(shared, partition, cancel)?;
    let local = store.stored_next_offset();
    tracing::debug!(partition, local, seconds = opening.elapsed().as_secs_f64(), "local state opened");
    let committed = match shared.committed.lookup(partition, generation, COMMITTED_TIMEOUT) {
        Ok(committed) => committed,
        Err(e) => {
            // Without the committed offset staleness cannot be told; local state is still exact,
            // and the partition is served at once, as if it had no previous owner.
            shared.metrics.handled_error(
                ErrorKind::Restore,
                &format_args!("partition {partition}: cannot read the group's committed offset: {e}"),
            );
            None
        }
    };
    if let Some(local) = local {
        match committed {
            Some(committed) if committed > local => {
                tracing::info!(partition, local, committed, "local state is behind the group; checking the snapshot");
            }
            _ => return Ok((state(shared, partition, store)?, "state", committed)),
        }
    }

    // Start-up may still be checking (or creating) the snapshot topic.
    if shared.topics.wait(cancel).is_none() {
        return Err(PrepareError::Cancelled);
    }
    let reader = SnapshotReader::new(&shared.config, KafkaContext { metrics: shared.metrics.clone() })
        .map_err(|e| PrepareError::Fatal(format!("cannot create the snapshot reader: {e}")))?;
    let outcome = read_snapshot(shared, &reader, partition, cancel)?;
    drop(reader);
    let plan = match outcome.plan {
        Some(plan) if local.is_none_or(|local| plan.restore_from > local) => plan,
        Some(plan) => {
            tracing::info!(
                partition,
                local,
                restore_from = plan.restore_from,
                "local state is not older than the snapshot; keeping it"
            );
            return Ok((state(shared, partition, store)?, "state", committed));
        }
        None => {
            if local.is_none() {
                tracing::info!(partition, "no snapshot to restore from; replaying the input from its beginning");
            }
            return Ok((
                state(shared, partition, store)?,
                if local.is_some() { "state" } else { "beginning" },
                committed,
            ));
        }
    };

    let topic = &shared.config.kafka.input_topic;
    drop(store);
    if let Some(local) = local {
        let reason = format!("stale: next offset {local}, snapshot restores from {}", plan.restore_from);
        match shared.env.set_aside(topic, partition, reason) {
            Ok(aside) => shared.metrics.handled_error(
                ErrorKind::StateSetAside,
                &format_args!(
                    "partition {partition}: state {} ({}); restoring the snapshot",
                    aside.moved_to.display(),
                    aside.reason
                ),
            ),
            Err(e) => {
                return Err(PrepareError::Fatal(format!("partition {partition}: cannot set stale state aside: {e}")))
            }
        }
    }
    let store = open(shared, partition, cancel)?;
    let loading = Instant::now();
    retry(shared, partition, cancel, "loading the snapshot", || round::load(&store, &plan))?;
    drop(store);
    let store = open(shared, partition, cancel)?;
    let metrics = shared.metrics.restore_for_partition(partition);
    let seconds = outcome.elapsed.as_secs_f64() + loading.elapsed().as_secs_f64();
    metrics.duration.set(seconds);
    tracing::info!(
        partition,
        snapshot_records = outcome.records,
        accounts = plan.accounts.len(),
        restore_from = plan.restore_from,
        seconds,
        "partition restored from snapshot"
    );
    Ok((state(shared, partition, store)?, "snapshot", committed))
}

fn read_snapshot(
    shared: &Shared,
    reader: &SnapshotReader,
    partition: i32,
    cancel: &CancellationToken,
) -> Result<ReadOutcome, PrepareError> {
    let metrics = shared.metrics.restore_for_partition(partition);
    let mut backoff = Duration::from_millis(500);
    loop {
        tracing::info!(partition, topic = %shared.config.snapshot.topic, "reading the snapshot");
        match reader.read(partition, &metrics, cancel) {
            Ok(outcome) => return Ok(outcome),
            Err(RestoreError::Cancelled) => return Err(PrepareError::Cancelled),
            Err(e) if e.is_permanent() => {
                // A record this version cannot read (e.g. written by a newer ledgerd), or rounds of
                // another input: a replay from the input's beginning is slower but exact.
                shared.metrics.handled_error(
                    ErrorKind::Restore,
                    &format_args!("partition {partition}: {e}; replaying the input from its beginning instead"),
                );
                return Ok(ReadOutcome { plan: None, records: 0, elapsed: Duration::ZERO });
            }
            Err(e) => {
                shared.metrics.handled_error(
                    ErrorKind::Restore,
                    &format_args!("partition {partition}: reading the snapshot: {e}; retrying in {backoff:?}"),
                );
                if cancel.is_cancelled() {
                    return Err(PrepareError::Cancelled);
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn state(shared: &Shared, partition: i32, store: PartitionStore) -> Result<PartitionState, PrepareError> {
    PartitionState::new(
        partition,
        Arc::new(store),
        0,
        shared.config.dedupe.window,
        shared.metrics.for_partition(partition),
    )
    .map_err(|e| PrepareError::Fatal(format!("partition {partition}: cannot read restore state: {e}")))
}

/// Opens the partition's state (or takes it from those opened early), setting unusable state
/// aside. A lock held by this instance's own previous handle (a quick revoke and re-assign) is
/// waited out.
fn open(shared: &Shared, partition: i32, cancel: &CancellationToken) -> Result<PartitionStore, PrepareError> {
    if let Some(store) = shared.early.take(partition) {
        return Ok(store);
    }
    let topic = &shared.config.kafka.input_topic;
    let (store, set_aside) =
        retry(shared, partition, cancel, "opening state", || shared.env.open_partition(topic, partition))?;
    report_set_aside(&shared.metrics, partition, set_aside);
    Ok(store)
}

fn retry<T>(
    shared: &Shared,
    partition: i32,
    cancel: &CancellationToken,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, PrepareError> {
    let mut backoff = Duration::from_millis(200);
    for n in 1..=OPEN_ATTEMPTS {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) => shared.metrics.handled_error(
                ErrorKind::StateOpen,
                &format_args!("partition {partition}: {what}, attempt {n}/{OPEN_ATTEMPTS}: {e}"),
            ),
        }
        if cancel.is_cancelled() {
            return Err(PrepareError::Cancelled);
        }
        std::thread::sleep(backoff);
        backoff *= 2;
    }
    Err(PrepareError::Fatal(format!("partition {partition}: {what} failed {OPEN_ATTEMPTS} times")))
}

/// Reports a state found unusable and moved aside when it was opened.
pub(super) fn report_set_aside(metrics: &Metrics, partition: i32, set_aside: Option<SetAside>) {
    if let Some(aside) = set_aside {
        metrics.handled_error(
            ErrorKind::StateSetAside,
            &format_args!("partition {partition}: state {} ({})", aside.moved_to.display(), aside.reason),
        );
    }
}
