//! Value encodings. Every value starts with a format byte so the encoding can evolve; readers reject
//! formats they do not know instead of misreading them.

use crate::ledger::{
    Amount, BorrowedHistoryEntry, Currency, EventKind, HistoryEntry, HistoryOutcome, TransactionRecord,
};
use crate::proto::{HistoryEntry as StoredHistoryEntry, StoredTransaction};
use prost::Message;

/// Format of balance values written by ledgerd 0.1: byte 1, then `rust_decimal`'s 16-byte
/// serialisation. Still read; its changed-at offset counts as unknown (0), which only makes the
/// next snapshot round include the account.
const BALANCE_V1: u8 = 1;
/// Format of balance values: byte 2, the 16-byte amount, then the next offset (i64 BE) of the
/// checkpoint that last changed it, so a snapshot round can find the accounts changed since the last.
const BALANCE_V2: u8 = 2;
/// Format of transaction values written before ledgerd 0.2: byte 1, then a `StoredTransaction`
/// protobuf. Still read.
const TRANSACTION_V1: u8 = 1;
/// Format of transaction values: byte 2, the event time (i64 BE micros) where the expiry
/// compaction filter reads it without decoding, the kind, a reversed flag (0 or 1), the 16-byte
/// delta, the 3-byte currency, then the reversal target's id (the rest of the value, usually empty).
/// Fixed offsets instead of protobuf: one of these is written for every applied record, and
/// encoding it allocates nothing beyond the caller's buffer.
const TRANSACTION_V2: u8 = 2;
const TRANSACTION_V2_FIXED: usize = 1 + 8 + 1 + 1 + 16 + 3;

/// Format of a history value holding one entry: byte 1, the retention time (i64 BE micros: the
/// event time, or the partition's watermark for a record without one) where a compaction filter
/// can read it without decoding, then a `HistoryEntry` protobuf.
const HISTORY_V1: u8 = 1;
/// Format of a history value holding several entries of one account, oldest first, filed under
/// the first one's offset: byte 2, the newest retention time among them (where V1 keeps its one),
/// the number of entries (varint), then per entry its offset after the key's (varint), its
/// retention time (i64 BE), the protobuf's length (u32 BE) and the protobuf. An account's records
/// of one checkpoint become one RocksDB key instead of one each: fewer memtable inserts, and less
/// to flush and compact.
const HISTORY_V2: u8 = 2;
/// Retention time, then the V2 entry's protobuf length.
const HISTORY_V2_ENTRY_FIXED: usize = 8 + 4;

#[derive(Debug, thiserror::Error)]
#[error("undecodable stored value: {0}")]
pub struct CodecError(pub String);

pub fn encode_balance(amount: Amount, changed_at: i64) -> [u8; 25] {
    let mut out = [0u8; 25];
    out[0] = BALANCE_V2;
    out[1..17].copy_from_slice(&amount.to_bytes());
    out[17..].copy_from_slice(&changed_at.to_be_bytes());
    out
}

pub fn decode_balance(bytes: &[u8]) -> Result<Amount, CodecError> {
    decode_balance_entry(bytes).map(|(amount, _)| amount)
}

/// The balance and the next offset of the checkpoint that last changed it.
pub fn decode_balance_entry(bytes: &[u8]) -> Result<(Amount, i64), CodecError> {
    let wrong_size = || CodecError(format!("balance of {} bytes", bytes.len()));
    match bytes.split_first() {
        Some((&BALANCE_V1, rest)) => Ok((Amount::from_bytes(rest.try_into().map_err(|_| wrong_size())?), 0)),
        Some((&BALANCE_V2, rest)) if rest.len() == 24 => {
            let amount = Amount::from_bytes(rest[..16].try_into().map_err(|_| wrong_size())?);
            Ok((amount, i64::from_be_bytes(rest[16..].try_into().map_err(|_| wrong_size())?)))
        }
        Some((&BALANCE_V2, _)) => Err(wrong_size()),
        _ => Err(CodecError(format!("unknown balance format {:?}", bytes.first()))),
    }
}

/// Appends the encoding of `record` to `out`.
pub fn encode_transaction_into(record: &TransactionRecord, out: &mut Vec<u8>) {
    let reverses = record.reverses.as_deref().unwrap_or_default();
    out.reserve(TRANSACTION_V2_FIXED + reverses.len());
    out.push(TRANSACTION_V2);
    out.extend_from_slice(&record.event_time_micros.to_be_bytes());
    out.push(record.kind as u8);
    out.push(u8::from(record.reversed));
    out.extend_from_slice(&record.delta.to_bytes());
    out.extend_from_slice(record.currency.as_bytes());
    out.extend_from_slice(reverses.as_bytes());
}

/// The encoding as a new buffer (tests; ledgerd encodes into a checkpoint's reused one).
#[cfg(test)]
pub fn encode_transaction(record: &TransactionRecord) -> Vec<u8> {
    let mut out = Vec::new();
    encode_transaction_into(record, &mut out);
    out
}

/// The event time of a stored transaction, read without decoding the rest (for the compaction
/// filter that forgets transactions older than the dedupe window). `None` when undecodable.
pub fn transaction_event_time(bytes: &[u8]) -> Option<i64> {
    match bytes.first() {
        Some(&TRANSACTION_V2) => Some(i64::from_be_bytes(bytes.get(1..9)?.try_into().ok()?)),
        Some(&TRANSACTION_V1) => decode_transaction(bytes).ok().map(|r| r.event_time_micros),
        _ => None,
    }
}

pub fn decode_transaction(bytes: &[u8]) -> Result<TransactionRecord, CodecError> {
    match bytes.split_first() {
        Some((&TRANSACTION_V2, _)) => decode_transaction_v2(bytes),
        Some((&TRANSACTION_V1, rest)) => decode_transaction_v1(rest),
        _ => Err(CodecError(format!("unknown transaction format {:?}", bytes.first()))),
    }
}

fn decode_transaction_v2(bytes: &[u8]) -> Result<TransactionRecord, CodecError> {
    if bytes.len() < TRANSACTION_V2_FIXED {
        return Err(CodecError(format!("transaction of {} bytes", bytes.len())));
    }
    let event_time_micros = i64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
    let kind = EventKind::from_u8(bytes[9]).ok_or_else(|| CodecError(format!("unknown event kind {}", bytes[9])))?;
    let reversed = match bytes[10] {
        0 => false,
        1 => true,
        other => return Err(CodecError(format!("reversed flag {other}"))),
    };
    let delta = Amount::from_bytes(bytes[11..27].try_into().expect("16 bytes"));
    let currency = std::str::from_utf8(&bytes[27..30])
        .ok()
        .and_then(Currency::parse)
        .ok_or_else(|| CodecError(format!("bad currency {:?}", &bytes[27..30])))?;
    let reverses = match &bytes[TRANSACTION_V2_FIXED..] {
        [] => None,
        id => Some(String::from_utf8(id.to_vec()).map_err(|_| CodecError("reversal target is not UTF-8".into()))?),
    };
    Ok(TransactionRecord { kind, delta, currency, event_time_micros, reverses, reversed })
}

fn decode_transaction_v1(rest: &[u8]) -> Result<TransactionRecord, CodecError> {
    let m = StoredTransaction::decode(rest).map_err(|e| CodecError(e.to_string()))?;
    let kind = u8::try_from(m.kind)
        .ok()
        .and_then(EventKind::from_u8)
        .ok_or_else(|| CodecError(format!("unknown event kind {}", m.kind)))?;
    let amount: [u8; 16] = m.amount.as_slice().try_into().map_err(|_| CodecError("amount is not 16 bytes".into()))?;
    let currency = Currency::parse(&m.currency).ok_or_else(|| CodecError(format!("bad currency {:?}", m.currency)))?;
    Ok(TransactionRecord {
        kind,
        delta: Amount::from_bytes(amount),
        currency,
        event_time_micros: m.event_time_micros,
        reverses: (!m.reverses.is_empty()).then_some(m.reverses),
        reversed: m.reversed,
    })
}

/// Appends the encoding of `entries` (one account's, in offset order, filed under the first's
/// offset) to `out`, each with the retention time `retention` gives it: V1 for one entry, V2 for
/// several.
pub fn encode_history_into(
    entries: &[BorrowedHistoryEntry<'_>],
    retention: impl Fn(&BorrowedHistoryEntry<'_>) -> i64,
    out: &mut Vec<u8>,
) {
    match entries {
        [] => {}
        [entry] => {
            out.push(HISTORY_V1);
            out.extend_from_slice(&retention(entry).to_be_bytes());
            encode_history_body(entry, out);
        }
        [first, ..] => {
            let newest = entries.iter().map(&retention).max().unwrap_or(i64::MIN);
            out.push(HISTORY_V2);
            out.extend_from_slice(&newest.to_be_bytes());
            prost::encoding::encode_varint(entries.len() as u64, out);
            for entry in entries {
                debug_assert!(entry.offset >= first.offset, "entries in offset order");
                prost::encoding::encode_varint(entry.offset.saturating_sub(first.offset).max(0) as u64, out);
                out.extend_from_slice(&retention(entry).to_be_bytes());
                let length_at = out.len();
                out.extend_from_slice(&[0; 4]);
                encode_history_body(entry, out);
                // Bodies hold a few ids of at most 256 bytes and a short reason: far below 4 GiB.
                let length = (out.len() - length_at - 4) as u32;
                out[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
            }
        }
    }
}

/// Appends `entry` as a `HistoryEntry` protobuf, written field by field from the borrowed entry
/// (building the generated message would copy every string, once per record).
fn encode_history_body(entry: &BorrowedHistoryEntry<'_>, out: &mut Vec<u8>) {
    use prost::encoding::{encode_key, encode_varint, WireType};
    fn bytes_field(tag: u32, value: &[u8], out: &mut Vec<u8>) {
        if !value.is_empty() {
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(value.len() as u64, out);
            out.extend_from_slice(value);
        }
    }
    fn varint_field(tag: u32, value: u64, out: &mut Vec<u8>) {
        if value != 0 {
            encode_key(tag, WireType::Varint, out);
            encode_varint(value, out);
        }
    }
    // Field numbers as in proto/ledgerd/v1/storage.proto; proto3 leaves default values out.
    varint_field(1, u64::from(entry.outcome.to_u32()), out);
    bytes_field(2, entry.transaction_id.as_bytes(), out);
    varint_field(3, entry.kind.map_or(0, |k| u64::from(k as u8)), out);
    if let Some((amount, currency)) = entry.effect {
        bytes_field(4, &amount.to_bytes(), out);
        bytes_field(5, currency.as_bytes(), out);
    }
    if let Some(time) = entry.event_time_micros {
        // `optional`: present even when 0; int64 is the two's-complement varint.
        encode_key(6, WireType::Varint, out);
        encode_varint(time as u64, out);
    }
    bytes_field(7, entry.reverses.unwrap_or_default().as_bytes(), out);
    bytes_field(8, entry.reason.unwrap_or_default().as_bytes(), out);
}

/// The encoding as a new buffer (tests; ledgerd encodes into a checkpoint's reused one).
#[cfg(test)]
pub fn encode_history(entries: &[(&HistoryEntry, i64)]) -> Vec<u8> {
    let retention =
        |entry: &BorrowedHistoryEntry<'_>| entries.iter().find(|(e, _)| e.offset == entry.offset).map_or(0, |r| r.1);
    let mut out = Vec::new();
    encode_history_into(&entries.iter().map(|&(e, _)| e.borrowed()).collect::<Vec<_>>(), retention, &mut out);
    out
}

/// The newest retention time in a history value, read without decoding it (for the compaction
/// filter, which drops a value once all of its entries are past retention).
pub fn history_retention_micros(bytes: &[u8]) -> Option<i64> {
    match bytes.split_first() {
        Some((&(HISTORY_V1 | HISTORY_V2), rest)) => Some(i64::from_be_bytes(rest.get(..8)?.try_into().ok()?)),
        _ => None,
    }
}

/// One history entry as stored, not yet decoded.
#[derive(Debug, Clone, Copy)]
pub struct StoredHistory<'a> {
    pub offset: i64,
    pub retention_micros: i64,
    body: &'a [u8],
}

impl StoredHistory<'_> {
    pub fn decode(&self) -> Result<HistoryEntry, CodecError> {
        decode_history_body(self.offset, self.body)
    }
}

/// The entries of a history value filed under `key_offset`, oldest first.
pub fn history_entries(key_offset: i64, bytes: &[u8]) -> Result<Vec<StoredHistory<'_>>, CodecError> {
    let truncated = || CodecError(format!("history value of {} bytes is cut short", bytes.len()));
    match bytes.first() {
        Some(&HISTORY_V1) => {
            let retention = history_retention_micros(bytes).ok_or_else(truncated)?;
            Ok(vec![StoredHistory { offset: key_offset, retention_micros: retention, body: &bytes[9..] }])
        }
        Some(&HISTORY_V2) => {
            let mut rest = bytes.get(9..).ok_or_else(truncated)?;
            let varint = |rest: &mut &[u8]| prost::encoding::decode_varint(rest).map_err(|_| truncated());
            let count = varint(&mut rest)?;
            // A count beyond what the bytes can hold is not believed for the allocation.
            let mut entries = Vec::with_capacity((count as usize).min(rest.len() / (1 + HISTORY_V2_ENTRY_FIXED)));
            for _ in 0..count {
                let after = varint(&mut rest)?;
                let offset = i64::try_from(after).ok().and_then(|after| key_offset.checked_add(after));
                let offset = offset.ok_or_else(|| CodecError(format!("history offset {key_offset} + {after}")))?;
                let fixed = rest.get(..HISTORY_V2_ENTRY_FIXED).ok_or_else(truncated)?;
                let retention_micros = i64::from_be_bytes(fixed[..8].try_into().expect("8 bytes"));
                let length = u32::from_be_bytes(fixed[8..].try_into().expect("4 bytes")) as usize;
                let body = rest.get(HISTORY_V2_ENTRY_FIXED..HISTORY_V2_ENTRY_FIXED + length).ok_or_else(truncated)?;
                entries.push(StoredHistory { offset, retention_micros, body });
                rest = &rest[HISTORY_V2_ENTRY_FIXED + length..];
            }
            if !rest.is_empty() {
                return Err(CodecError(format!("{} bytes after the last history entry", rest.len())));
            }
            Ok(entries)
        }
        other => Err(CodecError(format!("unknown history format {other:?}"))),
    }
}

fn decode_history_body(offset: i64, body: &[u8]) -> Result<HistoryEntry, CodecError> {
    let m = StoredHistoryEntry::decode(body).map_err(|e| CodecError(e.to_string()))?;
    let outcome =
        HistoryOutcome::from_u32(m.outcome).ok_or_else(|| CodecError(format!("unknown outcome {}", m.outcome)))?;
    let kind = match m.kind {
        0 => None,
        k => Some(
            u8::try_from(k)
                .ok()
                .and_then(EventKind::from_u8)
                .ok_or_else(|| CodecError(format!("unknown event kind {k}")))?,
        ),
    };
    let effect = if m.amount.is_empty() {
        None
    } else {
        let amount: [u8; 16] =
            m.amount.as_slice().try_into().map_err(|_| CodecError("amount is not 16 bytes".into()))?;
        let currency =
            Currency::parse(&m.currency).ok_or_else(|| CodecError(format!("bad currency {:?}", m.currency)))?;
        Some((Amount::from_bytes(amount), currency))
    };
    Ok(HistoryEntry {
        offset,
        outcome,
        transaction_id: m.transaction_id,
        kind,
        effect,
        event_time_micros: m.event_time_micros,
        reverses: (!m.reverses.is_empty()).then_some(m.reverses),
        reason: (!m.reason.is_empty()).then_some(m.reason),
    })
}

pub fn encode_i64(value: i64) -> [u8; 8] {
    value.to_be_bytes()
}

pub fn decode_i64(bytes: &[u8]) -> Result<i64, CodecError> {
    bytes.try_into().map(i64::from_be_bytes).map_err(|_| CodecError(format!("integer of {} bytes", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let amount = Amount::parse("-1299.00").unwrap();
        assert_eq!(decode_balance_entry(&encode_balance(amount, 77)).unwrap(), (amount, 77));
        // ledgerd 0.1's format still reads, with an unknown (0) changed-at offset.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&amount.to_bytes());
        assert_eq!(decode_balance_entry(&v1).unwrap(), (amount, 0));
        let record = TransactionRecord {
            kind: EventKind::Reversal,
            delta: amount,
            currency: Currency::parse("EUR").unwrap(),
            event_time_micros: -42,
            reverses: Some("t1".into()),
            reversed: true,
        };
        let bytes = encode_transaction(&record);
        assert_eq!(decode_transaction(&bytes).unwrap(), record);
        assert_eq!(transaction_event_time(&bytes), Some(-42));
        let movement =
            TransactionRecord { kind: EventKind::Payment, reverses: None, reversed: false, ..record.clone() };
        assert_eq!(decode_transaction(&encode_transaction(&movement)).unwrap(), movement);
        // The protobuf format of ledgerd 0.1 still reads.
        let v1 = StoredTransaction {
            kind: u32::from(record.kind as u8),
            amount: record.delta.to_bytes().to_vec(),
            currency: "EUR".into(),
            event_time_micros: -42,
            reverses: "t1".into(),
            reversed: true,
        };
        let mut v1_bytes = vec![TRANSACTION_V1];
        v1.encode(&mut v1_bytes).unwrap();
        assert_eq!(decode_transaction(&v1_bytes).unwrap(), record);
        assert_eq!(transaction_event_time(&v1_bytes), Some(-42));
        let entry = HistoryEntry {
            offset: 12,
            outcome: HistoryOutcome::Applied,
            transaction_id: "r1".into(),
            kind: Some(EventKind::Reversal),
            effect: Some((amount, Currency::parse("EUR").unwrap())),
            event_time_micros: Some(-42),
            reverses: Some("t1".into()),
            reason: None,
        };
        let bytes = encode_history(&[(&entry, -42)]);
        assert_eq!(history_retention_micros(&bytes), Some(-42));
        assert_eq!(&bytes[9..], prost_history(&entry).as_slice(), "the same bytes as the generated message");
        assert_eq!(decode_history(12, &bytes), [(12, -42, entry.clone())]);
        let dead = HistoryEntry {
            outcome: HistoryOutcome::DeadLettered,
            transaction_id: String::new(),
            kind: None,
            effect: None,
            event_time_micros: None,
            reverses: None,
            reason: Some("malformed_json".into()),
            ..entry
        };
        assert_eq!(decode_history(12, &encode_history(&[(&dead, 7)])), [(12, 7, dead.clone())]);
        assert_eq!(&encode_history(&[(&dead, 7)])[9..], prost_history(&dead).as_slice());
        let at_zero = HistoryEntry { event_time_micros: Some(0), ..entry.clone() };
        assert_eq!(decode_history(12, &encode_history(&[(&at_zero, 0)])), [(12, 0, at_zero.clone())]);

        // Several entries of one account: one value under the first offset, each entry with its
        // own offset and retention time, the newest retention time where the filter reads it.
        let later = HistoryEntry { offset: 300, ..dead.clone() };
        let last = HistoryEntry { offset: 301, reason: Some("x".repeat(300)), ..at_zero.clone() };
        let group = encode_history(&[(&entry, -42), (&later, 7), (&last, 0)]);
        assert_eq!(history_retention_micros(&group), Some(7));
        assert_eq!(decode_history(12, &group), [(12, -42, entry), (300, 7, later), (301, 0, last)]);
        for cut in 1..group.len() {
            assert!(history_entries(12, &group[..cut]).is_err(), "{cut} of {} bytes", group.len());
        }
        let mut longer = group.clone();
        longer.push(0);
        assert!(history_entries(12, &longer).is_err());
    }

    /// (offset, retention time, entry) of every entry in a history value.
    fn decode_history(key_offset: i64, bytes: &[u8]) -> Vec<(i64, i64, HistoryEntry)> {
        let entries = history_entries(key_offset, bytes).unwrap();
        entries.iter().map(|e| (e.offset, e.retention_micros, e.decode().unwrap())).collect()
    }

    /// The generated message's encoding of `entry`, to compare the hand-written one with.
    fn prost_history(entry: &HistoryEntry) -> Vec<u8> {
        let (amount, currency) = match entry.effect {
            Some((amount, currency)) => (amount.to_bytes().to_vec(), currency.as_str().to_owned()),
            None => (Vec::new(), String::new()),
        };
        StoredHistoryEntry {
            outcome: entry.outcome.to_u32(),
            transaction_id: entry.transaction_id.clone(),
            kind: entry.kind.map_or(0, |k| u32::from(k as u8)),
            amount,
            currency,
            event_time_micros: entry.event_time_micros,
            reverses: entry.reverses.clone().unwrap_or_default(),
            reason: entry.reason.clone().unwrap_or_default(),
        }
        .encode_to_vec()
    }

    #[test]
    fn unknown_formats_are_errors() {
        assert!(decode_balance(&[9; 17]).is_err());
        assert!(decode_balance(&[2; 17]).is_err());
        assert!(decode_transaction(&[2, 0]).is_err());
        assert!(decode_transaction(&[3; 40]).is_err());
        assert_eq!(transaction_event_time(&[9; 40]), None);
        assert!(history_entries(0, &[3; 20]).is_err());
        assert_eq!(history_retention_micros(&[3; 20]), None);
        assert!(decode_i64(&[1, 2]).is_err());
    }
}
