//! Protobuf events (`proto/ledgerd/v1/events.proto`), raw or in Confluent wire framing.
//!
//! Confluent framing: magic byte 0, a 4-byte big-endian schema id, then the message-index path as a
//! zig-zag varint count followed by that many zig-zag varints (a single 0 byte is the shorthand for
//! "the first message"). A valid protobuf message never starts with byte 0 (field number 0 does not
//! exist), so the magic byte is unambiguous.

use crate::ledger::{RawEvent, RejectReason, Rejection, TransactionEvent};
use crate::proto::TransactionEvent as ProtoEvent;
use prost::Message;

pub(super) const CONFLUENT_MAGIC: u8 = 0;

fn malformed(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::MalformedProtobuf, detail)
}

/// Reads one unsigned varint, returning it and the rest of the input.
fn read_varint(mut input: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value, input));
        }
    }
    None
}

/// Strips Confluent framing, returning the protobuf message bytes.
fn strip_confluent_framing(value: &[u8]) -> Result<&[u8], Rejection> {
    let after_header = value.get(5..).ok_or_else(|| malformed("Confluent framing shorter than its 5-byte header"))?;
    let (count, mut rest) =
        read_varint(after_header).ok_or_else(|| malformed("Confluent framing: bad message-index count"))?;
    // Zig-zag decoded count; indexes are skipped (TransactionEvent is the only message we accept).
    let count = (count >> 1) as i64 ^ -((count & 1) as i64);
    if !(0..=64).contains(&count) {
        return Err(malformed(format!("Confluent framing: implausible message-index count {count}")));
    }
    for _ in 0..count {
        rest = read_varint(rest).ok_or_else(|| malformed("Confluent framing: bad message index"))?.1;
    }
    Ok(rest)
}

pub(super) fn decode<'a>(value: &'a [u8], key: Option<&'a str>) -> Result<TransactionEvent<'a>, Rejection> {
    let message = if value.first() == Some(&CONFLUENT_MAGIC) { strip_confluent_framing(value)? } else { value };
    let event = ProtoEvent::decode(message).map_err(|e| malformed(e.to_string()))?;
    fn field(s: &str) -> Option<&str> {
        (!s.is_empty()).then_some(s)
    }
    let raw = RawEvent {
        transaction_id: field(&event.transaction_id),
        timestamp: field(&event.timestamp),
        account_id: field(&event.account_id),
        kind: field(&event.r#type),
        amount: field(&event.amount),
        currency: field(&event.currency),
        reverses: field(&event.reverses),
    };
    // prost decodes into owned strings, so the event cannot borrow from the record.
    TransactionEvent::validate(raw, key).map(TransactionEvent::into_owned)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn seed_payment_bytes() -> Vec<u8> {
        ProtoEvent {
            transaction_id: "987654321".into(),
            timestamp: "2024-03-11T15:57:09".into(),
            account_id: "6ad87cf1".into(),
            r#type: "payment".into(),
            amount: "-1299.00".into(),
            currency: "USD".into(),
            merchant: "Data Council".into(),
            ..ProtoEvent::default()
        }
        .encode_to_vec()
    }

    pub fn confluent_framed(message: &[u8], index_path: &[u8]) -> Vec<u8> {
        let mut framed = vec![CONFLUENT_MAGIC, 0, 0, 0, 42];
        framed.extend_from_slice(index_path);
        framed.extend_from_slice(message);
        framed
    }

    #[test]
    fn framing_with_explicit_index_path_is_stripped() {
        // count 1 (zig-zag 2), index 0.
        let framed = confluent_framed(&seed_payment_bytes(), &[2, 0]);
        assert_eq!(decode(&framed, None).unwrap().transaction_id, "987654321");
    }

    #[test]
    fn broken_framing_and_garbage_are_malformed() {
        assert_eq!(decode(&[0, 0, 0], None).unwrap_err().reason, RejectReason::MalformedProtobuf);
        assert_eq!(decode(&[0, 0, 0, 0, 1, 0xff], None).unwrap_err().reason, RejectReason::MalformedProtobuf);
        assert_eq!(decode(&[0xff, 0xff, 0xff], None).unwrap_err().reason, RejectReason::MalformedProtobuf);
    }

    #[test]
    fn missing_fields_are_named() {
        let bytes = ProtoEvent { account_id: "a".into(), ..ProtoEvent::default() }.encode_to_vec();
        let err = decode(&bytes, None).unwrap_err();
        assert_eq!(err.reason, RejectReason::MissingField);
        assert!(err.detail.contains("transaction_id"), "{}", err.detail);
    }
}
