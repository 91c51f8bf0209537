//! Snapshot record encoding: key = account id, value = a `SnapshotRecord` protobuf with exact
//! decimal strings; one marker key per partition.

use crate::ledger::{Amount, Currency, EventKind, TransactionRecord};
use crate::proto::{
    snapshot_record, AccountSnapshot, CurrencyBalance, SnapshotMarker, SnapshotRecord, SnapshotTransaction,
};
use crate::store::AccountImage;
use prost::Message;

/// Version of the snapshot record schema; restores refuse records of other versions.
pub const SCHEMA_VERSION: u32 = 1;

/// Key of the round marker. Account ids cannot contain control characters, so no account has it.
pub const MARKER_KEY: &[u8] = b"\0ledgerd.snapshot.marker";

#[derive(Debug, thiserror::Error)]
#[error("undecodable snapshot record: {0}")]
pub struct SnapshotCodecError(pub String);

/// "Every account changed before `complete_through` has a record valid at or after it."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub complete_through: i64,
    pub watermark_micros: i64,
    pub accounts_written: u64,
}

/// A decoded snapshot record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Account {
        image: AccountImage,
        valid_through: i64,
    },
    /// A marker, with the input topic and partition its writer consumed.
    Marker {
        marker: Marker,
        input_topic: String,
        input_partition: i32,
    },
}

/// Encodes an account record valid through `valid_through`. When the whole record would exceed
/// `max_size` bytes, the oldest transactions are left out; returns whether any were.
pub fn encode_account(image: &AccountImage, valid_through: i64, max_size: usize) -> (Vec<u8>, bool) {
    let transactions: Vec<SnapshotTransaction> = image
        .transactions
        .iter()
        .map(|(id, t)| SnapshotTransaction {
            transaction_id: id.clone(),
            kind: u32::from(t.kind as u8),
            amount: t.delta.to_string(),
            currency: t.currency.as_str().to_owned(),
            event_time_micros: t.event_time_micros,
            reverses: t.reverses.clone().unwrap_or_default(),
            reversed: t.reversed,
        })
        .collect();
    let mut account = AccountSnapshot {
        account_id: image.account.clone(),
        valid_through,
        balances: image
            .balances
            .iter()
            .map(|(c, a)| CurrencyBalance { currency: c.as_str().to_owned(), amount: a.to_string() })
            .collect(),
        transactions,
        transactions_truncated: false,
    };
    let mut record = SnapshotRecord { schema_version: SCHEMA_VERSION, body: None };
    // Transactions are newest first: drop from the end until the record fits.
    loop {
        record.body = Some(snapshot_record::Body::Account(account));
        if record.encoded_len() <= max_size {
            break;
        }
        let Some(snapshot_record::Body::Account(mut too_big)) = record.body.take() else { unreachable!() };
        if too_big.transactions.is_empty() {
            record.body = Some(snapshot_record::Body::Account(too_big));
            break;
        }
        let keep = too_big.transactions.len() - too_big.transactions.len().div_ceil(8);
        too_big.transactions.truncate(keep);
        too_big.transactions_truncated = true;
        account = too_big;
    }
    let truncated = matches!(&record.body, Some(snapshot_record::Body::Account(a)) if a.transactions_truncated);
    (record.encode_to_vec(), truncated)
}

pub fn encode_marker(marker: &Marker, input_topic: &str, input_partition: i32) -> Vec<u8> {
    SnapshotRecord {
        schema_version: SCHEMA_VERSION,
        body: Some(snapshot_record::Body::Marker(SnapshotMarker {
            complete_through: marker.complete_through,
            watermark_micros: marker.watermark_micros,
            accounts_written: marker.accounts_written,
            input_topic: input_topic.to_owned(),
            input_partition,
        })),
    }
    .encode_to_vec()
}

/// Decodes a record. `None` for a tombstone (no value), which ledgerd never writes but an
/// operator might.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<Entry>, SnapshotCodecError> {
    let Some(value) = value else { return Ok(None) };
    let record = SnapshotRecord::decode(value).map_err(|e| SnapshotCodecError(e.to_string()))?;
    if record.schema_version != SCHEMA_VERSION {
        return Err(SnapshotCodecError(format!(
            "schema version {} (this ledgerd reads {SCHEMA_VERSION})",
            record.schema_version
        )));
    }
    match record.body {
        Some(snapshot_record::Body::Marker(m)) if key == MARKER_KEY => Ok(Some(Entry::Marker {
            marker: Marker {
                complete_through: m.complete_through,
                watermark_micros: m.watermark_micros,
                accounts_written: m.accounts_written,
            },
            input_topic: m.input_topic,
            input_partition: m.input_partition,
        })),
        Some(snapshot_record::Body::Account(a)) if key == a.account_id.as_bytes() => {
            let valid_through = a.valid_through;
            Ok(Some(Entry::Account { image: account_image(a)?, valid_through }))
        }
        Some(_) => Err(SnapshotCodecError(format!("record does not match its key {:?}", String::from_utf8_lossy(key)))),
        None => Err(SnapshotCodecError("record without a body".into())),
    }
}

fn account_image(a: AccountSnapshot) -> Result<AccountImage, SnapshotCodecError> {
    let currency =
        |text: &str| Currency::parse(text).ok_or_else(|| SnapshotCodecError(format!("bad currency {text:?}")));
    let amount = |text: &str| Amount::parse(text).map_err(|e| SnapshotCodecError(format!("bad amount {text:?}: {e}")));
    let balances =
        a.balances.iter().map(|b| Ok((currency(&b.currency)?, amount(&b.amount)?))).collect::<Result<_, _>>()?;
    let transactions = a
        .transactions
        .into_iter()
        .map(|t| {
            let kind = u8::try_from(t.kind)
                .ok()
                .and_then(EventKind::from_u8)
                .ok_or_else(|| SnapshotCodecError(format!("unknown event kind {}", t.kind)))?;
            let record = TransactionRecord {
                kind,
                delta: amount(&t.amount)?,
                currency: currency(&t.currency)?,
                event_time_micros: t.event_time_micros,
                reverses: (!t.reverses.is_empty()).then_some(t.reverses),
                reversed: t.reversed,
            };
            Ok((t.transaction_id, record))
        })
        .collect::<Result<_, SnapshotCodecError>>()?;
    Ok(AccountImage { account: a.account_id, balances, transactions })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(transactions: usize) -> AccountImage {
        let usd = Currency::parse("USD").unwrap();
        AccountImage {
            account: "6ad87cf1".into(),
            balances: vec![
                (usd, Amount::parse("3701.00").unwrap()),
                (Currency::parse("EUR").unwrap(), Amount::parse("-0.10").unwrap()),
            ],
            transactions: (0..transactions)
                .map(|i| {
                    let record = TransactionRecord {
                        kind: EventKind::Payment,
                        delta: Amount::parse("-1299.00").unwrap(),
                        currency: usd,
                        event_time_micros: 1_000 - i as i64,
                        reverses: None,
                        reversed: i == 0,
                    };
                    (format!("t{i}"), record)
                })
                .collect(),
        }
    }

    #[test]
    fn account_records_round_trip_exactly() {
        let (bytes, truncated) = encode_account(&image(3), 42, 1 << 20);
        assert!(!truncated);
        let decoded = decode(b"6ad87cf1", Some(&bytes)).unwrap().unwrap();
        assert_eq!(decoded, Entry::Account { image: image(3), valid_through: 42 });
    }

    #[test]
    fn oversized_accounts_keep_their_newest_transactions() {
        let (bytes, truncated) = encode_account(&image(1000), 42, 4096);
        assert!(truncated);
        assert!(bytes.len() <= 4096);
        let Some(Entry::Account { image: decoded, .. }) = decode(b"6ad87cf1", Some(&bytes)).unwrap() else { panic!() };
        assert!(!decoded.transactions.is_empty());
        assert_eq!(decoded.transactions[..], image(1000).transactions[..decoded.transactions.len()]);
        assert_eq!(decoded.balances, image(0).balances);
    }

    #[test]
    fn markers_round_trip_and_keys_are_checked() {
        let marker = Marker { complete_through: 7, watermark_micros: -3, accounts_written: 2 };
        let bytes = encode_marker(&marker, "transactions", 4);
        let expected = Entry::Marker { marker, input_topic: "transactions".into(), input_partition: 4 };
        assert_eq!(decode(MARKER_KEY, Some(&bytes)).unwrap(), Some(expected));
        assert!(decode(b"someone", Some(&bytes)).is_err(), "a marker under an account key is refused");
        let (account, _) = encode_account(&image(0), 1, 1 << 20);
        assert!(decode(b"other-account", Some(&account)).is_err());
        assert_eq!(decode(b"x", None).unwrap(), None);
    }

    #[test]
    fn unknown_schema_versions_are_refused() {
        let bytes = SnapshotRecord { schema_version: 2, body: None }.encode_to_vec();
        let error = decode(MARKER_KEY, Some(&bytes)).unwrap_err();
        assert!(error.0.contains("schema version 2"), "{error}");
    }
}
