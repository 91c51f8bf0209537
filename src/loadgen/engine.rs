//! One partition's engine without a broker: generated records held in memory go through decode,
//! apply and checkpoints as the consumer thread runs them (`kafka::consumer`), on the calling
//! thread. Both engine benchmarks use it: `ledgerd-bench engine` (passes from empty state, verified
//! balances) and the criterion bench in `benches/engine.rs`.

use super::{cents_to_string, Fixture};
use crate::config::{SnapshotConfig, StateConfig};
use crate::input::{self, InputFormat};
use crate::ledger::{Amount, Currency};
use crate::metrics::Metrics;
use crate::partition::PartitionState;
use crate::snapshot::round::{self, RoundError, SnapshotSink};
use crate::store::{CacheStats, CheckpointWriter, PartitionStore, StoreEnv, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// ledgerd's default dedupe window, which the generator's duplicates are shaped for.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// With a writer thread, how often (records) the engine looks for the answer of the write in
/// flight: about as often as the consumer thread does (every 10 ms, some 4,000 records).
const ANSWER_CHECK_EVERY: usize = 4096;

/// A fresh partition state in its own store environment (default state settings).
pub struct Engine {
    state: PartitionState,
    /// Writes the checkpoints on a thread of their own, as ledgerd's consumer does; `None`
    /// writes them on the calling thread (one core: goal 3's measure).
    writer: Option<CheckpointWriter>,
    store: Arc<PartitionStore>,
    // Dropped last: the partition's store lives in it.
    env: StoreEnv,
}

impl Engine {
    /// Opens new state in `state.dir`, which must not hold state already (a second run over the
    /// same records would only find duplicates).
    pub fn open(state: &StateConfig, metrics: &Metrics) -> Result<Engine, StoreError> {
        let env = StoreEnv::new(state)?;
        let (store, _) = env.open_partition("bench", 0)?;
        let store = Arc::new(store);
        let state = PartitionState::new(0, Arc::clone(&store), 0, DEDUPE_WINDOW, metrics.for_partition(0))?;
        Ok(Engine { state, writer: None, store, env })
    }

    /// Writes the checkpoints on a writer thread, as `ledgerd run` does: a batch is written while
    /// the next records apply, and waited for when the next batch is due.
    pub fn with_writer_thread(mut self) -> std::io::Result<Engine> {
        self.writer = Some(CheckpointWriter::start()?);
        Ok(self)
    }

    /// Decodes and applies `records` as offsets 0, 1, …, sealing and writing a checkpoint every
    /// `checkpoint_every` records and after the last (no dead letters wait: they have no topic).
    /// Returns the time spent in checkpoints (sealing, building and writing each batch), so a
    /// pass's time splits into decoding, applying and checkpointing.
    pub fn run(&mut self, records: &[Fixture], checkpoint_every: u64) -> Result<Duration, StoreError> {
        // As the consumer thread does.
        crate::store::stop_perf_counters_on_this_thread();
        let mut checkpointing = Duration::ZERO;
        for (offset, record) in records.iter().enumerate() {
            let key = Some(record.key.as_bytes());
            let decoded = input::decode(InputFormat::Json, key, Some(record.value.as_bytes()), None);
            self.state.process(offset as i64, key, &decoded)?;
            if self.writer.is_some() && offset % ANSWER_CHECK_EVERY == 0 {
                checkpointing += self.take_answer()?;
            }
            if self.state.reached_max_records(checkpoint_every) {
                checkpointing += match &self.writer {
                    Some(writer) => Self::submit(&mut self.state, writer)?,
                    None => self.checkpoint()?,
                };
            }
        }
        // Waits for the last batch's write, if in flight, then writes the rest here.
        checkpointing += self.checkpoint()?;
        Ok(checkpointing)
    }

    /// Lookups the balance cache answered and did not, so far.
    pub fn balance_cache_stats(&self) -> CacheStats {
        self.env.balance_cache_stats()
    }

    /// Waits for the flushes and compactions the run left scheduled.
    pub fn wait_for_background_work(&self) -> Result<(), StoreError> {
        self.store.wait_for_background_work()
    }

    /// Seals and writes the work so far on this thread (after the write in flight, if any).
    fn checkpoint(&mut self) -> Result<Duration, StoreError> {
        let started = Instant::now();
        self.state.commit_sealed()?;
        self.state.seal();
        self.state.commit_sealed()?;
        // As the consumer thread does after each checkpoint (it logs and counts a failure instead).
        self.state.store().flush_largest_memtables_over_budget()?;
        Ok(started.elapsed())
    }

    /// Takes the answer of the write in flight if it came (reads stop looking into its batch).
    fn take_answer(&mut self) -> Result<Duration, StoreError> {
        let started = Instant::now();
        if self.state.poll_sealed_write().transpose()?.is_some() {
            self.state.store().flush_largest_memtables_over_budget()?;
        }
        Ok(started.elapsed())
    }

    /// Waits for the batch in flight, if any, then seals and hands the next to `writer`. Returns
    /// the time this thread spent on it (waiting, sealing and building the batch).
    fn submit(state: &mut PartitionState, writer: &CheckpointWriter) -> Result<Duration, StoreError> {
        let started = Instant::now();
        if state.commit_sealed()?.is_some() {
            state.store().flush_largest_memtables_over_budget()?;
        }
        state.seal();
        state.submit_sealed(writer)?;
        Ok(started.elapsed())
    }

    /// Writes one snapshot round of the whole state to a sink that only counts what it is given,
    /// as the snapshot writer does after a catch-up: the round's own cost, without a broker.
    /// Returns the accounts and bytes written.
    pub fn snapshot_round(&self) -> Result<(u64, u64), RoundError<std::convert::Infallible>> {
        let mut sink = CountingSink::default();
        let window = i64::try_from(DEDUPE_WINDOW.as_micros()).unwrap_or(i64::MAX);
        let max_record_size = SnapshotConfig::default().max_record_size.0 as usize;
        let report = round::write_round(&self.store, ("bench", 0), window, max_record_size, &mut sink)?;
        Ok((report.map_or(0, |r| r.marker.accounts_written), sink.bytes))
    }

    /// How many of the `expected` USD balances (in cents, from the generator) the store does not
    /// hold exactly.
    pub fn wrong_balances(&self, expected: &BTreeMap<String, i128>) -> Result<usize, StoreError> {
        let usd = Currency::parse("USD").expect("USD is a currency");
        let mut wrong = 0;
        for (account, cents) in expected {
            let want = Amount::parse(&cents_to_string(*cents)).ok();
            wrong += usize::from(self.store.balance(account, usd)? != want);
        }
        Ok(wrong)
    }
}

/// A snapshot sink that keeps nothing: it counts the bytes of the records it is given.
#[derive(Default)]
struct CountingSink {
    bytes: u64,
}

impl SnapshotSink for CountingSink {
    type Error = std::convert::Infallible;
    fn send(&mut self, key: &[u8], value: &[u8]) -> Result<(), Self::Error> {
        self.bytes += (key.len() + value.len()) as u64;
        Ok(())
    }
    fn confirm(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    fn abandoned(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::{generate, Shape};

    fn state_in(dir: &std::path::Path) -> StateConfig {
        StateConfig { dir: dir.to_path_buf(), ..StateConfig::default() }
    }

    #[test]
    fn a_generated_workload_runs_to_its_expected_balances() {
        let shape = Shape { events: 3_000, accounts: 50, recent_events: 1_000, ..Shape::default() };
        let work = generate(3, &shape);
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::open(&state_in(dir.path()), &Metrics::new()).unwrap();
        engine.run(&work.records, 700).unwrap();
        assert_eq!(engine.wrong_balances(&work.expected).unwrap(), 0);
        assert!(!work.expected.is_empty());
    }

    #[test]
    fn with_a_writer_thread_too() {
        let shape = Shape { events: 3_000, accounts: 50, recent_events: 1_000, ..Shape::default() };
        let work = generate(3, &shape);
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::open(&state_in(dir.path()), &Metrics::new()).unwrap().with_writer_thread().unwrap();
        engine.run(&work.records, 700).unwrap();
        assert_eq!(engine.wrong_balances(&work.expected).unwrap(), 0);
        assert_eq!(engine.store.last_checkpoint(), Some(3_000));
    }

    #[test]
    fn a_wrong_balance_is_counted() {
        let work = generate(3, &Shape { events: 200, accounts: 5, recent_events: 100, ..Shape::default() });
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::open(&state_in(dir.path()), &Metrics::new()).unwrap();
        engine.run(&work.records, 50).unwrap();
        let mut expected = work.expected.clone();
        *expected.values_mut().next().unwrap() += 1;
        assert_eq!(engine.wrong_balances(&expected).unwrap(), 1);
    }
}
