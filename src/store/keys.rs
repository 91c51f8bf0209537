//! Key layout of a partition's RocksDB, one column family per kind of record.
//!
//! Keys put big-endian integers first where order matters, so RocksDB's byte order is numeric order.
//! Account ids are length-prefixed (u16 BE) so one account's keys form a contiguous range that no
//! other account's keys can fall into, whatever bytes the ids contain.
//!
//! | column family  | key                                            | value                       |
//! |----------------|------------------------------------------------|-----------------------------|
//! | `meta`         | a [`MetaKey`] name                             | see `codec`                 |
//! | `balances`     | account prefix, currency (3 bytes)             | format byte, amount, changed-at offset |
//! | `transactions` | account prefix, transaction id                 | format byte, event time, record |
//! | `restore_skip` | account prefix                                 | i64 BE: the account's snapshot offset |
//! | `history`      | account prefix, first entry's offset (i64 BE)  | format byte, newest retention time, entries |
//!
//! A `history` value holds one entry, or an account's entries of one checkpoint (see `codec`).

use crate::ledger::Currency;

pub const CF_META: &str = "meta";
pub const CF_BALANCES: &str = "balances";
pub const CF_TRANSACTIONS: &str = "transactions";
/// Accounts restored from a snapshot record newer than the restore point: input records of that
/// account below the stored offset are already in its state and must not be applied again.
pub const CF_RESTORE_SKIP: &str = "restore_skip";
/// Every input record of an account, by offset: the audit trail and point-in-time balances.
pub const CF_HISTORY: &str = "history";
pub const ALL_CFS: [&str; 5] = [CF_META, CF_BALANCES, CF_TRANSACTIONS, CF_RESTORE_SKIP, CF_HISTORY];
/// Column families of earlier layouts, dropped when found. `txn_expiry` indexed transaction ids by
/// event time so that a checkpoint could delete the expired ones: two more writes per transaction
/// and a scan per checkpoint, where a compaction filter on `transactions` now does the same work.
pub const RETIRED_CFS: [&str; 1] = ["txn_expiry"];

/// Named entries of the `meta` column family.
#[derive(Debug, Clone, Copy)]
pub enum MetaKey {
    /// The state's format version (u32 BE); a mismatch sets the state aside.
    FormatVersion,
    /// `<topic>\0<partition>`: which input partition this state belongs to.
    Identity,
    /// The next input offset to read (i64 BE): every record below it is reflected in this state.
    NextOffset,
    /// The newest event time applied (i64 BE micros); drives the dedupe window.
    Watermark,
    /// The input offset of this partition's newest snapshot round whose marker the broker
    /// acknowledged (i64 BE); the next round writes the accounts changed since.
    SnapshotThrough,
    /// Event time (i64 BE micros) from which the history is complete: every applied record with a
    /// later event time is in `history`. Raised by retention and set by restores and migration.
    HistoryFloor,
}

impl MetaKey {
    pub fn name(self) -> &'static [u8] {
        match self {
            MetaKey::FormatVersion => b"format_version",
            MetaKey::Identity => b"identity",
            MetaKey::NextOffset => b"next_offset",
            MetaKey::Watermark => b"watermark",
            MetaKey::SnapshotThrough => b"snapshot_through",
            MetaKey::HistoryFloor => b"history_floor",
        }
    }
}

/// Appends the length-prefixed account id.
pub fn push_account(key: &mut Vec<u8>, account: &str) {
    // Ids are validated to at most MAX_ID_LEN (256) bytes, far below u16::MAX.
    key.extend_from_slice(&(account.len() as u16).to_be_bytes());
    key.extend_from_slice(account.as_bytes());
}

pub fn account_prefix(account: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + account.len());
    push_account(&mut key, account);
    key
}

pub fn balance(account: &str, currency: Currency) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + account.len());
    balance_into(&mut key, account, currency);
    key
}

/// Replaces `key`'s contents with the `balances` key (the `_into` forms let a checkpoint reuse one
/// buffer for every key it writes).
pub fn balance_into(key: &mut Vec<u8>, account: &str, currency: Currency) {
    key.clear();
    push_account(key, account);
    key.extend_from_slice(currency.as_bytes());
}

pub fn transaction(account: &str, transaction_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + account.len() + transaction_id.len());
    transaction_into(&mut key, account, transaction_id);
    key
}

pub fn transaction_into(key: &mut Vec<u8>, account: &str, transaction_id: &str) {
    key.clear();
    push_account(key, account);
    key.extend_from_slice(transaction_id.as_bytes());
}

/// The key of `account`'s history entries from `offset` on (offsets are never negative, so BE
/// order is numeric).
pub fn history(account: &str, offset: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + account.len());
    history_into(&mut key, account, offset);
    key
}

pub fn history_into(key: &mut Vec<u8>, account: &str, offset: i64) {
    key.clear();
    push_account(key, account);
    key.extend_from_slice(&offset.to_be_bytes());
}

/// The input offset a `history` key is filed under.
pub fn history_offset(key: &[u8]) -> Option<i64> {
    let (_, rest) = split_account(key)?;
    Some(i64::from_be_bytes(rest.try_into().ok()?))
}

/// Splits a key that starts with an account prefix into (account, rest of the key).
pub fn split_account(key: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(u16::from_be_bytes(key.get(..2)?.try_into().ok()?));
    let account = std::str::from_utf8(key.get(2..2 + len)?).ok()?;
    Some((account, key.get(2 + len..)?))
}

/// Splits a `balances` key into (account, currency).
pub fn split_balance(key: &[u8]) -> Option<(&str, Currency)> {
    let (account, rest) = split_account(key)?;
    Some((account, Currency::parse(std::str::from_utf8(rest).ok()?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ranges_do_not_interleave() {
        // "ab" must not be a byte prefix of "abc"'s keys.
        let usd = Currency::parse("USD").unwrap();
        assert!(!balance("abc", usd).starts_with(&account_prefix("ab")));
        assert!(balance("ab", usd).starts_with(&account_prefix("ab")));
    }

    #[test]
    fn balance_keys_split_back() {
        let usd = Currency::parse("USD").unwrap();
        assert_eq!(split_balance(&balance("6ad87cf1", usd)), Some(("6ad87cf1", usd)));
    }
}
