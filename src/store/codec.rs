//! Value encodings. Every value starts with a format byte so the encoding can evolve; readers reject
//! formats they do not know instead of misreading them.

use crate::ledger::{Amount, Currency, EventKind, HistoryEntry, HistoryOutcome, TransactionRecord};
use crate::proto::{HistoryEntry as StoredHistoryEntry, StoredTransaction};
use prost::Message;

/// Format of balance values written by ledgerd 0.1: byte 1, then `rust_decimal`'s 16-byte
/// serialisation. Still read; its changed-at offset counts as unknown (0), which only makes the
/// next snapshot round include the account.
const BALANCE_V1: u8 = 1;
/// Format of balance values: byte 2, the 16-byte amount, then the next offset (i64 BE) of the
/// checkpoint that last changed it, so a snapshot round can find the accounts changed since the last.
const BALANCE_V2: u8 = 2;
/// Format of transaction values: byte 1, then a `StoredTransaction` protobuf.
const TRANSACTION_V1: u8 = 1;

/// Format of history values: byte 1, the retention time (i64 BE micros: the event time, or the
/// partition's watermark for a record without one) where a compaction filter can read it without
/// decoding, then a `HistoryEntry` protobuf.
const HISTORY_V1: u8 = 1;

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

pub fn encode_transaction(record: &TransactionRecord) -> Vec<u8> {
    let message = StoredTransaction {
        kind: u32::from(record.kind as u8),
        amount: record.delta.to_bytes().to_vec(),
        currency: record.currency.as_str().to_owned(),
        event_time_micros: record.event_time_micros,
        reverses: record.reverses.clone().unwrap_or_default(),
        reversed: record.reversed,
    };
    let mut out = Vec::with_capacity(1 + message.encoded_len());
    out.push(TRANSACTION_V1);
    message.encode(&mut out).expect("a Vec grows as needed");
    out
}

pub fn decode_transaction(bytes: &[u8]) -> Result<TransactionRecord, CodecError> {
    let Some((&TRANSACTION_V1, rest)) = bytes.split_first() else {
        return Err(CodecError(format!("unknown transaction format {:?}", bytes.first())));
    };
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

pub fn encode_history(entry: &HistoryEntry, retention_micros: i64) -> Vec<u8> {
    let (amount, currency) = match entry.effect {
        Some((amount, currency)) => (amount.to_bytes().to_vec(), currency.as_str().to_owned()),
        None => (Vec::new(), String::new()),
    };
    let message = StoredHistoryEntry {
        outcome: entry.outcome.to_u32(),
        transaction_id: entry.transaction_id.clone(),
        kind: entry.kind.map_or(0, |k| u32::from(k as u8)),
        amount,
        currency,
        event_time_micros: entry.event_time_micros,
        reverses: entry.reverses.clone().unwrap_or_default(),
        reason: entry.reason.clone().unwrap_or_default(),
    };
    let mut out = Vec::with_capacity(9 + message.encoded_len());
    out.push(HISTORY_V1);
    out.extend_from_slice(&retention_micros.to_be_bytes());
    message.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// The retention time of a history value, read without decoding it (for the compaction filter).
pub fn history_retention_micros(bytes: &[u8]) -> Option<i64> {
    match bytes.split_first() {
        Some((&HISTORY_V1, rest)) => Some(i64::from_be_bytes(rest.get(..8)?.try_into().ok()?)),
        _ => None,
    }
}

pub fn decode_history(offset: i64, bytes: &[u8]) -> Result<HistoryEntry, CodecError> {
    let (Some(&HISTORY_V1), Some(body)) = (bytes.first(), bytes.get(9..)) else {
        return Err(CodecError(format!("unknown history format {:?}", bytes.first())));
    };
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
        assert_eq!(decode_transaction(&encode_transaction(&record)).unwrap(), record);
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
        let bytes = encode_history(&entry, -42);
        assert_eq!(history_retention_micros(&bytes), Some(-42));
        assert_eq!(decode_history(12, &bytes).unwrap(), entry);
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
        assert_eq!(decode_history(12, &encode_history(&dead, 7)).unwrap(), dead);
    }

    #[test]
    fn unknown_formats_are_errors() {
        assert!(decode_balance(&[9; 17]).is_err());
        assert!(decode_balance(&[2; 17]).is_err());
        assert!(decode_transaction(&[2, 0]).is_err());
        assert!(decode_i64(&[1, 2]).is_err());
    }
}
