//! Benchmark tools used by `scripts/bench.sh`:
//! - `produce`: a generated workload (fixed seed) to a topic, plus its expected balances file;
//! - `drain`: a bare rdkafka consumer reading the topic to its end (the broker's ceiling);
//! - `watch`: follows a running ledgerd's metrics until every record is checkpointed;
//! - `verify`: compares ledgerd's balances with the expected file (a fast wrong answer fails).
//!
//! Each prints one JSON line of results on stdout.

use clap::{Parser, Subcommand};
use ledgerd::loadgen::{self, Shape};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the benchmark topic lives.
#[derive(clap::Args)]
struct TopicArgs {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
}

#[derive(Subcommand)]
enum Command {
    Produce {
        #[command(flatten)]
        target: TopicArgs,
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        #[arg(long, default_value_t = 10_000)]
        accounts: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 0.01)]
        duplicate_rate: f64,
        #[arg(long, default_value_t = 0.001)]
        malformed_rate: f64,
        /// Event time between consecutive events (decides how many ids fall in the dedupe window).
        #[arg(long, default_value_t = 1)]
        seconds_per_event: u32,
        /// ledgerd's dedupe.window in seconds: duplicates and reversals target transactions within
        /// half of it, which ledgerd must still recognise (restores included).
        #[arg(long, default_value_t = 7 * 86_400)]
        dedupe_window_secs: u64,
        /// Where to write the expected balances (JSON: account -> decimal string).
        #[arg(long)]
        expected: PathBuf,
    },
    Drain {
        #[command(flatten)]
        target: TopicArgs,
    },
    Watch {
        /// ledgerd's base URL, e.g. http://127.0.0.1:8080
        #[arg(long)]
        url: String,
        /// Records in the topic.
        #[arg(long)]
        total: i64,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// ledgerd's process id: stop waiting if it exits.
        #[arg(long)]
        pid: Option<u32>,
    },
    Verify {
        #[arg(long)]
        url: String,
        #[arg(long)]
        expected: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Produce {
            target,
            events,
            accounts,
            seed,
            duplicate_rate,
            malformed_rate,
            seconds_per_event,
            dedupe_window_secs,
            expected,
        } => {
            let recent_events = (dedupe_window_secs / 2 / u64::from(seconds_per_event.max(1))) as usize;
            let shape = Shape {
                events,
                accounts,
                duplicate_rate,
                malformed_rate,
                seconds_per_event,
                recent_events,
                ..Shape::default()
            };
            produce(&target, seed, &shape, &expected)
        }
        Command::Drain { target } => drain(&target),
        Command::Watch { url, total, timeout_secs, pid } => watch(&url, total, Duration::from_secs(timeout_secs), pid),
        Command::Verify { url, expected } => verify(&url, &expected),
    }
}

fn produce(target: &TopicArgs, seed: u64, shape: &Shape, expected: &PathBuf) -> anyhow::Result<()> {
    let (brokers, topic, partitions) = (target.brokers.as_str(), target.topic.as_str(), target.partitions);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let created = runtime.block_on(
        admin.create_topics([&NewTopic::new(topic, partitions, TopicReplication::Fixed(-1))], &AdminOptions::new()),
    )?;
    for result in created {
        if let Err((name, code)) = result {
            anyhow::ensure!(code == RDKafkaErrorCode::TopicAlreadyExists, "cannot create {name}: {code}");
        }
    }
    let work = loadgen::generate(seed, shape);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        // The Java clients' partitioner, which ledgerd's default kafka.partitioner expects.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    for record in &work.records {
        let mut base = BaseRecord::to(topic).key(record.key.as_str()).payload(record.value.as_str());
        loop {
            match producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    base = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => anyhow::bail!("produce failed: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(300))?;
    let seconds = started.elapsed().as_secs_f64();
    let balances: BTreeMap<&String, String> =
        work.expected.iter().map(|(account, cents)| (account, loadgen::cents_to_string(*cents))).collect();
    std::fs::write(expected, serde_json::to_vec(&balances)?)?;
    println!(
        "{}",
        serde_json::json!({
            "produced": work.records.len(), "seconds": seconds, "applied": work.applied,
            "duplicates": work.duplicates, "dead_letters": work.dead_letters, "accounts": work.expected.len(),
        })
    );
    Ok(())
}

/// A bare consumer: assign every partition from the beginning (no group), read to partition EOF,
/// touch each payload's length and nothing else.
fn drain(target: &TopicArgs) -> anyhow::Result<()> {
    let (brokers, topic, partitions) = (target.brokers.as_str(), target.topic.as_str(), target.partitions);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "ledgerd-bench-bare")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut finished = HashSet::new();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while finished.len() < partitions as usize {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                first.get_or_insert_with(Instant::now);
                records += 1;
                bytes += message.payload_len() as u64;
                last = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                finished.insert(p);
            }
            Some(Err(e)) => anyhow::bail!("consume failed: {e}"),
            None => {}
        }
    }
    let seconds = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    println!(
        "{}",
        serde_json::json!({"records": records, "bytes": bytes, "seconds": seconds, "records_per_second": records as f64 / seconds})
    );
    Ok(())
}

fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("only http:// URLs"))?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(host)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("bad response"))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls /metrics: the catch-up window runs from the first record processed to every record
/// checkpointed (applied, skipped or dead-lettered, and durable).
fn watch(url: &str, total: i64, timeout: Duration, pid: Option<u32>) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut first: Option<Instant> = None;
    loop {
        anyhow::ensure!(Instant::now() < deadline, "ledgerd did not catch up within {timeout:?}");
        if let Some(pid) = pid {
            anyhow::ensure!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "ledgerd (pid {pid}) exited");
        }
        if let Ok((200, text)) = http_get(&format!("{url}/metrics")) {
            let processed = metric_sum(&text, "ledgerd_events_total{", "");
            if processed > 0.0 && first.is_none() {
                first = Some(Instant::now());
            }
            let checkpointed = metric_sum(&text, "ledgerd_checkpointed_offset{", "") as i64;
            if checkpointed >= total {
                let seconds = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
                println!(
                    "{}",
                    serde_json::json!({"records": total, "seconds": seconds, "records_per_second": total as f64 / seconds})
                );
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn verify(url: &str, expected: &PathBuf) -> anyhow::Result<()> {
    let expected: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(expected)?)?;
    let mut wrong = Vec::new();
    for (account, want) in &expected {
        let (status, body) = http_get(&format!("{url}/v1/accounts/{account}"))?;
        let got: Option<String> = (status == 200)
            .then(|| serde_json::from_str::<serde_json::Value>(&body).ok())
            .flatten()
            .and_then(|v| v["balances"]["USD"].as_str().map(str::to_owned));
        let equal = got.as_deref().and_then(|g| ledgerd::ledger::Amount::parse(g).ok())
            == ledgerd::ledger::Amount::parse(want).ok();
        if !equal {
            wrong.push(format!("{account}: expected {want}, got {got:?}"));
        }
    }
    println!("{}", serde_json::json!({"accounts": expected.len(), "wrong": wrong.len()}));
    anyhow::ensure!(wrong.is_empty(), "{} balances wrong, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    Ok(())
}
