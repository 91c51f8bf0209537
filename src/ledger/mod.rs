//! Domain rules: money, events, and the balance reducer. Knows nothing of Kafka or RocksDB.

pub mod event;
pub mod history;
pub mod money;
pub mod reducer;
pub mod reject;
pub mod timestamp;

pub use event::{Currency, Effect, EventKind, RawEvent, TransactionEvent};
pub use history::{BorrowedHistoryEntry, HistoryEntry, HistoryOutcome};
pub use money::Amount;
pub use reducer::{apply, LedgerState, Outcome, TransactionRecord};
pub use reject::{RejectReason, Rejection};

/// `str::trim`, answering at once for the usual field that starts and ends with a visible ASCII
/// character: neither end can then be whitespace, ASCII or not. `str::trim` walks both ends as
/// characters, and every field of every event is trimmed.
pub(crate) fn trim(text: &str) -> &str {
    match (text.as_bytes().first(), text.as_bytes().last()) {
        (Some(first), Some(last)) if first.is_ascii_graphic() && last.is_ascii_graphic() => text,
        _ => text.trim(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// Both ends drawn from visible ASCII, ASCII and Unicode whitespace, and other characters.
        #[test]
        fn trim_agrees_with_str_trim(text in "[ \t\n\u{b}\u{c}\r\u{85}\u{a0}\u{2003}\u{3000}a~é\u{1}]{0,6}") {
            prop_assert_eq!(super::trim(&text), text.trim());
        }
    }
}

/// Values tests across the crate write often.
#[cfg(test)]
pub(crate) mod test_values {
    use super::{Amount, Currency};

    pub(crate) fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    pub(crate) fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    pub(crate) fn amount(text: &str) -> Amount {
        Amount::parse(text).unwrap()
    }
}
