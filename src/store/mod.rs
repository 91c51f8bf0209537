//! Local state: one RocksDB database per owned input partition. The only module that imports `rocksdb`.
//!
//! Offset vocabulary, used everywhere in ledgerd:
//! - **next offset**: the offset of the next input record to read. Every record below it is reflected
//!   in the state (applied, skipped as a duplicate, or confirmed in the dead-letter topic).
//! - A **checkpoint** is one atomic `WriteBatch` holding the changed balances, the remembered
//!   transaction ids and the next offset, written with a synced WAL. State and offset therefore can
//!   never disagree: after a crash the partition resumes at the stored next offset.
//!
//! All partitions share one block cache and one write-buffer manager charged to that cache, so the
//! memory of every database together is bounded by `state.block_cache_size`.
//!
//! Beside RocksDB, each partition keeps in-memory key filters (`filter`) that answer most lookups
//! of absent balances and transaction ids without reading RocksDB: about 1.5 bytes per balance and
//! per transaction id inside the dedupe window (`ledgerd_state_key_filter_bytes`). A cache of
//! checkpointed balances shared by every partition (`balance_cache`, bounded by
//! `state.balance_cache_size`) answers most reads of balances that are there.

mod balance_cache;
mod batch;
mod checkpoint;
pub mod codec;
mod env;
mod filter;
pub mod keys;
mod views;
mod writer;

use crate::ledger::history::balances_as_of;
use crate::ledger::{Amount, Currency, HistoryEntry, TransactionRecord};
use balance_cache::BalanceCache;
pub use balance_cache::{CacheSlot, CacheStats};
pub use checkpoint::Checkpoint;
use checkpoint::{PreparedWrite, RecordPrefixes};
use codec::CodecError;
use env::LEVEL_ZERO_COMPACTION_TRIGGER;
pub use env::{SetAside, StoreEnv};
use filter::{KeyFilters, Loader};
use keys::{MetaKey, CF_BALANCES, CF_HISTORY, CF_META, CF_RESTORE_SKIP, CF_TRANSACTIONS};
use rocksdb::{Direction, FlushOptions, IteratorMode, ReadOptions, WriteBatch, WriteBufferManager, WriteOptions, DB};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;
use views::{CommittedViews, View};
pub use writer::{CheckpointWriter, WriteInFlight};

/// Version of the on-disk layout; bump when keys or value encodings change incompatibly.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("io on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Keeping the shared memtable budget touches every partition's database, not only the
    /// caller's: this names the one that failed.
    #[error("memtable budget, state {path}: {source}")]
    MemtableBudget { path: PathBuf, source: rocksdb::Error },
    /// The checkpoint writer's thread ended (it panicked) without answering a write: whether
    /// the batch is durable is unknown, so the caller writes it again (the same puts).
    #[error("the checkpoint writer thread stopped before answering")]
    WriterStopped,
}

/// A memtable flushed to keep within the shared budget holds at least this share of it (1 MiB of
/// the default 64 MiB): a smaller one is not worth its own level-0 file and the compactions behind
/// it ([`PartitionStore::flush_largest_memtables_over_budget`]).
const MIN_FLUSH_SHARE: usize = 64;

/// A flush to keep within the budget is not asked for while a column family has this many
/// level-0 files: RocksDB's default slowdown trigger is 20, and a flush that would reach it makes
/// RocksDB hold the caller.
const FLUSH_LEVEL_ZERO_LIMIT: u64 = 2 * LEVEL_ZERO_COMPACTION_TRIGGER as u64;

/// Below these, compaction may drop what a partition no longer needs; shared with its compaction
/// filters. Both only rise, and both start at `i64::MIN` (keep everything) until the first checkpoint.
struct Horizons {
    /// History entries with an older retention time (`state.history_retention`).
    history: Arc<AtomicI64>,
    /// Transactions with an older event time (`dedupe.window` behind the checkpointed watermark).
    dedupe: Arc<AtomicI64>,
    /// While a snapshot scan runs, the dedupe horizon as of its view (`i64::MAX` otherwise):
    /// compaction keeps what the scan's window still needs however far `dedupe` moves meanwhile.
    dedupe_held: Arc<AtomicI64>,
}

impl Default for Horizons {
    fn default() -> Self {
        let starting = || Arc::new(AtomicI64::new(i64::MIN));
        Horizons { history: starting(), dedupe: starting(), dedupe_held: Arc::new(AtomicI64::new(i64::MAX)) }
    }
}

/// Holds compaction's dedupe horizon where it is until dropped (see [`Horizons::dedupe_held`]).
struct DedupeHold<'a> {
    held: &'a AtomicI64,
    previous: i64,
}

impl<'a> DedupeHold<'a> {
    fn new(horizons: &'a Horizons) -> Self {
        // Taken before the scan's view: compaction so far dropped only what the checkpoint the
        // view will read no longer remembers (the horizon rises only after a checkpoint commits).
        let previous = horizons.dedupe_held.swap(horizons.dedupe.load(Ordering::Relaxed), Ordering::Relaxed);
        DedupeHold { held: &horizons.dedupe_held, previous }
    }
}

impl Drop for DedupeHold<'_> {
    fn drop(&mut self) {
        self.held.store(self.previous, Ordering::Relaxed);
    }
}

/// One account's state, read for a snapshot round or written by a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountImage {
    pub account: String,
    pub balances: Vec<(Currency, Amount)>,
    /// Remembered transactions, newest event time first.
    pub transactions: Vec<(String, TransactionRecord)>,
}

/// The checkpoint a snapshot scan read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanPoint {
    pub next_offset: i64,
    pub watermark_micros: i64,
}

/// The state of one input partition.
pub struct PartitionStore {
    /// Shared only with the loader of `filters`, which `loader` stops and waits for on drop.
    db: Arc<DB>,
    path: PathBuf,
    /// Answer most lookups of absent balances and transaction ids without reading RocksDB.
    filters: Arc<KeyFilters>,
    _loader: Loader,
    balances: CachedBalances,
    next_offset: Option<i64>,
    /// The next offset of the newest checkpoint written through this handle (or found at
    /// opening), `i64::MIN` before there is one: read by other threads without a RocksDB read.
    checkpointed: AtomicI64,
    watermark_micros: i64,
    /// What compaction may drop (shared with the compaction filters).
    horizons: Horizons,
    history_retention_micros: i64,
    /// How a checkpoint's records start in each column family it writes.
    prefixes: RecordPrefixes,
    /// Bytes of the last batch written: the next one starts with room for as many.
    last_batch_bytes: AtomicUsize,
    memtables: MemtableBudget,
    /// Views of checkpoints committed to the group, for the API (see [`views`]).
    committed_views: Mutex<CommittedViews>,
}

impl Drop for PartitionStore {
    /// Leaves the open states before the database closes (with the last field holding it).
    fn drop(&mut self) {
        let mut open = self.memtables.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let this = Arc::downgrade(&self.db);
        open.retain(|state| !state.ptr_eq(&this) && state.strong_count() > 0);
    }
}

/// The memtable budget every partition shares, and what they hold now.
struct MemtableBudget {
    usage: WriteBufferManager,
    /// `state.write_buffer_size`.
    budget: usize,
    open: Arc<OpenStates>,
}

/// The databases of every open partition. A partition leaves before its database closes
/// ([`PartitionStore`]'s drop), and whoever flushes holds the lock while it uses the others': a
/// database never closes on another partition's thread, nor stays open after its partition left.
type OpenStates = Mutex<Vec<Weak<DB>>>;

/// Which checkpoint a read answers from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The newest.
    Newest,
    /// The newest the consumer group acknowledged as committed while the partition is here, if
    /// its view is kept ([`PartitionStore::keep_view_for_commit`], or taken by an earlier read);
    /// else the newest. `group_committed` is the newest offset the group acknowledged.
    Acknowledged { group_committed: i64 },
}

/// An account as of the last checkpoint, read from one consistent view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRead {
    /// The checkpoint's next offset: the state reflects exactly the input records below it.
    pub next_offset: i64,
    /// `as_of` answers are exact from this event time on (see [`MetaKey::HistoryFloor`]).
    pub history_floor_micros: i64,
    pub balances: Vec<(Currency, Amount)>,
    /// Every retained history entry with an applied effect, when a point in time was asked for.
    pub applied_history: Vec<HistoryEntry>,
}

/// A page of an account's history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub next_offset: i64,
    pub entries: Vec<HistoryEntry>,
    /// Older entries exist: ask again with `before` = the last entry's offset.
    pub more: bool,
}

impl PartitionStore {
    fn new(
        db: DB,
        path: PathBuf,
        identity: &str,
        horizons: Horizons,
        history_retention_micros: i64,
        balances: CachedBalances,
        memtables: MemtableBudget,
    ) -> Result<PartitionStore, StoreError> {
        let meta = db.cf_handle(CF_META).expect("opened with every column family");
        if db.get_cf(meta, MetaKey::FormatVersion.name())?.is_none() {
            let mut batch = WriteBatch::default();
            batch.put_cf(meta, MetaKey::FormatVersion.name(), FORMAT_VERSION.to_be_bytes());
            batch.put_cf(meta, MetaKey::Identity.name(), identity.as_bytes());
            db.write_opt(batch, &synced())?;
        }
        let read_i64 = |key: MetaKey| meta_i64(db.get_cf(meta, key.name()));
        let next_offset = read_i64(MetaKey::NextOffset)?;
        let watermark_micros = read_i64(MetaKey::Watermark)?.unwrap_or(i64::MIN);
        if read_i64(MetaKey::HistoryFloor)?.is_none() {
            // New state records history from its first record. State written before ledgerd kept
            // history has none of what it applied: its history starts at its newest event time.
            let floor = if next_offset.is_some() { watermark_micros } else { i64::MIN };
            db.put_cf_opt(meta, MetaKey::HistoryFloor.name(), codec::encode_i64(floor), &synced())?;
        }
        let prefixes = RecordPrefixes::learn(&db);
        let (db, filters) = (Arc::new(db), Arc::new(KeyFilters::new()));
        let loader = Loader::start(Arc::clone(&db), Arc::clone(&filters), path.display().to_string());
        memtables.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(Arc::downgrade(&db));
        Ok(PartitionStore {
            db,
            path,
            filters,
            _loader: loader,
            balances,
            next_offset,
            checkpointed: AtomicI64::new(next_offset.unwrap_or(i64::MIN)),
            watermark_micros,
            horizons,
            history_retention_micros,
            prefixes,
            last_batch_bytes: AtomicUsize::new(0),
            memtables,
            committed_views: Mutex::default(),
        })
    }

    /// While the memtables of all partitions together hold more than seven eighths of the shared
    /// budget (`state.write_buffer_size`), asks RocksDB to flush the largest memtables of any
    /// partition, in the background, largest first, until what is left would be within it.
    /// Called after each checkpoint; returns how many flushes it asked for.
    ///
    /// RocksDB alone kept the budget only loosely: over it, each write flushed one memtable of the
    /// database written, the one created first, whatever it held ([`env::BACKSTOP_SHARE`]). A
    /// checkpoint is one write, so twelve partitions checkpointing once a second flushed about
    /// 4 MB each a second; fed by a fast broker, their memtables held 130–260 MiB against the
    /// 64 MiB budget and pushed the block cache, which they are charged to, past its size
    /// (docs/BENCHMARKS.md).
    ///
    /// The largest of all, not of the checking partition: with a flush at whichever checkpoint
    /// came first over the budget, flushes shrank as checkpoints grew more frequent, to 1.7 MB
    /// at 20,000 records, and compactions doubled (docs/BENCHMARKS.md). Only memtables still
    /// taking writes count: one already being flushed is on its way out, and counting it would
    /// flush others meanwhile. While one partition chooses, the others leave it to that one.
    ///
    /// A memtable is left alone when flushing it would stall its partition's writes (its column
    /// family already has one waiting to be flushed, or level 0 is near RocksDB's slowdown
    /// trigger): RocksDB would then hold the caller until it would not. It is flushed later.
    pub fn flush_largest_memtables_over_budget(&self) -> Result<usize, StoreError> {
        // Seven eighths, as RocksDB's own limit: flushes take a moment, and memtables keep filling.
        let budget = self.memtables.budget;
        let limit = (budget - budget / 8) as u64;
        if self.memtables.usage.get_usage() as u64 <= limit {
            return Ok(0);
        }
        let open = match self.memtables.open.try_lock() {
            Ok(open) => open,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(0),
        };
        let states: Vec<Arc<DB>> = open.iter().filter_map(Weak::upgrade).collect();
        let failed = |db: &DB, source| StoreError::MemtableBudget { path: db.path().to_owned(), source };
        let property = |db: &DB, cf: &rocksdb::ColumnFamily, name: &str| -> Result<u64, StoreError> {
            Ok(db.property_int_value_cf(cf, name).map_err(|e| failed(db, e))?.unwrap_or(0))
        };
        let mut taking_writes = 0;
        let mut memtables = Vec::with_capacity(3 * states.len());
        for db in &states {
            for name in [CF_HISTORY, CF_TRANSACTIONS, CF_BALANCES] {
                let cf = db.cf_handle(name).expect("opened with every column family");
                let size = property(db, cf, "rocksdb.cur-size-active-mem-table")?;
                taking_writes += size;
                memtables.push((size, db, cf));
            }
        }
        memtables.sort_unstable_by_key(|&(size, ..)| std::cmp::Reverse(size));
        let least = (budget / MIN_FLUSH_SHARE) as u64;
        let mut flushed = 0;
        for (size, db, cf) in memtables {
            if taking_writes <= limit || size < least {
                break;
            }
            let would_stall = property(db, cf, "rocksdb.num-immutable-mem-table")? > 0
                || property(db, cf, "rocksdb.num-files-at-level0")? >= FLUSH_LEVEL_ZERO_LIMIT;
            if would_stall {
                continue;
            }
            let mut background = FlushOptions::default();
            background.set_wait(false);
            db.flush_cf_opt(cf, &background).map_err(|e| failed(db, e))?;
            tracing::debug!(path = %db.path().display(), bytes = size, "memtable flushed over the shared budget");
            taking_writes = taking_writes.saturating_sub(size);
            flushed += 1;
        }
        Ok(flushed)
    }

    /// Lets compaction forget transactions with an event time below `micros`. The caller (the
    /// partition, which owns the dedupe window) no longer reads such transactions: it treats any
    /// it finds as forgotten, so which ones compaction has dropped yet never changes an outcome.
    pub fn raise_dedupe_horizon(&self, micros: i64) {
        self.horizons.dedupe.fetch_max(micros, Ordering::Relaxed);
        self.filters.transactions.forget_older_than(micros);
    }

    /// The retention horizon for a partition whose newest event time is `watermark_micros`.
    fn retention_horizon(&self, watermark_micros: i64) -> i64 {
        if self.history_retention_micros == 0 || watermark_micros == i64::MIN {
            i64::MIN
        } else {
            watermark_micros.saturating_sub(self.history_retention_micros)
        }
    }

    /// A view of the state to read `from`.
    fn view(&self, from: ReadFrom) -> Result<Arc<View>, StoreError> {
        let ReadFrom::Acknowledged { group_committed } = from else { return Ok(Arc::new(View::of(&self.db)?)) };
        let mut views = self.committed_views.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(view) = views.acknowledged(Instant::now()) {
            return Ok(view);
        }
        let newest = Arc::new(View::of(&self.db)?);
        views.offer(&newest, group_committed);
        Ok(newest)
    }

    /// Keeps a view of the state as it is now, a checkpoint whose offset is being sent to the
    /// group as its commit, until the group acknowledges that offset or a newer one; then reads
    /// [`ReadFrom::Acknowledged`] see it (at once if `group_committed`, the newest offset the
    /// group acknowledged, is at or beyond it). Called by the thread that writes the checkpoints.
    /// Only while such reads come ([`views::KEPT_AFTER_READ`]); else the views kept are released.
    pub fn keep_view_for_commit(&self, group_committed: i64) -> Result<(), StoreError> {
        let mut views = self.committed_views.lock().unwrap_or_else(|e| e.into_inner());
        if views.wanted(Instant::now()) {
            views.keep(View::of(&self.db)?, group_committed);
        }
        Ok(())
    }

    /// The group acknowledged `next_offset` as this partition's committed offset.
    pub fn acknowledge_commit(&self, next_offset: i64) {
        self.committed_views.lock().unwrap_or_else(|e| e.into_inner()).acknowledge(next_offset);
    }

    /// The event time from which a view whose stored history floor is `stored` answers `as_of`
    /// exactly. Compaction drops history below the retention horizon as it is now, which may have
    /// risen past the floor of an older view since.
    fn history_floor(&self, stored: Option<i64>) -> i64 {
        stored.unwrap_or(i64::MIN).max(self.horizons.history.load(Ordering::Relaxed))
    }

    /// The event time from which the `as_of` answers of the checkpoint `view` shows are exact.
    fn view_history_floor(&self, view: &rocksdb::SnapshotWithThreadMode<'_, DB>) -> Result<i64, StoreError> {
        Ok(self.history_floor(meta_i64(view.get_cf(self.cf(CF_META), MetaKey::HistoryFloor.name()))?))
    }

    /// Reads `account` as of the checkpoint `from` names: its balances, and when a point in time
    /// `as_of` is asked for, its applied history entries. `None` for an unknown account.
    pub fn read_account(
        &self,
        from: ReadFrom,
        account: &str,
        as_of: Option<i64>,
    ) -> Result<Option<AccountRead>, StoreError> {
        let kept = self.view(from)?;
        let view = kept.snapshot();
        let (next_offset, history_floor_micros) = (kept.next_offset, self.view_history_floor(view)?);
        let prefix = keys::account_prefix(account);
        let mut balances = Vec::new();
        for item in view.iterator_cf_opt(self.cf(CF_BALANCES), bounded(&prefix), IteratorMode::Start) {
            let (key, value) = item?;
            if let Some((_, currency)) = keys::split_balance(&key) {
                balances.push((currency, codec::decode_balance(&value)?));
            }
        }
        if balances.is_empty() {
            return Ok(None);
        }
        let applied_history = match as_of {
            Some(_) => self.applied_history(view, account, |_| true)?,
            None => Vec::new(),
        };
        Ok(Some(AccountRead { next_offset, history_floor_micros, balances, applied_history }))
    }

    /// `account`'s retained history entries with an applied effect whose event time passes `keep`.
    fn applied_history(
        &self,
        view: &rocksdb::SnapshotWithThreadMode<'_, DB>,
        account: &str,
        keep: impl Fn(i64) -> bool,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut out = Vec::new();
        let prefix = keys::account_prefix(account);
        for item in view.iterator_cf_opt(self.cf(CF_HISTORY), bounded(&prefix), IteratorMode::Start) {
            let (key, value) = item?;
            for stored in codec::history_entries(keys::history_offset(&key).unwrap_or(-1), &value)? {
                let entry = stored.decode()?;
                if entry.effect.is_some() && entry.event_time_micros.is_some_and(&keep) {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }

    /// Up to `limit` of `account`'s history entries with an offset below `before`, newest first,
    /// as of the checkpoint `from` names. Entries past the retention horizon are left out even
    /// while compaction has not dropped them yet, so the answer does not depend on compaction
    /// timing.
    pub fn history_page(
        &self,
        from: ReadFrom,
        account: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let kept = self.view(from)?;
        let view = kept.snapshot();
        let next_offset = kept.next_offset;
        let prefix = keys::account_prefix(account);
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(prefix.clone());
        read.set_iterate_upper_bound(match before {
            Some(offset) => keys::history(account, offset.max(0)),
            None => prefix_end(&prefix),
        });
        let horizon = self.horizons.history.load(Ordering::Relaxed);
        let mut entries = Vec::new();
        for item in view.iterator_cf_opt(self.cf(CF_HISTORY), read, IteratorMode::End) {
            let (key, value) = item?;
            if codec::history_retention_micros(&value).is_some_and(|t| t < horizon) {
                continue;
            }
            // A value holds one checkpoint's entries of the account, filed under the first: the
            // one below `before` may hold later entries too.
            let stored = codec::history_entries(keys::history_offset(&key).unwrap_or(-1), &value)?;
            for stored in stored.iter().rev() {
                if before.is_some_and(|before| stored.offset >= before) || stored.retention_micros < horizon {
                    continue;
                }
                if entries.len() == limit {
                    return Ok(HistoryPage { next_offset, entries, more: true });
                }
                entries.push(stored.decode()?);
            }
        }
        Ok(HistoryPage { next_offset, entries, more: false })
    }

    /// Every account's balances at event time `as_of_micros`, from one consistent view (the
    /// checkpoint `from` names), in key order. Returns the checkpoint's next offset and history
    /// floor first (`None` if the state never checkpointed), then calls `visit` per account;
    /// `visit` may stop early.
    pub fn scan_balances_as_of(
        &self,
        from: ReadFrom,
        as_of_micros: Option<i64>,
        mut check_floor: impl FnMut(i64, i64) -> ControlFlow<()>,
        mut visit: impl FnMut(&str, Vec<(Currency, Amount)>) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let kept = self.view(from)?;
        let view = kept.snapshot();
        let (next_offset, floor) = (kept.next_offset, self.view_history_floor(view)?);
        if check_floor(next_offset, floor).is_break() {
            return Ok(());
        }
        // The applied effects later than as_of, per account: the only history the answer needs.
        let mut later: HashMap<String, Vec<HistoryEntry>> = HashMap::new();
        if let Some(time) = as_of_micros {
            for item in view.iterator_cf(self.cf(CF_HISTORY), IteratorMode::Start) {
                let (key, value) = item?;
                let Some((account, _)) = keys::split_account(&key) else { continue };
                // An applied entry's retention time is its event time: most are skipped undecoded,
                // a whole value when its newest is not later.
                if codec::history_retention_micros(&value).is_some_and(|t| t <= time) {
                    continue;
                }
                for stored in codec::history_entries(keys::history_offset(&key).unwrap_or(-1), &value)? {
                    if stored.retention_micros <= time {
                        continue;
                    }
                    let entry = stored.decode()?;
                    if entry.effect.is_some() && entry.event_time_micros.is_some_and(|t| t > time) {
                        later.entry(account.to_owned()).or_default().push(entry);
                    }
                }
            }
        }
        let mut account = String::new();
        let mut balances = Vec::new();
        let mut emit = |account: &str, balances: &mut Vec<(Currency, Amount)>| -> Result<ControlFlow<()>, StoreError> {
            let current = std::mem::take(balances);
            let Some(time) = as_of_micros else { return Ok(visit(account, current)) };
            let mut history = later.remove(account).unwrap_or_default();
            let mut at = balances_as_of(&current, &history, time);
            if at.len() < current.len() {
                // A currency came out zero: it is listed only if it had an applied event by then,
                // which only the account's earlier history tells (zero balances are rare).
                history.extend(self.applied_history(view, account, |t| t <= time)?);
                at = balances_as_of(&current, &history, time);
            }
            Ok(visit(account, at))
        };
        for item in view.iterator_cf(self.cf(CF_BALANCES), IteratorMode::Start) {
            let (key, value) = item?;
            let Some((key_account, currency)) = keys::split_balance(&key) else { continue };
            if key_account != account {
                if !balances.is_empty() && emit(&account, &mut balances)?.is_break() {
                    return Ok(());
                }
                account.clear();
                account.push_str(key_account);
            }
            balances.push((currency, codec::decode_balance(&value)?));
        }
        if !balances.is_empty() {
            let _ = emit(&account, &mut balances)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next offset to read as of opening; `None` for state that never checkpointed.
    pub fn stored_next_offset(&self) -> Option<i64> {
        self.next_offset
    }

    /// The next offset of the newest checkpoint (written through this handle, or found at opening);
    /// `None` for state that never checkpointed. Cheap: no RocksDB read, as every checkpoint is
    /// written through [`Checkpoint::commit_with_floor`] or [`Checkpoint::submit_with_floor`],
    /// which record it here.
    pub fn last_checkpoint(&self) -> Option<i64> {
        Some(self.checkpointed.load(Ordering::Acquire)).filter(|&offset| offset != i64::MIN)
    }

    /// About how many balances (account and currency) the state holds: the keys in their filter,
    /// which skips the 1% or so it takes for present already. Until the filter is loaded, only
    /// the balances added since the state was opened.
    pub fn balances_held(&self) -> usize {
        self.filters.balances.keys()
    }

    /// The newest event time applied as of opening.
    pub fn stored_watermark_micros(&self) -> i64 {
        self.watermark_micros
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("opened with every column family")
    }

    pub fn balance(&self, account: &str, currency: Currency) -> Result<Option<Amount>, StoreError> {
        Ok(self.balance_and_slot(account, currency)?.0)
    }

    /// The balance, and where the balance cache holds it if it does: a checkpoint that writes the
    /// account's new balance passes the slot on ([`Checkpoint::put_balance_in_slot`]).
    pub fn balance_and_slot(
        &self,
        account: &str,
        currency: Currency,
    ) -> Result<(Option<Amount>, Option<CacheSlot>), StoreError> {
        // The cache before the filter: with many accounts most lookups are of balances the cache
        // holds, and the filter, which only answers for absent ones, would cost each of them its
        // own memory loads first (docs/BENCHMARKS.md).
        let owner = self.balances.owner();
        if let Some((balance, slot)) = self.balances.cache.get(owner, account, currency) {
            return Ok((Some(balance), slot));
        }
        let key = keys::balance(account, currency);
        if !self.filters.balances.may_contain(&key) {
            return Ok((None, None));
        }
        let read = match self.db.get_pinned_cf(self.cf(CF_BALANCES), key)? {
            Some(bytes) => Some(codec::decode_balance(&bytes)?),
            None => None,
        };
        self.balances.cache.put_read(owner, account, currency, read);
        Ok((read, None))
    }

    /// A transaction whose event time is below a raised dedupe horizon may or may not be found.
    pub fn transaction(&self, account: &str, transaction_id: &str) -> Result<Option<TransactionRecord>, StoreError> {
        let key = keys::transaction(account, transaction_id);
        if !self.filters.transactions.may_contain(&key) {
            return Ok(None);
        }
        match self.db.get_pinned_cf(self.cf(CF_TRANSACTIONS), key)? {
            Some(bytes) => Ok(Some(codec::decode_transaction(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Every currency balance of `account`, ordered by currency.
    pub fn account_balances(&self, account: &str) -> Result<Vec<(Currency, Amount)>, StoreError> {
        let prefix = keys::account_prefix(account);
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(self.cf(CF_BALANCES), bounded(&prefix), IteratorMode::Start) {
            let (key, value) = item?;
            if let Some((_, currency)) = keys::split_balance(&key) {
                out.push((currency, codec::decode_balance(&value)?));
            }
        }
        Ok(out)
    }

    /// The offset of the newest snapshot round the broker acknowledged, if any.
    pub fn snapshot_through(&self) -> Result<Option<i64>, StoreError> {
        let value = self.db.get_cf(self.cf(CF_META), MetaKey::SnapshotThrough.name())?;
        Ok(value.map(|v| codec::decode_i64(&v)).transpose()?)
    }

    /// Remembers that a snapshot round through `offset` is complete. Only the snapshot writer
    /// writes this key, so it never races a checkpoint.
    pub fn record_snapshot_through(&self, offset: i64) -> Result<(), StoreError> {
        self.db.put_cf_opt(self.cf(CF_META), MetaKey::SnapshotThrough.name(), codec::encode_i64(offset), &synced())?;
        Ok(())
    }

    /// Accounts whose input records below the given offset are already in their restored state.
    pub fn restore_skips(&self) -> Result<HashMap<String, i64>, StoreError> {
        let mut out = HashMap::new();
        for item in self.db.iterator_cf(self.cf(CF_RESTORE_SKIP), IteratorMode::Start) {
            let (key, value) = item?;
            if let Some((account, _)) = keys::split_account(&key) {
                out.insert(account.to_owned(), codec::decode_i64(&value)?);
            }
        }
        Ok(out)
    }

    /// Reads, from one consistent point-in-time view, the last checkpoint and every account with a
    /// balance changed by a checkpoint whose next offset is above `since` (every account when
    /// `since` is `None`), with its transactions inside the dedupe window (event time at most
    /// `dedupe_window_micros` behind the checkpoint's watermark). Returns `None` for state that
    /// never checkpointed. `visit` may stop the scan early.
    pub fn scan_changed_accounts(
        &self,
        since: Option<i64>,
        dedupe_window_micros: i64,
        mut visit: impl FnMut(&ScanPoint, AccountImage) -> ControlFlow<()>,
    ) -> Result<Option<ScanPoint>, StoreError> {
        let _hold = DedupeHold::new(&self.horizons);
        let view = self.db.snapshot();
        let meta = self.cf(CF_META);
        let read_i64 = |key: MetaKey| meta_i64(view.get_cf(meta, key.name()));
        let Some(next_offset) = read_i64(MetaKey::NextOffset)? else { return Ok(None) };
        let point = ScanPoint { next_offset, watermark_micros: read_i64(MetaKey::Watermark)?.unwrap_or(i64::MIN) };
        let min_event_time = point.watermark_micros.saturating_sub(dedupe_window_micros);

        let mut current: Option<(AccountImage, bool)> = None;
        // One iterator over the remembered transactions for the whole scan, moved to each changed
        // account by a seek: creating an iterator per account cost more than the seek itself.
        let mut transactions = view.raw_iterator_cf(self.cf(CF_TRANSACTIONS));
        let mut prefix = Vec::new();
        let mut finish = |mut image: AccountImage,
                          changed: bool,
                          visit: &mut dyn FnMut(&ScanPoint, AccountImage) -> ControlFlow<()>| {
            if !changed {
                return Ok(ControlFlow::Continue(()));
            }
            prefix.clear();
            keys::push_account(&mut prefix, &image.account);
            transactions.seek(&prefix);
            while let (Some(key), Some(value)) = (transactions.key(), transactions.value()) {
                let Some(id) = key.strip_prefix(prefix.as_slice()) else { break };
                let record = codec::decode_transaction(value)?;
                if record.event_time_micros >= min_event_time {
                    image.transactions.push((String::from_utf8_lossy(id).into_owned(), record));
                }
                transactions.next();
            }
            transactions.status()?;
            image.transactions.sort_by_key(|(_, t)| std::cmp::Reverse(t.event_time_micros));
            Ok::<_, StoreError>(visit(&point, image))
        };
        for item in view.iterator_cf(self.cf(CF_BALANCES), IteratorMode::Start) {
            let (key, value) = item?;
            let Some((account, currency)) = keys::split_balance(&key) else { continue };
            let (amount, changed_at) = codec::decode_balance_entry(&value)?;
            let changed = since.is_none_or(|since| changed_at > since);
            match &mut current {
                Some((image, any_changed)) if image.account == account => {
                    image.balances.push((currency, amount));
                    *any_changed |= changed;
                }
                _ => {
                    let next = AccountImage {
                        account: account.to_owned(),
                        balances: vec![(currency, amount)],
                        transactions: Vec::new(),
                    };
                    if let Some((image, any_changed)) = current.replace((next, changed)) {
                        if finish(image, any_changed, &mut visit)?.is_break() {
                            return Ok(Some(point));
                        }
                    }
                }
            }
        }
        if let Some((image, any_changed)) = current {
            let _ = finish(image, any_changed, &mut visit)?;
        }
        Ok(Some(point))
    }

    /// Blocks until the flushes and compactions already scheduled have finished (benchmarks
    /// charge their CPU to the work that caused them).
    pub fn wait_for_background_work(&self) -> Result<(), StoreError> {
        Ok(self.db.wait_for_compact(&rocksdb::WaitForCompactOptions::default())?)
    }

    /// Whether the key filters hold the keys the state had when it was opened (until then every
    /// lookup reads RocksDB).
    pub fn key_filters_loaded(&self) -> bool {
        self.filters.balances.is_loaded() && self.filters.transactions.is_loaded()
    }

    /// Bytes of the key filters.
    pub fn key_filter_bytes(&self) -> usize {
        self.filters.balances.bytes() + self.filters.transactions.bytes()
    }

    /// Lookups the key filters answered without reading RocksDB.
    #[cfg(test)]
    fn lookups_answered_by_filters(&self) -> u64 {
        self.filters.balances.absent_answers() + self.filters.transactions.absent_answers()
    }
}

/// A partition's share of the balance cache.
struct CachedBalances {
    /// Replaced when a write fails: what the database holds after that is not known for sure.
    owner: AtomicU32,
    cache: Arc<BalanceCache>,
}

impl CachedBalances {
    fn owner(&self) -> u32 {
        self.owner.load(Ordering::Relaxed)
    }
}

/// A meta value stored as an i64, from what a read of it (from the database or a view) returned.
fn meta_i64(read: Result<Option<Vec<u8>>, rocksdb::Error>) -> Result<Option<i64>, StoreError> {
    Ok(read?.map(|v| codec::decode_i64(&v)).transpose()?)
}

/// Read options bounding iteration to keys starting with `prefix`.
fn bounded(prefix: &[u8]) -> ReadOptions {
    let mut read = ReadOptions::default();
    read.set_iterate_lower_bound(prefix.to_vec());
    read.set_iterate_upper_bound(prefix_end(prefix));
    read
}

/// Checkpoints are durable when acknowledged: the group commit and the dead-letter contract rely on it.
fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// Stops RocksDB's per-thread perf counters on the calling thread. RocksDB counts what every
/// read and write does (comparisons, keys, bytes) in a thread-local context unless told not to,
/// and ledgerd never reads those counts; on a thread that checkpoints every record, each update
/// is a thread-local lookup and an increment per key (docs/BENCHMARKS.md).
pub fn stop_perf_counters_on_this_thread() {
    rocksdb::perf::set_perf_stats(rocksdb::perf::PerfStatsLevel::Disable);
}

/// Lists `(account, currency, balance)` in key order; used by tests and tools.
pub fn all_balances(store: &PartitionStore) -> Result<Vec<(String, Currency, Amount)>, StoreError> {
    let mut out = Vec::new();
    for item in store.db.iterator_cf(store.cf(CF_BALANCES), IteratorMode::From(&[], Direction::Forward)) {
        let (key, value) = item?;
        if let Some((account, currency)) = keys::split_balance(&key) {
            out.push((account.to_owned(), currency, codec::decode_balance(&value)?));
        }
    }
    Ok(out)
}

/// A small store environment in `dir`, for tests across the crate.
#[cfg(test)]
pub(crate) fn test_env(dir: &Path) -> StoreEnv {
    test_env_keeping_history(dir, std::time::Duration::ZERO)
}

#[cfg(test)]
pub(crate) fn test_env_keeping_history(dir: &Path, history_retention: std::time::Duration) -> StoreEnv {
    use crate::config::{ByteSize, StateConfig};
    StoreEnv::new(&StateConfig {
        dir: dir.to_owned(),
        block_cache_size: ByteSize(8 << 20),
        balance_cache_size: ByteSize(4 << 20),
        write_buffer_size: ByteSize(4 << 20),
        release_grace: std::time::Duration::from_secs(600),
        history_retention,
    })
    .expect("a temp dir takes a store")
}

/// Removes the history floor, as state written before ledgerd kept history lacks it.
#[cfg(test)]
pub(crate) fn forget_history_floor(store: &PartitionStore) {
    store.db.delete_cf(store.cf(CF_META), MetaKey::HistoryFloor.name()).expect("a test store takes a delete");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::EventKind;
    use keys::RETIRED_CFS;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn record(micros: i64) -> TransactionRecord {
        TransactionRecord {
            kind: EventKind::Deposit,
            delta: Amount::parse("1.00").unwrap(),
            currency: usd(),
            event_time_micros: micros,
            reverses: None,
            reversed: false,
        }
    }

    fn applied(offset: i64, micros: i64) -> HistoryEntry {
        HistoryEntry {
            offset,
            outcome: crate::ledger::HistoryOutcome::Applied,
            transaction_id: format!("t{offset}"),
            kind: Some(EventKind::Deposit),
            effect: Some((Amount::parse("1.00").unwrap(), usd())),
            event_time_micros: Some(micros),
            reverses: None,
            reason: None,
        }
    }

    #[test]
    fn history_kept_several_entries_to_a_key_pages_and_expires_entry_by_entry() {
        let dir = tempfile::tempdir().unwrap();
        // Retention of 100 µs behind the watermark.
        let env = test_env_keeping_history(dir.path(), std::time::Duration::from_micros(100));
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        let offsets = |page: HistoryPage| (page.entries.iter().map(|e| e.offset).collect::<Vec<_>>(), page.more);
        let history_keys = |store: &PartitionStore| -> Vec<Option<i64>> {
            let cf = store.cf(CF_HISTORY);
            store.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
            store.db.iterator_cf(cf, IteratorMode::Start).map(|item| keys::history_offset(&item.unwrap().0)).collect()
        };

        let mut cp = store.begin();
        let (a0, a2, a4, a6) = (applied(0, 10), applied(2, 20), applied(4, 350), applied(6, 40));
        cp.put_history("a", &[a0.borrowed(), a2.borrowed(), a4.borrowed(), a6.borrowed()], 0);
        cp.put_history("b", &[applied(1, 50).borrowed()], 0);
        cp.commit(10, 350).unwrap();
        let mut cp = store.begin();
        cp.put_history("a", &[applied(12, 400).borrowed(), applied(13, 410).borrowed()], 0);
        cp.commit(20, 410).unwrap();

        // The horizon is 310: of the first value, only offset 4 is still history.
        assert_eq!(offsets(store.history_page(ReadFrom::Newest, "a", None, 10).unwrap()), (vec![13, 12, 4], false));
        assert_eq!(offsets(store.history_page(ReadFrom::Newest, "a", None, 2).unwrap()), (vec![13, 12], true));
        assert_eq!(offsets(store.history_page(ReadFrom::Newest, "a", Some(13), 1).unwrap()), (vec![12], true));
        assert_eq!(offsets(store.history_page(ReadFrom::Newest, "a", Some(12), 2).unwrap()), (vec![4], false));
        assert_eq!(offsets(store.history_page(ReadFrom::Newest, "a", Some(5), 2).unwrap()), (vec![4], false));
        assert_eq!(offsets(store.history_page(ReadFrom::Newest, "a", Some(4), 2).unwrap()), (vec![], false));
        assert!(store.history_page(ReadFrom::Newest, "b", None, 10).unwrap().entries.is_empty());
        // Point in time: every retained applied entry, whatever value holds it.
        let retained = store.applied_history(&store.db.snapshot(), "a", |_| true).unwrap();
        assert_eq!(retained.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![0, 2, 4, 6, 12, 13]);
        assert_eq!(retained[2], a4);
        // Compaction drops a value once all of its entries are past the horizon: b's, not a's first.
        assert_eq!(history_keys(&store), vec![Some(0), Some(12)]);

        let mut cp = store.begin();
        cp.put_history("a", &[applied(20, 500).borrowed()], 0);
        cp.commit(21, 500).unwrap();
        assert_eq!(offsets(store.history_page(ReadFrom::Newest, "a", None, 10).unwrap()), (vec![20, 13, 12], false));
        assert_eq!(history_keys(&store), vec![Some(12), Some(20)]);
    }

    #[test]
    fn checkpoint_is_durable_and_reopens_at_the_next_offset() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        {
            let (store, aside) = env.open_partition("transactions", 3).unwrap();
            assert!(aside.is_none());
            assert_eq!(store.stored_next_offset(), None);
            let mut cp = store.begin();
            cp.put_balance("a", usd(), Amount::parse("3701.00").unwrap(), 42);
            cp.put_transaction("a", "t1", &record(10));
            cp.commit(42, 10).unwrap();
        }
        let (store, _) = env.open_partition("transactions", 3).unwrap();
        assert_eq!(store.stored_next_offset(), Some(42));
        assert_eq!(store.stored_watermark_micros(), 10);
        assert_eq!(store.balance("a", usd()).unwrap().unwrap().to_string(), "3701.00");
        assert_eq!(store.account_balances("a").unwrap(), vec![(usd(), Amount::parse("3701.00").unwrap())]);
        assert!(store.account_balances("ab").unwrap().is_empty());
        assert_eq!(store.transaction("a", "t1").unwrap(), Some(record(10)));
    }

    #[test]
    fn reopening_replays_the_write_ahead_log_without_writing_table_files() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        let level0_files = |store: &PartitionStore| {
            keys::ALL_CFS
                .iter()
                .map(|name| store.db.property_int_value_cf(store.cf(name), "rocksdb.num-files-at-level0").unwrap())
                .map(Option::unwrap)
                .sum::<u64>()
        };
        {
            let (store, _) = env.open_partition("transactions", 3).unwrap();
            let mut cp = store.begin();
            cp.put_transaction("a", "t1", &record(10));
            cp.commit(7, 10).unwrap();
        }
        // Closed without a flush, as kill -9 leaves it: the write is only in the log.
        let (store, _) = env.open_partition("transactions", 3).unwrap();
        assert_eq!(level0_files(&store), 0);
        assert_eq!(store.stored_next_offset(), Some(7));
        assert_eq!(store.transaction("a", "t1").unwrap(), Some(record(10)));
    }

    #[test]
    fn every_column_family_inserts_with_one_hint_per_memtable() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        let (store, _) = env.open_partition("transactions", 2).unwrap();
        // RocksDB writes the options it opened with to an OPTIONS file, a section per column family.
        let options_file = std::fs::read_dir(env.partition_dir("transactions", 2))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.file_name().unwrap().to_str().unwrap().starts_with("OPTIONS-"))
            .max()
            .unwrap();
        let text = std::fs::read_to_string(options_file).unwrap();
        for name in keys::ALL_CFS {
            let section = text.split("[CFOptions \"").find(|s| s.starts_with(&format!("{name}\""))).unwrap();
            let section = section.split("[TableOptions").next().unwrap();
            assert!(
                section.contains("memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.0"),
                "{name}: {section}"
            );
        }
        // Each later checkpoint's keys land between earlier ones' (a/t1 between a/t0 and b/t0).
        for round in 0..3 {
            let mut cp = store.begin();
            for account in ["a", "b", "c"] {
                cp.put_transaction(account, &format!("t{round}"), &record(round));
            }
            cp.commit(round + 1, 0).unwrap();
        }
        for account in ["a", "b", "c"] {
            for round in 0..3 {
                assert_eq!(store.transaction(account, &format!("t{round}")).unwrap(), Some(record(round)));
            }
        }
    }

    #[test]
    fn balances_come_from_the_cache_as_the_database_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        let amount = |text: &str| Some(Amount::parse(text).unwrap());
        {
            let (store, _) = env.open_partition("transactions", 0).unwrap();
            let mut cp = store.begin();
            cp.put_balance("a", usd(), Amount::parse("5.00").unwrap(), 1);
            cp.put_balance("b", usd(), Amount::parse("-2").unwrap(), 1);
            cp.commit(1, 0).unwrap();
            let before = env.balance_cache_stats();
            assert_eq!(store.balance("a", usd()).unwrap(), amount("5.00"));
            assert_eq!(store.balance("b", usd()).unwrap(), amount("-2"));
            let mut cp = store.begin();
            cp.put_balance("a", usd(), Amount::parse("7.25").unwrap(), 2);
            cp.commit(2, 0).unwrap();
            assert_eq!(store.balance("a", usd()).unwrap(), amount("7.25"));
            let after = env.balance_cache_stats();
            assert_eq!((after.hits - before.hits, after.misses - before.misses), (3, 0), "written balances are cached");
            assert!(after.bytes > 0);
        }
        // The closed state changes behind the cache's back (another copy of ledgerd, a restore).
        {
            let db = DB::open_cf(&env.options(), env.partition_dir("transactions", 0), keys::ALL_CFS).unwrap();
            let balances = db.cf_handle(CF_BALANCES).unwrap();
            db.put_cf(balances, keys::balance("a", usd()), codec::encode_balance(Amount::parse("1").unwrap(), 3))
                .unwrap();
        }
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        let before = env.balance_cache_stats();
        assert_eq!(store.balance("a", usd()).unwrap(), amount("1"), "a reopened state reads its own balances");
        assert_eq!(store.balance("a", usd()).unwrap(), amount("1"));
        let after = env.balance_cache_stats();
        assert_eq!((after.hits - before.hits, after.misses - before.misses), (1, 1));
    }

    #[test]
    fn the_retired_expiry_index_is_dropped_and_its_transactions_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        let path = env.partition_dir("transactions", 0);
        {
            // State as ledgerd 0.1 left it: the expiry index's column family beside the others.
            let (store, _) = env.open_partition("transactions", 0).unwrap();
            let mut cp = store.begin();
            cp.put_transaction("a", "t1", &record(10));
            cp.commit(1, 10).unwrap();
            drop(store);
            let mut db = DB::open_cf(&env.options(), &path, keys::ALL_CFS).unwrap();
            db.create_cf(RETIRED_CFS[0], &env.options()).unwrap();
        }
        assert!(DB::list_cf(&env.options(), &path).unwrap().iter().any(|cf| cf == RETIRED_CFS[0]));
        let (store, aside) = env.open_partition("transactions", 0).unwrap();
        assert!(aside.is_none(), "an older layout is migrated, not set aside");
        assert_eq!(store.transaction("a", "t1").unwrap(), Some(record(10)));
        drop(store);
        assert!(!DB::list_cf(&env.options(), &path).unwrap().iter().any(|cf| cf == RETIRED_CFS[0]));
    }

    #[test]
    fn state_of_another_partition_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        {
            let (store, _) = env.open_partition("transactions", 1).unwrap();
            store.begin().commit(7, 0).unwrap();
        }
        // Someone copied partition 1's directory to partition 2's place.
        std::fs::rename(env.partition_dir("transactions", 1), env.partition_dir("transactions", 2)).unwrap();
        let (store, aside) = env.open_partition("transactions", 2).unwrap();
        let aside = aside.expect("mismatched state is set aside");
        assert!(aside.reason.contains("transactions/1"), "{}", aside.reason);
        assert!(aside.moved_to.exists());
        assert_eq!(store.stored_next_offset(), None);
    }

    #[test]
    fn state_still_open_is_not_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        store.begin().commit(5, 0).unwrap();
        assert!(env.open_partition("transactions", 0).is_err(), "a locked database is an error to retry");
        drop(store);
        let (store, aside) = env.open_partition("transactions", 0).unwrap();
        assert!(aside.is_none());
        assert_eq!(store.stored_next_offset(), Some(5));
    }

    #[test]
    fn unreadable_state_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        let path = env.partition_dir("transactions", 0);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("CURRENT"), b"garbage\n").unwrap();
        let (store, aside) = env.open_partition("transactions", 0).unwrap();
        assert!(aside.is_some());
        assert_eq!(store.stored_next_offset(), None);
    }

    #[test]
    fn compaction_forgets_transactions_behind_the_dedupe_horizon() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        let mut cp = store.begin();
        for (i, micros) in [-100i64, 5, 10, 20].iter().enumerate() {
            cp.put_transaction("a", &format!("t{i}"), &record(*micros));
        }
        cp.commit(4, 20).unwrap();
        store.db.flush_cf(store.cf(CF_TRANSACTIONS)).unwrap();
        // Nothing is dropped before the horizon is raised.
        store.db.compact_range_cf(store.cf(CF_TRANSACTIONS), None::<&[u8]>, None::<&[u8]>);
        assert!(store.transaction("a", "t0").unwrap().is_some());
        store.raise_dedupe_horizon(10);
        store.raise_dedupe_horizon(3);
        store.db.compact_range_cf(store.cf(CF_TRANSACTIONS), None::<&[u8]>, None::<&[u8]>);
        assert!(store.transaction("a", "t0").unwrap().is_none());
        assert!(store.transaction("a", "t1").unwrap().is_none());
        assert!(store.transaction("a", "t2").unwrap().is_some());
        assert!(store.transaction("a", "t3").unwrap().is_some());
    }

    #[test]
    fn a_snapshot_scan_keeps_the_ids_of_its_window_while_the_horizon_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        let mut cp = store.begin();
        for account in ["a", "b"] {
            cp.put_balance(account, usd(), Amount::parse("1.00").unwrap(), 1);
            cp.put_transaction(account, "t", &record(5));
        }
        cp.commit(2, 5).unwrap();
        store.db.flush_cf(store.cf(CF_TRANSACTIONS)).unwrap();
        let mut seen = Vec::new();
        store
            .scan_changed_accounts(None, 10, |_, image| {
                seen.push((image.account.clone(), image.transactions.len()));
                // Meanwhile the partition checkpoints far ahead and compaction runs.
                store.raise_dedupe_horizon(100);
                store.db.compact_range_cf(store.cf(CF_TRANSACTIONS), None::<&[u8]>, None::<&[u8]>);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(seen, vec![("a".to_owned(), 1), ("b".to_owned(), 1)], "the scan's window is its checkpoint's");
        store.db.compact_range_cf(store.cf(CF_TRANSACTIONS), None::<&[u8]>, None::<&[u8]>);
        assert!(store.transaction("b", "t").unwrap().is_none(), "after the scan, compaction forgets them");
    }

    fn wait_for_key_filters(store: &PartitionStore) {
        let timeout = std::time::Duration::from_secs(10);
        let filters = [&store.filters.balances, &store.filters.transactions];
        assert!(filters.iter().all(|filter| filter.wait_until_loaded(timeout)), "key filters not loaded");
    }

    #[test]
    fn lookups_of_absent_keys_skip_rocksdb_and_every_stored_key_is_still_found() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        let one = Amount::parse("1.00").unwrap();
        {
            let (store, _) = env.open_partition("filters", 0).unwrap();
            let mut cp = store.begin();
            cp.put_balance("a", usd(), one, 1);
            cp.put_transaction("a", "t1", &record(10));
            cp.commit(1, 10).unwrap();
        }
        let (store, _) = env.open_partition("filters", 0).unwrap();
        wait_for_key_filters(&store);
        let mut cp = store.begin();
        cp.put_balance("b", usd(), one, 2);
        cp.put_transaction("b", "t2", &record(11));
        cp.commit(2, 11).unwrap();
        // Written before the state was opened (loaded) and after (added by the checkpoint).
        assert_eq!(store.balance("a", usd()).unwrap(), Some(one));
        assert_eq!(store.transaction("a", "t1").unwrap(), Some(record(10)));
        assert_eq!(store.balance("b", usd()).unwrap(), Some(one));
        assert_eq!(store.transaction("b", "t2").unwrap(), Some(record(11)));
        let before = store.lookups_answered_by_filters();
        for i in 0..100 {
            assert_eq!(store.transaction("a", &format!("new-{i}")).unwrap(), None);
            assert_eq!(store.balance(&format!("new-{i}"), usd()).unwrap(), None);
        }
        // About 1% of absent keys are taken for present and read from RocksDB.
        let skipped = store.lookups_answered_by_filters() - before;
        assert!(skipped >= 190, "{skipped} of 200 absent keys answered by the filters");
    }

    #[test]
    fn a_state_closed_while_its_filters_load_can_be_opened_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        {
            let (store, _) = env.open_partition("filters", 0).unwrap();
            let mut cp = store.begin();
            for i in 0..100_000 {
                cp.put_transaction("a", &format!("t{i}"), &record(10));
            }
            cp.commit(1, 10).unwrap();
        }
        for _ in 0..3 {
            // The loader is stopped and waited for, so the database's lock is free again.
            let (store, _) = env.open_partition("filters", 0).unwrap();
            drop(store);
        }
        let (store, _) = env.open_partition("filters", 0).unwrap();
        wait_for_key_filters(&store);
        assert_eq!(store.transaction("a", "t99999").unwrap(), Some(record(10)));
    }

    /// Bytes of write-ahead log files in a partition's directory.
    fn wal_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn an_open_partition_takes_a_small_share_of_the_memtable_budget() {
        // With RocksDB's default memtable size (64 MiB), from which the `transactions` bloom
        // filter is sized, this took 1.3 MiB of the 4 MiB budget; now about 0.15 MiB.
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        let mut cp = store.begin();
        cp.put_transaction("a", "t1", &record(10));
        cp.commit(1, 10).unwrap();
        assert!(env.memtable_usage() < 1 << 20, "{} bytes of memtable for one transaction", env.memtable_usage());
    }

    #[test]
    fn write_ahead_logs_stay_bounded_while_a_small_column_family_holds_the_oldest() {
        // Every checkpoint writes `meta`, whose memtable never fills: without a bound on the
        // logs, its oldest unflushed key kept every log since alive, and a restart replayed them.
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        let mut written = 0;
        for checkpoint in 0..160_i64 {
            let mut cp = store.begin();
            for i in 0..1_000 {
                let id = format!("{checkpoint}-{i}-{}", "x".repeat(64));
                cp.put_transaction("a", &id, &record(10));
                written += id.len() as u64;
            }
            cp.commit(checkpoint + 1, 10).unwrap();
        }
        let logs = wal_bytes(&env.partition_dir("transactions", 0));
        // The bound (half of the 4 MiB budget) plus the log being written (at most about one
        // memtable, a quarter of the budget).
        assert!(written > 10 << 20 && logs < 3 << 20, "{logs} bytes of logs after writing {written}");
    }

    #[test]
    fn a_checkpoint_over_the_shared_memtable_budget_flushes_the_largest_memtable_of_any_partition() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path()); // a 4 MiB memtable budget: flushes start over 3.5 MiB
        let limit = (4 << 20) * 7 / 8;
        // About 84 bytes an id: each memtable stays below its own 1 MiB limit, which RocksDB keeps.
        let ids = [11_000, 10_000, 10_000, 10_000, 6_000];
        let stores: Vec<PartitionStore> =
            (0..ids.len() as i32).map(|partition| env.open_partition("transactions", partition).unwrap().0).collect();
        let fill = |store: &PartitionStore, ids: usize| {
            let mut cp = store.begin();
            for i in 0..ids {
                cp.put_transaction("a", &format!("t{i:08}"), &record(10));
            }
            cp.commit(1, 10).unwrap();
        };
        let level0 = |store: &PartitionStore| {
            store.db.property_int_value_cf(store.cf(CF_TRANSACTIONS), "rocksdb.num-files-at-level0").unwrap().unwrap()
        };

        for (store, &ids) in stores.iter().zip(&ids).take(4) {
            fill(store, ids);
            assert_eq!(store.flush_largest_memtables_over_budget().unwrap(), 0, "within the budget");
        }
        assert!(env.memtable_usage() <= limit, "{} bytes", env.memtable_usage());
        let last = &stores[4];
        fill(last, ids[4]);
        assert!(env.memtable_usage() > limit, "{} bytes", env.memtable_usage());
        // The last partition's checkpoint went over the budget; the first holds the most.
        assert_eq!(last.flush_largest_memtables_over_budget().unwrap(), 1, "one is enough here");
        stores[0].wait_for_background_work().unwrap();
        let flushed: Vec<u64> = stores.iter().map(level0).collect();
        assert_eq!(flushed, [1, 0, 0, 0, 0], "only the largest memtable went to a level-0 file");
        assert!(env.memtable_usage() <= limit, "{} bytes after the flush", env.memtable_usage());
        assert_eq!(last.flush_largest_memtables_over_budget().unwrap(), 0, "within the budget again");
    }

    #[test]
    fn a_closed_partition_leaves_the_states_the_budget_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(dir.path());
        let (first, _) = env.open_partition("transactions", 0).unwrap();
        let (second, _) = env.open_partition("transactions", 1).unwrap();
        assert_eq!(env.open_states.lock().unwrap().len(), 2);
        drop(first);
        assert_eq!(env.open_states.lock().unwrap().len(), 1);
        // Reopening right away finds the database closed, not held by the list.
        let (first, _) = env.open_partition("transactions", 0).unwrap();
        assert_eq!(env.open_states.lock().unwrap().len(), 2);
        drop((first, second));
        assert!(env.open_states.lock().unwrap().is_empty());
    }
}
