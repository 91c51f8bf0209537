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
