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
//! | `transactions` | account prefix, transaction id                 | format byte + protobuf      |
//! | `txn_expiry`   | event time (u64 BE, sign-flipped), account prefix, transaction id | empty    |
//! | `restore_skip` | account prefix                                 | i64 BE: the account's snapshot offset |
//! | `history`      | account prefix, input offset (i64 BE)          | format byte, retention time, protobuf |

use crate::ledger::Currency;

pub const CF_META: &str = "meta";
pub const CF_BALANCES: &str = "balances";
pub const CF_TRANSACTIONS: &str = "transactions";
pub const CF_TXN_EXPIRY: &str = "txn_expiry";
/// Accounts restored from a snapshot record newer than the restore point: input records of that
/// account below the stored offset are already in its state and must not be applied again.
pub const CF_RESTORE_SKIP: &str = "restore_skip";
/// Every input record of an account, by offset: the audit trail and point-in-time balances.
pub const CF_HISTORY: &str = "history";
pub const ALL_CFS: [&str; 6] = [CF_META, CF_BALANCES, CF_TRANSACTIONS, CF_TXN_EXPIRY, CF_RESTORE_SKIP, CF_HISTORY];

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
    push_account(&mut key, account);
    key.extend_from_slice(currency.as_bytes());
    key
}

pub fn transaction(account: &str, transaction_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + account.len() + transaction_id.len());
    push_account(&mut key, account);
    key.extend_from_slice(transaction_id.as_bytes());
    key
}

/// An account's history entry at `offset` (offsets are never negative, so BE order is numeric).
pub fn history(account: &str, offset: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + account.len());
    push_account(&mut key, account);
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

/// The input offset a `history` key is filed under.
pub fn history_offset(key: &[u8]) -> Option<i64> {
    let (_, rest) = split_account(key)?;
    Some(i64::from_be_bytes(rest.try_into().ok()?))
}

/// Signed micros mapped to u64 so that byte order is numeric order across negative values.
fn ordered_time(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn expiry(event_time_micros: i64, account: &str, transaction_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + account.len() + transaction_id.len());
    key.extend_from_slice(&ordered_time(event_time_micros));
    push_account(&mut key, account);
    key.extend_from_slice(transaction_id.as_bytes());
    key
}

/// The smallest expiry key with an event time >= `micros`: an exclusive upper bound for pruning.
pub fn expiry_bound(micros: i64) -> Vec<u8> {
    ordered_time(micros).to_vec()
}

/// The event time an expiry key is filed under.
pub fn expiry_time(expiry_key: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = expiry_key.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// Splits an expiry key back into the `transactions` key it points at.
pub fn transaction_key_of_expiry(expiry_key: &[u8]) -> Option<&[u8]> {
    expiry_key.get(8..)
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
    fn expiry_keys_sort_by_time_including_negative() {
        let mut keys = vec![expiry(5, "a", "t"), expiry(-5, "a", "t"), expiry(0, "a", "t"), expiry(i64::MIN, "z", "t")];
        keys.sort();
        assert_eq!(
            keys,
            vec![expiry(i64::MIN, "z", "t"), expiry(-5, "a", "t"), expiry(0, "a", "t"), expiry(5, "a", "t")]
        );
        assert!(expiry(4, "zz", "t") < expiry_bound(5));
        assert!(expiry(5, "a", "t") >= expiry_bound(5));
        assert_eq!(transaction_key_of_expiry(&expiry(9, "a", "t1")).unwrap(), transaction("a", "t1").as_slice());
        assert_eq!(expiry_time(&expiry(-9, "a", "t1")), Some(-9));
        assert_eq!(expiry_time(&expiry(i64::MIN, "a", "t1")), Some(i64::MIN));
    }

    #[test]
    fn balance_keys_split_back() {
        let usd = Currency::parse("USD").unwrap();
        assert_eq!(split_balance(&balance("6ad87cf1", usd)), Some(("6ad87cf1", usd)));
    }
}
