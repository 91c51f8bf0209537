//! A checkpoint: one atomic `WriteBatch` of a partition's changed balances, remembered transaction
//! ids, history and next offset. Records are encoded into the batch as they are put; the keys go
//! into the key filters before the write, and the balances into the balance cache once it is
//! durable. The write runs on the caller's thread ([`Checkpoint::commit`]) or on a
//! [`CheckpointWriter`]'s ([`Checkpoint::submit_with_floor`]).

use super::batch::{EncodedBatch, RecordPrefix};
use super::keys::{self, MetaKey, CF_BALANCES, CF_HISTORY, CF_META, CF_RESTORE_SKIP, CF_TRANSACTIONS};
use super::{codec, meta_i64, synced, CacheSlot, CheckpointWriter, PartitionStore, StoreError, WriteInFlight};
use crate::ledger::{Amount, BorrowedHistoryEntry, Currency, TransactionRecord};
use rocksdb::{WriteOptions, DB};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One atomic unit of state change: balances, transaction ids, history and the next offset together.
pub struct Checkpoint<'s> {
    store: &'s PartitionStore,
    batch: EncodedBatch,
    prefixes: RecordPrefixes,
    /// Reused encoding buffers: the batch copies what it is given, so one key and one value buffer
    /// serve every put instead of two allocations per record.
    key: Vec<u8>,
    value: Vec<u8>,
    /// Hashes of the keys written, for the key filters; with the event time for transactions.
    balance_keys: Vec<u64>,
    transaction_keys: Vec<(u64, i64)>,
    /// The balances written, for the balance cache once they are durable: (account's end in
    /// `balance_accounts`, currency, balance, where the cache held it when it was read).
    balance_accounts: String,
    balances: Vec<(usize, Currency, Amount, Option<CacheSlot>)>,
}

impl Checkpoint<'_> {
    /// `changed_at` is the next offset of the checkpoint that makes this change durable.
    pub fn put_balance(&mut self, account: &str, currency: Currency, balance: Amount, changed_at: i64) {
        self.put_balance_in_slot(account, currency, balance, changed_at, None);
    }

    /// Like [`Checkpoint::put_balance`], with the slot [`PartitionStore::balance_and_slot`] gave
    /// for the balance this one replaces.
    pub fn put_balance_in_slot(
        &mut self,
        account: &str,
        currency: Currency,
        balance: Amount,
        changed_at: i64,
        slot: Option<CacheSlot>,
    ) {
        keys::balance_into(&mut self.key, account, currency);
        self.batch.push(self.prefixes.balances, &self.key, &codec::encode_balance(balance, changed_at));
        self.balance_keys.push(self.store.filters.balances.hash(&self.key));
        self.balance_accounts.push_str(account);
        self.balances.push((self.balance_accounts.len(), currency, balance, slot));
    }

    /// Records that `account`'s restored state already reflects its input records below `valid_through`.
    pub fn put_restore_skip(&mut self, account: &str, valid_through: i64) {
        self.batch.push(self.prefixes.restore_skip, &keys::account_prefix(account), &codec::encode_i64(valid_through));
    }

    /// Drops every restore skip (once the partition has read past all of them).
    pub fn clear_restore_skips(&mut self) {
        // Account prefixes start with a u16 length, so every key sorts below [0xff; 3].
        self.batch.push(self.prefixes.clear_restore_skips, &[], &[0xff, 0xff, 0xff]);
    }

    /// Sets the offset of the snapshot round the state is known to be covered by (after a restore).
    pub fn put_snapshot_through(&mut self, offset: i64) {
        self.batch.push(self.prefixes.meta, MetaKey::SnapshotThrough.name(), &codec::encode_i64(offset));
    }

    /// Writes what is batched so far without a next offset and without syncing: a restore's
    /// intermediate chunks. Until the final [`Checkpoint::commit`] the state counts as incomplete.
    pub fn write_partial(self) -> Result<(), StoreError> {
        self.add_keys_to_filters();
        let Checkpoint { store, batch, balance_accounts, balances, .. } = self;
        store.write(batch, &WriteOptions::default(), &balance_accounts, &balances)
    }

    /// Remembers a transaction. Compaction forgets it once its event time falls behind the dedupe
    /// horizon (see [`PartitionStore::raise_dedupe_horizon`]).
    pub fn put_transaction(&mut self, account: &str, transaction_id: &str, record: &TransactionRecord) {
        keys::transaction_into(&mut self.key, account, transaction_id);
        self.value.clear();
        codec::encode_transaction_into(record, &mut self.value);
        self.batch.push(self.prefixes.transactions, &self.key, &self.value);
        self.transaction_keys.push((self.store.filters.transactions.hash(&self.key), record.event_time_micros));
    }

    /// Records what became of the input records at the `entries`' offsets in `account`'s history,
    /// as one key (filed under the first offset). `entries` must be in offset order and must not
    /// reach into another checkpoint's offsets. `watermark_micros` stands in as the retention time
    /// of a record without an event time.
    pub fn put_history(&mut self, account: &str, entries: &[BorrowedHistoryEntry<'_>], watermark_micros: i64) {
        let Some(first) = entries.first() else { return };
        keys::history_into(&mut self.key, account, first.offset);
        self.value.clear();
        let retention = |entry: &BorrowedHistoryEntry<'_>| entry.event_time_micros.unwrap_or(watermark_micros);
        codec::encode_history_into(entries, retention, &mut self.value);
        self.batch.push(self.prefixes.history, &self.key, &self.value);
    }

    /// Before the write: a key in the database must never be missing from its filter. A write that
    /// then fails leaves keys in the filters that are not in the database, which only costs a read.
    fn add_keys_to_filters(&self) {
        self.store.filters.balances.add_lasting(&self.balance_keys);
        self.store.filters.transactions.add(&self.transaction_keys);
    }

    /// Writes everything plus the next offset and watermark in one batch, WAL synced before return.
    pub fn commit(self, next_offset: i64, watermark_micros: i64) -> Result<(), StoreError> {
        self.commit_with_floor(next_offset, watermark_micros, i64::MIN)
    }

    /// Like [`Checkpoint::commit`], raising the history floor to at least `history_floor_micros`:
    /// the newest event time of work in this state that its history does not hold (a restore's
    /// snapshot, records skipped as already in it). Retention may raise it further.
    pub fn commit_with_floor(
        self,
        next_offset: i64,
        watermark_micros: i64,
        history_floor_micros: i64,
    ) -> Result<(), StoreError> {
        let store = self.store;
        self.prepare(next_offset, watermark_micros, history_floor_micros)?.write(store)
    }

    /// Like [`Checkpoint::commit_with_floor`], with the write itself (RocksDB's memtable inserts
    /// and the synced log) on `writer`'s thread: the caller goes on applying records meanwhile.
    /// Nothing is durable until the returned write answers. `store` must be this checkpoint's.
    pub fn submit_with_floor(
        self,
        next_offset: i64,
        watermark_micros: i64,
        history_floor_micros: i64,
        store: &Arc<PartitionStore>,
        writer: &CheckpointWriter,
    ) -> Result<WriteInFlight, StoreError> {
        debug_assert!(std::ptr::eq(self.store, &**store), "a checkpoint is written to its own store");
        let prepared = self.prepare(next_offset, watermark_micros, history_floor_micros)?;
        Ok(writer.submit(Arc::clone(store), prepared))
    }

    /// Everything a commit does before the write: the next offset, watermark and history floor
    /// go into the batch, and the batch's keys into the key filters.
    fn prepare(
        mut self,
        next_offset: i64,
        watermark_micros: i64,
        history_floor_micros: i64,
    ) -> Result<PreparedWrite, StoreError> {
        let store = self.store;
        let meta = store.cf(CF_META);
        let meta_prefix = self.prefixes.meta;
        self.batch.push(meta_prefix, MetaKey::NextOffset.name(), &codec::encode_i64(next_offset));
        self.batch.push(meta_prefix, MetaKey::Watermark.name(), &codec::encode_i64(watermark_micros));
        // The floor rises before compaction may drop anything below the new horizon.
        let horizon = store.retention_horizon(watermark_micros);
        let wanted = horizon.max(history_floor_micros);
        let floor = meta_i64(store.db.get_cf(meta, MetaKey::HistoryFloor.name()))?;
        if floor.is_none_or(|floor| wanted > floor) {
            self.batch.push(meta_prefix, MetaKey::HistoryFloor.name(), &codec::encode_i64(wanted));
        }
        self.add_keys_to_filters();
        let Checkpoint { batch, balance_accounts, balances, .. } = self;
        Ok(PreparedWrite { batch, balance_accounts, balances, next_offset, history_horizon: horizon })
    }
}

/// A checkpoint's batch, complete with its next offset, waiting to be written.
pub(super) struct PreparedWrite {
    batch: EncodedBatch,
    balance_accounts: String,
    balances: Vec<(usize, Currency, Amount, Option<CacheSlot>)>,
    next_offset: i64,
    history_horizon: i64,
}

impl PreparedWrite {
    /// Writes the batch with a synced log; once it returns Ok the checkpoint is durable.
    pub(super) fn write(self, store: &PartitionStore) -> Result<(), StoreError> {
        let PreparedWrite { batch, balance_accounts, balances, next_offset, history_horizon } = self;
        store.write(batch, &synced(), &balance_accounts, &balances)?;
        store.checkpointed.fetch_max(next_offset, Ordering::AcqRel);
        store.horizons.history.fetch_max(history_horizon, Ordering::Relaxed);
        Ok(())
    }
}

/// The [`RecordPrefix`] of each kind of record a checkpoint writes, learned once at opening.
#[derive(Clone, Copy)]
pub(super) struct RecordPrefixes {
    meta: RecordPrefix,
    balances: RecordPrefix,
    transactions: RecordPrefix,
    history: RecordPrefix,
    restore_skip: RecordPrefix,
    clear_restore_skips: RecordPrefix,
}

impl RecordPrefixes {
    pub(super) fn learn(db: &DB) -> RecordPrefixes {
        let cf = |name| db.cf_handle(name).expect("opened with every column family");
        RecordPrefixes {
            meta: RecordPrefix::put(cf(CF_META)),
            balances: RecordPrefix::put(cf(CF_BALANCES)),
            transactions: RecordPrefix::put(cf(CF_TRANSACTIONS)),
            history: RecordPrefix::put(cf(CF_HISTORY)),
            restore_skip: RecordPrefix::put(cf(CF_RESTORE_SKIP)),
            clear_restore_skips: RecordPrefix::delete_range(cf(CF_RESTORE_SKIP)),
        }
    }
}

impl PartitionStore {
    /// Starts a checkpoint. Nothing is visible until it is committed ([`Checkpoint::commit`]).
    pub fn begin(&self) -> Checkpoint<'_> {
        Checkpoint {
            store: self,
            batch: EncodedBatch::with_capacity(self.last_batch_bytes.load(Ordering::Relaxed)),
            prefixes: self.prefixes,
            key: Vec::new(),
            value: Vec::new(),
            balance_keys: Vec::new(),
            transaction_keys: Vec::new(),
            balance_accounts: String::new(),
            balances: Vec::new(),
        }
    }

    /// Writes `batch`, then tells the balance cache about the balances it held (`accounts` holds
    /// their account ids end to end; each balance has its id's end).
    fn write(
        &self,
        batch: EncodedBatch,
        options: &WriteOptions,
        accounts: &str,
        balances: &[(usize, Currency, Amount, Option<CacheSlot>)],
    ) -> Result<(), StoreError> {
        self.last_batch_bytes.store(batch.records_len(), Ordering::Relaxed);
        if let Err(e) = self.db.write_opt(batch.into_write_batch(), options) {
            self.balances.owner.store(self.balances.cache.new_owner(), Ordering::Relaxed);
            return Err(e.into());
        }
        let starts = std::iter::once(0).chain(balances.iter().map(|&(end, ..)| end));
        let written = starts
            .zip(balances)
            .map(|(start, &(end, currency, balance, slot))| (&accounts[start..end], currency, balance, slot));
        self.balances.cache.put_in_slots(self.balances.owner(), written);
        Ok(())
    }
}
