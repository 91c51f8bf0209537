//! The snapshot writer thread: every `snapshot.interval` it writes a round for each owned partition
//! through its own producer, and keeps `ledgerd_snapshot_age_seconds` current. It rests after
//! each round in proportion to the round's duration ([`REST_PER_ROUND`]), so rounds that rewrite a
//! large, fast-changing state come less often than the interval, and a partition that is catching
//! up waits for more of its input first ([`CATCH_UP_RECORDS_PER_BALANCE`]). A failing round is
//! logged, counted and retried at the next interval (or after the rest, if that is later); it
//! never blocks processing, which runs on the consumer thread and only waits for a round when it
//! releases that round's partition.

use super::round::{self, RoundError, SnapshotSink};
use crate::config::Config;
use crate::kafka::producer::{DeliveryFuture, PolledProducer};
use crate::kafka::{producer_client_config, KafkaContext};
use crate::metrics::{ErrorKind, Metrics, SnapshotMetrics};
use crate::registry::{PartitionHandle, PartitionRegistry};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the writer wakes to update snapshot ages and look for due rounds.
const TICK: Duration = Duration::from_millis(500);

/// After a round that took `d`, the writer starts no other round for `REST_PER_ROUND × d`, so
/// rounds take at most a fifth of this thread's time (and of what they cost the broker). When a
/// partition's state changes faster than rounds can keep up, as in a catch-up where nearly every
/// account changes within `snapshot.interval`, each round rewrites the whole state: back to back,
/// the rounds would cost as much as the processing. The rest stays proportional to a round's
/// size, which grows with the accounts, so the input a restore replays after the newest complete
/// round is still bounded by the number of accounts, not by the history.
const REST_PER_ROUND: u32 = 4;

/// While a partition catches up, a due round waits until the partition has consumed this many
/// input records per balance it holds since its last round. Catching up, nearly every account
/// changes between two rounds, so a round costs about a copy of the whole state (on the broker as
/// well: in a 5M-event catch-up the rounds were all of the extra work ledgerd gave the broker over
/// a bare consumer, docs/BENCHMARKS.md). Waiting makes one such round cover more input; the input
/// a restore replays after the newest round stays below this many records per balance (plus what
/// arrives within an interval and the writer's rest), so it still grows with the accounts, not
/// with the history.
const CATCH_UP_RECORDS_PER_BALANCE: u64 = 4;

/// How soon a round that waits for a catch-up is considered again.
const CATCH_UP_RECHECK: Duration = Duration::from_secs(1);

/// Fault injection for the end-to-end tests (the `LEDGERD_TEST_` prefix is never configuration):
/// the process aborts, like `kill -9`, once this many snapshot records (markers included) were
/// acknowledged in total; a count that ends inside a round aborts between its records and marker.
const ABORT_AFTER_RECORDS_VAR: &str = "LEDGERD_TEST_ABORT_SNAPSHOT_AFTER_RECORDS";

/// Of the partitions with their next round time, the one due longest, if any is due at `now`.
fn longest_waiting(next_rounds: impl Iterator<Item = (i32, Instant)>, now: Instant) -> Option<i32> {
    next_rounds.filter(|(_, next)| *next <= now).min_by_key(|(_, next)| *next).map(|(partition, _)| partition)
}

/// Where a partition stands for its next round.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Next offset of the last complete round (`None`: no round yet).
    last_round: Option<i64>,
    /// Next offset at which the consumer last read the partition to its end, if it did since
    /// the partition was assigned here.
    reached_end_at: Option<i64>,
    /// Next offset of the latest checkpoint.
    checkpointed: i64,
    /// Balances the state holds.
    balances: usize,
}

impl Progress {
    /// Whether the partition is catching up and its due round should wait: it has not been read
    /// to its end since the last round, and has consumed fewer than
    /// [`CATCH_UP_RECORDS_PER_BALANCE`] records per balance since then. A partition that reached
    /// its end since the last round is current (its end may have moved on since, but the records
    /// after it are an ordinary interval's worth), so its rounds follow the interval.
    fn waits_for_catch_up(&self) -> bool {
        let since = self.last_round.unwrap_or(0);
        let current = self.reached_end_at.is_some_and(|end| end >= since);
        let consumed = u64::try_from(self.checkpointed.saturating_sub(since)).unwrap_or(0);
        !current && consumed < CATCH_UP_RECORDS_PER_BALANCE.saturating_mul(self.balances as u64)
    }
}

/// When the writer may start its next round after one that ran from `started` to `ended`.
fn rest_until(started: Instant, ended: Instant) -> Instant {
    ended + ended.duration_since(started) * REST_PER_ROUND
}

/// Sends one partition's round to the snapshot topic's partition of the same number.
struct KafkaSink<'a> {
    producer: &'a PolledProducer,
    topic: &'a str,
    partition: i32,
    handle: &'a PartitionHandle,
    in_flight: Vec<DeliveryFuture>,
    /// Account records acknowledged before the process aborts (tests only).
    abort_after: &'a mut Option<u64>,
}

impl SnapshotSink for KafkaSink<'_> {
    type Error = KafkaError;

    fn send(&mut self, key: &[u8], value: &[u8]) -> Result<(), KafkaError> {
        loop {
            let record = FutureRecord::to(self.topic).partition(self.partition).key(key).payload(value);
            match self.producer.send(record) {
                Ok(delivery) => {
                    self.in_flight.push(delivery);
                    return Ok(());
                }
                // The local queue is full: librdkafka drains it in the background.
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn confirm(&mut self) -> Result<(), KafkaError> {
        // Waits for every record even after a failure: nothing of this round may still be in
        // flight when the partition is released to another owner.
        let mut first_error = None;
        let mut acknowledged = 0;
        for delivery in self.in_flight.drain(..) {
            let error = match futures::executor::block_on(delivery) {
                Ok(Ok(_)) => {
                    acknowledged += 1;
                    continue;
                }
                Ok(Err((error, _))) => error,
                Err(_) => KafkaError::Canceled,
            };
            first_error.get_or_insert(error);
        }
        if let Some(left) = self.abort_after.as_mut() {
            *left = left.saturating_sub(acknowledged);
            if *left == 0 {
                tracing::warn!(var = ABORT_AFTER_RECORDS_VAR, "aborting between snapshot records and marker");
                std::process::abort();
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn abandoned(&self) -> bool {
        self.handle.is_released()
    }
}

/// Most kilobytes of snapshot records queued in the producer at once, raised to two records of
/// `snapshot.max_record_size` if that is larger (a record bigger than the queue never fits).
const SNAPSHOT_QUEUE_KBYTES: u64 = 16 << 10;

pub struct SnapshotWriter {
    config: Arc<Config>,
    registry: Arc<PartitionRegistry>,
    metrics: Metrics,
    producer: PolledProducer,
    abort_after: std::sync::Mutex<Option<u64>>,
}

/// Per partition: when its last round completed (or it was assigned) and when to try next.
struct Schedule {
    handle: Arc<PartitionHandle>,
    last_complete: Instant,
    next_round: Instant,
    metrics: SnapshotMetrics,
}

impl SnapshotWriter {
    pub fn new(
        config: Arc<Config>,
        registry: Arc<PartitionRegistry>,
        context: KafkaContext,
    ) -> Result<Self, KafkaError> {
        let metrics = context.metrics.clone();
        let queue_kbytes = SNAPSHOT_QUEUE_KBYTES.max(2 * (config.snapshot.max_record_size.0 + 4096) / 1024);
        // Not idempotent (see `producer_client_config`; a round writes one partition, so an
        // idempotent producer spun a core for as long as rounds ran): a round's marker is sent
        // only once every record of the round is acknowledged, and a restore keeps each account's
        // record with the highest `valid_through`, so neither a retry's duplicate nor a record
        // overtaken within its round changes what is restored (src/snapshot/mod.rs).
        let mut client = producer_client_config(&config.kafka);
        client
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            // A round fails (and is retried next interval) rather than waiting on a dead broker
            // forever. Generous: a slow round costs less than a failed one.
            .set("message.timeout.ms", "60000")
            .set("message.max.bytes", (config.snapshot.max_record_size.0 + 4096).to_string())
            // A round reads accounts from RocksDB far faster than the broker takes them: bound
            // what waits in librdkafka's queue (its default is 1 GiB) so a round over a million
            // accounts does not hold them all in memory; a full queue makes the round wait.
            .set("queue.buffering.max.kbytes", queue_kbytes.to_string());
        let producer = PolledProducer::new(&client, context, "snapshot-acks")?;
        let abort_after = std::env::var(ABORT_AFTER_RECORDS_VAR).ok().and_then(|v| v.parse().ok());
        Ok(SnapshotWriter { config, registry, metrics, producer, abort_after: std::sync::Mutex::new(abort_after) })
    }

    /// Runs until `shutdown` fires. Blocking: run it on its own thread.
    pub fn run(self, shutdown: CancellationToken) {
        let interval = self.config.snapshot.interval;
        let mut schedules: HashMap<i32, Schedule> = HashMap::new();
        // No round starts before this (see REST_PER_ROUND).
        let mut rested_at = Instant::now();
        while !shutdown.is_cancelled() {
            let now = Instant::now();
            let handles = self.registry.handles();
            schedules.retain(|p, s| handles.iter().any(|h| h.partition == *p && Arc::ptr_eq(h, &s.handle)));
            for handle in handles {
                let schedule = schedules.entry(handle.partition).or_insert_with(|| Schedule {
                    metrics: self.metrics.snapshot_for_partition(handle.partition),
                    handle: Arc::clone(&handle),
                    last_complete: now,
                    // A freshly assigned partition writes its first round after one interval, so a
                    // rebalance storm does not turn into a snapshot storm.
                    next_round: now + interval,
                });
                schedule.metrics.age.set(now.duration_since(schedule.last_complete).as_secs_f64());
            }
            // One round at a time, for the partition that has waited longest: while the writer
            // rests several come due, and an order by partition number would starve the last.
            let due = longest_waiting(schedules.iter().map(|(p, s)| (*p, s.next_round)), now);
            if let Some(schedule) = due.and_then(|p| schedules.get_mut(&p)) {
                if now < rested_at || shutdown.is_cancelled() {
                    std::thread::sleep(TICK.min(rested_at.saturating_duration_since(now)));
                    continue;
                }
                if self.waits_for_catch_up(schedule) {
                    schedule.next_round = now + CATCH_UP_RECHECK;
                    continue;
                }
                let started = Instant::now();
                self.round(schedule);
                let ended = Instant::now();
                schedule.next_round = ended + interval;
                rested_at = rest_until(started, ended);
                // Straight back to the top, which sets every age again.
                continue;
            }
            std::thread::sleep(TICK);
        }
        if let Err(e) = self.producer.flush(Duration::from_secs(5)) {
            self.metrics.handled_error(ErrorKind::SnapshotWrite, &e);
        }
    }

    /// Whether the partition's due round waits for its catch-up ([`Progress::waits_for_catch_up`]);
    /// keeps `ledgerd_snapshot_round_waiting` and logs when the waiting starts. A state that cannot
    /// be read does not wait: the round will report the error.
    fn waits_for_catch_up(&self, schedule: &Schedule) -> bool {
        let handle = &schedule.handle;
        let store = &handle.store;
        let progress = match (store.snapshot_through(), store.last_checkpoint()) {
            (Ok(last_round), Some(checkpointed)) => Progress {
                last_round,
                reached_end_at: handle.reached_end_at(),
                checkpointed,
                balances: store.balances_held(),
            },
            _ => return false,
        };
        let waits = progress.waits_for_catch_up();
        let was_waiting = schedule.metrics.waiting.get() == 1;
        schedule.metrics.waiting.set(i64::from(waits));
        if waits && !was_waiting {
            tracing::info!(
                partition = handle.partition,
                last_round = progress.last_round,
                checkpointed = progress.checkpointed,
                balances = progress.balances,
                "snapshot round waits while the partition catches up"
            );
        }
        waits
    }

    fn round(&self, schedule: &mut Schedule) {
        let handle = Arc::clone(&schedule.handle);
        let _round = handle.lock_round();
        if handle.is_released() {
            return;
        }
        let partition = handle.partition;
        let _span = tracing::info_span!("partition", partition).entered();
        let started = Instant::now();
        let mut abort_after = self.abort_after.lock().unwrap_or_else(|e| e.into_inner());
        let mut sink = KafkaSink {
            producer: &self.producer,
            topic: &self.config.snapshot.topic,
            partition,
            handle: &handle,
            in_flight: Vec::new(),
            abort_after: &mut abort_after,
        };
        let window = i64::try_from(self.config.dedupe.window.as_micros()).unwrap_or(i64::MAX);
        let result = round::write_round(
            &handle.store,
            (&self.config.kafka.input_topic, partition),
            window,
            self.config.snapshot.max_record_size.0 as usize,
            &mut sink,
        );
        // Whatever happened, nothing of this round may stay in flight (see KafkaSink::confirm).
        let leftover = sink.confirm();
        match result {
            Ok(Some(report)) => {
                schedule.last_complete = Instant::now();
                schedule.metrics.records.inc_by(report.marker.accounts_written);
                schedule.metrics.offset.set(report.marker.complete_through);
                schedule.metrics.round_duration.set(started.elapsed().as_secs_f64());
                schedule.metrics.truncated.inc_by(report.truncated);
                schedule.metrics.complete.inc();
                tracing::info!(
                    partition,
                    complete_through = report.marker.complete_through,
                    accounts = report.marker.accounts_written,
                    seconds = started.elapsed().as_secs_f64(),
                    "snapshot round complete"
                );
            }
            Ok(None) => {
                // Nothing checkpointed or nothing new since the last round: the snapshot is current.
                schedule.last_complete = Instant::now();
            }
            Err(RoundError::Abandoned) => {
                schedule.metrics.abandoned.inc();
                tracing::info!(partition, "snapshot round abandoned: partition released");
            }
            Err(e) => {
                schedule.metrics.failed.inc();
                self.metrics.handled_error(
                    ErrorKind::SnapshotWrite,
                    &format_args!(
                        "partition {partition}: {e}; retrying in {:?} or later",
                        self.config.snapshot.interval
                    ),
                );
            }
        }
        if let Err(e) = leftover {
            self.metrics.handled_error(ErrorKind::SnapshotWrite, &format_args!("partition {partition}: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_due_longest_goes_first_and_none_before_it_is_due() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let rounds = [(0, now - s(5)), (7, now - s(30)), (3, now + s(1)), (11, now - s(6))];
        assert_eq!(longest_waiting(rounds.into_iter(), now), Some(7));
        assert_eq!(longest_waiting(rounds.into_iter().filter(|(p, _)| *p != 7), now), Some(11));
        assert_eq!(longest_waiting(rounds.into_iter().filter(|(p, _)| *p == 3), now), None);
        assert_eq!(longest_waiting(std::iter::empty(), now), None);
    }

    #[test]
    fn a_round_waits_while_its_partition_catches_up() {
        let catching_up =
            Progress { last_round: Some(1_000), reached_end_at: None, checkpointed: 30_000, balances: 10_000 };
        assert!(catching_up.waits_for_catch_up(), "29,000 records since the last round, under 4 per balance");
        assert!(!Progress { checkpointed: 41_000, ..catching_up }.waits_for_catch_up(), "4 records per balance");
        assert!(
            catching_up.waits_for_catch_up() && !Progress { balances: 7_000, ..catching_up }.waits_for_catch_up(),
            "the bound follows the state's size"
        );
        // Read to its end since the last round: current, whatever came after.
        assert!(!Progress { reached_end_at: Some(1_000), ..catching_up }.waits_for_catch_up());
        assert!(!Progress { reached_end_at: Some(20_000), ..catching_up }.waits_for_catch_up());
        // Read to its end only before the last round: catching up again.
        assert!(Progress { reached_end_at: Some(999), ..catching_up }.waits_for_catch_up());
        // No round yet: records count from the start of the input.
        let first = Progress { last_round: None, ..catching_up };
        assert!(first.waits_for_catch_up());
        assert!(!Progress { checkpointed: 40_000, ..first }.waits_for_catch_up());
        assert!(!Progress { reached_end_at: Some(0), ..first }.waits_for_catch_up());
        assert!(!Progress { balances: 0, ..first }.waits_for_catch_up(), "an empty state never waits");
    }

    #[test]
    fn the_rest_after_a_round_grows_with_its_duration() {
        let started = Instant::now();
        let ended = started + Duration::from_secs(3);
        assert_eq!(rest_until(started, ended), ended + Duration::from_secs(12));
        assert_eq!(rest_until(started, started), started);
    }
}
