//! Load generation: seed-shaped JSON events with a fixed random seed, optional duplicate, malformed,
//! conflicting and reversal rates, and the expected balances computed independently of the reducer
//! (plain integer cents), so any run can be verified. `engine` feeds a workload from memory
//! through one partition's engine, for the benchmarks of the engine alone.

pub mod engine;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// One generated record: key (the account id) and JSON value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fixture {
    pub key: String,
    pub value: String,
}

impl Fixture {
    fn json(key: &str, value: &str) -> Fixture {
        Fixture { key: key.to_owned(), value: value.to_owned() }
    }
}

/// A generated stream and what it must produce.
pub struct Workload {
    pub records: Vec<Fixture>,
    /// Expected USD balance per account, in cents.
    pub expected: BTreeMap<String, i128>,
    /// Records that must end up in the dead-letter topic (malformed + conflicting duplicates).
    pub dead_letters: usize,
    /// Exact re-deliveries that must be skipped.
    pub duplicates: usize,
    /// Records that must be applied.
    pub applied: usize,
    /// Every applied event in stream order: account, event time (micros), USD effect in cents.
    /// Point-in-time balances at `T` sum the effects with an event time at or before `T`.
    pub applied_events: Vec<(String, i64, i128)>,
}

#[derive(Debug, Clone)]
pub struct Shape {
    pub events: usize,
    pub accounts: usize,
    pub duplicate_rate: f64,
    pub malformed_rate: f64,
    pub conflict_rate: f64,
    pub reversal_rate: f64,
    /// Event time between consecutive events. Over the dedupe window (7 days by default) this
    /// decides how many transaction ids a snapshot carries.
    pub seconds_per_event: u32,
    /// Duplicates, conflicting re-uses and reversals target only transactions at most this many
    /// events old, so they stay inside ledgerd's dedupe window (older ids are forgotten by design
    /// and a re-delivery of one would be applied again, which the expectation does not model).
    pub recent_events: usize,
    /// Each event's time moves by up to this many seconds either way, so event time is not in
    /// stream order (0: in order).
    pub timestamp_jitter_seconds: u32,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            events: 100_000,
            accounts: 1_000,
            duplicate_rate: 0.01,
            malformed_rate: 0.002,
            conflict_rate: 0.001,
            reversal_rate: 0.005,
            seconds_per_event: 1,
            recent_events: usize::MAX,
            timestamp_jitter_seconds: 0,
        }
    }
}

fn cents_text(cents: i128, rng: &mut SmallRng) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let (units, frac) = (cents.unsigned_abs() / 100, cents.unsigned_abs() % 100);
    // Vary the scale the producer writes: 12.30, 12.3, and whole numbers without a point.
    match rng.random_range(0..3) {
        0 if frac % 10 == 0 => format!("{sign}{units}.{}", frac / 10),
        1 if frac == 0 => format!("{sign}{units}"),
        _ => format!("{sign}{units}.{frac:02}"),
    }
}

struct Applied {
    /// The event's position in the stream.
    index: usize,
    id: String,
    delta: i128,
    fixture: Fixture,
    reversible: bool,
}

pub fn generate(seed: u64, shape: &Shape) -> Workload {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut records = Vec::with_capacity(shape.events + shape.events / 50);
    let mut expected: BTreeMap<String, i128> = BTreeMap::new();
    let mut history: BTreeMap<usize, Vec<Applied>> = BTreeMap::new();
    let (mut dead_letters, mut duplicates, mut applied) = (0, 0, 0);
    let mut applied_events = Vec::new();
    let accounts: Vec<String> = (0..shape.accounts).map(|i| format!("acct-{i:05}-{:x}", seed % 4096)).collect();

    let start = chrono::NaiveDate::from_ymd_opt(2024, 6, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).expect("valid date");
    for i in 0..shape.events {
        let a = rng.random_range(0..accounts.len());
        let account = &accounts[a];
        let mut at = start + chrono::Duration::seconds(i as i64 * i64::from(shape.seconds_per_event));
        if shape.timestamp_jitter_seconds > 0 {
            let jitter = i64::from(shape.timestamp_jitter_seconds);
            at += chrono::Duration::seconds(rng.random_range(-jitter..=jitter));
        }
        let micros = at.and_utc().timestamp_micros();
        // Alternate explicit UTC and zone-less timestamps (both mean UTC).
        let ts = at.format(if i % 2 == 0 { "%Y-%m-%dT%H:%M:%SZ" } else { "%Y-%m-%dT%H:%M:%S" }).to_string();
        let roll: f64 = rng.random();
        let past = history.entry(a).or_default();
        // History is in stream order: the recent transactions are a suffix.
        let recent = past.partition_point(|p| i - p.index >= shape.recent_events);

        if roll < shape.malformed_rate {
            let value = match rng.random_range(0..4) {
                0 => "{\"transaction_id\": \"broken".to_owned(),
                1 => format!(
                    r#"{{"transaction_id":"m{i}","timestamp":"{ts}","account_id":"{account}","type":"gift","amount":1,"currency":"USD"}}"#
                ),
                2 => format!(
                    r#"{{"transaction_id":"m{i}","timestamp":"{ts}","account_id":"{account}","type":"deposit","amount":-5,"currency":"USD"}}"#
                ),
                _ => format!(
                    r#"{{"transaction_id":"m{i}","timestamp":"{ts}","account_id":"{account}","type":"deposit","amount":"1,5","currency":"USD"}}"#
                ),
            };
            records.push(Fixture::json(account, &value));
            dead_letters += 1;
            continue;
        }
        let roll = roll - shape.malformed_rate;
        if roll < shape.duplicate_rate && recent < past.len() {
            let pick = rng.random_range(recent..past.len());
            records.push(past[pick].fixture.clone());
            duplicates += 1;
            continue;
        }
        let roll = roll - shape.duplicate_rate;
        if roll < shape.conflict_rate && recent < past.len() {
            let pick = rng.random_range(recent..past.len());
            let id = &past[pick].id;
            let value = format!(
                r#"{{"transaction_id":"{id}","timestamp":"{ts}","account_id":"{account}","type":"payment","amount":-1.23,"currency":"USD"}}"#
            );
            records.push(Fixture::json(account, &value));
            dead_letters += 1;
            continue;
        }
        let roll = roll - shape.conflict_rate;
        if roll < shape.reversal_rate {
            if let Some(pick) = past[recent..].iter().position(|p| p.reversible).map(|p| p + recent) {
                let target = past[pick].id.clone();
                past[pick].reversible = false;
                let delta = -past[pick].delta;
                let id = format!("r{i}");
                let value = format!(
                    r#"{{"transaction_id":"{id}","timestamp":"{ts}","account_id":"{account}","type":"reversal","reverses":"{target}"}}"#
                );
                let fixture = Fixture::json(account, &value);
                *expected.entry(account.clone()).or_default() += delta;
                applied_events.push((account.clone(), micros, delta));
                past.push(Applied { index: i, id, delta, fixture: fixture.clone(), reversible: false });
                records.push(fixture);
                applied += 1;
                continue;
            }
        }

        let cents: i128 = rng.random_range(1..500_000);
        let (kind, delta) = match rng.random_range(0..4) {
            0 => ("deposit", cents),
            1 => ("withdrawal", -cents),
            2 => ("payment", -cents),
            _ => ("transfer", if rng.random() { cents } else { -cents }),
        };
        let written = if matches!(kind, "deposit" | "withdrawal") { cents } else { delta };
        let amount = cents_text(written, &mut rng);
        let amount = if rng.random() { amount } else { format!("\"{amount}\"") };
        let id = format!("t{i}");
        let value = format!(
            r#"{{"transaction_id":"{id}","timestamp":"{ts}","account_id":"{account}","type":"{kind}","amount":{amount},"currency":"USD","description":"generated"}}"#
        );
        let fixture = Fixture::json(account, &value);
        *expected.entry(account.clone()).or_default() += delta;
        applied_events.push((account.clone(), micros, delta));
        past.push(Applied { index: i, id, delta, fixture: fixture.clone(), reversible: true });
        records.push(fixture);
        applied += 1;
    }
    Workload { records, expected, dead_letters, duplicates, applied, applied_events }
}

/// The [`Shape::recent_events`] for a dedupe window: the events within half of it (older ids are
/// forgotten by design, and a re-delivery of one would be applied again, which the expectation
/// does not model).
pub fn recent_events(dedupe_window_secs: u64, seconds_per_event: u32) -> usize {
    usize::try_from(dedupe_window_secs / 2 / u64::from(seconds_per_event.max(1))).unwrap_or(usize::MAX)
}

/// Formats cents as a decimal string with two places (for expectation files and messages).
pub fn cents_to_string(cents: i128) -> String {
    format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.unsigned_abs() / 100, cents.unsigned_abs() % 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{decode, InputFormat};
    use crate::ledger::{apply, reducer::MemoryLedger, Currency, LedgerState, Outcome};

    /// The generator's independent expectation agrees with the reducer on a whole workload.
    #[test]
    fn expectation_matches_the_reducer() {
        let work = generate(5, &Shape { events: 20_000, accounts: 50, ..Shape::default() });
        let mut ledger = MemoryLedger::default();
        let (mut applied, mut duplicates, mut dead) = (0, 0, 0);
        for record in &work.records {
            let outcome =
                match decode(InputFormat::Json, Some(record.key.as_bytes()), Some(record.value.as_bytes()), None) {
                    Ok(event) => apply(&mut ledger, &event).unwrap(),
                    Err(rejection) => Outcome::Rejected(rejection),
                };
            match outcome {
                Outcome::Applied { .. } => applied += 1,
                Outcome::Duplicate => duplicates += 1,
                Outcome::Rejected(_) => dead += 1,
            }
        }
        assert_eq!((applied, duplicates, dead), (work.applied, work.duplicates, work.dead_letters));
        assert!(work.duplicates > 0 && work.dead_letters > 0);
        let usd = Currency::parse("USD").unwrap();
        for (account, cents) in &work.expected {
            let balance = ledger.balance(account, usd).unwrap();
            assert_eq!(balance.as_decimal(), rust_decimal::Decimal::from_i128_with_scale(*cents, 2), "{account}");
        }
    }
}
