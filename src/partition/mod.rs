//! One owned input partition: applies records through the reducer into an in-memory overlay of
//! uncheckpointed changes, and turns that overlay into one atomic checkpoint.
//!
//! A checkpoint has two steps. [`PartitionState::seal`] freezes the work so far as the *sealed*
//! batch and starts a fresh overlay, so processing goes on; [`PartitionState::commit_sealed`]
//! writes the sealed batch, with its next offset, in one synced write. Between the two the caller
//! waits for what must be durable first (the dead letters of the sealed records), without
//! stopping the partition. Reads see the open overlay, then the sealed batch, then the store, so
//! a batch can apply many events to one account before anything is written. A failed write keeps
//! the sealed batch, so a retry writes the same batch again. [`PartitionState::submit_sealed`]
//! hands the write to the checkpoint writer's thread instead, and
//! [`PartitionState::poll_sealed_write`] takes its answer: until then the batch stays sealed,
//! and it becomes the checkpoint only once the write is durable.

mod overlay;

use crate::ledger::event::MAX_ID_LEN;
use crate::ledger::{self, BorrowedHistoryEntry, Effect, HistoryOutcome, Rejection, TransactionEvent};
use crate::metrics::PartitionMetrics;
use crate::store::{Checkpoint, CheckpointWriter, PartitionStore, StoreError, WriteInFlight};
use overlay::{Overlay, View};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Applied,
    Duplicate,
    /// Already part of the snapshot this partition was restored from (see `snapshot`).
    InSnapshot,
    /// Must be copied to the dead-letter topic, and confirmed, before its offset is checkpointed.
    DeadLetter(Rejection),
}

/// Work frozen for the next checkpoint write.
struct Sealed {
    overlay: Overlay,
    next_offset: i64,
    watermark_micros: i64,
    records: u64,
    sealed_at: Instant,
    /// The history floor this batch's work requires (see `history_floor`).
    history_floor: i64,
    /// The batch's write, while the checkpoint writer's thread has it.
    in_flight: Option<InFlight>,
}

/// A sealed batch's write in flight.
struct InFlight {
    write: WriteInFlight,
    /// The batch drops the restore skips (the partition read past all of them).
    skips_done: bool,
}

/// The working state of one partition.
pub struct PartitionState {
    partition: i32,
    store: Arc<PartitionStore>,
    /// Work since the last seal.
    overlay: Overlay,
    sealed: Option<Sealed>,
    /// Offset of the next record to process (advances per record).
    next_offset: i64,
    /// Next offset as of the last durable checkpoint.
    checkpointed_offset: i64,
    watermark_micros: i64,
    dedupe_window_micros: i64,
    records_since_checkpoint: u64,
    last_checkpoint: Instant,
    /// The consumer reached the end of the partition's input and no record came since.
    at_end: bool,
    /// After a restore: accounts whose input records below the offset are already in their state.
    restore_skips: HashMap<String, i64>,
    /// The largest offset in `restore_skips`; once the partition reads past it the skips go.
    restore_skips_until: i64,
    /// Newest event time among records skipped since the last seal as already in the restored
    /// snapshot: their effects are in the state but not in its history, so `as_of` answers are
    /// exact only from there on.
    history_floor: i64,
    metrics: PartitionMetrics,
}

/// A partition at the end of its input checkpoints once this share of `checkpoint.interval` has
/// passed since its last checkpoint, instead of the whole interval: what it applied becomes
/// readable (and the end of a catch-up durable) sooner, and a trickle of records that reaches the
/// end after each fetch still costs at most this many checkpoints per interval.
const CAUGHT_UP_SHARE: u32 = 10;

impl PartitionState {
    /// `start_offset` is where consumption begins when the store has never checkpointed (the
    /// partition's low watermark; 0 for a topic that was never truncated).
    pub fn new(
        partition: i32,
        store: Arc<PartitionStore>,
        start_offset: i64,
        dedupe_window: Duration,
        metrics: PartitionMetrics,
    ) -> Result<PartitionState, StoreError> {
        let next_offset = store.stored_next_offset().unwrap_or(start_offset);
        let restore_skips = store.restore_skips()?;
        Ok(PartitionState {
            partition,
            watermark_micros: store.stored_watermark_micros(),
            store,
            overlay: Overlay::default(),
            sealed: None,
            next_offset,
            checkpointed_offset: next_offset,
            dedupe_window_micros: i64::try_from(dedupe_window.as_micros()).unwrap_or(i64::MAX),
            records_since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            at_end: false,
            restore_skips_until: restore_skips.values().copied().max().unwrap_or(i64::MIN),
            restore_skips,
            history_floor: i64::MIN,
            metrics,
        })
    }

    /// Publishes the checkpointed offset, once the partition is really consumed here (a state
    /// prepared for an assignment that was revoked meanwhile must not show up in the metrics).
    pub fn announce(&self) {
        self.metrics.checkpointed_offset.set(self.checkpointed_offset);
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn store(&self) -> &Arc<PartitionStore> {
        &self.store
    }

    /// The offset to resume from: the next offset stored with the state, or the start for new state.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn checkpointed_offset(&self) -> i64 {
        self.checkpointed_offset
    }

    /// Whether the record of `account` at `offset` is already reflected in the snapshot the
    /// partition was restored from. Such records are skipped, dead letters included: the previous
    /// owner confirmed those before the checkpoint the snapshot was read from.
    fn in_snapshot(&self, account: &str, offset: i64) -> bool {
        if offset >= self.restore_skips_until {
            return false;
        }
        self.restore_skips.get(account).is_some_and(|valid_through| offset < *valid_through)
    }

    /// Applies the record at `offset` with record key `key`. A storage error leaves the state as it
    /// was (the reducer reads before it writes), so the caller may retry the same record.
    pub fn process(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        decoded: &Result<TransactionEvent<'_>, Rejection>,
    ) -> Result<Disposition, StoreError> {
        // The record's account: the event's, or for a record that does not decode, its key (the
        // two agree whenever both exist; validation rejects a mismatch). A key that is not UTF-8
        // names no account.
        let account = match decoded {
            Ok(event) => Some(&*event.account_id),
            Err(_) => key.and_then(|key| std::str::from_utf8(key).ok()),
        };
        let mut effect = None;
        let disposition = match decoded {
            _ if account.is_some_and(|a| self.in_snapshot(a, offset)) => Disposition::InSnapshot,
            Err(rejection) => Disposition::DeadLetter(rejection.clone()),
            Ok(event) => {
                let mut view = View {
                    store: &self.store,
                    sealed: self.sealed.as_ref().map(|s| &s.overlay),
                    overlay: &mut self.overlay,
                    remembered_from: dedupe_horizon(self.watermark_micros, self.dedupe_window_micros),
                };
                match ledger::apply(&mut view, event)? {
                    ledger::Outcome::Applied { delta, currency } => {
                        self.watermark_micros = self.watermark_micros.max(event.event_time_micros);
                        effect = Some((delta, currency));
                        Disposition::Applied
                    }
                    ledger::Outcome::Duplicate => Disposition::Duplicate,
                    ledger::Outcome::Rejected(rejection) => Disposition::DeadLetter(rejection),
                }
            }
        };
        match &disposition {
            Disposition::Applied => self.metrics.applied.inc(),
            Disposition::Duplicate => self.metrics.duplicate.inc(),
            Disposition::InSnapshot => self.metrics.in_snapshot.inc(),
            Disposition::DeadLetter(r) => self.metrics.dead_lettered(r.reason),
        }
        self.record_history(offset, account, decoded, &disposition, effect);
        self.next_offset = offset + 1;
        self.records_since_checkpoint += 1;
        self.at_end = false;
        Ok(disposition)
    }

    /// Adds the record to its account's history (records without a usable account id have none).
    fn record_history(
        &mut self,
        offset: i64,
        account: Option<&str>,
        decoded: &Result<TransactionEvent<'_>, Rejection>,
        disposition: &Disposition,
        effect: Option<(ledger::Amount, ledger::Currency)>,
    ) {
        let event = decoded.as_ref().ok();
        let outcome = match disposition {
            Disposition::Applied => HistoryOutcome::Applied,
            Disposition::Duplicate => HistoryOutcome::Duplicate,
            Disposition::DeadLetter(_) => HistoryOutcome::DeadLettered,
            Disposition::InSnapshot => {
                if let Some(event) = event {
                    self.history_floor = self.history_floor.max(event.event_time_micros);
                }
                return;
            }
        };
        let Some(account) = account.filter(|a| !a.is_empty() && a.len() <= MAX_ID_LEN) else {
            return;
        };
        let entry = BorrowedHistoryEntry {
            offset,
            outcome,
            transaction_id: event.map_or("", |e| &e.transaction_id),
            kind: event.map(|e| e.kind),
            effect,
            event_time_micros: event.map(|e| e.event_time_micros),
            reverses: event.and_then(|e| match &e.effect {
                Effect::Reversal { reverses } => Some(&**reverses),
                Effect::Movement { .. } => None,
            }),
            reason: match disposition {
                Disposition::DeadLetter(rejection) => Some(rejection.reason.code()),
                _ => None,
            },
        };
        self.overlay.push_history(account, entry);
    }

    /// True when there is consumed work not yet checkpointed (sealed or not).
    pub fn is_dirty(&self) -> bool {
        self.next_offset != self.checkpointed_offset
    }

    /// True when there is consumed work not yet sealed.
    fn has_unsealed_work(&self) -> bool {
        self.next_offset != self.sealed.as_ref().map_or(self.checkpointed_offset, |s| s.next_offset)
    }

    /// Whether a sealed batch waits to be written.
    pub fn has_sealed(&self) -> bool {
        self.sealed.is_some()
    }

    /// Records that the consumer read everything the partition holds (until the next record).
    pub fn reached_end(&mut self) {
        self.at_end = true;
    }

    /// Whether the checkpoint policy asks to seal the work so far (only one batch is sealed at a time):
    /// after `max_records`, after `interval`, or at the end of the input once a tenth of
    /// `interval` has passed ([`CAUGHT_UP_SHARE`]).
    pub fn checkpoint_due(&self, now: Instant, interval: Duration, max_records: u64) -> bool {
        let since = now.duration_since(self.last_checkpoint);
        self.sealed.is_none()
            && self.has_unsealed_work()
            && (self.reached_max_records(max_records)
                || since >= interval
                || (self.at_end && since >= interval / CAUGHT_UP_SHARE))
    }

    /// Whether enough records were consumed since the last seal to force one.
    pub fn reached_max_records(&self, max_records: u64) -> bool {
        self.records_since_checkpoint >= max_records
    }

    /// Freezes the work so far as the next checkpoint's batch; processing continues in a fresh
    /// overlay. Returns false when there is nothing to seal or a sealed batch is still unwritten.
    pub fn seal(&mut self) -> bool {
        if self.sealed.is_some() || !self.has_unsealed_work() {
            return false;
        }
        let successor = self.overlay.successor();
        self.sealed = Some(Sealed {
            overlay: std::mem::replace(&mut self.overlay, successor),
            next_offset: self.next_offset,
            watermark_micros: self.watermark_micros,
            records: self.records_since_checkpoint,
            sealed_at: Instant::now(),
            history_floor: std::mem::replace(&mut self.history_floor, i64::MIN),
            in_flight: None,
        });
        self.records_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        true
    }

    /// Writes the sealed batch, the forgotten ids and its next offset as one synced batch. The
    /// caller must have confirmed every dead letter below that offset first. Returns the
    /// checkpointed next offset, or `None` when nothing was sealed. A write already handed to the
    /// checkpoint writer is waited for instead; if it failed, the error is returned and the batch
    /// stays sealed, so the next call writes it here.
    pub fn commit_sealed(&mut self) -> Result<Option<i64>, StoreError> {
        let Some(sealed) = &mut self.sealed else { return Ok(None) };
        if let Some(InFlight { write, skips_done }) = sealed.in_flight.take() {
            write.wait()?;
            return Ok(Some(self.finish_sealed(skips_done)));
        }
        let sealed = self.sealed.as_ref().expect("checked above");
        let (batch, skips_done) = self.sealed_batch(sealed);
        batch.commit_with_floor(sealed.next_offset, sealed.watermark_micros, sealed.history_floor)?;
        Ok(Some(self.finish_sealed(skips_done)))
    }

    /// Like [`PartitionState::commit_sealed`], but hands the write to `writer` and returns at
    /// once: processing goes on while RocksDB writes, and reads still see the sealed batch until
    /// [`PartitionState::poll_sealed_write`] finds it durable. Does nothing when nothing is sealed
    /// or its write is in flight already.
    pub fn submit_sealed(&mut self, writer: &CheckpointWriter) -> Result<(), StoreError> {
        let Some(sealed) = &self.sealed else { return Ok(()) };
        if sealed.in_flight.is_some() {
            return Ok(());
        }
        let (batch, skips_done) = self.sealed_batch(sealed);
        let write = batch.submit_with_floor(
            sealed.next_offset,
            sealed.watermark_micros,
            sealed.history_floor,
            &self.store,
            writer,
        )?;
        if let Some(sealed) = &mut self.sealed {
            sealed.in_flight = Some(InFlight { write, skips_done });
        }
        Ok(())
    }

    /// Whether the sealed batch's write is with the checkpoint writer.
    pub fn write_in_flight(&self) -> bool {
        self.sealed.as_ref().is_some_and(|s| s.in_flight.is_some())
    }

    /// The answer to the write in flight, if it came: the checkpointed next offset, or the error
    /// (the batch then stays sealed for [`PartitionState::commit_sealed`] to write again).
    /// `None` while the write goes on or when none is in flight.
    pub fn poll_sealed_write(&mut self) -> Option<Result<i64, StoreError>> {
        let sealed = self.sealed.as_mut()?;
        let InFlight { write, skips_done } = sealed.in_flight.take()?;
        match write.poll() {
            Ok(Ok(())) => Some(Ok(self.finish_sealed(skips_done))),
            Ok(Err(e)) => Some(Err(e)),
            Err(write) => {
                sealed.in_flight = Some(InFlight { write, skips_done });
                None
            }
        }
    }

    /// The write batch of `sealed`, and whether it drops the restore skips (the partition read
    /// past all of them).
    fn sealed_batch(&self, sealed: &Sealed) -> (Checkpoint<'_>, bool) {
        let skips_done = !self.restore_skips.is_empty() && sealed.next_offset >= self.restore_skips_until;
        let mut batch = self.store.begin();
        sealed.overlay.write_to(&mut batch, sealed.next_offset, sealed.watermark_micros);
        if skips_done {
            batch.clear_restore_skips();
        }
        (batch, skips_done)
    }

    /// Once the sealed batch is durable: it becomes the checkpoint. Returns its next offset.
    fn finish_sealed(&mut self, skips_done: bool) -> i64 {
        let sealed = self.sealed.take().expect("a sealed batch was written");
        // Only once durable: after a crash the partition re-reads from the checkpoint with its
        // watermark, and must find every transaction that watermark still remembers.
        self.store.raise_dedupe_horizon(dedupe_horizon(sealed.watermark_micros, self.dedupe_window_micros));
        if skips_done {
            self.restore_skips.clear();
            self.restore_skips_until = i64::MIN;
        }
        // From sealing to durable: includes the wait for the batch's dead letters.
        self.metrics.checkpoint_duration.observe(sealed.sealed_at.elapsed().as_secs_f64());
        self.metrics.checkpoint_records.observe(sealed.records as f64);
        self.metrics.checkpointed_offset.set(sealed.next_offset);
        self.checkpointed_offset = sealed.next_offset;
        sealed.next_offset
    }

    /// Seals and writes everything processed so far (for callers with no dead letters to wait for).
    #[cfg(test)]
    pub fn checkpoint(&mut self) -> Result<Option<i64>, StoreError> {
        self.seal();
        self.commit_sealed()
    }
}

/// The oldest event time a partition whose newest event time is `watermark_micros` remembers
/// transactions from. The rule is exact and the same on every owner, whatever compaction has
/// dropped yet: a transaction is remembered exactly when its event time is at most the dedupe
/// window behind the newest event time applied before it is looked up. Snapshots carry exactly
/// those transactions (see `PartitionStore::scan_changed_accounts`), so a restored owner decides
/// every duplicate as the previous owner would have.
fn dedupe_horizon(watermark_micros: i64, dedupe_window_micros: i64) -> i64 {
    watermark_micros.saturating_sub(dedupe_window_micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{decode, InputFormat};
    use crate::ledger::{Currency, RejectReason};
    use crate::metrics::Metrics;
    use crate::store::{ReadFrom, StoreEnv};

    fn seed(id: &str, amount: &str, ts: &str) -> Result<TransactionEvent<'static>, Rejection> {
        let json = format!(
            r#"{{"transaction_id":"{id}","timestamp":"{ts}","account_id":"6ad87cf1","type":"payment","amount":{amount},"currency":"USD"}}"#
        );
        decode(InputFormat::Json, Some(b"6ad87cf1"), Some(json.as_bytes()), None).map(TransactionEvent::into_owned)
    }

    fn open(env: &StoreEnv) -> PartitionState {
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        PartitionState::new(0, Arc::new(store), 0, Duration::from_secs(7 * 86_400), Metrics::new().for_partition(0))
            .unwrap()
    }

    fn usd_balance(state: &PartitionState) -> Option<String> {
        state.store().balance("6ad87cf1", Currency::parse("USD").unwrap()).unwrap().map(|a| a.to_string())
    }

    #[test]
    fn only_checkpointed_work_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::test_env(dir.path());
        {
            let mut state = open(&env);
            assert_eq!(
                state.process(0, Some(b"6ad87cf1"), &seed("t1", "5000.00", "2024-03-11T12:30:45")).unwrap(),
                Disposition::Applied
            );
            assert_eq!(
                state.process(1, Some(b"6ad87cf1"), &seed("987654321", "-1299.00", "2024-03-11T15:57:09")).unwrap(),
                Disposition::Applied
            );
            // Overlay reads: the conflicting reuse is seen before any checkpoint.
            let third =
                state.process(2, Some(b"6ad87cf1"), &seed("987654321", "-879.00", "2024-03-13T09:17:28")).unwrap();
            assert!(matches!(third, Disposition::DeadLetter(r) if r.reason == RejectReason::ConflictingDuplicate));
            assert_eq!(usd_balance(&state), None, "nothing is visible before the checkpoint");
            assert_eq!(state.checkpoint().unwrap(), Some(3));
            assert_eq!(usd_balance(&state).as_deref(), Some("3701.00"));
            // Work after the checkpoint is lost with the process, and will be re-read from offset 3.
            state.process(3, Some(b"6ad87cf1"), &seed("p9", "-1.00", "2024-03-14T00:00:00")).unwrap();
        }
        let mut state = open(&env);
        assert_eq!(state.next_offset(), 3);
        assert_eq!(usd_balance(&state).as_deref(), Some("3701.00"));
        // After the restart the stored ids still dedupe.
        assert_eq!(
            state.process(3, Some(b"6ad87cf1"), &seed("987654321", "-1299.00", "2024-03-11T15:57:09")).unwrap(),
            Disposition::Duplicate
        );
        assert_eq!(state.checkpoint().unwrap(), Some(4));
        assert_eq!(state.checkpoint().unwrap(), None);
    }

    #[test]
    fn transactions_behind_the_dedupe_window_are_forgotten_wherever_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::test_env(dir.path());
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        let mut state =
            PartitionState::new(0, Arc::new(store), 0, Duration::from_secs(3600), Metrics::new().for_partition(0))
                .unwrap();
        let old = seed("t1", "-1.00", "2024-03-11T00:00:00");
        assert_eq!(state.process(0, Some(b"6ad87cf1"), &old).unwrap(), Disposition::Applied);
        // Inside the window (the newest event time is t1's own): a duplicate.
        assert_eq!(state.process(1, Some(b"6ad87cf1"), &old).unwrap(), Disposition::Duplicate);
        assert_eq!(state.checkpoint().unwrap(), Some(2));
        let later = seed("t2", "-2.00", "2024-03-11T00:59:59");
        assert_eq!(state.process(2, Some(b"6ad87cf1"), &later).unwrap(), Disposition::Applied);
        assert_eq!(state.process(3, Some(b"6ad87cf1"), &old).unwrap(), Disposition::Duplicate, "59:59 behind");
        // Two hours on, t1 (in the store) is outside the window although nothing deleted it yet;
        // t2 (still in the overlay) too, once the window has moved past it.
        let newest = seed("t3", "-4.00", "2024-03-11T02:00:00");
        assert_eq!(state.process(4, Some(b"6ad87cf1"), &newest).unwrap(), Disposition::Applied);
        assert_eq!(state.process(5, Some(b"6ad87cf1"), &old).unwrap(), Disposition::Applied);
        assert_eq!(state.process(6, Some(b"6ad87cf1"), &later).unwrap(), Disposition::Applied);
        assert_eq!(state.process(7, Some(b"6ad87cf1"), &newest).unwrap(), Disposition::Duplicate);
        assert_eq!(state.checkpoint().unwrap(), Some(8));
        assert_eq!(usd_balance(&state).as_deref(), Some("-10.00"));
    }

    #[test]
    fn processing_goes_on_over_a_sealed_batch_and_only_the_batch_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::test_env(dir.path());
        {
            let mut state = open(&env);
            state.process(0, Some(b"6ad87cf1"), &seed("t1", "5000.00", "2024-03-11T12:30:45")).unwrap();
            assert!(state.seal());
            assert!(!state.seal(), "one sealed batch at a time");
            assert!(state.has_sealed() && state.is_dirty());
            // Reads see the sealed batch: the id dedupes and the balance builds on it.
            assert_eq!(
                state.process(1, Some(b"6ad87cf1"), &seed("t1", "5000.00", "2024-03-11T12:30:45")).unwrap(),
                Disposition::Duplicate
            );
            state.process(2, Some(b"6ad87cf1"), &seed("p1", "-1299.00", "2024-03-11T15:57:09")).unwrap();
            assert_eq!(usd_balance(&state), None, "nothing is durable before the write");
            assert_eq!(state.commit_sealed().unwrap(), Some(1));
            assert_eq!(state.checkpointed_offset(), 1);
            assert_eq!(usd_balance(&state).as_deref(), Some("5000.00"), "only the sealed batch is written");
            assert!(state.is_dirty() && !state.has_sealed());
            assert_eq!(state.commit_sealed().unwrap(), None);
        }
        // The unwritten work after the seal is re-read from offset 1 after a restart.
        let mut state = open(&env);
        assert_eq!(state.next_offset(), 1);
        assert_eq!(
            state.process(1, Some(b"6ad87cf1"), &seed("t1", "5000.00", "2024-03-11T12:30:45")).unwrap(),
            Disposition::Duplicate
        );
        state.process(2, Some(b"6ad87cf1"), &seed("p1", "-1299.00", "2024-03-11T15:57:09")).unwrap();
        assert_eq!(state.checkpoint().unwrap(), Some(3));
        assert_eq!(usd_balance(&state).as_deref(), Some("3701.00"));
    }

    /// Polls the write in flight until it answers (within 10 s).
    fn answer_of_write(state: &mut PartitionState) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match state.poll_sealed_write() {
                Some(answer) => return answer.unwrap(),
                None => {
                    assert!(state.write_in_flight(), "a write is in flight until it answers");
                    assert!(Instant::now() < deadline, "the write did not answer within 10 s");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    #[test]
    fn a_write_on_the_writer_thread_counts_only_once_answered_and_processing_goes_on_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::test_env(dir.path());
        let writer = CheckpointWriter::start().unwrap();
        {
            let mut state = open(&env);
            state.process(0, Some(b"6ad87cf1"), &seed("t1", "5000.00", "2024-03-11T12:30:45")).unwrap();
            assert!(state.seal());
            state.submit_sealed(&writer).unwrap();
            assert!(state.has_sealed() && state.write_in_flight());
            // Submitting again does not write the batch twice.
            state.submit_sealed(&writer).unwrap();
            // Reads see the sealed batch whether or not its write is done.
            assert_eq!(
                state.process(1, Some(b"6ad87cf1"), &seed("t1", "5000.00", "2024-03-11T12:30:45")).unwrap(),
                Disposition::Duplicate
            );
            state.process(2, Some(b"6ad87cf1"), &seed("p1", "-1299.00", "2024-03-11T15:57:09")).unwrap();
            assert!(!state.seal(), "the next batch waits for the write");
            assert_eq!(state.checkpointed_offset(), 0, "not a checkpoint until answered");
            // The writer counts a write as busy until its answer is taken, not only until it is
            // done: the consumer polls briefly until then, so it takes up a finished write soon.
            let deadline = Instant::now() + Duration::from_secs(10);
            while state.store().last_checkpoint() != Some(1) {
                assert!(Instant::now() < deadline, "the write was not done within 10 s");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(writer.busy(), "a done write whose answer is not taken yet");
            assert_eq!(answer_of_write(&mut state), 1);
            assert!(!writer.busy());
            assert_eq!(state.checkpointed_offset(), 1);
            assert!(!state.has_sealed() && !state.write_in_flight() && state.poll_sealed_write().is_none());
            assert_eq!(usd_balance(&state).as_deref(), Some("5000.00"), "only the sealed batch is written");
            // `commit_sealed` waits for a write in flight instead of writing the batch again.
            assert!(state.seal());
            state.submit_sealed(&writer).unwrap();
            assert_eq!(state.commit_sealed().unwrap(), Some(3));
            assert!(!state.write_in_flight() && state.commit_sealed().unwrap().is_none());
            assert_eq!(usd_balance(&state).as_deref(), Some("3701.00"));
            // A state dropped with its write in flight waits for it: reopened at once, it finds
            // the write done and its database free.
            state.process(3, Some(b"6ad87cf1"), &seed("p2", "-1.00", "2024-03-12T00:00:00")).unwrap();
            assert!(state.seal());
            state.submit_sealed(&writer).unwrap();
        }
        let mut state = open(&env);
        assert_eq!(state.next_offset(), 4);
        assert_eq!(usd_balance(&state).as_deref(), Some("3700.00"));
        assert_eq!(
            state.process(4, Some(b"6ad87cf1"), &seed("p1", "-1299.00", "2024-03-11T15:57:09")).unwrap(),
            Disposition::Duplicate
        );
        // A writer stopped with a write queued writes it first.
        assert!(state.seal());
        state.submit_sealed(&writer).unwrap();
        drop(writer);
        assert_eq!(answer_of_write(&mut state), 5);
    }

    #[test]
    fn a_partition_at_the_end_of_its_input_checkpoints_after_a_tenth_of_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::test_env(dir.path());
        let mut state = open(&env);
        let (interval, max_records) = (Duration::from_secs(10), 1000);
        let due = |state: &PartitionState, after: Duration| {
            state.checkpoint_due(state.last_checkpoint + after, interval, max_records)
        };
        state.process(0, Some(b"6ad87cf1"), &seed("t1", "5000.00", "2024-03-11T12:30:45")).unwrap();
        assert!(!due(&state, Duration::from_secs(2)), "more input may follow: the interval applies");
        state.reached_end();
        assert!(!due(&state, Duration::from_millis(999)));
        assert!(due(&state, Duration::from_secs(1)));
        state.process(1, Some(b"6ad87cf1"), &seed("p1", "-1299.00", "2024-03-11T15:57:09")).unwrap();
        assert!(!due(&state, Duration::from_secs(2)), "a record came after the end");
        assert!(due(&state, interval));
        assert_eq!(state.checkpoint().unwrap(), Some(2));
        state.reached_end();
        assert!(!due(&state, interval), "nothing to write");
    }

    fn event(
        id: &str,
        kind: &str,
        amount: &str,
        ts: &str,
        reverses: &str,
    ) -> Result<TransactionEvent<'static>, Rejection> {
        let json = format!(
            r#"{{"transaction_id":"{id}","timestamp":"{ts}","account_id":"6ad87cf1","type":"{kind}","amount":"{amount}","currency":"USD","reverses":"{reverses}"}}"#
        );
        decode(InputFormat::Json, Some(b"6ad87cf1"), Some(json.as_bytes()), None).map(TransactionEvent::into_owned)
    }

    fn micros(ts: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(ts).unwrap().timestamp_micros()
    }

    #[test]
    fn history_answers_as_of_in_event_time_and_lists_every_record_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::test_env(dir.path());
        let mut state = open(&env);
        let records = [
            event("t1", "deposit", "100.00", "2024-03-10T00:00:00Z", ""),
            // Arrives second, happened first.
            event("t0", "deposit", "5.00", "2024-03-01T00:00:00Z", ""),
            event("t2", "payment", "-30.00", "2024-03-12T00:00:00Z", ""),
            event("t1", "deposit", "100.00", "2024-03-10T00:00:00Z", ""),
            event("r2", "reversal", "0", "2024-03-15T00:00:00Z", "t2"),
            event("t2", "payment", "-31.00", "2024-03-12T00:00:00Z", ""),
        ];
        let mut outcomes = Vec::new();
        for (offset, record) in records.iter().enumerate() {
            outcomes.push(state.process(offset as i64, Some(b"6ad87cf1"), record).unwrap());
        }
        state.process(6, Some(b"6ad87cf1"), &Err(Rejection::new(RejectReason::MalformedJson, "x".to_owned()))).unwrap();
        assert_eq!(state.checkpoint().unwrap(), Some(7));

        let store = state.store();
        let usd = Currency::parse("USD").unwrap();
        let at = |ts: &str| {
            let read = store.read_account(ReadFrom::Newest, "6ad87cf1", Some(micros(ts))).unwrap().unwrap();
            assert_eq!(read.next_offset, 7);
            assert_eq!(read.history_floor_micros, i64::MIN, "new state keeps history from its first record");
            crate::ledger::history::balances_as_of(&read.balances, &read.applied_history, micros(ts))
                .into_iter()
                .map(|(c, a)| (c, a.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(at("2024-02-01T00:00:00Z"), vec![]);
        assert_eq!(at("2024-03-05T00:00:00Z"), vec![(usd, "5.00".into())]);
        assert_eq!(at("2024-03-10T00:00:00Z"), vec![(usd, "105.00".into())]);
        assert_eq!(at("2024-03-13T00:00:00Z"), vec![(usd, "75.00".into())]);
        assert_eq!(at("2024-03-20T00:00:00Z"), vec![(usd, "105.00".into())]);

        let page = store.history_page(ReadFrom::Newest, "6ad87cf1", None, 100).unwrap();
        let listed: Vec<(i64, &str, &str)> =
            page.entries.iter().map(|e| (e.offset, e.outcome.as_str(), e.transaction_id.as_str())).collect();
        assert_eq!(
            listed,
            vec![
                (6, "dead_lettered", ""),
                (5, "dead_lettered", "t2"),
                (4, "applied", "r2"),
                (3, "duplicate", "t1"),
                (2, "applied", "t2"),
                (1, "applied", "t0"),
                (0, "applied", "t1"),
            ]
        );
        assert_eq!(page.entries[0].reason.as_deref(), Some("malformed_json"));
        assert_eq!(page.entries[1].reason.as_deref(), Some("conflicting_duplicate"));
        assert_eq!(page.entries[2].reverses.as_deref(), Some("t2"));
        assert_eq!(page.entries[2].effect.map(|(a, _)| a.to_string()), Some("30.00".into()));
        // Entries without a reversal target or a reason read back without them.
        assert_eq!((page.entries[3].reverses.as_deref(), page.entries[3].reason.as_deref()), (None, None));
        // Paging: two at a time, then on from the last offset seen.
        let first = store.history_page(ReadFrom::Newest, "6ad87cf1", None, 2).unwrap();
        assert!(first.more);
        let second = store.history_page(ReadFrom::Newest, "6ad87cf1", Some(first.entries[1].offset), 2).unwrap();
        assert_eq!(second.entries.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![4, 3]);
        assert!(store.history_page(ReadFrom::Newest, "nobody", None, 10).unwrap().entries.is_empty());
    }

    #[test]
    fn history_pages_back_in_full_when_an_account_has_many_records_in_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::test_env(dir.path());
        let mut state = open(&env);
        let process = |state: &mut PartitionState, offset: i64, account: &str| {
            let json = format!(
                r#"{{"transaction_id":"t{offset}","timestamp":"2024-03-11T12:30:45Z","account_id":"{account}","type":"deposit","amount":"1.00","currency":"USD"}}"#
            );
            let event = decode(InputFormat::Json, Some(account.as_bytes()), Some(json.as_bytes()), None);
            assert_eq!(state.process(offset, Some(account.as_bytes()), &event).unwrap(), Disposition::Applied);
        };
        // 150 records of one account among 50 of another (more than one key's worth), then 10 more.
        for offset in 0..200 {
            process(&mut state, offset, if offset % 4 == 3 { "b" } else { "6ad87cf1" });
        }
        assert_eq!(state.checkpoint().unwrap(), Some(200));
        for offset in 200..210 {
            process(&mut state, offset, "6ad87cf1");
        }
        assert_eq!(state.checkpoint().unwrap(), Some(210));

        let store = state.store();
        let mut listed = Vec::new();
        let mut before = None;
        loop {
            let page = store.history_page(ReadFrom::Newest, "6ad87cf1", before, 7).unwrap();
            listed.extend(page.entries.iter().map(|e| e.offset));
            before = page.entries.last().map(|e| e.offset);
            if !page.more {
                break;
            }
        }
        let expected: Vec<i64> = (0..210).rev().filter(|offset| offset % 4 != 3 || *offset >= 200).collect();
        assert_eq!(listed, expected);
        let b: Vec<i64> =
            store.history_page(ReadFrom::Newest, "b", None, 100).unwrap().entries.iter().map(|e| e.offset).collect();
        assert_eq!(b, (0..200).rev().filter(|offset| offset % 4 == 3).collect::<Vec<_>>());
        let read = store.read_account(ReadFrom::Newest, "6ad87cf1", Some(i64::MAX)).unwrap().unwrap();
        assert_eq!(read.applied_history.len(), 160);
        assert_eq!(usd_balance(&state).as_deref(), Some("160.00"));
    }

    #[test]
    fn state_from_before_history_existed_opens_with_its_floor_at_its_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::test_env(dir.path());
        {
            let mut state = open(&env);
            state.process(0, Some(b"6ad87cf1"), &seed("t1", "5.00", "2024-03-11T12:30:45")).unwrap();
            state.checkpoint().unwrap();
            crate::store::forget_history_floor(state.store());
        }
        let state = open(&env);
        let read = state.store().read_account(ReadFrom::Newest, "6ad87cf1", None).unwrap().unwrap();
        assert_eq!(read.history_floor_micros, micros("2024-03-11T12:30:45Z"));
    }
}
