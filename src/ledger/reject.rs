//! Why a record could not be applied: a stable, snake_case reason code plus human detail.
//!
//! The code is a contract: it becomes the `__ledgerd.errors.reason` header of the dead-letter copy and
//! the `reason` label of `ledgerd_dead_lettered_total`, so codes are only ever added, never renamed.

use std::fmt;

/// Every reason a record can be dead-lettered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The value is not JSON (syntax error, truncated, not an object).
    MalformedJson,
    /// The value is not a decodable `TransactionEvent` protobuf (or its Confluent framing is broken).
    MalformedProtobuf,
    /// The record has no value at all (a tombstone).
    EmptyRecord,
    /// A required field is absent or empty.
    MissingField,
    /// A field has the wrong type or shape (e.g. a non-UTF-8 key, an over-long id).
    InvalidField,
    /// `type` is not one of the known transaction types.
    UnknownType,
    /// The amount is not an exact decimal, or breaks the type's sign rule (deposits must be > 0).
    InvalidAmount,
    /// The currency is not three upper-case ASCII letters.
    InvalidCurrency,
    /// The timestamp is neither RFC 3339 nor naive ISO-8601.
    InvalidTimestamp,
    /// The record key and the body's `account_id` name different accounts.
    AccountKeyMismatch,
    /// The transaction id was already applied to this account with different content.
    ConflictingDuplicate,
    /// A reversal names a transaction this account never applied (or one beyond the dedupe window).
    ReversalUnknownTransaction,
    /// A reversal names a transaction that was already reversed.
    ReversalAlreadyReversed,
    /// A reversal names another reversal; compensate with a new transaction instead.
    ReversalOfReversal,
    /// Applying the amount would overflow the balance's exact decimal range.
    BalanceOverflow,
}

impl RejectReason {
    pub const ALL: [RejectReason; 15] = [
        RejectReason::MalformedJson,
        RejectReason::MalformedProtobuf,
        RejectReason::EmptyRecord,
        RejectReason::MissingField,
        RejectReason::InvalidField,
        RejectReason::UnknownType,
        RejectReason::InvalidAmount,
        RejectReason::InvalidCurrency,
        RejectReason::InvalidTimestamp,
        RejectReason::AccountKeyMismatch,
        RejectReason::ConflictingDuplicate,
        RejectReason::ReversalUnknownTransaction,
        RejectReason::ReversalAlreadyReversed,
        RejectReason::ReversalOfReversal,
        RejectReason::BalanceOverflow,
    ];

    /// The stable wire code.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::MalformedProtobuf => "malformed_protobuf",
            RejectReason::EmptyRecord => "empty_record",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::InvalidAmount => "invalid_amount",
            RejectReason::InvalidCurrency => "invalid_currency",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::AccountKeyMismatch => "account_key_mismatch",
            RejectReason::ConflictingDuplicate => "conflicting_duplicate",
            RejectReason::ReversalUnknownTransaction => "reversal_unknown_transaction",
            RejectReason::ReversalAlreadyReversed => "reversal_already_reversed",
            RejectReason::ReversalOfReversal => "reversal_of_reversal",
            RejectReason::BalanceOverflow => "balance_overflow",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A record that cannot be applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection { reason, detail: detail.into() }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for reason in RejectReason::ALL {
            let code = reason.code();
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{code}");
            assert!(seen.insert(code), "duplicate code {code}");
        }
    }
}
