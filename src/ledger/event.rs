//! A validated ledger event, built from the loosely typed fields any input encoding yields.

use super::money::Amount;
use super::reject::{RejectReason, Rejection};
use super::timestamp::parse_timestamp_micros;
use std::borrow::Cow;
use std::fmt;

/// Longest account or transaction id accepted (bytes). Ids are keys in state; bound their size.
pub const MAX_ID_LEN: usize = 256;

/// The transaction types and how each moves a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventKind {
    /// Amount must be > 0; credits the account.
    Deposit = 1,
    /// Amount must be > 0; debits the account.
    Withdrawal = 2,
    /// Signed amount, applied as given.
    Transfer = 3,
    /// Signed amount, applied as given (usually negative).
    Payment = 4,
    /// Signed amount, applied as given.
    Adjustment = 5,
    /// Compensates an earlier transaction of the same account exactly once.
    Reversal = 6,
}

impl EventKind {
    pub fn parse(text: &str) -> Option<EventKind> {
        Some(match text {
            "deposit" => EventKind::Deposit,
            "withdrawal" => EventKind::Withdrawal,
            "transfer" => EventKind::Transfer,
            "payment" => EventKind::Payment,
            "adjustment" => EventKind::Adjustment,
            "reversal" => EventKind::Reversal,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Deposit => "deposit",
            EventKind::Withdrawal => "withdrawal",
            EventKind::Transfer => "transfer",
            EventKind::Payment => "payment",
            EventKind::Adjustment => "adjustment",
            EventKind::Reversal => "reversal",
        }
    }

    pub fn from_u8(value: u8) -> Option<EventKind> {
        Some(match value {
            1 => EventKind::Deposit,
            2 => EventKind::Withdrawal,
            3 => EventKind::Transfer,
            4 => EventKind::Payment,
            5 => EventKind::Adjustment,
            6 => EventKind::Reversal,
            _ => return None,
        })
    }
}

/// A currency code: three upper-case ASCII letters (ISO-4217 shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(text: &str) -> Option<Currency> {
        let bytes: [u8; 3] = text.as_bytes().try_into().ok()?;
        bytes.iter().all(u8::is_ascii_uppercase).then_some(Currency(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Constructed only from ASCII upper-case letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    pub fn as_bytes(&self) -> &[u8; 3] {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the event does to the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<'a> {
    /// Add `delta` (already signed by the kind's rule) to the balance in `currency`.
    Movement { delta: Amount, currency: Currency },
    /// Undo the effect of transaction `reverses`.
    Reversal { reverses: Cow<'a, str> },
}

/// A validated event, ready for the reducer.
///
/// Ids borrow from the record where the decoder could read them in place (the consumer decodes
/// and applies a record while it holds the message), so applying one costs no allocation for
/// them; [`TransactionEvent::into_owned`] detaches an event from its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionEvent<'a> {
    pub transaction_id: Cow<'a, str>,
    pub account_id: Cow<'a, str>,
    pub kind: EventKind,
    /// Event time, microseconds since the Unix epoch, UTC.
    pub event_time_micros: i64,
    pub effect: Effect<'a>,
}

/// Fields as an encoding delivers them, before validation. Missing fields are `None`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RawEvent<'a> {
    pub transaction_id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub account_id: Option<&'a str>,
    pub kind: Option<&'a str>,
    /// Decimal literal (a JSON number's text, or a string).
    pub amount: Option<&'a str>,
    pub currency: Option<&'a str>,
    pub reverses: Option<&'a str>,
}

fn required<'a>(value: Option<&'a str>, field: &str) -> Result<&'a str, Rejection> {
    match value.map(super::trim) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Rejection::new(RejectReason::MissingField, format!("field `{field}` is required"))),
    }
}

fn id<'a>(value: Option<&'a str>, field: &str) -> Result<&'a str, Rejection> {
    let v = required(value, field)?;
    if v.len() > MAX_ID_LEN {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("field `{field}` is longer than {MAX_ID_LEN} bytes"),
        ));
    }
    // Printable ASCII, the usual id, needs no look at its characters (`char::is_control` also
    // holds for U+0080–U+009F, so anything else is checked as characters).
    if !v.bytes().all(|b| matches!(b, b' '..=b'~')) && v.chars().any(char::is_control) {
        return Err(Rejection::new(RejectReason::InvalidField, format!("field `{field}` contains control characters")));
    }
    Ok(v)
}

impl<'a> TransactionEvent<'a> {
    /// Validates raw fields. `record_key` is the Kafka record key: when the body has no
    /// `account_id` the key names the account; when both are present they must agree, because the
    /// key decides the partition and so which state owns the account.
    pub fn validate(raw: RawEvent<'a>, record_key: Option<&'a str>) -> Result<Self, Rejection> {
        let account_id = match (raw.account_id.map(super::trim).filter(|a| !a.is_empty()), record_key) {
            (Some(body), Some(key)) if body != key => {
                return Err(Rejection::new(
                    RejectReason::AccountKeyMismatch,
                    format!("record key {key:?} differs from account_id {body:?}"),
                ))
            }
            (Some(body), _) => id(Some(body), "account_id")?,
            (None, key) => id(key, "account_id")?,
        };
        let transaction_id = id(raw.transaction_id, "transaction_id")?;
        let kind_text = required(raw.kind, "type")?;
        let kind = EventKind::parse(kind_text).ok_or_else(|| {
            Rejection::new(RejectReason::UnknownType, format!("unknown transaction type {kind_text:?}"))
        })?;
        let timestamp = required(raw.timestamp, "timestamp")?;
        let event_time_micros = parse_timestamp_micros(timestamp).ok_or_else(|| {
            Rejection::new(
                RejectReason::InvalidTimestamp,
                format!("timestamp {timestamp:?} is neither RFC 3339 nor ISO-8601"),
            )
        })?;

        let effect = if kind == EventKind::Reversal {
            Effect::Reversal { reverses: Cow::Borrowed(id(raw.reverses, "reverses")?) }
        } else {
            let currency_text = required(raw.currency, "currency")?;
            let currency = Currency::parse(currency_text).ok_or_else(|| {
                Rejection::new(
                    RejectReason::InvalidCurrency,
                    format!("currency {currency_text:?} is not three upper-case letters"),
                )
            })?;
            let amount = Amount::parse(required(raw.amount, "amount")?)
                .map_err(|e| Rejection::new(RejectReason::InvalidAmount, e.to_string()))?;
            let delta = match kind {
                EventKind::Deposit | EventKind::Withdrawal if !amount.is_positive() => {
                    return Err(Rejection::new(
                        RejectReason::InvalidAmount,
                        format!("{} amount must be > 0, got {amount}", kind.as_str()),
                    ))
                }
                EventKind::Withdrawal => amount.negate(),
                _ => amount,
            };
            Effect::Movement { delta, currency }
        };

        Ok(TransactionEvent {
            transaction_id: Cow::Borrowed(transaction_id),
            account_id: Cow::Borrowed(account_id),
            kind,
            event_time_micros,
            effect,
        })
    }

    /// The same event with its ids copied out of whatever they borrowed from.
    pub fn into_owned(self) -> TransactionEvent<'static> {
        TransactionEvent {
            transaction_id: Cow::Owned(self.transaction_id.into_owned()),
            account_id: Cow::Owned(self.account_id.into_owned()),
            kind: self.kind,
            event_time_micros: self.event_time_micros,
            effect: match self.effect {
                Effect::Movement { delta, currency } => Effect::Movement { delta, currency },
                Effect::Reversal { reverses } => Effect::Reversal { reverses: Cow::Owned(reverses.into_owned()) },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed_payment() -> RawEvent<'static> {
        RawEvent {
            transaction_id: Some("987654321"),
            timestamp: Some("2024-03-11T15:57:09"),
            account_id: Some("6ad87cf1"),
            kind: Some("payment"),
            amount: Some("-1299.00"),
            currency: Some("USD"),
            reverses: None,
        }
    }

    fn reason(raw: RawEvent<'_>) -> RejectReason {
        TransactionEvent::validate(raw, None).unwrap_err().reason
    }

    #[test]
    fn seed_payment_validates() {
        let event = TransactionEvent::validate(seed_payment(), Some("6ad87cf1")).unwrap();
        assert_eq!(event.kind, EventKind::Payment);
        assert_eq!(
            event.effect,
            Effect::Movement { delta: Amount::parse("-1299.00").unwrap(), currency: Currency::parse("USD").unwrap() }
        );
        assert_eq!(event.event_time_micros, 1_710_172_629_000_000);
    }

    #[test]
    fn ids_with_control_characters_are_rejected_whatever_their_encoding() {
        for id in ["a\tb", "ab\u{7f}", "a\u{85}b", "\u{9f}x", "caf\u{e9}\u{0}"] {
            let raw = RawEvent { transaction_id: Some(id), ..seed_payment() };
            assert_eq!(reason(raw), RejectReason::InvalidField, "{id:?}");
        }
        for id in ["caf\u{e9}", "a b", "\u{a0}x\u{a0}", "~!"] {
            let raw = RawEvent { transaction_id: Some(id), ..seed_payment() };
            assert!(TransactionEvent::validate(raw, None).is_ok(), "{id:?}");
        }
    }

    #[test]
    fn ids_borrow_from_the_record_until_detached() {
        let reversal = RawEvent { kind: Some("reversal"), reverses: Some("987654320"), ..seed_payment() };
        let event = TransactionEvent::validate(reversal, Some("6ad87cf1")).unwrap();
        let Effect::Reversal { reverses } = &event.effect else { panic!("not a reversal: {event:?}") };
        assert!(matches!(reverses, Cow::Borrowed("987654320")));
        assert!(matches!(event.transaction_id, Cow::Borrowed("987654321")));
        assert!(matches!(event.account_id, Cow::Borrowed("6ad87cf1")));

        let owned = event.clone().into_owned();
        assert_eq!(owned, event);
        assert!(matches!(owned.transaction_id, Cow::Owned(_)) && matches!(owned.account_id, Cow::Owned(_)));
        assert!(matches!(owned.effect, Effect::Reversal { reverses: Cow::Owned(_) }));
    }

    #[test]
    fn deposits_and_withdrawals_must_be_positive() {
        let deposit = RawEvent { kind: Some("deposit"), amount: Some("-5"), ..seed_payment() };
        assert_eq!(reason(deposit), RejectReason::InvalidAmount);
        let zero = RawEvent { kind: Some("withdrawal"), amount: Some("0.00"), ..seed_payment() };
        assert_eq!(reason(zero), RejectReason::InvalidAmount);
        let withdrawal = RawEvent { kind: Some("withdrawal"), amount: Some("30"), ..seed_payment() };
        let event = TransactionEvent::validate(withdrawal, None).unwrap();
        assert!(matches!(event.effect, Effect::Movement { delta, .. } if delta == Amount::parse("-30").unwrap()));
    }

    #[test]
    fn each_bad_field_has_its_reason() {
        assert_eq!(reason(RawEvent { kind: Some("refund"), ..seed_payment() }), RejectReason::UnknownType);
        assert_eq!(reason(RawEvent { currency: Some("usd"), ..seed_payment() }), RejectReason::InvalidCurrency);
        assert_eq!(reason(RawEvent { amount: Some("12,00"), ..seed_payment() }), RejectReason::InvalidAmount);
        assert_eq!(
            reason(RawEvent { timestamp: Some("11/03/2024"), ..seed_payment() }),
            RejectReason::InvalidTimestamp
        );
        assert_eq!(reason(RawEvent { transaction_id: None, ..seed_payment() }), RejectReason::MissingField);
        assert_eq!(reason(RawEvent { transaction_id: Some("  "), ..seed_payment() }), RejectReason::MissingField);
        assert_eq!(reason(RawEvent { kind: Some("reversal"), ..seed_payment() }), RejectReason::MissingField);
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(reason(RawEvent { transaction_id: Some(&long), ..seed_payment() }), RejectReason::InvalidField);
    }

    #[test]
    fn key_names_the_account_and_must_agree() {
        let no_account = RawEvent { account_id: None, ..seed_payment() };
        assert_eq!(TransactionEvent::validate(no_account, Some("acct-9")).unwrap().account_id, "acct-9");
        let err = TransactionEvent::validate(seed_payment(), Some("other")).unwrap_err();
        assert_eq!(err.reason, RejectReason::AccountKeyMismatch);
        assert_eq!(TransactionEvent::validate(no_account, None).unwrap_err().reason, RejectReason::MissingField);
    }
}
