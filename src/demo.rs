//! `ledgerd demo`: zero setup. Starts librdkafka's in-process mock cluster, creates the topics,
//! produces the seed examples and a generated stream, runs the real pipeline and HTTP API on it, and
//! prints balances checked against an independent calculation.

use crate::config::Config;
use crate::ledger::Amount;
use anyhow::{bail, Context};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 6;
const SEED_ACCOUNT: &str = "6ad87cf1";
const DIARY_ACCOUNT: &str = "diary-003";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub exit_after: Option<u64>,
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Generated events to produce after the seed examples.
    #[arg(long, default_value_t = 3000)]
    pub events: u32,
    /// State directory (default: a fresh temporary directory, removed on exit).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// One demo record: key and JSON value.
struct Record {
    key: String,
    value: String,
}

fn event(id: &str, ts: &str, account: &str, kind: &str, amount: &str) -> Record {
    Record {
        key: account.to_owned(),
        value: format!(
            r#"{{"transaction_id":"{id}","timestamp":"{ts}","account_id":"{account}","type":"{kind}","amount":{amount},"currency":"USD"}}"#
        ),
    }
}

/// The seed examples: seed 002 (3701.00 with the reused id dead-lettered), seed 003's diary
/// (deposit 100, withdrawal 30, deposit 50 = 120), and one malformed record.
fn seed_records() -> Vec<Record> {
    vec![
        event("123456789", "2024-03-11T12:30:45", SEED_ACCOUNT, "transfer", "5000.00"),
        event("987654321", "2024-03-11T15:57:09", SEED_ACCOUNT, "payment", "-1299.00"),
        event("987654321", "2024-03-13T09:17:28", SEED_ACCOUNT, "payment", "-879.00"),
        event("d-1", "2024-01-01T09:00:00", DIARY_ACCOUNT, "deposit", "100"),
        event("w-1", "2024-01-01T12:00:00", DIARY_ACCOUNT, "withdrawal", "30"),
        event("d-2", "2024-01-01T18:00:00", DIARY_ACCOUNT, "deposit", "50"),
        Record { key: SEED_ACCOUNT.into(), value: "{this is not json".into() },
    ]
}

/// A deterministic generated stream with ~1% exact duplicates; returns the records and the expected
/// balance of every generated account, computed in integer cents (independently of the reducer).
fn generated(count: u32) -> (Vec<Record>, BTreeMap<String, i64>) {
    let mut records = Vec::with_capacity(count as usize);
    let mut expected = BTreeMap::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..count {
        let account = format!("acct-{:03}", next() % 50);
        let cents = (next() % 20_000) as i64 + 1;
        let (kind, signed) = if next() % 3 == 0 { ("withdrawal", -cents) } else { ("deposit", cents) };
        let amount = format!("{}.{:02}", cents / 100, cents % 100);
        let record = event(&format!("g-{i}"), "2024-06-01T00:00:00", &account, kind, &amount);
        if next() % 100 == 0 {
            records.push(Record { key: record.key.clone(), value: record.value.clone() });
        }
        records.push(record);
        *expected.entry(account).or_insert(0) += signed;
    }
    (records, expected)
}

fn cents_text(cents: i64) -> String {
    format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.unsigned_abs() / 100, cents.unsigned_abs() % 100)
}

pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mock = MockCluster::new(1).context("cannot start the mock Kafka cluster")?;
    let mut config = Config::default();
    config.kafka.bootstrap_servers = mock.bootstrap_servers();
    config.kafka.group_id = "ledgerd-demo".into();
    // The mock cluster cannot create topics through the admin API: create them all here.
    for topic in [&config.kafka.input_topic, &config.kafka.dlq_topic, &config.snapshot.topic] {
        mock.create_topic(topic, PARTITIONS, 1).with_context(|| format!("cannot create topic {topic}"))?;
    }
    let routing = &config.routing.topic;
    mock.create_topic(routing, 1, 1).with_context(|| format!("cannot create topic {routing}"))?;
    let temp = tempfile_dir()?;
    config.state.dir = args.state_dir.clone().unwrap_or_else(|| temp.join("state"));
    config.http.listen = args.http_listen;
    config.checkpoint.interval = Duration::from_millis(200);
    config.validate()?;

    println!("ledgerd demo: mock Kafka cluster at {}", config.kafka.bootstrap_servers);
    let mut records = seed_records();
    let (generated, expected) = generated(args.events);
    records.extend(generated);
    let end_offsets = produce(&config, &records).await?;
    println!("produced {} records to {:?} ({PARTITIONS} partitions)", records.len(), config.kafka.input_topic);

    let running = crate::start(config).await?;
    let url = format!("http://{}", running.http_addr);
    let started = Instant::now();
    while !caught_up(&running, &end_offsets) {
        if shutdown.is_cancelled() {
            return running.stop().await;
        }
        if started.elapsed() > Duration::from_secs(120) {
            running.shutdown.cancel();
            bail!("the demo pipeline did not catch up within 120s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("caught up in {:.1}s\n", started.elapsed().as_secs_f64());

    let balance = |account: &str| -> String {
        for (_, store) in running.registry.stores() {
            if let Ok(balances) = store.account_balances(account) {
                if let Some((currency, amount)) = balances.first() {
                    return format!("{amount} {currency}");
                }
            }
        }
        "(not found)".into()
    };
    println!(
        "  {SEED_ACCOUNT}  {:>14}   (seed 002: 5000.00 - 1299.00; the reused id 987654321 is dead-lettered)",
        balance(SEED_ACCOUNT)
    );
    println!("  {DIARY_ACCOUNT} {:>14}   (seed 003: 100 - 30 + 50)", balance(DIARY_ACCOUNT));
    let mut mismatches = 0;
    for (account, cents) in &expected {
        let want = format!("{} USD", Amount::parse(&cents_text(*cents))?);
        if balance(account) != want {
            mismatches += 1;
        }
    }
    for (account, cents) in expected.iter().take(3) {
        println!("  {account:<9} {:>14}   (generated; expected {})", balance(account), cents_text(*cents));
    }
    println!(
        "\n{} generated accounts checked against an independent sum: {}",
        expected.len(),
        if mismatches == 0 { "all exact".to_owned() } else { format!("{mismatches} MISMATCHED") }
    );
    let metrics = running.metrics.render();
    let dead = metrics
        .lines()
        .filter(|l| l.starts_with("ledgerd_events_total") && l.contains("dead_lettered"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    println!("dead-lettered records: {dead} (1 conflicting duplicate + 1 malformed)\n");
    println!("Try it:\n  curl {url}/v1/accounts/{SEED_ACCOUNT}\n  curl {url}/metrics\n  curl {url}/readyz");
    if mismatches > 0 {
        running.shutdown.cancel();
        bail!("{mismatches} balances differ from the expectation");
    }

    match args.exit_after {
        Some(seconds) => {
            let remaining = Duration::from_secs(seconds).saturating_sub(started.elapsed());
            println!("(exiting in {}s)", remaining.as_secs());
            tokio::select! {
                () = tokio::time::sleep(remaining) => {}
                () = shutdown.cancelled() => {}
            }
        }
        None => {
            println!("(Ctrl-C to stop)");
            shutdown.cancelled().await;
        }
    }
    let result = running.stop().await;
    let _ = std::fs::remove_dir_all(&temp);
    drop(mock);
    result
}

/// Produces all records and returns, per partition, the offset after its last record.
async fn produce(config: &Config, records: &[Record]) -> anyhow::Result<BTreeMap<i32, i64>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.bootstrap_servers)
        // The Java clients' partitioner, which kafka.partitioner = "murmur2" (the default) expects.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()?;
    let mut deliveries = Vec::with_capacity(records.len());
    for record in records {
        let future = producer
            .send_result(FutureRecord::to(&config.kafka.input_topic).key(&record.key).payload(&record.value))
            .map_err(|(e, _)| e)?;
        deliveries.push(future);
    }
    let mut end = BTreeMap::new();
    for delivery in deliveries {
        let delivered = delivery.await?.map_err(|(e, _)| e)?;
        let slot = end.entry(delivered.partition).or_insert(0);
        *slot = (*slot).max(delivered.offset + 1);
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(end)
}

fn caught_up(running: &crate::Running, end_offsets: &BTreeMap<i32, i64>) -> bool {
    end_offsets.iter().all(|(partition, end)| running.metrics.checkpointed_offset(*partition) >= *end)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ledgerd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
