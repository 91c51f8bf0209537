//! Benchmark tools used by `scripts/bench.sh`:
//! - `produce`: a generated workload (fixed seed) to a topic, plus its expected balances file;
//! - `drain`: a bare rdkafka consumer reading the topic to its end (the broker's ceiling);
//! - `watch`: follows a running ledgerd's metrics until every record is checkpointed;
//! - `verify`: compares ledgerd's balances with the expected file (a fast wrong answer fails);
//! - `engine`: the engine's ceiling without a broker: records from memory through decode, apply
//!   and checkpoint on one thread, with each record's time split into the three and the CPU of
//!   every thread (RocksDB's flushes and compactions) per million records;
//! - `targets`: splits the accounts into those an instance serves itself and those it forwards
//!   (`scripts/bench-api.sh` loads each list into wrk);
//! - `recovery`: runs ledgerd, kills it with SIGKILL part-way through a catch-up, starts it again
//!   on the same state and measures how long until it processes again and how much it re-read
//!   (`scripts/bench-recovery.sh`).
//!
//! Each prints one JSON line of results on stdout.

use clap::{Parser, Subcommand};
use ledgerd::config::{ByteSize, CheckpointConfig, KafkaConfig, StateConfig};
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

/// The same allocator as the `ledgerd` binary, so the engine benchmark measures what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Re-uses of a transaction id with other content (dead-lettered as conflicting).
        #[arg(long, default_value_t = 0.001)]
        conflict_rate: f64,
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
        /// A librdkafka property, KEY=VALUE (repeatable), as ledgerd's `kafka.properties` would set
        /// it: give both the same.
        #[arg(long = "property", value_parser = parse_property)]
        properties: Vec<(String, String)>,
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
    Engine {
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        #[arg(long, default_value_t = 10_000)]
        accounts: usize,
        /// Records per checkpoint (the default checkpoint.max_records).
        #[arg(long, default_value_t = CheckpointConfig::default().max_records)]
        checkpoint_every: u64,
        /// Timed passes, each from empty state; the best and the median are reported.
        #[arg(long, default_value_t = 5)]
        passes: usize,
        /// Parent of the passes' state directories (each removed after its pass).
        #[arg(long, default_value = "target/bench-engine")]
        dir: PathBuf,
        /// state.block_cache_size in MiB (ledgerd's default; a partition's share of it when
        /// several partitions share one instance is the default divided by their number).
        #[arg(long, default_value_t = 160)]
        block_cache_mib: u64,
        /// state.balance_cache_size in MiB (ledgerd's default, shared the same way).
        #[arg(long, default_value_t = 96)]
        balance_cache_mib: u64,
        /// Write checkpoints on a thread of their own, as `ledgerd run` does (two cores at most);
        /// without it everything runs on one core, the measure of the engine's ceiling.
        #[arg(long)]
        writer_thread: bool,
        /// state.write_buffer_size in MiB (ledgerd's default, shared the same way).
        #[arg(long, default_value_t = 64)]
        write_buffer_mib: u64,
    },
    Targets {
        /// The instance the load will be sent to.
        #[arg(long)]
        url: String,
        /// Its routing.instance_id: answers it served itself are local, the others forwarded.
        #[arg(long)]
        instance: String,
        /// The accounts (the expected-balances file of `produce`).
        #[arg(long)]
        expected: PathBuf,
        /// Request paths of the accounts it serves itself, one per line.
        #[arg(long)]
        local: PathBuf,
        /// Request paths of the accounts it forwards, one per line.
        #[arg(long)]
        forwarded: PathBuf,
    },
    Recovery {
        /// The ledgerd binary.
        #[arg(long)]
        ledgerd: PathBuf,
        /// Its config file.
        #[arg(long)]
        config: PathBuf,
        /// The config of the restarted process (default: --config). It must name the same state
        /// directory and HTTP address; it may name another group.
        #[arg(long)]
        restart_config: Option<PathBuf>,
        /// Its base URL (http.listen of the config).
        #[arg(long)]
        url: String,
        /// Records in the topic.
        #[arg(long)]
        total: i64,
        /// Share of the records processed when the first run is killed.
        #[arg(long, default_value_t = 0.5)]
        kill_at: f64,
        /// ledgerd's stderr goes to LOG.1 (killed run) and LOG.2 (restarted run).
        #[arg(long)]
        log: PathBuf,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Scrape interval while the restarted process answers HTTP but has not processed a record
        /// (ms): the resolution of "processing again". Each scrape costs ledgerd about a millisecond
        /// of CPU, so scraping every 2 ms took a share of a core from the restart it timed.
        #[arg(long, default_value_t = 20)]
        poll_ms: u64,
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
            conflict_rate,
            seconds_per_event,
            dedupe_window_secs,
            expected,
        } => {
            let recent_events = loadgen::recent_events(dedupe_window_secs, seconds_per_event);
            let shape = Shape {
                events,
                accounts,
                duplicate_rate,
                malformed_rate,
                conflict_rate,
                seconds_per_event,
                recent_events,
                ..Shape::default()
            };
            produce(&target, seed, &shape, &expected)
        }
        Command::Drain { target, properties } => drain(&target, &properties),
        Command::Watch { url, total, timeout_secs, pid } => watch(&url, total, Duration::from_secs(timeout_secs), pid),
        Command::Verify { url, expected } => verify(&url, &expected),
        Command::Engine {
            events,
            accounts,
            checkpoint_every,
            passes,
            dir,
            block_cache_mib,
            balance_cache_mib,
            write_buffer_mib,
            writer_thread,
        } => {
            let recent_events = loadgen::recent_events(ledgerd::loadgen::engine::DEDUPE_WINDOW.as_secs(), 1);
            let state = StateConfig {
                dir,
                block_cache_size: ByteSize(block_cache_mib << 20),
                balance_cache_size: ByteSize(balance_cache_mib << 20),
                write_buffer_size: ByteSize(write_buffer_mib << 20),
                ..StateConfig::default()
            };
            let shape = Shape { events, accounts, recent_events, ..Shape::default() };
            engine(&shape, checkpoint_every, passes, &state, writer_thread)
        }
        Command::Targets { url, instance, expected, local, forwarded } => {
            targets(&url, &instance, &expected, &local, &forwarded)
        }
        Command::Recovery { ledgerd, config, restart_config, url, total, kill_at, log, timeout_secs, poll_ms } => {
            let restart_config = restart_config.unwrap_or_else(|| config.clone());
            let run = Run { ledgerd, configs: [config, restart_config], url, log };
            recovery(&run, total, kill_at, Duration::from_secs(timeout_secs), Duration::from_millis(poll_ms))
        }
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
///
/// Its client settings are the ones ledgerd's own consumers get from the same `kafka.properties`
/// (`properties`). tansu's memory engine answers at a pace set by the client's
/// `fetch.wait.max.ms` even when it has records (115k records/s at librdkafka's default, 1.2M at
/// 10 ms), so with different settings the ratio compared two fetch settings, not ledgerd's work
/// (docs/BENCHMARKS.md, forty-third session).
fn drain(target: &TopicArgs, properties: &[(String, String)]) -> anyhow::Result<()> {
    let (brokers, topic, partitions) = (target.brokers.as_str(), target.topic.as_str(), target.partitions);
    let kafka = KafkaConfig {
        bootstrap_servers: brokers.to_owned(),
        group_id: "ledgerd-bench-bare".to_owned(),
        properties: properties.iter().cloned().collect(),
        ..KafkaConfig::default()
    };
    let consumer: BaseConsumer =
        ledgerd::kafka::non_member_client_config(&kafka).set("enable.partition.eof", "true").create()?;
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
        serde_json::json!({
            "records": records, "bytes": bytes, "seconds": seconds, "records_per_second": records as f64 / seconds,
            "cpu_seconds": own_cpu_seconds()?,
        })
    );
    Ok(())
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    Ok((key.to_owned(), value.to_owned()))
}

/// User + system CPU this process has used (fields 14 and 15 of /proc/self/stat, in clock ticks).
fn own_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after_name = stat.rsplit_once(')').map_or(stat.as_str(), |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).ok_or_else(|| anyhow::anyhow!("short /proc/self/stat"))?.parse::<f64>()?)
    };
    // Field 14 is the 12th after the name: fields 3.. start at index 0. Clock ticks are USER_HZ,
    // which the kernel ABI fixes at 100 on the architectures ledgerd is built for (`getconf CLK_TCK`).
    Ok((ticks(11)? + ticks(12)?) / 100.0)
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
///
/// Every scrape costs ledgerd CPU, which the benchmark counts as its own, so polls are frequent
/// only where the timing needs them: until the first record is processed, and as the expected end
/// nears. Polling every 20 ms throughout was about a sixth of ledgerd's CPU in a catch-up.
fn watch(url: &str, total: i64, timeout: Duration, pid: Option<u32>) -> anyhow::Result<()> {
    const FAST: Duration = Duration::from_millis(20);
    const SLOW: Duration = Duration::from_millis(500);
    let deadline = Instant::now() + timeout;
    let mut first: Option<Instant> = None;
    // When every record was processed: what follows is waiting for the last checkpoints.
    let mut all_processed: Option<Instant> = None;
    loop {
        anyhow::ensure!(Instant::now() < deadline, "ledgerd did not catch up within {timeout:?}");
        if let Some(pid) = pid {
            anyhow::ensure!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "ledgerd (pid {pid}) exited");
        }
        let mut wait = FAST;
        if let Ok((200, text)) = http_get(&format!("{url}/metrics")) {
            let processed = metric_sum(&text, "ledgerd_events_total{", "");
            if processed > 0.0 && first.is_none() {
                first = Some(Instant::now());
            }
            if processed >= total as f64 && all_processed.is_none() {
                all_processed = Some(Instant::now());
            }
            let checkpointed = metric_sum(&text, "ledgerd_checkpointed_offset{", "") as i64;
            if checkpointed >= total {
                let seconds = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
                let last_checkpoints = all_processed.map_or(0.0, |p| p.elapsed().as_secs_f64());
                println!(
                    "{}",
                    serde_json::json!({"records": total, "seconds": seconds, "records_per_second": total as f64 / seconds,
                        "seconds_after_all_processed": last_checkpoints})
                );
                return Ok(());
            }
            if let (Some(first), None) = (first, all_processed) {
                // A quarter of the time the rate so far says is left: never late by more than FAST
                // at the end, unless the rate itself jumps. Then FAST until the last checkpoint.
                let rate = processed.max(1.0) / first.elapsed().as_secs_f64().max(1e-3);
                let left = Duration::from_secs_f64((total as f64 - processed) / rate / 4.0);
                wait = left.clamp(FAST, SLOW);
            }
        }
        std::thread::sleep(wait);
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

/// Asks `url` for every account once and files each request path by who answered it. Any answer
/// other than 200 fails: the load must only contain requests that succeed.
fn targets(url: &str, instance: &str, expected: &PathBuf, local: &PathBuf, forwarded: &PathBuf) -> anyhow::Result<()> {
    let expected: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(expected)?)?;
    let (mut served_here, mut served_elsewhere) = (String::new(), String::new());
    for account in expected.keys() {
        let path = format!("/v1/accounts/{account}");
        let (status, body) = http_get(&format!("{url}{path}"))?;
        anyhow::ensure!(status == 200, "{path}: {status} {body}");
        let answer: serde_json::Value = serde_json::from_str(&body)?;
        let list = if answer["served_by"] == instance { &mut served_here } else { &mut served_elsewhere };
        list.push_str(&path);
        list.push('\n');
    }
    std::fs::write(local, &served_here)?;
    std::fs::write(forwarded, &served_elsewhere)?;
    println!(
        "{}",
        serde_json::json!({"local": served_here.lines().count(), "forwarded": served_elsewhere.lines().count()})
    );
    Ok(())
}

/// Decodes, applies and checkpoints a generated workload held in memory as raw record bytes, as the
/// consumer thread does, on this one thread. Each pass starts from an empty state directory, so
/// every pass does the same work (a second pass over the same records would only find
/// duplicates). After the last pass every balance is compared with the generator's expectation.
fn engine(
    shape: &Shape,
    checkpoint_every: u64,
    passes: usize,
    state: &StateConfig,
    writer_thread: bool,
) -> anyhow::Result<()> {
    use ledgerd::input::{self, InputFormat};
    use ledgerd::loadgen::engine::Engine;

    let work = loadgen::generate(7, shape);
    let metrics = ledgerd::metrics::Metrics::new();
    let mut decode_seconds = Vec::new();
    // Per pass: (wall seconds, of which checkpointing, CPU seconds of every thread of this process,
    // RocksDB's flushes and compactions included, share of balance reads the cache answered).
    let mut pass_seconds = Vec::new();
    let passes = passes.max(1);
    // The last pass's state written as one snapshot round: (accounts, bytes, seconds).
    let mut round = None;
    for pass in 0..passes {
        // Decode alone: the share of the pass that is JSON.
        let started = Instant::now();
        let decoded_ok = work
            .records
            .iter()
            .filter(|r| {
                input::decode(InputFormat::Json, Some(r.key.as_bytes()), Some(r.value.as_bytes()), None).is_ok()
            })
            .count();
        decode_seconds.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(decoded_ok + work.dead_letters >= work.records.len(), "records failed to decode");

        let state_dir = state.dir.join(format!("pass-{}-{pass}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        let mut engine = Engine::open(&StateConfig { dir: state_dir.clone(), ..state.clone() }, &metrics)?;
        if writer_thread {
            engine = engine.with_writer_thread()?;
        }
        let (started, cpu_before) = (Instant::now(), own_cpu_seconds()?);
        let checkpointing = engine.run(&work.records, checkpoint_every)?;
        let seconds = started.elapsed().as_secs_f64();
        // RocksDB's flushes and compactions run on threads of their own: their CPU counts against
        // the pass that scheduled them, so wait for them (outside the pass's time).
        engine.wait_for_background_work()?;
        let cache = engine.balance_cache_stats();
        let cache_hit_share = cache.hits as f64 / (cache.hits + cache.misses).max(1) as f64;
        pass_seconds.push((seconds, checkpointing.as_secs_f64(), own_cpu_seconds()? - cpu_before, cache_hit_share));
        if pass + 1 == passes {
            let wrong = engine.wrong_balances(&work.expected)?;
            anyhow::ensure!(wrong == 0, "{wrong} of {} balances wrong", work.expected.len());
            let started = Instant::now();
            let (accounts, bytes) = engine.snapshot_round()?;
            round = Some((accounts, bytes, started.elapsed().as_secs_f64()));
        }
        drop(engine);
        std::fs::remove_dir_all(&state_dir)?;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let records = work.records.len() as f64;
    let decode = median(&mut decode_seconds);
    pass_seconds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (pass, checkpointing, _, cache_hit_share) = pass_seconds[pass_seconds.len() / 2];
    let best = pass_seconds[0].0;
    let mut cpu: Vec<f64> = pass_seconds.iter().map(|p| p.2).collect();
    let micros_per_record = |seconds: f64| seconds * 1e6 / records;
    println!(
        "{}",
        serde_json::json!({
            "records": work.records.len(), "accounts": work.expected.len(), "passes": pass_seconds.len(),
            "writer_thread": writer_thread,
            "decode_records_per_second_median": records / decode,
            "engine_records_per_second_median": records / pass,
            "engine_records_per_second_best": records / best,
            // Where the median pass's time went, per record: decoding (as the decode-alone run
            // measured it), checkpoints, and the rest (applying: lookups, the overlay, metrics).
            "median_pass_micros_per_record": {
                "decode": micros_per_record(decode),
                "checkpoint": micros_per_record(checkpointing),
                "apply": micros_per_record(pass - checkpointing - decode),
            },
            // CPU of every thread, RocksDB's flushes and compactions included: the unit of the
            // end-to-end benchmark's CPU-s per million events, without a broker.
            "cpu_seconds_per_million_median": median(&mut cpu) / (records / 1e6),
            // Balance reads that missed the pass's overlays and went to the store: the share the
            // balance cache answered (the rest read RocksDB), in the median pass.
            "balance_cache_hit_share_median": cache_hit_share,
            "balances_verified": work.expected.len(),
            "round_accounts": round.map(|r| r.0), "round_bytes": round.map(|r| r.1),
            "round_accounts_per_second": round.map(|r| r.0 as f64 / r.2),
        })
    );
    Ok(())
}

/// How to start the ledgerd process `recovery` kills and restarts.
struct Run {
    ledgerd: PathBuf,
    /// The first and the restarted process's config.
    configs: [PathBuf; 2],
    url: String,
    log: PathBuf,
}

impl Run {
    /// Starts the first (`attempt` 1) or the restarted (2) process.
    fn spawn(&self, attempt: usize) -> anyhow::Result<std::process::Child> {
        let log = std::fs::File::create(self.log.with_extension(format!("log.{attempt}")))?;
        Ok(std::process::Command::new(&self.ledgerd)
            .arg("run")
            .arg("--config")
            .arg(&self.configs[attempt - 1])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()?)
    }

    /// Records processed and the sum of the checkpointed offsets, if /metrics answers.
    fn progress(&self) -> Option<(i64, i64)> {
        match http_get(&format!("{}/metrics", self.url)) {
            Ok((200, text)) => Some((
                metric_sum(&text, "ledgerd_events_total{", "") as i64,
                metric_sum(&text, "ledgerd_checkpointed_offset{", "") as i64,
            )),
            _ => None,
        }
    }
}

/// The peak resident set (`VmHWM`) of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"));
    let kib = line.and_then(|l| l.trim().strip_suffix("kB")).and_then(|n| n.trim().parse().ok());
    kib.ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{pid}/status"))
}

/// Kills ledgerd (SIGKILL) once `kill_at` of the records are processed, starts it again at once on
/// the same state (with the restart config), and reports the time from the kill until the new process answers
/// HTTP and until it processes its first record, how many records it processed again, and the peak
/// RSS of each process (the killed one's just before the kill, the restarted one's once caught up).
///
/// The re-read count is exact on the restarted side: every record from its checkpoint to the end
/// is processed once by it, so its checkpoint is `total` minus what it processed. The killed
/// process's position is its last scrape, taken just before the kill; it may have processed a few
/// more records in between, so `reread_records` is a lower bound by at most that gap's work.
///
/// Until the restarted process answers HTTP it is polled every 2 ms, which costs it nothing (the
/// kernel refuses the connection); then every `poll` until it processes, since each scrape takes
/// it CPU; then every 50 ms until it has caught up.
fn recovery(run: &Run, total: i64, kill_at: f64, timeout: Duration, poll: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut first = run.spawn(1)?;
    let threshold = (total as f64 * kill_at) as i64;
    let (processed_before_kill, checkpointed_before_kill) = loop {
        anyhow::ensure!(Instant::now() < deadline, "ledgerd did not reach {threshold} records in time");
        anyhow::ensure!(first.try_wait()?.is_none(), "ledgerd exited before it was killed");
        if let Some((processed, checkpointed)) = run.progress() {
            anyhow::ensure!(checkpointed < total, "caught up before the kill: raise --total or lower --kill-at");
            if processed >= threshold {
                break (processed, checkpointed);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let peak_rss_kib_before_kill = peak_rss_kib(first.id())?;
    first.kill()?; // SIGKILL
    let killed = Instant::now();
    first.wait()?;

    let mut second = run.spawn(2)?;
    let (mut answering, mut processing) = (None, None);
    let processed_after = loop {
        anyhow::ensure!(Instant::now() < deadline, "restarted ledgerd did not catch up in time");
        anyhow::ensure!(second.try_wait()?.is_none(), "restarted ledgerd exited");
        if let Some((processed, checkpointed)) = run.progress() {
            answering.get_or_insert_with(|| killed.elapsed());
            if processed > 0 {
                processing.get_or_insert_with(|| killed.elapsed());
            }
            if checkpointed >= total {
                break processed;
            }
        }
        std::thread::sleep(match (answering, processing) {
            (None, _) => Duration::from_millis(2),
            (Some(_), None) => poll,
            (Some(_), Some(_)) => Duration::from_millis(50),
        });
    };
    let resumed_from = total - processed_after;
    let result = serde_json::json!({
        "peak_rss_kib_before_kill": peak_rss_kib_before_kill,
        "peak_rss_kib_restarted": peak_rss_kib(second.id())?,
        "records": total,
        "processed_before_kill": processed_before_kill,
        "checkpointed_before_kill": checkpointed_before_kill,
        "resumed_from": resumed_from,
        "reread_records": processed_before_kill - resumed_from,
        "seconds_to_http": answering.map(|d| d.as_secs_f64()),
        "seconds_to_processing": processing.map(|d| d.as_secs_f64()),
        "poll_ms": poll.as_millis() as u64,
        "pid": second.id(),
    });
    println!("{result}");
    // Dropping the handle leaves the process running: the caller verifies its balances and stops it.
    drop(second);
    Ok(())
}
