//! The `ledgerd` binary: parses the command line, loads config, sets up logging, runs the library.

use clap::{Parser, Subcommand};
use ledgerd::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of the system allocator: a record's short-lived strings and overlay entries
/// made glibc's malloc and free about a fifth of the engine's time (measured in docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ledgerd", version, about = "Exactly-once account balances from an event-sourced Kafka topic")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the processor against a Kafka cluster.
    Run {
        /// TOML config file (see config/ledgerd.toml); LEDGERD_<SECTION>__<KEY> variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Zero-setup demo: in-process mock Kafka cluster, seed events, the real pipeline and HTTP API.
    Demo(ledgerd::demo::DemoArgs),
    /// Validate a config (file plus environment) and print the effective settings, secrets masked.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// How many malloc arenas glibc may keep, unless `MALLOC_ARENA_MAX` says otherwise. mimalloc
/// serves ledgerd's own allocations; RocksDB's and librdkafka's go to glibc, which gives threads
/// their own arenas (up to eight per core), where blocks freed by another thread stay reserved:
/// two arenas took a 5M-event catch-up's peak RSS from 486–496 MiB to 466 MiB at the same CPU
/// (docs/BENCHMARKS.md). Overriding malloc with mimalloc instead raised it to 528 MiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 2;

/// Applies [`MALLOC_ARENAS`]; must run before any other thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called while the process has one thread.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let config = match Config::load(config.as_deref()) {
                Ok(config) => config,
                Err(e) => return usage_error(e),
            };
            ledgerd::logging::init(&config.log);
            block_on(async move { ledgerd::run(config, shutdown_on_signal()).await })
        }
        Command::Demo(args) => {
            ledgerd::logging::init(&ledgerd::config::LogConfig {
                filter: "warn,ledgerd=info".into(),
                ..Default::default()
            });
            block_on(async move { ledgerd::demo::run(args, shutdown_on_signal()).await })
        }
        Command::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok(config) => {
                print!("{}", config.to_masked_toml());
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(e),
        },
    }
}

fn usage_error(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("ledgerd: {error}");
    ExitCode::from(2)
}

fn block_on(work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ledgerd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(work);
    // Everything that matters (checkpoints, commits, flushes) finished inside `work`. Do not wait
    // for abandoned blocking calls, e.g. a metadata request to an unreachable broker.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ledgerd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A token cancelled on SIGINT or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    cancel.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = interrupt => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = interrupt.await;
        tracing::info!("signal received: shutting down");
        cancel.cancel();
    });
    token
}
