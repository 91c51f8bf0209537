//! The uncheckpointed changes of a partition, and the reducer's view: overlay first, store second.
//!
//! The overlay is flat: account ids, transaction ids and the ids in history entries live in
//! three string arenas, accounts, history entries and transactions in three vectors, and two hash
//! tables index them by position. A batch therefore allocates a handful of growing buffers
//! instead of several small objects per record, and writing it walks contiguous memory. With
//! many accounts nearly every record is its account's only one in the batch; the earlier map of
//! per-account maps and vectors spent most of the checkpoint building, walking and dropping those
//! (docs/BENCHMARKS.md).

use crate::arena::Span;
use crate::ledger::{
    Amount, BorrowedHistoryEntry, Currency, EventKind, HistoryOutcome, LedgerState, TransactionRecord,
};
use crate::store::{CacheSlot, Checkpoint, PartitionStore, StoreError};
use std::cell::Cell;
use std::hash::BuildHasher;
// foldhash instead of std's SipHash: these tables are probed several times per record. Its seed is
// random per process, so crafted account or transaction ids cannot aim at collisions.
use foldhash::fast::RandomState;
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

/// At most this many history entries share a RocksDB key: a page of history reads whole values,
/// and an account with thousands of records in one checkpoint should not make it read them all.
const HISTORY_PER_KEY: usize = 64;

/// One account touched by the batch.
struct Account {
    /// Its id, in `Overlay::account_ids`.
    id: Span,
    /// Accounts rarely hold more than one currency: the first balance is kept inline.
    first_balance: Option<(Currency, Amount)>,
    other_balances: Vec<(Currency, Amount)>,
    /// Where the balance cache held the stored balance the batch started from, for its first
    /// currency looked up: the checkpoint writes the new balance there without a lookup.
    cache_slot: Option<(Currency, CacheSlot)>,
}

/// One record's history entry, its ids in `Overlay::history_ids`. A `HistoryEntry` with its own
/// `String`s took 136 bytes and an allocation per record, in memory fresh for every batch: at a
/// million accounts, profiles of the consumer thread spent 13% zeroing new pages with those
/// entries and 3% with these (docs/BENCHMARKS.md).
struct PendingHistory {
    offset: i64,
    event_time_micros: Option<i64>,
    effect: Option<(Amount, Currency)>,
    /// Its account's position in `Overlay::accounts`.
    account: u32,
    transaction_id: Span,
    /// Empty when the entry has none: storage does not tell an empty id from a missing one.
    reverses: Span,
    /// Empty when the entry has none, as `reverses`.
    reason: Span,
    outcome: HistoryOutcome,
    kind: Option<EventKind>,
}

/// One transaction remembered by the batch.
struct Transaction {
    account: u32,
    /// Its id, in `Overlay::transaction_ids`.
    id: Span,
    record: TransactionRecord,
}

impl Transaction {
    /// Whether this is `account`'s transaction `id` (`ids` is `Overlay::transaction_ids`).
    fn is(&self, account: u32, id: &str, ids: &str) -> bool {
        self.account == account && self.id.of(ids) == id
    }
}

/// Changes since the last checkpoint.
#[derive(Default)]
pub(super) struct Overlay {
    hasher: RandomState,
    account_ids: String,
    accounts: Vec<Account>,
    /// Positions in `accounts`, hashed by account id.
    account_index: HashTable<u32>,
    /// The account found last. Applying a record looks its account up about five times (its
    /// transaction, balance, new balance, new transaction, history), so the lookups after the
    /// first compare one id instead of hashing and probing.
    last_account: Cell<Option<u32>>,
    /// What became of each record, in offset order.
    history: Vec<PendingHistory>,
    history_ids: String,
    transaction_ids: String,
    transactions: Vec<Transaction>,
    /// Positions in `transactions`, hashed by (account position, transaction id).
    transaction_index: HashTable<u32>,
}

impl Overlay {
    /// An empty overlay for the batch after this one, its two index tables as large as this
    /// one's. Those hold every account and transaction of this batch and were sized the same way,
    /// so the tables keep the size of the largest batch so far. Grown from empty, they rehashed
    /// every entry at each doubling, reading each entry's id again from cold memory; sized up
    /// front, applying a record took about a sixth less time in the engine (docs/BENCHMARKS.md,
    /// twenty-fourth session). Sized by the last batch alone, a full batch after one the
    /// checkpoint interval sealed early still rehashed (1.4% of the consumer thread at a million
    /// accounts, thirty-ninth session). They are small (5 bytes a slot, about
    /// `checkpoint.max_records` entries at most). The vectors and arenas still grow from empty:
    /// keeping or pre-sizing those raised peak RSS (twenty-second session).
    pub(super) fn successor(&self) -> Overlay {
        Overlay {
            account_index: HashTable::with_capacity(self.account_index.capacity()),
            transaction_index: HashTable::with_capacity(self.transaction_index.capacity()),
            ..Overlay::default()
        }
    }

    fn account_id(&self, account: u32) -> &str {
        self.accounts[account as usize].id.of(&self.account_ids)
    }

    fn transaction_id(&self, transaction: &Transaction) -> &str {
        transaction.id.of(&self.transaction_ids)
    }

    fn find_account(&self, account: &str) -> Option<u32> {
        if let Some(last) = self.last_account.get().filter(|&last| self.account_id(last) == account) {
            return Some(last);
        }
        let hash = self.hasher.hash_one(account);
        let found = self.account_index.find(hash, |&position| self.account_id(position) == account).copied();
        if found.is_some() {
            self.last_account.set(found);
        }
        found
    }

    /// The account's position, added if the batch has not touched it yet.
    fn account_position(&mut self, account: &str) -> u32 {
        if let Some(position) = self.find_account(account) {
            return position;
        }
        let position = u32::try_from(self.accounts.len()).expect("a batch holds fewer than 2^32 accounts");
        let id = Span::push(&mut self.account_ids, account);
        self.accounts.push(Account { id, first_balance: None, other_balances: Vec::new(), cache_slot: None });
        let Overlay { hasher, account_ids, accounts, account_index, .. } = self;
        account_index.insert_unique(hasher.hash_one(account), position, |&existing| {
            hasher.hash_one(accounts[existing as usize].id.of(account_ids))
        });
        self.last_account.set(Some(position));
        position
    }

    fn find_transaction(&self, account: u32, transaction_id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one((account, transaction_id));
        self.transaction_index
            .find(hash, |&position| {
                self.transactions[position as usize].is(account, transaction_id, &self.transaction_ids)
            })
            .copied()
    }

    fn balance(&self, account: &str, currency: Currency) -> Option<Amount> {
        let account = &self.accounts[self.find_account(account)? as usize];
        match account.first_balance {
            Some((c, balance)) if c == currency => Some(balance),
            _ => account.other_balances.iter().find(|(c, _)| *c == currency).map(|(_, balance)| *balance),
        }
    }

    fn set_balance(&mut self, account: &str, currency: Currency, balance: Amount) {
        let position = self.account_position(account);
        let account = &mut self.accounts[position as usize];
        match &mut account.first_balance {
            None => account.first_balance = Some((currency, balance)),
            Some((c, first)) if *c == currency => *first = balance,
            Some(_) => match account.other_balances.iter_mut().find(|(c, _)| *c == currency) {
                Some(entry) => entry.1 = balance,
                None => account.other_balances.push((currency, balance)),
            },
        }
    }

    /// Remembers where the balance cache holds `account`'s stored `currency` balance.
    fn note_cache_slot(&mut self, account: &str, currency: Currency, slot: CacheSlot) {
        let position = self.account_position(account);
        self.accounts[position as usize].cache_slot.get_or_insert((currency, slot));
    }

    fn transaction(&self, account: &str, transaction_id: &str) -> Option<&TransactionRecord> {
        let position = self.find_transaction(self.find_account(account)?, transaction_id)?;
        Some(&self.transactions[position as usize].record)
    }

    fn put_transaction(&mut self, account: &str, transaction_id: &str, record: TransactionRecord) {
        let account = self.account_position(account);
        // One hash and one probe whether the transaction is new or not.
        let Overlay { hasher, transaction_ids, transactions, transaction_index, .. } = self;
        let entry = transaction_index.entry(
            hasher.hash_one((account, transaction_id)),
            |&position| transactions[position as usize].is(account, transaction_id, transaction_ids),
            |&existing| {
                let existing = &transactions[existing as usize];
                hasher.hash_one((existing.account, existing.id.of(transaction_ids)))
            },
        );
        match entry {
            Entry::Occupied(found) => transactions[*found.get() as usize].record = record,
            Entry::Vacant(slot) => {
                let position = u32::try_from(transactions.len()).expect("a batch holds fewer than 2^32 transactions");
                let id = Span::push(transaction_ids, transaction_id);
                transactions.push(Transaction { account, id, record });
                slot.insert(position);
            }
        }
    }

    pub(super) fn push_history(&mut self, account: &str, entry: BorrowedHistoryEntry<'_>) {
        let account = self.account_position(account);
        let ids = &mut self.history_ids;
        self.history.push(PendingHistory {
            offset: entry.offset,
            event_time_micros: entry.event_time_micros,
            effect: entry.effect,
            account,
            transaction_id: Span::push(ids, entry.transaction_id),
            reverses: Span::push(ids, entry.reverses.unwrap_or_default()),
            reason: Span::push(ids, entry.reason.unwrap_or_default()),
            outcome: entry.outcome,
            kind: entry.kind,
        });
    }

    fn history_entry(&self, pending: &PendingHistory) -> BorrowedHistoryEntry<'_> {
        let id = |span: Span| Some(span.of(&self.history_ids)).filter(|id| !id.is_empty());
        BorrowedHistoryEntry {
            offset: pending.offset,
            outcome: pending.outcome,
            transaction_id: pending.transaction_id.of(&self.history_ids),
            kind: pending.kind,
            effect: pending.effect,
            event_time_micros: pending.event_time_micros,
            reverses: id(pending.reverses),
            reason: id(pending.reason),
        }
    }

    /// Adds the changes to `batch`, which will be committed with `next_offset` and `watermark_micros`.
    ///
    /// In key order within each column family (accounts as their length-prefixed keys sort, then
    /// offsets or ids), not in the order the batch saw them: with the store's insert hint, each
    /// memtable's skip list then finds every insert's place from the one before instead of
    /// searching from the top, which made the inserts cheaper (measured in docs/BENCHMARKS.md).
    pub(super) fn write_to(&self, batch: &mut Checkpoint<'_>, next_offset: i64, watermark_micros: i64) {
        // Sorting works on small copies made in one pass, not on positions into `accounts` and
        // `transactions`: by the time a batch is written its entries are cold, and comparisons
        // that load them in random order were most of the time this function took (perf).
        let mut in_key_order: Vec<(&str, u32)> =
            (0..self.accounts.len() as u32).map(|position| (self.account_id(position), position)).collect();
        in_key_order.sort_unstable_by(|(a, _), (b, _)| (a.len(), a.as_bytes()).cmp(&(b.len(), b.as_bytes())));
        let mut rank = vec![0u32; self.accounts.len()];
        for (account_rank, &(_, position)) in in_key_order.iter().enumerate() {
            rank[position as usize] = account_rank as u32;
        }

        // Entries were pushed in offset order, and grouping keeps that order within an account.
        let history = ByAccount::group(&rank, self.history.iter().map(|entry| entry.account));
        // An account's entries go in as one key (up to HISTORY_PER_KEY of them), not one each.
        let entry_at = |&position: &u32| self.history_entry(&self.history[position as usize]);
        let mut entries: Vec<BorrowedHistoryEntry<'_>> = Vec::new();
        for (account_rank, same_account) in history.runs() {
            let (id, _) = in_key_order[account_rank];
            for chunk in same_account.chunks(HISTORY_PER_KEY) {
                entries.clear();
                entries.extend(chunk.iter().map(entry_at));
                batch.put_history(id, &entries, watermark_micros);
            }
        }

        for &(id, position) in &in_key_order {
            let account = &self.accounts[position as usize];
            for &(currency, balance) in account.first_balance.iter().chain(&account.other_balances) {
                let slot = account.cache_slot.filter(|&(c, _)| c == currency).map(|(_, slot)| slot);
                batch.put_balance_in_slot(id, currency, balance, next_offset, slot);
            }
        }

        // Grouped as history is; ids are sorted only within an account that has several
        // (comparing them across the whole batch read each id from cold memory).
        let transactions = ByAccount::group(&rank, self.transactions.iter().map(|t| t.account));
        let mut same_account_ids: Vec<(&str, usize)> = Vec::new();
        for (account_rank, same_account) in transactions.runs() {
            let (account_id, _) = in_key_order[account_rank];
            same_account_ids.clear();
            same_account_ids.extend(same_account.iter().map(|&position| {
                let position = position as usize;
                (self.transaction_id(&self.transactions[position]), position)
            }));
            same_account_ids.sort_unstable();
            for &(transaction_id, position) in &same_account_ids {
                batch.put_transaction(account_id, transaction_id, &self.transactions[position].record);
            }
        }
    }
}

/// Entries' positions grouped by their account's rank in key order, in their own order within an
/// account: a counting sort, two passes over the entries' accounts. It replaced sorting
/// `rank << 32 | position` integers, which took about 8 times as many instructions (callgrind:
/// 56M against about 7M for 200k records).
struct ByAccount {
    /// Where each rank's positions start in `positions`, and one past the last rank's end.
    starts: Vec<u32>,
    positions: Vec<u32>,
}

impl ByAccount {
    fn group(rank: &[u32], accounts: impl Iterator<Item = u32> + Clone) -> ByAccount {
        let mut starts = vec![0u32; rank.len() + 1];
        for account in accounts.clone() {
            starts[rank[account as usize] as usize + 1] += 1;
        }
        for at in 1..starts.len() {
            starts[at] += starts[at - 1];
        }
        let mut next = starts.clone();
        let mut positions = vec![0u32; *starts.last().expect("one more start than ranks") as usize];
        for (position, account) in accounts.enumerate() {
            let slot = &mut next[rank[account as usize] as usize];
            positions[*slot as usize] = position as u32;
            *slot += 1;
        }
        ByAccount { starts, positions }
    }

    /// Each rank with entries, and its entries' positions.
    fn runs(&self) -> impl Iterator<Item = (usize, &[u32])> {
        self.starts
            .windows(2)
            .enumerate()
            .filter(|(_, bounds)| bounds[0] < bounds[1])
            .map(|(rank, bounds)| (rank, &self.positions[bounds[0] as usize..bounds[1] as usize]))
    }
}

/// What the reducer reads and writes while applying one event: the open overlay, then the sealed
/// batch not yet written, then the store.
pub(super) struct View<'a> {
    pub store: &'a PartitionStore,
    pub sealed: Option<&'a Overlay>,
    pub overlay: &'a mut Overlay,
    /// Transactions with an older event time are forgotten (outside the dedupe window), wherever
    /// they are still found.
    pub remembered_from: i64,
}

impl LedgerState for View<'_> {
    type Error = StoreError;

    fn balance(&mut self, account: &str, currency: Currency) -> Result<Amount, StoreError> {
        if let Some(balance) = self.overlay.balance(account, currency) {
            return Ok(balance);
        }
        if let Some(balance) = self.sealed.and_then(|sealed| sealed.balance(account, currency)) {
            return Ok(balance);
        }
        let (balance, slot) = self.store.balance_and_slot(account, currency)?;
        if let Some(slot) = slot {
            self.overlay.note_cache_slot(account, currency, slot);
        }
        Ok(balance.unwrap_or_default())
    }

    fn transaction(&mut self, account: &str, transaction_id: &str) -> Result<Option<TransactionRecord>, StoreError> {
        let found = if let Some(record) = self.overlay.transaction(account, transaction_id) {
            Some(record.clone())
        } else if let Some(record) = self.sealed.and_then(|sealed| sealed.transaction(account, transaction_id)) {
            Some(record.clone())
        } else {
            self.store.transaction(account, transaction_id)?
        };
        Ok(found.filter(|record| record.event_time_micros >= self.remembered_from))
    }

    fn set_balance(&mut self, account: &str, currency: Currency, balance: Amount) {
        self.overlay.set_balance(account, currency, balance);
    }

    fn put_transaction(&mut self, account: &str, transaction_id: &str, record: TransactionRecord) {
        self.overlay.put_transaction(account, transaction_id, record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::test_values::{amount, eur, usd};

    fn record(delta: &str, event_time_micros: i64) -> TransactionRecord {
        TransactionRecord {
            kind: EventKind::Deposit,
            delta: amount(delta),
            currency: usd(),
            event_time_micros,
            reverses: None,
            reversed: false,
        }
    }

    #[test]
    fn balances_are_kept_per_account_and_currency() {
        let mut overlay = Overlay::default();
        overlay.set_balance("a", usd(), amount("1.10"));
        overlay.set_balance("a", eur(), amount("2"));
        overlay.set_balance("b", usd(), amount("3"));
        overlay.set_balance("a", usd(), amount("4.25"));
        overlay.set_balance("a", eur(), amount("5"));

        assert_eq!(overlay.balance("a", usd()), Some(amount("4.25")));
        assert_eq!(overlay.balance("a", eur()), Some(amount("5")));
        assert_eq!(overlay.balance("b", usd()), Some(amount("3")));
        assert_eq!(overlay.balance("b", eur()), None);
        assert_eq!(overlay.balance("c", usd()), None);
        // "ab" must not be found as "a" followed by "b" in the arena.
        assert_eq!(overlay.balance("ab", usd()), None);
    }

    #[test]
    fn a_transaction_id_belongs_to_its_account_and_a_second_put_replaces_the_first() {
        let mut overlay = Overlay::default();
        overlay.put_transaction("a", "t1", record("1", 10));
        overlay.put_transaction("b", "t1", record("2", 20));
        overlay.put_transaction("a", "t1", TransactionRecord { reversed: true, ..record("1", 10) });

        assert!(overlay.transaction("a", "t1").unwrap().reversed);
        assert_eq!(overlay.transaction("b", "t1").unwrap().delta, amount("2"));
        assert!(overlay.transaction("a", "t2").is_none());
        assert!(overlay.transaction("c", "t1").is_none());
        assert_eq!(overlay.transactions.len(), 2);
    }

    #[test]
    fn a_successor_is_empty_with_room_for_the_largest_batch_so_far() {
        let mut overlay = Overlay::default();
        for i in 0..1000 {
            overlay.put_transaction(&format!("a{}", i % 300), &format!("t{i}"), record("1", 10));
        }
        let successor = overlay.successor();
        assert!(successor.accounts.is_empty() && successor.transactions.is_empty());
        assert!(successor.account_index.is_empty() && successor.transaction_index.is_empty());
        assert!(successor.account_index.capacity() >= 300, "{}", successor.account_index.capacity());
        assert!(successor.transaction_index.capacity() >= 1000, "{}", successor.transaction_index.capacity());
        assert!(successor.transaction("a1", "t1").is_none());

        // A smaller batch after it (one the interval sealed early) passes the room on, so a full
        // batch after that does not rehash either.
        let mut small = successor;
        small.put_transaction("a1", "t1", record("1", 10));
        let after_small = small.successor();
        assert!(after_small.account_index.capacity() >= 300, "{}", after_small.account_index.capacity());
        assert!(after_small.transaction_index.capacity() >= 1000, "{}", after_small.transaction_index.capacity());
    }

    #[test]
    fn history_entries_come_back_as_pushed_with_absent_ids_absent() {
        let mut overlay = Overlay::default();
        let applied = BorrowedHistoryEntry {
            offset: 7,
            outcome: HistoryOutcome::Applied,
            transaction_id: "r1",
            kind: Some(EventKind::Reversal),
            effect: Some((amount("-3.50"), usd())),
            event_time_micros: Some(42),
            reverses: Some("t1"),
            reason: None,
        };
        let dead = BorrowedHistoryEntry {
            offset: 8,
            outcome: HistoryOutcome::DeadLettered,
            transaction_id: "",
            kind: None,
            effect: None,
            event_time_micros: None,
            reverses: None,
            reason: Some("malformed_json"),
        };
        overlay.push_history("a", applied);
        overlay.push_history("b", dead);

        let back: Vec<_> = overlay.history.iter().map(|pending| overlay.history_entry(pending)).collect();
        assert_eq!(back, [applied, dead]);
        assert_eq!((overlay.history[0].account, overlay.history[1].account), (0, 1));
    }

    #[test]
    fn grouping_by_account_orders_by_rank_and_keeps_each_accounts_own_order() {
        // Accounts 0..4 rank 2, 0, 3, 1: account 1 first, then 3, 0, 2 (which has no entries).
        let rank = [2, 0, 3, 1];
        let accounts = [0, 1, 0, 3, 1, 1, 0];
        let grouped = ByAccount::group(&rank, accounts.iter().copied());
        let runs: Vec<(usize, Vec<u32>)> = grouped.runs().map(|(rank, run)| (rank, run.to_vec())).collect();
        assert_eq!(runs, [(0, vec![1, 4, 5]), (1, vec![3]), (2, vec![0, 2, 6])]);
        assert_eq!(ByAccount::group(&rank, std::iter::empty()).runs().count(), 0);
    }

    #[test]
    fn many_accounts_and_transactions_are_all_found_again() {
        let mut overlay = Overlay::default();
        for i in 0..5_000 {
            let account = format!("account-{}", i % 1_700);
            overlay.put_transaction(&account, &format!("t{i}"), record(&i.to_string(), i));
            overlay.set_balance(&account, usd(), amount(&i.to_string()));
            overlay.push_history(
                &account,
                BorrowedHistoryEntry {
                    offset: i,
                    outcome: HistoryOutcome::Applied,
                    transaction_id: &format!("t{i}"),
                    kind: Some(EventKind::Deposit),
                    effect: None,
                    event_time_micros: Some(i),
                    reverses: None,
                    reason: None,
                },
            );
        }
        assert_eq!(overlay.accounts.len(), 1_700);
        for i in 0..5_000 {
            let account = format!("account-{}", i % 1_700);
            assert_eq!(overlay.transaction(&account, &format!("t{i}")).unwrap().delta, amount(&i.to_string()));
        }
        for i in 3_300..5_000 {
            assert_eq!(overlay.balance(&format!("account-{}", i % 1_700), usd()), Some(amount(&i.to_string())));
        }
    }
}
