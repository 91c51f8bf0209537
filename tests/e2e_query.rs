//! The query API against the real broker: three instances, each answering for every account
//! (forwarding to the owner), point-in-time balances with events out of timestamp order, the
//! all-accounts NDJSON gathered across instances, and an account's audit trail.

mod common;

use common::workload::{self, Shape};
use common::{brokers, create_topic, produce, unique, wait_caught_up, Fixture, Instance, Ledgerd};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const READY: Duration = Duration::from_secs(120);
const CATCH_UP: Duration = Duration::from_secs(300);

/// GET, retrying while the answer is 503 (a partition between owners says: retry).
fn get_json(instance: &Ledgerd, path: &str) -> (u16, String) {
    let started = Instant::now();
    loop {
        let (status, body) = instance.get(path).unwrap_or((0, String::new()));
        if (status != 503 && status != 0) || started.elapsed() > Duration::from_secs(30) {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn usd_cents(balances: &serde_json::Value) -> Option<i128> {
    balances.get("USD").map(|v| workload::to_cents(v.as_str().expect("decimal string")))
}

/// The independent expectation: per account, the applied effects with event time <= `as_of`.
fn expected_at(work: &workload::Workload, as_of: i64) -> BTreeMap<String, i128> {
    let mut out = BTreeMap::new();
    for (account, micros, cents) in &work.applied_events {
        if *micros <= as_of {
            *out.entry(account.clone()).or_insert(0) += cents;
        }
    }
    out
}

/// Every instance's warnings and partition moves, for a failure message.
fn logs(instances: &[&Ledgerd]) -> String {
    let notable = |line: &str| ["WARN", "ERROR", "partition "].iter().any(|word| line.contains(word));
    instances.iter().map(|i| format!("--- {}:\n{}", i.base, i.log_lines(80, notable))).collect::<Vec<_>>().join("\n")
}

fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test(flavor = "multi_thread")]
async fn any_instance_answers_for_every_account_now_and_in_the_past() {
    const PARTITIONS: i32 = 6;
    let brokers = brokers();
    let input = unique("query");
    create_topic(&brokers, &input, PARTITIONS).await;
    // Event times jitter by up to two hours around stream order: arrival order is not time order.
    let shape = Shape { events: 100_000, accounts: 3_000, timestamp_jitter_seconds: 7_200, ..Shape::default() };
    let work = workload::generate(41, &shape);
    let records = Fixture::from_workload(&work);

    let dir = tempfile::tempdir().unwrap();
    let settings = Instance::new(&brokers, &input, &dir.path().join("n0"));
    let nodes = settings.spawn_group(dir.path(), 3, READY);
    let end = produce(&brokers, &input, &records).await;
    let instances: Vec<&Ledgerd> = nodes.iter().collect();
    wait_caught_up(&instances, &end, CATCH_UP);

    // Every account, asked of every instance: exact, with the serving instance and offset named.
    let mut served_by = BTreeMap::new();
    let mut wrong = Vec::new();
    for (account, cents) in &work.expected {
        for instance in &instances {
            let (status, body) = get_json(instance, &format!("/v1/accounts/{account}"));
            let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if status != 200 || usd_cents(&value["balances"]) != Some(*cents) || value["offset"].as_i64().is_none() {
                wrong.push(format!("{account} from {}: {status} {body}", instance.base));
            }
            *served_by.entry(value["served_by"].as_str().unwrap_or("").to_owned()).or_insert(0) += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers, e.g. {:?}\n{}",
        wrong.len(),
        &wrong[..wrong.len().min(5)],
        logs(&instances)
    );
    assert_eq!(served_by.len(), 3, "every instance serves part of the accounts: {served_by:?}");

    // Point in time, across the range of event times (which are out of stream order).
    let times: Vec<i64> = work.applied_events.iter().map(|(_, t, _)| *t).collect();
    let (first, last) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    let out_of_order = times.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(out_of_order > 1_000, "the workload must arrive out of time order ({out_of_order})");
    for (n, fraction) in [0.1, 0.5, 0.9].into_iter().enumerate() {
        let mut as_of = first + ((last - first) as f64 * fraction) as i64;
        // All accounts as NDJSON, gathered by one instance from all three.
        let (status, body) = loop {
            let (status, body) = get_json(instances[n % 3], &format!("/v1/balances?as_of={}", rfc3339(as_of)));
            // A partition that moved to an instance without its state during the run was restored
            // from a snapshot, and its history starts there: a documented refusal (422). Ask again
            // from where its history starts; the answer must still be exact.
            let history_from = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| {
                let from = v["history_from"].as_str()?.to_owned();
                Some(chrono::DateTime::parse_from_rfc3339(&from).ok()?.timestamp_micros())
            });
            match history_from {
                Some(from) if status == 422 && from > as_of => {
                    // Up to the next whole second, as the query sends seconds: as_of grows every
                    // time, so this ends after at most one retry per partition.
                    let next = from.div_euclid(1_000_000) * 1_000_000;
                    as_of = if next < from { next + 1_000_000 } else { next };
                    eprintln!("as_of is before a restored partition's history: asking at {}", rfc3339(as_of));
                }
                _ => break (status, body),
            }
        };
        assert_eq!(status, 200, "{body}\n{}", logs(&instances));
        let expected = expected_at(&work, as_of);
        let mut got = BTreeMap::new();
        for line in body.lines() {
            let value: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
            if let Some(cents) = usd_cents(&value["balances"]) {
                got.insert(value["account_id"].as_str().unwrap().to_owned(), cents);
            }
        }
        let differing: Vec<String> = expected
            .keys()
            .chain(got.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|a| got.get(*a) != expected.get(*a))
            .map(|a| format!("{a}: got {:?}, expected {:?}", got.get(a), expected.get(a)))
            .collect();
        assert!(
            differing.is_empty(),
            "as of {}: {} differ, e.g. {:?}",
            rfc3339(as_of),
            differing.len(),
            &differing[..differing.len().min(5)]
        );
        // Single accounts, asked of another instance than the NDJSON.
        for account in work.expected.keys().step_by(25) {
            let path = format!("/v1/accounts/{account}?as_of={}", rfc3339(as_of));
            let (status, body) = get_json(instances[(n + 1) % 3], &path);
            assert_eq!(status, 200, "{path}: {body}");
            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(usd_cents(&value["balances"]), expected.get(account).copied(), "{path}: {body}");
        }
    }

    // The audit trail of an account with a reversal: exactly its applied events, in order.
    let reversed = work
        .records
        .iter()
        .find(|r| r.value.contains("\"reversal\""))
        .map(|r| r.key.clone())
        .expect("the workload has reversals");
    let (status, body) = get_json(instances[1], &format!("/v1/accounts/{reversed}/transactions?limit=1000"));
    assert_eq!(status, 200, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    let trail = value["transactions"].as_array().unwrap();
    let mut applied: Vec<(i64, i128)> = trail
        .iter()
        .filter(|t| t["outcome"] == "applied")
        .map(|t| {
            let time = chrono::DateTime::parse_from_rfc3339(t["timestamp"].as_str().unwrap()).unwrap();
            (time.timestamp_micros(), workload::to_cents(t["effect"]["amount"].as_str().unwrap()))
        })
        .collect();
    applied.reverse(); // newest first → stream order
    let expected: Vec<(i64, i128)> =
        work.applied_events.iter().filter(|(a, _, _)| *a == reversed).map(|(_, t, c)| (*t, *c)).collect();
    assert_eq!(applied, expected, "applied events of {reversed}, oldest first");
    assert!(trail.iter().any(|t| t["type"] == "reversal" && t["reverses"].is_string()), "{body}");
    let offsets: Vec<i64> = trail.iter().map(|t| t["offset"].as_i64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[0] > w[1]), "newest first: {offsets:?}");
}

/// The group's committed next offset of `topic`/`partition` (`-1` without one), asked of the
/// broker as a lag tool would.
fn group_committed(reader: &BaseConsumer, topic: &str, partition: i32) -> i64 {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let committed = reader.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
    match committed.find_partition(topic, partition).map(|element| element.offset()) {
        Some(Offset::Offset(next)) => next,
        _ => -1,
    }
}

/// With `http.read_committed` (the default), no answer runs ahead of the consumer group's
/// committed offset, even while the instance catches up and commits as it goes: were it to crash
/// right after answering, its successor would resume at or beyond what was served. And reads
/// during the catch-up are answered (from the newest acknowledged checkpoint), not refused.
#[tokio::test(flavor = "multi_thread")]
async fn answers_during_a_catch_up_never_run_ahead_of_the_groups_committed_offset() {
    const PARTITIONS: i32 = 2;
    let brokers = brokers();
    let input = unique("committed-reads");
    create_topic(&brokers, &input, PARTITIONS).await;
    let shape = Shape { events: 100_000, accounts: 40, ..Shape::default() };
    let work = workload::generate(43, &shape);
    let end = produce(&brokers, &input, &Fixture::from_workload(&work)).await;
    let total: i64 = end.values().sum();

    let dir = tempfile::tempdir().unwrap();
    let mut settings = Instance::new(&brokers, &input, &dir.path().join("n0"));
    // Many small checkpoints, each committed as it is written.
    settings.max_records = 500;
    let node = settings.spawn();
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offsets reader");

    let accounts: Vec<&String> = work.expected.keys().take(8).collect();
    let (mut answered_during_catch_up, mut ahead) = (0, Vec::new());
    let started = Instant::now();
    while node.checkpointed_total() < total {
        assert!(started.elapsed() < CATCH_UP, "not caught up after {CATCH_UP:?}:\n{}", node.log());
        for account in &accounts {
            let Some((200, body)) = node.get(&format!("/v1/accounts/{account}")) else { continue };
            let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
            let partition = answer["partition"].as_i64().expect("partition") as i32;
            let offset = answer["offset"].as_i64().expect("offset");
            // Asked after the answer: the group's offset only grows, so it must already cover it.
            let committed = group_committed(&reader, &input, partition);
            if committed < offset {
                ahead.push(format!("{account}: partition {partition} answered at {offset}, committed {committed}"));
            }
            if offset < end[&partition] {
                answered_during_catch_up += 1;
            }
        }
    }
    assert!(ahead.is_empty(), "answers ahead of the committed offset: {ahead:?}");
    assert!(
        answered_during_catch_up >= 5,
        "reads during the catch-up must be answered, not only refused ({answered_during_catch_up} were)"
    );
    eprintln!("{answered_during_catch_up} answers during a catch-up of {total} records, none ahead of the group");
}
