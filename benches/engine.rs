//! The engine's ceiling without a broker, under criterion: generated JSON records held in memory
//! go through decode, apply and a checkpoint every 50,000 records (one synced RocksDB write
//! batch), on one thread, as the consumer thread runs them. Each iteration starts from empty
//! state. `cargo bench --bench engine`; `ledgerd-bench engine` runs the same work at larger sizes
//! and verifies every balance (docs/BENCHMARKS.md, "Engine ceiling").

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use ledgerd::config::{CheckpointConfig, StateConfig};
use ledgerd::input::{self, InputFormat};
use ledgerd::loadgen::engine::{Engine, DEDUPE_WINDOW};
use ledgerd::loadgen::{self, Shape};
use ledgerd::metrics::Metrics;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The same allocator as the `ledgerd` binary, so the benchmark measures what it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: usize = 200_000;
const ACCOUNTS: usize = 10_000;

fn engine(c: &mut Criterion) {
    let shape = Shape {
        events: EVENTS,
        accounts: ACCOUNTS,
        recent_events: loadgen::recent_events(DEDUPE_WINDOW.as_secs(), 1),
        ..Shape::default()
    };
    let work = loadgen::generate(7, &shape);
    let metrics = Metrics::new();
    let parent = tempfile::tempdir().expect("a temporary directory");

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(work.records.len() as u64));
    // Each iteration is a whole pass (about a second): few samples, the same number of passes in
    // each, rather than criterion's growing sample sizes made for nanosecond routines.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(15));
    group.bench_function("decode", |b| {
        b.iter(|| {
            for record in &work.records {
                let key = Some(record.key.as_bytes());
                let _ = black_box(input::decode(InputFormat::Json, key, Some(record.value.as_bytes()), None));
            }
        })
    });
    // Checkpoints as large as ledgerd's default lets them grow.
    let checkpoint_every = CheckpointConfig::default().max_records;
    let mut pass = 0u64;
    group.bench_function("decode_apply_checkpoint", |b| {
        // Times the run alone: opening new state, checking the balances and removing the state
        // are outside the measurement.
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                pass += 1;
                let dir = parent.path().join(format!("pass-{pass}"));
                let mut engine = Engine::open(&StateConfig { dir: dir.clone(), ..StateConfig::default() }, &metrics)
                    .expect("new state opens");
                let started = Instant::now();
                engine.run(&work.records, checkpoint_every).expect("the pass runs");
                timed += started.elapsed();
                // A fast wrong answer is a failure.
                assert_eq!(engine.wrong_balances(&work.expected).expect("balances read"), 0);
                drop(engine);
                std::fs::remove_dir_all(dir).expect("the pass's state is removed");
            }
            timed
        })
    });
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
