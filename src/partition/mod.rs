//! One owned input partition: applies records through the reducer into an in-memory overlay of
//! uncheckpointed changes, and turns that overlay into one atomic checkpoint.
//!
//! Reads see the overlay first and the stored state second, so a batch can apply many events to one
//! account before anything is written. The overlay is cleared only after its checkpoint is durable;
//! a failed checkpoint keeps it, so a retry writes the same batch again.

mod overlay;

use crate::ledger::{self, Rejection, TransactionEvent};
use crate::metrics::PartitionMetrics;
use crate::store::{PartitionStore, StoreError};
use overlay::{Overlay, View};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most expired transaction ids forgotten per checkpoint, so pruning never makes one checkpoint slow.
const FORGET_PER_CHECKPOINT: usize = 20_000;

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

/// The working state of one partition.
pub struct PartitionState {
    partition: i32,
    store: Arc<PartitionStore>,
    overlay: Overlay,
    /// Offset of the next record to process (advances per record).
    next_offset: i64,
    /// Next offset as of the last durable checkpoint.
    checkpointed_offset: i64,
    watermark_micros: i64,
    dedupe_window_micros: i64,
    records_since_checkpoint: u64,
    last_checkpoint: Instant,
    /// Every remembered transaction with an earlier event time is already forgotten (a late event
    /// older than this is remembered until the next restart resets the floor: storage, not safety).
    expiry_floor: i64,
    /// After a restore: accounts whose input records below the offset are already in their state.
    restore_skips: HashMap<String, i64>,
    /// The largest offset in `restore_skips`; once the partition reads past it the skips go.
    restore_skips_until: i64,
    metrics: PartitionMetrics,
}

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
            next_offset,
            checkpointed_offset: next_offset,
            dedupe_window_micros: i64::try_from(dedupe_window.as_micros()).unwrap_or(i64::MAX),
            records_since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            expiry_floor: i64::MIN,
            restore_skips_until: restore_skips.values().copied().max().unwrap_or(i64::MIN),
            restore_skips,
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
    fn in_snapshot(&self, account: &[u8], offset: i64) -> bool {
        if offset >= self.restore_skips_until {
            return false;
        }
        let Ok(account) = std::str::from_utf8(account) else { return false };
        self.restore_skips.get(account).is_some_and(|valid_through| offset < *valid_through)
    }

    /// Applies the record at `offset` with record key `key`. A storage error leaves the state as it
    /// was (the reducer reads before it writes), so the caller may retry the same record.
    pub fn process(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        decoded: &Result<TransactionEvent, Rejection>,
    ) -> Result<Disposition, StoreError> {
        // The record's account: the event's, or for a record that does not decode, its key (the
        // two agree whenever both exist; validation rejects a mismatch).
        let account = match decoded {
            Ok(event) => Some(event.account_id.as_bytes()),
            Err(_) => key,
        };
        let disposition = match decoded {
            _ if account.is_some_and(|a| self.in_snapshot(a, offset)) => Disposition::InSnapshot,
            Err(rejection) => Disposition::DeadLetter(rejection.clone()),
            Ok(event) => {
                let mut view = View { store: &self.store, overlay: &mut self.overlay };
                match ledger::apply(&mut view, event)? {
                    ledger::Outcome::Applied { .. } => {
                        self.watermark_micros = self.watermark_micros.max(event.event_time_micros);
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
        self.next_offset = offset + 1;
        self.records_since_checkpoint += 1;
        Ok(disposition)
    }

    /// True when there is consumed work not yet checkpointed.
    pub fn is_dirty(&self) -> bool {
        self.next_offset != self.checkpointed_offset
    }

    /// Whether the checkpoint policy asks for a checkpoint now.
    pub fn checkpoint_due(&self, now: Instant, interval: Duration, max_records: u64) -> bool {
        self.is_dirty()
            && (self.reached_max_records(max_records) || now.duration_since(self.last_checkpoint) >= interval)
    }

    /// Whether enough records were consumed since the last checkpoint to force one.
    pub fn reached_max_records(&self, max_records: u64) -> bool {
        self.records_since_checkpoint >= max_records
    }

    /// Records how long a whole checkpoint took (dead-letter confirmation included).
    pub fn observe_checkpoint_duration(&self, elapsed: Duration) {
        self.metrics.checkpoint_duration.observe(elapsed.as_secs_f64());
    }

    /// Writes the overlay, the forgotten ids and the next offset as one synced batch. The caller must
    /// have confirmed every dead letter below `next_offset` first. Returns the checkpointed next
    /// offset, or `None` when there was nothing to write.
    pub fn checkpoint(&mut self) -> Result<Option<i64>, StoreError> {
        if !self.is_dirty() {
            self.last_checkpoint = Instant::now();
            return Ok(None);
        }
        let mut batch = self.store.begin();
        let mut next_floor = self.expiry_floor;
        self.overlay.write_to(&mut batch, self.next_offset);
        let skips_done = !self.restore_skips.is_empty() && self.next_offset >= self.restore_skips_until;
        if skips_done {
            batch.clear_restore_skips();
        }
        if self.watermark_micros != i64::MIN {
            let cutoff = self.watermark_micros.saturating_sub(self.dedupe_window_micros);
            let (_, floor) = batch.forget_transactions_before(self.expiry_floor, cutoff, FORGET_PER_CHECKPOINT)?;
            next_floor = floor;
        }
        batch.commit(self.next_offset, self.watermark_micros)?;
        self.expiry_floor = next_floor;
        self.overlay.clear();
        if skips_done {
            self.restore_skips.clear();
            self.restore_skips_until = i64::MIN;
        }
        self.metrics.checkpoint_records.observe(self.records_since_checkpoint as f64);
        self.metrics.checkpointed_offset.set(self.next_offset);
        self.checkpointed_offset = self.next_offset;
        self.records_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(Some(self.next_offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{decode, InputFormat};
    use crate::ledger::{Currency, RejectReason};
    use crate::metrics::Metrics;
    use crate::store::StoreEnv;

    fn seed(id: &str, amount: &str, ts: &str) -> Result<TransactionEvent, Rejection> {
        let json = format!(
            r#"{{"transaction_id":"{id}","timestamp":"{ts}","account_id":"6ad87cf1","type":"payment","amount":{amount},"currency":"USD"}}"#
        );
        decode(InputFormat::Json, Some(b"6ad87cf1"), Some(json.as_bytes()), None)
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
}
