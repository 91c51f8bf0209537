//! The balance reducer: applies one validated event to an account's state.
//!
//! Rules:
//! - A transaction id already remembered for the account is a duplicate: identical content (type,
//!   signed amount, currency, event time, reversal target) is skipped; different content is a
//!   `conflicting_duplicate` rejection. Remembering ids is the state's job (and its window).
//! - A movement adds its signed delta to the (account, currency) balance; overflow is a rejection and
//!   leaves the balance untouched.
//! - A reversal subtracts the named transaction's delta exactly once, in that transaction's currency,
//!   and is itself remembered as a transaction (so a replayed reversal is a duplicate).
//!
//! The reducer reads and writes through [`LedgerState`], so it knows nothing of storage.

use super::event::{Currency, Effect, EventKind, TransactionEvent};
use super::money::Amount;
use super::reject::{RejectReason, Rejection};

/// What the state remembers of an applied transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionRecord {
    pub kind: EventKind,
    /// The signed change this transaction made to the balance.
    pub delta: Amount,
    pub currency: Currency,
    pub event_time_micros: i64,
    /// For reversals: the transaction compensated.
    pub reverses: Option<String>,
    /// Set once a reversal has compensated this transaction.
    pub reversed: bool,
}

impl TransactionRecord {
    /// True when `event` is a re-delivery of the transaction this record remembers.
    fn is_same_transaction(&self, event: &TransactionEvent<'_>) -> bool {
        if self.kind != event.kind || self.event_time_micros != event.event_time_micros {
            return false;
        }
        match &event.effect {
            Effect::Movement { delta, currency } => *delta == self.delta && *currency == self.currency,
            Effect::Reversal { reverses } => self.reverses.as_deref() == Some(&**reverses),
        }
    }
}

/// Read and write access to the state of the accounts a reducer works on.
pub trait LedgerState {
    type Error;
    fn balance(&mut self, account: &str, currency: Currency) -> Result<Amount, Self::Error>;
    fn transaction(&mut self, account: &str, transaction_id: &str) -> Result<Option<TransactionRecord>, Self::Error>;
    fn set_balance(&mut self, account: &str, currency: Currency, balance: Amount);
    fn put_transaction(&mut self, account: &str, transaction_id: &str, record: TransactionRecord);
}

/// The result of applying one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The balance changed by `delta` in `currency` (for reversals, the compensating delta).
    Applied { delta: Amount, currency: Currency },
    /// The same transaction was already applied; nothing changed.
    Duplicate,
    /// The event cannot be applied; nothing changed.
    Rejected(Rejection),
}

/// Applies `event` to `state`. Errors are the state's own (e.g. a storage read failure); every
/// business outcome, rejections included, is an `Ok(Outcome)`.
pub fn apply<S: LedgerState>(state: &mut S, event: &TransactionEvent<'_>) -> Result<Outcome, S::Error> {
    let account = &*event.account_id;
    if let Some(previous) = state.transaction(account, &event.transaction_id)? {
        return Ok(if previous.is_same_transaction(event) {
            Outcome::Duplicate
        } else {
            Outcome::Rejected(Rejection::new(
                RejectReason::ConflictingDuplicate,
                format!(
                    "transaction_id {:?} was already applied to account {account:?} with different content",
                    event.transaction_id
                ),
            ))
        });
    }

    match &event.effect {
        Effect::Movement { delta, currency } => {
            let Some(balance) = add(state.balance(account, *currency)?, *delta) else {
                return Ok(overflow(account, *currency));
            };
            state.set_balance(account, *currency, balance);
            state.put_transaction(account, &event.transaction_id, record(event, *delta, *currency, None));
            Ok(Outcome::Applied { delta: *delta, currency: *currency })
        }
        Effect::Reversal { reverses } => {
            let Some(mut target) = state.transaction(account, reverses)? else {
                return Ok(Outcome::Rejected(Rejection::new(
                    RejectReason::ReversalUnknownTransaction,
                    format!("account {account:?} has no transaction {reverses:?} to reverse"),
                )));
            };
            if target.kind == EventKind::Reversal {
                return Ok(Outcome::Rejected(Rejection::new(
                    RejectReason::ReversalOfReversal,
                    format!("transaction {reverses:?} is itself a reversal"),
                )));
            }
            if target.reversed {
                return Ok(Outcome::Rejected(Rejection::new(
                    RejectReason::ReversalAlreadyReversed,
                    format!("transaction {reverses:?} was already reversed"),
                )));
            }
            let compensation = target.delta.negate();
            let Some(balance) = add(state.balance(account, target.currency)?, compensation) else {
                return Ok(overflow(account, target.currency));
            };
            let currency = target.currency;
            state.set_balance(account, currency, balance);
            target.reversed = true;
            state.put_transaction(account, reverses, target);
            let own = record(event, compensation, currency, Some(reverses.to_string()));
            state.put_transaction(account, &event.transaction_id, own);
            Ok(Outcome::Applied { delta: compensation, currency })
        }
    }
}

fn add(balance: Amount, delta: Amount) -> Option<Amount> {
    balance.checked_add(delta).ok()
}

fn overflow(account: &str, currency: Currency) -> Outcome {
    Outcome::Rejected(Rejection::new(
        RejectReason::BalanceOverflow,
        format!("balance of {account:?} in {currency} would overflow"),
    ))
}

fn record(
    event: &TransactionEvent<'_>,
    delta: Amount,
    currency: Currency,
    reverses: Option<String>,
) -> TransactionRecord {
    TransactionRecord {
        kind: event.kind,
        delta,
        currency,
        event_time_micros: event.event_time_micros,
        reverses,
        reversed: false,
    }
}

/// An in-memory [`LedgerState`], for tests and tools that need no durability.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryLedger {
    pub balances: std::collections::BTreeMap<(String, Currency), Amount>,
    pub transactions: std::collections::BTreeMap<(String, String), TransactionRecord>,
}

impl LedgerState for MemoryLedger {
    type Error = std::convert::Infallible;

    fn balance(&mut self, account: &str, currency: Currency) -> Result<Amount, Self::Error> {
        Ok(self.balances.get(&(account.to_owned(), currency)).copied().unwrap_or_default())
    }

    fn transaction(&mut self, account: &str, transaction_id: &str) -> Result<Option<TransactionRecord>, Self::Error> {
        Ok(self.transactions.get(&(account.to_owned(), transaction_id.to_owned())).cloned())
    }

    fn set_balance(&mut self, account: &str, currency: Currency, balance: Amount) {
        self.balances.insert((account.to_owned(), currency), balance);
    }

    fn put_transaction(&mut self, account: &str, transaction_id: &str, record: TransactionRecord) {
        self.transactions.insert((account.to_owned(), transaction_id.to_owned()), record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::event::RawEvent;
    use proptest::prelude::*;

    fn event<'a>(id: &'a str, kind: &'a str, amount: &'a str, timestamp: &'a str) -> TransactionEvent<'a> {
        let raw = RawEvent {
            transaction_id: Some(id),
            timestamp: Some(timestamp),
            account_id: Some("6ad87cf1"),
            kind: Some(kind),
            amount: Some(amount),
            currency: Some("USD"),
            reverses: None,
        };
        TransactionEvent::validate(raw, None).unwrap()
    }

    fn reversal<'a>(id: &'a str, reverses: &'a str) -> TransactionEvent<'a> {
        let raw = RawEvent {
            transaction_id: Some(id),
            timestamp: Some("2024-03-14T00:00:00"),
            account_id: Some("6ad87cf1"),
            kind: Some("reversal"),
            reverses: Some(reverses),
            ..RawEvent::default()
        };
        TransactionEvent::validate(raw, None).unwrap()
    }

    fn usd_balance(ledger: &mut MemoryLedger) -> String {
        ledger.balance("6ad87cf1", Currency::parse("USD").unwrap()).unwrap().to_string()
    }

    fn reason(outcome: Outcome) -> RejectReason {
        match outcome {
            Outcome::Rejected(r) => r.reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn seed_002_leaves_3701_and_rejects_the_reused_id() {
        let mut ledger = MemoryLedger::default();
        let outcomes: Vec<_> = [
            event("123456789", "transfer", "5000.00", "2024-03-11T12:30:45"),
            event("987654321", "payment", "-1299.00", "2024-03-11T15:57:09"),
            event("987654321", "payment", "-879.00", "2024-03-13T09:17:28"),
        ]
        .iter()
        .map(|e| apply(&mut ledger, e).unwrap())
        .collect();
        assert!(matches!(outcomes[0], Outcome::Applied { .. }));
        assert!(matches!(outcomes[1], Outcome::Applied { .. }));
        assert_eq!(reason(outcomes[2].clone()), RejectReason::ConflictingDuplicate);
        assert_eq!(usd_balance(&mut ledger), "3701.00");
    }

    #[test]
    fn seed_003_leaves_120() {
        let mut ledger = MemoryLedger::default();
        for e in [
            event("d1", "deposit", "100", "2024-01-01T00:00:00"),
            event("w1", "withdrawal", "30", "2024-01-01T00:00:01"),
            event("d2", "deposit", "50", "2024-01-01T00:00:02"),
        ] {
            apply(&mut ledger, &e).unwrap();
        }
        assert_eq!(usd_balance(&mut ledger), "120");
    }

    #[test]
    fn exact_duplicate_is_skipped() {
        let mut ledger = MemoryLedger::default();
        let payment = event("p1", "payment", "-10.50", "2024-03-11T15:57:09");
        assert!(matches!(apply(&mut ledger, &payment).unwrap(), Outcome::Applied { .. }));
        assert_eq!(apply(&mut ledger, &payment).unwrap(), Outcome::Duplicate);
        // Same value written with another scale is the same amount.
        let same = event("p1", "payment", "-10.5", "2024-03-11T15:57:09Z");
        assert_eq!(apply(&mut ledger, &same).unwrap(), Outcome::Duplicate);
        assert_eq!(usd_balance(&mut ledger), "-10.50");
    }

    #[test]
    fn reversal_applies_once() {
        let mut ledger = MemoryLedger::default();
        apply(&mut ledger, &event("t1", "transfer", "5000.00", "2024-03-11T12:30:45")).unwrap();
        apply(&mut ledger, &event("p1", "payment", "-1299.00", "2024-03-11T15:57:09")).unwrap();
        let undo = reversal("r1", "p1");
        assert!(matches!(apply(&mut ledger, &undo).unwrap(), Outcome::Applied { .. }));
        assert_eq!(usd_balance(&mut ledger), "5000.00");
        // Replaying the same reversal event is a duplicate; a second reversal is rejected.
        assert_eq!(apply(&mut ledger, &undo).unwrap(), Outcome::Duplicate);
        assert_eq!(reason(apply(&mut ledger, &reversal("r2", "p1")).unwrap()), RejectReason::ReversalAlreadyReversed);
        assert_eq!(
            reason(apply(&mut ledger, &reversal("r3", "nope")).unwrap()),
            RejectReason::ReversalUnknownTransaction
        );
        assert_eq!(reason(apply(&mut ledger, &reversal("r4", "r1")).unwrap()), RejectReason::ReversalOfReversal);
        assert_eq!(usd_balance(&mut ledger), "5000.00");
    }

    #[test]
    fn overflow_rejects_and_leaves_the_balance() {
        let mut ledger = MemoryLedger::default();
        apply(&mut ledger, &event("a", "deposit", "79228162514264337593543950335", "2024-01-01T00:00:00")).unwrap();
        let outcome = apply(&mut ledger, &event("b", "deposit", "1", "2024-01-01T00:00:01")).unwrap();
        assert_eq!(reason(outcome), RejectReason::BalanceOverflow);
        assert_eq!(usd_balance(&mut ledger), "79228162514264337593543950335");
        // The rejected id was not remembered: a later valid use of it is not a duplicate.
        assert!(ledger.transaction("6ad87cf1", "b").unwrap().is_none());
    }

    /// A generated operation: an amount in cents, or a reversal of the i-th earlier operation.
    #[derive(Debug, Clone)]
    enum Op {
        Move { id: u8, cents: i64 },
        Reverse { id: u8, target: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..40, -1_000_000i64..1_000_000).prop_map(|(id, cents)| Op::Move { id, cents }),
            1 => (40u8..50, 0u8..40).prop_map(|(id, target)| Op::Reverse { id, target }),
        ]
    }

    fn to_event(op: &Op) -> TransactionEvent<'static> {
        match op {
            Op::Move { id, cents } => {
                let text = format!(
                    "{}{}.{:02}",
                    if *cents < 0 { "-" } else { "" },
                    cents.unsigned_abs() / 100,
                    cents.unsigned_abs() % 100
                );
                event(&format!("m{id}"), "adjustment", &text, "2024-01-01T00:00:00").into_owned()
            }
            Op::Reverse { id, target } => reversal(&format!("r{id}"), &format!("m{target}")).into_owned(),
        }
    }

    proptest! {
        /// The balance always equals the sum of the deltas of applied outcomes, no transaction is
        /// reversed twice, and every event that was applied is a duplicate when delivered again.
        #[test]
        fn sum_invariant_and_idempotent_redelivery(ops in proptest::collection::vec(op(), 1..120)) {
            let events: Vec<_> = ops.iter().map(to_event).collect();
            let mut ledger = MemoryLedger::default();
            let mut applied_sum = Amount::ZERO;
            let mut applied = Vec::new();
            let mut reversals_applied = std::collections::HashMap::new();
            for (e, op) in events.iter().zip(&ops) {
                if let Outcome::Applied { delta, .. } = apply(&mut ledger, e).unwrap() {
                    applied_sum = applied_sum.checked_add(delta).unwrap();
                    applied.push(e);
                    if let Op::Reverse { target, .. } = op {
                        *reversals_applied.entry(*target).or_insert(0) += 1;
                    }
                }
            }
            prop_assert_eq!(ledger.balance("6ad87cf1", Currency::parse("USD").unwrap()).unwrap(), applied_sum);
            prop_assert!(reversals_applied.values().all(|&n| n == 1));

            let before = ledger.clone();
            for e in applied {
                prop_assert_eq!(apply(&mut ledger, e).unwrap(), Outcome::Duplicate);
            }
            prop_assert_eq!(before, ledger);
        }
    }
}
