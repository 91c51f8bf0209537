//! An account's history: what became of each of its input records (the audit trail), and its
//! balances at a past event time.
//!
//! Point-in-time balances are event-time: the balance at `T` sums the effects of every applied
//! event with an event time at or before `T`, whatever order the events arrived in. ledgerd keeps
//! the current balances and the history of recent event time, so it computes the balance at `T` as
//! the current balance minus the effects of the applied events later than `T`. That needs every
//! applied event later than `T` in the history, which holds from the partition's *history floor*
//! on (see `store`): retention only drops entries older than the floor, and a restore or a
//! migration sets the floor at the newest event time it could not record.

use super::event::{Currency, EventKind};
use super::money::Amount;

/// What became of an input record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryOutcome {
    /// Changed the balance by its effect.
    Applied,
    /// Skipped: the same transaction was applied before.
    Duplicate,
    /// Copied to the dead-letter topic; no effect.
    DeadLettered,
}

impl HistoryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryOutcome::Applied => "applied",
            HistoryOutcome::Duplicate => "duplicate",
            HistoryOutcome::DeadLettered => "dead_lettered",
        }
    }

    pub fn to_u32(self) -> u32 {
        match self {
            HistoryOutcome::Applied => 1,
            HistoryOutcome::Duplicate => 2,
            HistoryOutcome::DeadLettered => 3,
        }
    }

    pub fn from_u32(value: u32) -> Option<HistoryOutcome> {
        Some(match value {
            1 => HistoryOutcome::Applied,
            2 => HistoryOutcome::Duplicate,
            3 => HistoryOutcome::DeadLettered,
            _ => return None,
        })
    }
}

/// One input record of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The record's input offset.
    pub offset: i64,
    pub outcome: HistoryOutcome,
    /// Empty when the record did not decode far enough to carry one.
    pub transaction_id: String,
    pub kind: Option<EventKind>,
    /// The signed change made to the balance (applied records only; for a reversal, the compensation).
    pub effect: Option<(Amount, Currency)>,
    pub event_time_micros: Option<i64>,
    pub reverses: Option<String>,
    /// Why a dead-lettered record was rejected (a `RejectReason` code).
    pub reason: Option<String>,
}

impl HistoryEntry {
    /// The entry as the checkpoint's encoder takes it (tests encode owned entries through it).
    #[cfg(test)]
    pub fn borrowed(&self) -> BorrowedHistoryEntry<'_> {
        BorrowedHistoryEntry {
            offset: self.offset,
            outcome: self.outcome,
            transaction_id: &self.transaction_id,
            kind: self.kind,
            effect: self.effect,
            event_time_micros: self.event_time_micros,
            reverses: self.reverses.as_deref(),
            reason: self.reason.as_deref(),
        }
    }
}

/// A [`HistoryEntry`] whose ids are borrowed: what a checkpoint encodes. The overlay keeps its
/// entries' ids in an arena and lends them out this way, so recording a record's history gives
/// no id an allocation of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BorrowedHistoryEntry<'a> {
    pub offset: i64,
    pub outcome: HistoryOutcome,
    /// Empty when the record did not decode far enough to carry one.
    pub transaction_id: &'a str,
    pub kind: Option<EventKind>,
    pub effect: Option<(Amount, Currency)>,
    pub event_time_micros: Option<i64>,
    pub reverses: Option<&'a str>,
    pub reason: Option<&'a str>,
}

/// The balances at event time `as_of_micros`, from the `current` balances and the account's
/// history entries with an event time after `as_of_micros`'s history floor (any order). A currency
/// is listed when its balance at `as_of_micros` is not zero or an applied event in it happened by
/// then; a currency whose every retained event is later and whose balance then was zero is left out.
pub fn balances_as_of<'e>(
    current: &[(Currency, Amount)],
    history: impl IntoIterator<Item = &'e HistoryEntry>,
    as_of_micros: i64,
) -> Vec<(Currency, Amount)> {
    let mut at: Vec<(Currency, Amount, bool)> = current.iter().map(|(c, a)| (*c, *a, false)).collect();
    for entry in history {
        let (HistoryOutcome::Applied, Some((delta, currency)), Some(time)) =
            (entry.outcome, entry.effect, entry.event_time_micros)
        else {
            continue;
        };
        let slot = match at.iter_mut().position(|(c, _, _)| *c == currency) {
            Some(index) => &mut at[index],
            None => {
                at.push((currency, Amount::default(), false));
                at.last_mut().expect("pushed above")
            }
        };
        if time > as_of_micros {
            // Current balances came through checked additions of these same deltas, so taking
            // one back cannot overflow.
            slot.1 = slot.1.checked_sub(delta).unwrap_or(slot.1);
        } else {
            slot.2 = true;
        }
    }
    let mut out: Vec<(Currency, Amount)> = at
        .into_iter()
        .filter(|(_, amount, seen)| *seen || !amount.as_decimal().is_zero())
        .map(|(c, a, _)| (c, a))
        .collect();
    out.sort_by_key(|(currency, _)| *currency);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(offset: i64, amount: &str, time: i64) -> HistoryEntry {
        HistoryEntry {
            offset,
            outcome: HistoryOutcome::Applied,
            transaction_id: format!("t{offset}"),
            kind: Some(EventKind::Transfer),
            effect: Some((Amount::parse(amount).unwrap(), usd())),
            event_time_micros: Some(time),
            reverses: None,
            reason: None,
        }
    }

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    #[test]
    fn takes_back_only_events_later_than_as_of_whatever_their_arrival_order() {
        // Arrival order 0, 1, 2; event times 30, 10, 20.
        let history = [applied(0, "100.00", 30), applied(1, "5.00", 10), applied(2, "-2.50", 20)];
        let current = [(usd(), Amount::parse("102.50").unwrap())];
        let at = |t| balances_as_of(&current, &history, t);
        assert_eq!(at(9), vec![], "nothing had happened by then");
        assert_eq!(at(10), vec![(usd(), Amount::parse("5.00").unwrap())]);
        assert_eq!(at(25), vec![(usd(), Amount::parse("2.50").unwrap())]);
        assert_eq!(at(30), vec![(usd(), Amount::parse("102.50").unwrap())]);
    }

    #[test]
    fn a_currency_back_to_zero_by_then_is_listed_and_one_not_yet_used_is_not() {
        let history = [applied(0, "5.00", 10), applied(1, "-5.00", 20)];
        let current = [(usd(), Amount::parse("0.00").unwrap())];
        assert_eq!(balances_as_of(&current, &history, 25), vec![(usd(), Amount::parse("0.00").unwrap())]);
        assert_eq!(balances_as_of(&current, &history, 5), vec![]);
    }

    #[test]
    fn skipped_and_dead_lettered_records_have_no_effect() {
        let mut duplicate = applied(1, "7.00", 5);
        duplicate.outcome = HistoryOutcome::Duplicate;
        let mut dead = applied(2, "9.00", 5);
        dead.outcome = HistoryOutcome::DeadLettered;
        let history = [applied(0, "1.00", 1), duplicate, dead];
        let current = [(usd(), Amount::parse("1.00").unwrap())];
        assert_eq!(balances_as_of(&current, &history, 3), vec![(usd(), Amount::parse("1.00").unwrap())]);
    }
}
