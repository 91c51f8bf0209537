//! Input decoding: record bytes (JSON or protobuf) to a validated [`TransactionEvent`].
//!
//! Format choice (`input.format`): `json`, `protobuf`, or `auto` — protobuf when the record has a
//! `content-type: application/x-protobuf` header or starts with the Confluent magic byte 0 (JSON text
//! never does), JSON otherwise. Every failure is a [`Rejection`] with a stable reason code.

mod json;
mod protobuf;

use crate::ledger::{RejectReason, Rejection, TransactionEvent};
use serde::{Deserialize, Serialize};

/// The `content-type` header value that marks a protobuf record in `auto` mode.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";

/// How record values are encoded (`input.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    #[default]
    Auto,
    Json,
    Protobuf,
}

/// Decodes and validates one record. `content_type` is the record's `content-type` header, if any.
pub fn decode<'a>(
    format: InputFormat,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    content_type: Option<&[u8]>,
) -> Result<TransactionEvent<'a>, Rejection> {
    let value = match value {
        Some(v) if !v.is_empty() => v,
        _ => return Err(Rejection::new(RejectReason::EmptyRecord, "record has no value")),
    };
    let key = match key {
        None => None,
        Some(k) => Some(
            std::str::from_utf8(k)
                .map_err(|_| Rejection::new(RejectReason::InvalidField, "record key (account id) is not UTF-8"))?,
        ),
    };
    let use_protobuf = match format {
        InputFormat::Json => false,
        InputFormat::Protobuf => true,
        InputFormat::Auto => {
            value[0] == protobuf::CONFLUENT_MAGIC || content_type == Some(PROTOBUF_CONTENT_TYPE.as_bytes())
        }
    };
    if use_protobuf {
        protobuf::decode(value, key)
    } else {
        json::decode(value, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Effect, EventKind};

    const SEED: &str = r#"{"transaction_id":"987654321","timestamp":"2024-03-11T15:57:09","account_id":"6ad87cf1","type":"payment","amount":-1299.00,"currency":"USD","merchant":"Data Council","description":"Data Council tickets"}"#;

    #[test]
    fn auto_reads_json_and_both_protobuf_markers() {
        let from_json = decode(InputFormat::Auto, Some(b"6ad87cf1"), Some(SEED.as_bytes()), None).unwrap();
        let proto = protobuf::tests::seed_payment_bytes();
        let from_header =
            decode(InputFormat::Auto, Some(b"6ad87cf1"), Some(&proto), Some(PROTOBUF_CONTENT_TYPE.as_bytes())).unwrap();
        let framed = protobuf::tests::confluent_framed(&proto, &[0]);
        let from_magic = decode(InputFormat::Auto, Some(b"6ad87cf1"), Some(&framed), None).unwrap();
        assert_eq!(from_json, from_header);
        assert_eq!(from_json, from_magic);
        assert_eq!(from_json.kind, EventKind::Payment);
        assert!(matches!(from_json.effect, Effect::Movement { delta, .. } if delta.to_string() == "-1299.00"));
    }

    #[test]
    fn forced_formats_do_not_guess() {
        let err = decode(InputFormat::Protobuf, None, Some(SEED.as_bytes()), None).unwrap_err();
        assert_eq!(err.reason, RejectReason::MalformedProtobuf);
        let proto = protobuf::tests::seed_payment_bytes();
        let err = decode(InputFormat::Json, None, Some(&proto), None).unwrap_err();
        assert_eq!(err.reason, RejectReason::MalformedJson);
    }

    #[test]
    fn empty_and_non_utf8_keys_are_rejected() {
        assert_eq!(decode(InputFormat::Auto, None, None, None).unwrap_err().reason, RejectReason::EmptyRecord);
        assert_eq!(decode(InputFormat::Auto, None, Some(b""), None).unwrap_err().reason, RejectReason::EmptyRecord);
        let err = decode(InputFormat::Auto, Some(&[0xff, 0xfe]), Some(SEED.as_bytes()), None).unwrap_err();
        assert_eq!(err.reason, RejectReason::InvalidField);
    }
}
