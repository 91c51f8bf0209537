//! JSON events in the seeds' shape. Fields are borrowed from the record where possible; `amount` is
//! read from the raw JSON text (number or string) so it never passes through a float.
//!
//! Records of the common shape (a flat object, strings without escapes) take a one-pass scanner
//! (`scan`); everything else, including every invalid record, takes serde_json, which unescapes
//! and words the errors.

mod scan;

use crate::ledger::{RawEvent, RejectReason, Rejection, TransactionEvent};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The JSON shape. Unknown fields (merchant, description, …) are ignored.
#[derive(Deserialize)]
struct JsonEvent<'a> {
    #[serde(borrow)]
    transaction_id: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    account_id: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reverses: Option<Cow<'a, str>>,
}

/// The text of a scalar given as a JSON string or a bare number (`"42"` or `42` both give `42`).
/// `null` is absent; objects, arrays and booleans are an error naming the field.
fn scalar_text<'a>(raw: Option<&'a RawValue>, field: &str) -> Result<Option<Cow<'a, str>>, Rejection> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<Cow<'a, str>>(text)
            .map(Some)
            .map_err(|e| Rejection::new(RejectReason::InvalidField, format!("field `{field}`: {e}"))),
        Some(b'-' | b'0'..=b'9') => Ok(Some(Cow::Borrowed(text))),
        _ if text == "null" => Ok(None),
        _ => Err(Rejection::new(
            RejectReason::InvalidField,
            format!("field `{field}` must be a string or a number, got {text}"),
        )),
    }
}

pub(super) fn decode<'a>(value: &'a [u8], key: Option<&'a str>) -> Result<TransactionEvent<'a>, Rejection> {
    match scan::scan(value) {
        Some(raw) => TransactionEvent::validate(raw, key),
        // The full parser's fields may be unescaped copies that live only here.
        None => TransactionEvent::validate(parse(value)?.raw(), key).map(TransactionEvent::into_owned),
    }
}

/// An event's fields as the full parser reads them: unescaped where the text had escapes.
struct Fields<'a> {
    parsed: JsonEvent<'a>,
    /// `parsed`'s raw scalars as text.
    transaction_id: Option<Cow<'a, str>>,
    amount: Option<Cow<'a, str>>,
}

impl Fields<'_> {
    fn raw(&self) -> RawEvent<'_> {
        RawEvent {
            transaction_id: self.transaction_id.as_deref(),
            timestamp: self.parsed.timestamp.as_deref(),
            account_id: self.parsed.account_id.as_deref(),
            kind: self.parsed.kind.as_deref(),
            amount: self.amount.as_deref(),
            currency: self.parsed.currency.as_deref(),
            reverses: self.parsed.reverses.as_deref(),
        }
    }
}

/// The full parser (serde_json): any valid JSON, and the exact error for invalid input.
fn parse(value: &[u8]) -> Result<Fields<'_>, Rejection> {
    // An event is a JSON object; anything else (a bare number, an array, binary) is malformed input,
    // not a mistyped field.
    if value.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Rejection::new(RejectReason::MalformedJson, "value is not a JSON object"));
    }
    let parsed: JsonEvent<'_> = serde_json::from_slice(value).map_err(|e| {
        let reason = if e.is_data() { RejectReason::InvalidField } else { RejectReason::MalformedJson };
        Rejection::new(reason, e.to_string())
    })?;
    Ok(Fields {
        transaction_id: scalar_text(parsed.transaction_id, "transaction_id")?,
        amount: scalar_text(parsed.amount, "amount")?,
        parsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Effect, EventKind};

    fn ok(json: &str) -> TransactionEvent<'_> {
        decode(json.as_bytes(), None).unwrap()
    }

    fn reason(json: &str) -> RejectReason {
        decode(json.as_bytes(), None).unwrap_err().reason
    }

    fn delta(event: &TransactionEvent) -> String {
        match &event.effect {
            Effect::Movement { delta, .. } => delta.to_string(),
            other => panic!("not a movement: {other:?}"),
        }
    }

    const BASE: &str = r#""transaction_id":"t1","timestamp":"2024-03-11T12:30:45","account_id":"a1","currency":"USD""#;

    #[test]
    fn amount_as_number_or_string_is_exact() {
        assert_eq!(delta(&ok(&format!(r#"{{{BASE},"type":"transfer","amount":5000.00}}"#))), "5000.00");
        assert_eq!(delta(&ok(&format!(r#"{{{BASE},"type":"transfer","amount":"5000.00"}}"#))), "5000.00");
        assert_eq!(delta(&ok(&format!(r#"{{{BASE},"type":"deposit","amount":1e2}}"#))), "100");
        assert_eq!(delta(&ok(&format!(r#"{{{BASE},"type":"deposit","amount":0.1}}"#))), "0.1");
        // More digits than an f64 holds, still exact.
        assert_eq!(
            delta(&ok(&format!(r#"{{{BASE},"type":"deposit","amount":12345678901234567890.12}}"#))),
            "12345678901234567890.12"
        );
    }

    #[test]
    fn numeric_transaction_ids_and_unknown_fields_are_accepted() {
        let event = ok(
            r#"{"transaction_id":987654321,"timestamp":"2024-03-11T15:57:09","account_id":"6ad87cf1","type":"payment","amount":-1299.00,"currency":"USD","merchant":"Data Council","extra":{"nested":[1,2]}}"#,
        );
        assert_eq!(event.transaction_id, "987654321");
        assert_eq!(event.kind, EventKind::Payment);
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let event = ok(
            r#"{"transaction_id":"t\u0031","timestamp":"2024-03-11T12:30:45","account_id":"caf\u00e9","type":"deposit","amount":"1","currency":"USD"}"#,
        );
        assert_eq!(event.transaction_id, "t1");
        assert_eq!(event.account_id, "café");
    }

    #[test]
    fn malformed_and_mistyped_input_is_classified() {
        assert_eq!(reason("{not json"), RejectReason::MalformedJson);
        assert_eq!(reason(r#"{"transaction_id":"t1""#), RejectReason::MalformedJson);
        assert_eq!(reason(r#"[1,2]"#), RejectReason::MalformedJson);
        assert_eq!(reason("\n\t987654321"), RejectReason::MalformedJson);
        assert_eq!(reason(r#"{"transaction_id":"t1"} trailing"#), RejectReason::MalformedJson);
        assert_eq!(reason(&format!(r#"{{{BASE},"type":"deposit","amount":true}}"#)), RejectReason::InvalidField);
        assert_eq!(reason(&format!(r#"{{{BASE},"type":"deposit","amount":"abc"}}"#)), RejectReason::InvalidAmount);
        assert_eq!(reason(&format!(r#"{{{BASE},"type":"deposit","amount":null}}"#)), RejectReason::MissingField);
        assert_eq!(reason(&format!(r#"{{{BASE},"type":7,"amount":1}}"#)), RejectReason::InvalidField);
        assert_eq!(reason(&format!(r#"{{{BASE},"type":"deposit","amount":-5}}"#)), RejectReason::InvalidAmount);
    }

    /// Records of shapes the fast path takes (`true`) and shapes it hands over, valid and not.
    fn samples() -> Vec<(String, bool)> {
        let mut samples = vec![
            (format!(r#"{{{BASE},"type":"transfer","amount":-5000.00,"merchant":"Data Council"}}"#), true),
            (format!(r#"{{{BASE},"type":"deposit","amount":"12.5","n":1e-3,"f":false,"t":true,"z":null}}"#), true),
            (r#"{"transaction_id":987654321,"timestamp":"2024-03-11T15:57:09","account_id":"6ad87cf1","type":"payment","amount":-1299.00,"currency":"USD"}"#.to_owned(), true),
            (" {\n\t\"transaction_id\" : \"r1\" ,\r\"type\":\"reversal\",\"reverses\":\"t1\",\"account_id\":\"caf\u{e9}\",\"timestamp\":\"2024-03-11T12:30:45Z\"} ".to_owned(), true),
            ("{}".to_owned(), true),
            (format!(r#"{{{BASE},"type":"deposit","amount":1,"reverses":null,"extra":{{"nested":[1,2]}}}}"#), false),
            (format!(r#"{{{BASE},"type":"deposit","amount":1,"amount":2}}"#), false),
            (format!(r#"{{{BASE},"type":"dep\u006fsit","amount":0.10E+2}}"#), false),
            (format!(r#"{{{BASE},"type":"deposit","amount":01}}"#), false),
            (format!(r#"{{{BASE},"type":"deposit","amount":true}}"#), false),
        ];
        let workload =
            crate::loadgen::generate(3, &crate::loadgen::Shape { events: 40, accounts: 4, ..Default::default() });
        // The generator's malformed records are the only ones that are not flat and valid.
        let generated = workload
            .records
            .into_iter()
            .take(12)
            .map(|r| (r.value.clone(), serde_json::from_str::<serde_json::Value>(&r.value).is_ok()));
        samples.extend(generated);
        samples
    }

    /// Every input the fast path accepts, the full parser accepts with the same fields.
    fn assert_fast_path_agrees(value: &[u8]) -> bool {
        let Some(fast) = scan::scan(value) else { return false };
        let full = parse(value).unwrap_or_else(|e| {
            panic!("the fast path accepted what the full parser rejects ({e:?}): {}", String::from_utf8_lossy(value))
        });
        assert_eq!(fast, full.raw(), "fields differ for {}", String::from_utf8_lossy(value));
        true
    }

    #[test]
    fn fast_path_takes_the_common_shape() {
        for (sample, fast) in samples() {
            assert_eq!(assert_fast_path_agrees(sample.as_bytes()), fast, "{sample}");
        }
    }

    #[test]
    fn fast_path_agrees_with_the_full_parser_on_every_one_byte_change() {
        const REPLACEMENTS: &[u8] = b"\"\\{}[],: \t0-1.eEn\x01\xc3\xa9";
        let mut accepted = 0;
        for (sample, _) in samples() {
            let bytes = sample.as_bytes();
            for at in 0..bytes.len() {
                for &byte in REPLACEMENTS {
                    let mut changed = bytes.to_vec();
                    changed[at] = byte;
                    accepted += usize::from(assert_fast_path_agrees(&changed));
                }
                let mut removed = bytes.to_vec();
                removed.remove(at);
                accepted += usize::from(assert_fast_path_agrees(&removed));
                accepted += usize::from(assert_fast_path_agrees(&bytes[..at]));
            }
        }
        // The changes that leave a valid flat record (a digit for a digit, a space for a space…)
        // must have reached the comparison.
        assert!(accepted > 1000, "only {accepted} changed records took the fast path");
    }
}
