//! The broker-independent core of snapshots: one writing round of a partition, and the restore
//! plan built from a partition's records. The argument for their exactness is in [`super`].

use super::codec::{self, Entry, Marker};
use crate::store::{AccountImage, PartitionStore, StoreError};
use std::collections::HashMap;
use std::ops::ControlFlow;

/// Where a round's records go: the snapshot topic's partition, or a test's log.
pub trait SnapshotSink {
    type Error: std::fmt::Display;
    /// Queues a record (key, value) for the round's partition.
    fn send(&mut self, key: &[u8], value: &[u8]) -> Result<(), Self::Error>;
    /// Waits until every queued record is acknowledged.
    fn confirm(&mut self) -> Result<(), Self::Error>;
    /// Whether the round must stop (the partition is being released).
    fn abandoned(&self) -> bool;
}

#[derive(Debug, thiserror::Error)]
pub enum RoundError<E: std::fmt::Display> {
    #[error("reading state: {0}")]
    Store(#[from] StoreError),
    #[error("writing to the snapshot topic: {0}")]
    Sink(E),
    #[error("abandoned: the partition is being released")]
    Abandoned,
}

/// What a complete round wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    pub marker: Marker,
    pub truncated: u64,
}

/// Writes one round for `store`: every account changed since the last complete round, then the
/// marker, then records the round as complete. `Ok(None)` when the state never checkpointed or
/// nothing changed since the last complete round.
pub fn write_round<S: SnapshotSink>(
    store: &PartitionStore,
    input: (&str, i32),
    dedupe_window_micros: i64,
    max_record_size: usize,
    sink: &mut S,
) -> Result<Option<RoundReport>, RoundError<S::Error>> {
    let since = store.snapshot_through()?;
    let (mut written, mut truncated) = (0u64, 0u64);
    let mut failure = None;
    let point = store.scan_changed_accounts(since, dedupe_window_micros, |point, image| {
        if sink.abandoned() {
            failure = Some(RoundError::Abandoned);
            return ControlFlow::Break(());
        }
        let (value, cut) = codec::encode_account(&image, point.next_offset, max_record_size);
        if let Err(e) = sink.send(image.account.as_bytes(), &value) {
            failure = Some(RoundError::Sink(e));
            return ControlFlow::Break(());
        }
        written += 1;
        truncated += u64::from(cut);
        ControlFlow::Continue(())
    })?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    let Some(point) = point else { return Ok(None) };
    if since == Some(point.next_offset) {
        return Ok(None);
    }
    sink.confirm().map_err(RoundError::Sink)?;
    if sink.abandoned() {
        return Err(RoundError::Abandoned);
    }
    let marker = Marker {
        complete_through: point.next_offset,
        watermark_micros: point.watermark_micros,
        accounts_written: written,
    };
    sink.send(codec::MARKER_KEY, &codec::encode_marker(&marker, input.0, input.1)).map_err(RoundError::Sink)?;
    sink.confirm().map_err(RoundError::Sink)?;
    store.record_snapshot_through(point.next_offset)?;
    Ok(Some(RoundReport { marker, truncated }))
}

/// What a restore loads, gathered from a snapshot partition's records in log order.
pub struct RestoreCollector {
    /// The input partition being restored; markers of any other mean a shared or miswired topic.
    input: (String, i32),
    /// Per account, the record with the highest valid_through.
    accounts: HashMap<String, (i64, AccountImage)>,
    marker: Option<Marker>,
}

/// The snapshot partition holds rounds of another input partition.
#[derive(Debug, thiserror::Error)]
#[error("the snapshot partition holds rounds of {found_topic:?} partition {found_partition}, not {expected_topic:?} partition {expected_partition}")]
pub struct ForeignSnapshot {
    pub found_topic: String,
    pub found_partition: i32,
    pub expected_topic: String,
    pub expected_partition: i32,
}

/// The state to load and where to resume the input.
#[derive(Debug)]
pub struct RestorePlan {
    /// The input offset to resume at: the chosen marker's complete_through.
    pub restore_from: i64,
    pub watermark_micros: i64,
    /// Every account's chosen record, with its valid_through.
    pub accounts: Vec<(AccountImage, i64)>,
}

impl RestoreCollector {
    pub fn new(input_topic: &str, input_partition: i32) -> RestoreCollector {
        RestoreCollector { input: (input_topic.to_owned(), input_partition), accounts: HashMap::new(), marker: None }
    }

    pub fn add(&mut self, entry: Entry) -> Result<(), ForeignSnapshot> {
        match entry {
            Entry::Account { image, valid_through } => match self.accounts.get_mut(&image.account) {
                Some(chosen) if chosen.0 > valid_through => {}
                Some(chosen) => *chosen = (valid_through, image),
                None => {
                    self.accounts.insert(image.account.clone(), (valid_through, image));
                }
            },
            Entry::Marker { marker, input_topic, input_partition } => {
                if (input_topic.as_str(), input_partition) != (self.input.0.as_str(), self.input.1) {
                    return Err(ForeignSnapshot {
                        found_topic: input_topic,
                        found_partition: input_partition,
                        expected_topic: self.input.0.clone(),
                        expected_partition: self.input.1,
                    });
                }
                if self.marker.is_none_or(|m| marker.complete_through >= m.complete_through) {
                    self.marker = Some(marker);
                }
            }
        }
        Ok(())
    }

    /// The plan, or `None` when no round ever completed (then there is nothing sound to restore:
    /// the input is replayed from its beginning).
    pub fn finish(self) -> Option<RestorePlan> {
        let marker = self.marker?;
        Some(RestorePlan {
            restore_from: marker.complete_through,
            watermark_micros: marker.watermark_micros,
            accounts: self.accounts.into_values().map(|(v, image)| (image, v)).collect(),
        })
    }
}

/// Accounts restored per write batch.
const LOAD_CHUNK: usize = 5_000;

/// Writes `plan` into `store`, which must be empty. Intermediate chunks are unsynced and carry no
/// next offset, so a crash part-way leaves state that the next open recognises as incomplete; the
/// final batch sets the next offset (`restore_from`) and is synced.
///
/// The restored state has no history of what the snapshot holds, so its history floor is the
/// newest event time known to be in it (records skipped during replay as already in the snapshot
/// raise it further, see `partition`).
pub fn load(store: &PartitionStore, plan: &RestorePlan) -> Result<(), StoreError> {
    let newest_restored = plan.accounts.iter().flat_map(|(image, _)| &image.transactions);
    let floor = newest_restored.map(|(_, record)| record.event_time_micros).fold(plan.watermark_micros, i64::max);
    let mut chunks = plan.accounts.chunks(LOAD_CHUNK).peekable();
    if chunks.peek().is_none() {
        let mut batch = store.begin();
        batch.put_snapshot_through(plan.restore_from);
        return batch.commit_with_floor(plan.restore_from, plan.watermark_micros, floor);
    }
    while let Some(chunk) = chunks.next() {
        let mut batch = store.begin();
        for (image, valid_through) in chunk {
            for (currency, balance) in &image.balances {
                batch.put_balance(&image.account, *currency, *balance, *valid_through);
            }
            for (id, record) in &image.transactions {
                batch.put_transaction(&image.account, id, record);
            }
            if *valid_through > plan.restore_from {
                batch.put_restore_skip(&image.account, *valid_through);
            }
        }
        if chunks.peek().is_some() {
            batch.write_partial()?;
        } else {
            batch.put_snapshot_through(plan.restore_from);
            batch.commit_with_floor(plan.restore_from, plan.watermark_micros, floor)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{decode, InputFormat};
    use crate::loadgen::{self, Shape};
    use crate::metrics::Metrics;
    use crate::partition::PartitionState;
    use crate::store::{all_balances, test_env as env, StoreEnv};
    use std::sync::Arc;
    use std::time::Duration;

    /// The snapshot topic's partition as a log; `fail_after` simulates a crash part-way.
    #[derive(Default)]
    struct LogSink {
        log: Vec<(Vec<u8>, Vec<u8>)>,
        fail_after: Option<usize>,
    }

    impl SnapshotSink for LogSink {
        type Error = String;
        fn send(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
            if self.fail_after == Some(0) {
                return Err("crashed".into());
            }
            self.fail_after = self.fail_after.map(|n| n - 1);
            self.log.push((key.to_vec(), value.to_vec()));
            Ok(())
        }
        fn confirm(&mut self) -> Result<(), String> {
            Ok(())
        }
        fn abandoned(&self) -> bool {
            false
        }
    }

    fn state(env: &StoreEnv) -> PartitionState {
        let (store, aside) = env.open_partition("transactions", 0).unwrap();
        assert!(aside.is_none());
        PartitionState::new(0, Arc::new(store), 0, Duration::from_secs(7 * 86_400), Metrics::new().for_partition(0))
            .unwrap()
    }

    fn process(state: &mut PartitionState, records: &[loadgen::Fixture], from: usize, to: usize) {
        for (offset, record) in records.iter().enumerate().take(to).skip(from) {
            let key = Some(record.key.as_bytes());
            let decoded = decode(InputFormat::Json, key, Some(record.value.as_bytes()), None);
            state.process(offset as i64, key, &decoded).unwrap();
        }
    }

    /// Keeps the newest record per key, like log compaction.
    fn compact(log: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut newest: HashMap<&[u8], usize> = HashMap::new();
        for (i, (key, _)) in log.iter().enumerate() {
            newest.insert(key, i);
        }
        log.iter().enumerate().filter(|(i, (key, _))| newest[key.as_slice()] == *i).map(|(_, r)| r.clone()).collect()
    }

    fn restore_and_replay(
        log: &[(Vec<u8>, Vec<u8>)],
        records: &[loadgen::Fixture],
    ) -> (Vec<(String, crate::ledger::Currency, crate::ledger::Amount)>, i64) {
        let mut collector = RestoreCollector::new("transactions", 0);
        for (key, value) in log {
            collector.add(codec::decode(key, Some(value)).unwrap().unwrap()).unwrap();
        }
        let plan = collector.finish().expect("a round completed");
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path());
        {
            let (store, _) = env.open_partition("transactions", 0).unwrap();
            load(&store, &plan).unwrap();
        }
        let mut restored = state(&env);
        assert_eq!(restored.next_offset(), plan.restore_from);
        process(&mut restored, records, plan.restore_from as usize, records.len());
        restored.checkpoint().unwrap();
        (all_balances(restored.store()).unwrap(), plan.restore_from)
    }

    /// Rounds, an interrupted round, more input, then restores from the raw log and from its
    /// compacted form: both equal processing the whole input without snapshots.
    #[test]
    fn restore_is_exact_with_interrupted_rounds_and_compaction() {
        // With transaction ids in the snapshot, dedupe would also catch records replayed twice.
        let full = Shape { events: 6_000, accounts: 300, ..Shape::default() };
        restore_is_exact(&full, i64::MAX);
        // Without them, only the per-account restore offsets keep the interrupted round's accounts
        // from seeing their records twice (no duplicates in the input, so none need ids).
        let plain = Shape { duplicate_rate: 0.0, conflict_rate: 0.0, reversal_rate: 0.0, ..full };
        restore_is_exact(&plain, 0);
    }

    fn restore_is_exact(shape: &Shape, window: i64) {
        let workload = loadgen::generate(7, shape);
        let records = &workload.records;
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path());
        let mut live = state(&env);
        let mut sink = LogSink::default();
        let mut at = 0;
        for (until, interrupt_after) in [(1_000, None), (2_500, Some(40)), (3_000, None), (4_500, Some(7))] {
            while at < until {
                let next = (at + 333).min(until);
                process(&mut live, records, at, next);
                live.checkpoint().unwrap();
                at = next;
            }
            sink.fail_after = interrupt_after;
            let result = write_round(live.store(), ("transactions", 0), window, 1 << 20, &mut sink);
            match interrupt_after {
                None => assert!(result.unwrap().is_some()),
                Some(_) => assert!(matches!(result, Err(RoundError::Sink(_)))),
            }
        }
        process(&mut live, records, at, records.len());
        live.checkpoint().unwrap();
        let expected = all_balances(live.store()).unwrap();

        let (from_log, restore_from) = restore_and_replay(&sink.log, records);
        assert_eq!(restore_from, 3_000, "the newest complete round");
        assert_eq!(from_log, expected);
        let compacted = compact(&sink.log);
        assert!(compacted.len() < sink.log.len());
        let (from_compacted, _) = restore_and_replay(&compacted, records);
        assert_eq!(from_compacted, expected);
        // And both equal the workload's independent arithmetic.
        for (account, _, amount) in &expected {
            let cents = workload.expected[account];
            assert_eq!(amount.to_string(), loadgen::cents_to_string(cents), "{account}");
        }
    }

    /// A duplicate of a transaction applied before the restore point is recognised after it.
    #[test]
    fn duplicates_of_snapshotted_transactions_are_not_applied_again() {
        let records: Vec<loadgen::Fixture> = (0..10)
            .map(|i| loadgen::Fixture {
                key: "acct".into(),
                value: format!(
                    r#"{{"transaction_id":"t{}","timestamp":"2024-06-01T00:00:0{}Z","account_id":"acct","type":"deposit","amount":"1.00","currency":"USD"}}"#,
                    i % 5,
                    i % 5
                ),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path());
        let mut live = state(&env);
        let mut sink = LogSink::default();
        process(&mut live, &records, 0, 5);
        live.checkpoint().unwrap();
        write_round(live.store(), ("transactions", 0), i64::MAX, 1 << 20, &mut sink).unwrap().unwrap();
        // Offsets 5..10 re-deliver t0..t4: the restored state must see them as duplicates.
        let (balances, restore_from) = restore_and_replay(&sink.log, &records);
        assert_eq!(restore_from, 5);
        assert_eq!(balances.len(), 1);
        assert_eq!(balances[0].2.to_string(), "5.00");
    }

    #[test]
    fn rounds_of_another_input_are_refused() {
        let marker = Marker { complete_through: 1, watermark_micros: 0, accounts_written: 0 };
        let mut collector = RestoreCollector::new("transactions", 0);
        let entry = Entry::Marker { marker, input_topic: "payments".into(), input_partition: 0 };
        assert!(collector.add(entry).is_err());
        let entry = Entry::Marker { marker, input_topic: "transactions".into(), input_partition: 1 };
        assert!(collector.add(entry).is_err());
    }

    #[test]
    fn a_round_with_nothing_new_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let env = env(dir.path());
        let mut live = state(&env);
        let mut sink = LogSink::default();
        assert_eq!(write_round(live.store(), ("transactions", 0), i64::MAX, 1 << 20, &mut sink).unwrap(), None);
        assert!(sink.log.is_empty(), "state that never checkpointed has nothing to snapshot");

        let workload = loadgen::generate(3, &Shape { events: 50, accounts: 5, ..Shape::default() });
        process(&mut live, &workload.records, 0, 50);
        live.checkpoint().unwrap();
        let report = write_round(live.store(), ("transactions", 0), i64::MAX, 1 << 20, &mut sink).unwrap().unwrap();
        assert_eq!(report.marker.complete_through, 50);
        let written = sink.log.len();
        assert_eq!(written as u64, report.marker.accounts_written + 1, "accounts, then one marker");
        // Nothing checkpointed since: the snapshot is current and the round writes nothing.
        assert_eq!(write_round(live.store(), ("transactions", 0), i64::MAX, 1 << 20, &mut sink).unwrap(), None);
        assert_eq!(sink.log.len(), written);
    }
}
