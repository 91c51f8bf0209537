//! The uncheckpointed changes of a partition, and the reducer's view: overlay first, store second.

use crate::ledger::{Amount, Currency, HistoryEntry, LedgerState, TransactionRecord};
use crate::store::{Checkpoint, PartitionStore, StoreError};
// foldhash instead of std's SipHash: these maps are looked up several times per record. Its seed is
// random per process, so crafted account or transaction ids cannot aim at collisions.
use foldhash::HashMap;

/// Changes of one account since the last checkpoint.
#[derive(Default)]
struct AccountChanges {
    /// Few currencies per account: a small vector beats a map.
    balances: Vec<(Currency, Amount)>,
    transactions: HashMap<String, TransactionRecord>,
    /// What became of each of the account's records, in offset order.
    history: Vec<HistoryEntry>,
}

/// Changes since the last checkpoint, keyed by account.
#[derive(Default)]
pub(super) struct Overlay {
    accounts: HashMap<String, AccountChanges>,
}

impl Overlay {
    fn account_mut(&mut self, account: &str) -> &mut AccountChanges {
        // Look up by &str first so the common case (account already present) allocates nothing.
        if !self.accounts.contains_key(account) {
            self.accounts.insert(account.to_owned(), AccountChanges::default());
        }
        self.accounts.get_mut(account).expect("inserted above")
    }

    fn balance(&self, account: &str, currency: Currency) -> Option<Amount> {
        let changes = self.accounts.get(account)?;
        changes.balances.iter().find(|(c, _)| *c == currency).map(|(_, balance)| *balance)
    }

    fn transaction(&self, account: &str, transaction_id: &str) -> Option<&TransactionRecord> {
        self.accounts.get(account)?.transactions.get(transaction_id)
    }

    pub(super) fn push_history(&mut self, account: &str, entry: HistoryEntry) {
        self.account_mut(account).history.push(entry);
    }

    /// Adds the changes to `batch`, which will be committed with `next_offset` and `watermark_micros`.
    ///
    /// In key order (accounts as their length-prefixed keys sort, then ids), not hash order: each
    /// memtable's skip list then finds every insert's place next to the one before instead of
    /// searching from the top, which made the inserts cheaper (measured in docs/BENCHMARKS.md).
    pub(super) fn write_to(&self, batch: &mut Checkpoint<'_>, next_offset: i64, watermark_micros: i64) {
        let mut accounts: Vec<(&String, &AccountChanges)> = self.accounts.iter().collect();
        accounts.sort_unstable_by(|(a, _), (b, _)| (a.len(), a.as_bytes()).cmp(&(b.len(), b.as_bytes())));
        let mut transactions = Vec::new();
        for (account, changes) in accounts {
            for entry in &changes.history {
                batch.put_history(account, entry, watermark_micros);
            }
            for (currency, balance) in &changes.balances {
                batch.put_balance(account, *currency, *balance, next_offset);
            }
            transactions.clear();
            transactions.extend(&changes.transactions);
            transactions.sort_unstable_by_key(|(id, _)| *id);
            for (id, record) in &transactions {
                batch.put_transaction(account, id, record);
            }
        }
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
        Ok(self.store.balance(account, currency)?.unwrap_or_default())
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
        let balances = &mut self.overlay.account_mut(account).balances;
        match balances.iter_mut().find(|(c, _)| *c == currency) {
            Some(entry) => entry.1 = balance,
            None => balances.push((currency, balance)),
        }
    }

    fn put_transaction(&mut self, account: &str, transaction_id: &str, record: TransactionRecord) {
        self.overlay.account_mut(account).transactions.insert(transaction_id.to_owned(), record);
    }
}
