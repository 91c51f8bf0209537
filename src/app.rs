//! Wiring: HTTP server, topic setup with retries, the consumer thread, and a bounded shutdown.

use crate::api::{self, ApiState, Forwarder, Guard, Routing};
use crate::config::Config;
use crate::kafka::consumer::{self, ConsumerParts};
use crate::kafka::dead_letter::DeadLetterProducer;
use crate::kafka::topics::{TopicAdmin, TopicGate, TopicLayout};
use crate::kafka::KafkaContext;
use crate::metrics::{ErrorKind, Metrics};
use crate::registry::PartitionRegistry;
use crate::routing::announcer::{Announcer, Identity};
use crate::routing::{directory, Directory};
use crate::snapshot::writer::SnapshotWriter;
use crate::store::StoreEnv;
use anyhow::{anyhow, Context};
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A started ledgerd instance.
pub struct Running {
    /// Where the HTTP API listens (useful with port 0).
    pub http_addr: SocketAddr,
    /// Cancel to shut down gracefully.
    pub shutdown: CancellationToken,
    pub registry: Arc<PartitionRegistry>,
    pub metrics: Metrics,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the instance has stopped (after `shutdown`, or on a fatal error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.map_err(|e| anyhow!("pipeline task failed: {e}"))?
    }

    /// Shuts down gracefully and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Starts the HTTP API and the pipeline. Must run on a multi-threaded tokio runtime.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    let metrics = Metrics::new();
    let env = Arc::new(
        StoreEnv::new(&config.state)
            .with_context(|| format!("cannot use state.dir = {}", config.state.dir.display()))?,
    );
    let registry = Arc::new(PartitionRegistry::default());
    metrics.watch(&registry, &env);
    let shutdown = CancellationToken::new();

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on http.listen = {}", config.http.listen))?;
    let http_addr = listener.local_addr()?;
    let http_stop = CancellationToken::new();
    // Validated at load: an unreadable token file already stopped start-up with the key named.
    let token = config.http.resolve_auth_token()?;
    let guard = Guard::new(token, config.http.max_request_size.0, config.http.rate_limit);
    let identity = Identity {
        instance_id: config.routing.effective_instance_id(&config.kafka),
        url: config.routing.effective_url(http_addr),
    };
    let routing = Arc::new(Routing {
        instance_id: identity.instance_id.clone(),
        partitioner: config.kafka.partitioner,
        partitions: AtomicI32::new(0),
        directory: Arc::new(Directory::default()),
        forwarder: Forwarder::new(&identity.instance_id, config.routing.forward_timeout),
    });
    let app = api::router(ApiState {
        registry: Arc::clone(&registry),
        metrics: metrics.clone(),
        guard: Arc::new(guard),
        routing: Arc::clone(&routing),
        read_committed: config.http.read_committed,
    });
    let http = tokio::spawn(
        axum::serve(listener, app).with_graceful_shutdown(http_stop.clone().cancelled_owned()).into_future(),
    );
    tracing::info!(%http_addr, instance_id = %identity.instance_id, url = %identity.url, "http api listening");

    let task = tokio::spawn(pipeline(
        Arc::clone(&config),
        metrics.clone(),
        env,
        Arc::clone(&registry),
        (routing, identity),
        shutdown.clone(),
        http_stop,
        http,
    ));
    Ok(Running { http_addr, shutdown, registry, metrics, task })
}

/// Runs until `shutdown` fires, then stops within `shutdown.timeout`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let running = start(config).await?;
    let own = running.shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        own.cancel();
    });
    running.wait().await
}

#[allow(clippy::too_many_arguments)]
async fn pipeline(
    config: Arc<Config>,
    metrics: Metrics,
    env: Arc<StoreEnv>,
    registry: Arc<PartitionRegistry>,
    routing: (Arc<Routing>, Identity),
    shutdown: CancellationToken,
    http_stop: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
) -> anyhow::Result<()> {
    let result = consume(config.clone(), metrics, env, registry, routing, shutdown.clone()).await;
    shutdown.cancel();
    http_stop.cancel();
    let _ = http.await;
    match &result {
        Ok(()) => tracing::info!("stopped"),
        Err(e) => tracing::error!(error = %format!("{e:#}"), "stopped with an error"),
    }
    result
}

async fn consume(
    config: Arc<Config>,
    metrics: Metrics,
    env: Arc<StoreEnv>,
    registry: Arc<PartitionRegistry>,
    (routing, identity): (Arc<Routing>, Identity),
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let context = KafkaContext { metrics: metrics.clone() };
    let admin = Arc::new(TopicAdmin::new(&config, context.clone()).context("invalid Kafka client settings")?);
    // The consumer joins the group while the topics are checked (see `TopicGate`): what needs
    // them waits for the gate, and a topic misconfiguration still stops the instance.
    let topics = Arc::new(TopicGate::default());
    let dead_letters = DeadLetterProducer::new(&config.kafka, Arc::clone(&topics), shutdown.clone(), context.clone())
        .context("cannot create the dead-letter producer")?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let parts = ConsumerParts {
        config: Arc::clone(&config),
        env,
        metrics: metrics.clone(),
        registry: Arc::clone(&registry),
        dead_letters,
        topics: Arc::clone(&topics),
        shutdown: shutdown.clone(),
    };
    std::thread::Builder::new().name("ledgerd-consumer".into()).spawn(move || {
        let _ = done_tx.send(consumer::run(parts));
    })?;

    let mut workers = Vec::new();
    let setup = match setup_topics(&admin, &metrics, &shutdown).await {
        Ok(Some(layout)) => {
            drop(admin);
            routing.partitions.store(layout.input_partitions, Ordering::Release);
            topics.open(layout);
            registry.mark_topics_checked();
            start_workers(&config, &metrics, &registry, (&routing, identity), context, &shutdown, &mut workers)
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if setup.is_err() {
        shutdown.cancel();
    }

    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(config.shutdown.timeout).await;
    };
    let stopped = tokio::select! {
        done = done_rx => {
            // The consumer has released every partition, so no round is running; the writer
            // notices the cancelled token within its tick.
            let _ = tokio::task::spawn_blocking(move || {
                for worker in workers {
                    let _ = worker.join();
                }
            })
            .await;
            match done {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(anyhow!("the consumer thread panicked")),
            }
        }
        () = deadline => Err(anyhow!(
            "shutdown did not finish within shutdown.timeout ({:?}); state is safe at its last checkpoint",
            config.shutdown.timeout
        )),
    };
    // A failed topic setup is the cause; the consumer only stopped because of it.
    setup.and(stopped)
}

/// Starts the threads that need the checked topics: the routing announcer and directory reader,
/// and the snapshot writer.
fn start_workers(
    config: &Arc<Config>,
    metrics: &Metrics,
    registry: &Arc<PartitionRegistry>,
    (routing, identity): (&Arc<Routing>, Identity),
    context: KafkaContext,
    shutdown: &CancellationToken,
    workers: &mut Vec<std::thread::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let announcer =
        Announcer::new(config, identity, Arc::clone(registry), Arc::clone(&routing.directory), metrics.clone())
            .context("cannot create the routing announcer")?;
    let stop = shutdown.clone();
    workers.push(std::thread::Builder::new().name("ledgerd-announce".into()).spawn(move || announcer.run(&stop))?);
    let (reader_config, directory, reader_metrics, stop) =
        (Arc::clone(config), Arc::clone(&routing.directory), metrics.clone(), shutdown.clone());
    workers.push(
        std::thread::Builder::new()
            .name("ledgerd-directory".into())
            .spawn(move || directory::run(&reader_config, &directory, &reader_metrics, &stop))?,
    );
    let writer = SnapshotWriter::new(Arc::clone(config), Arc::clone(registry), context)
        .context("cannot create the snapshot producer")?;
    let stop = shutdown.clone();
    workers.push(std::thread::Builder::new().name("ledgerd-snapshots".into()).spawn(move || writer.run(stop))?);
    Ok(())
}

/// Retries topic setup with backoff until it succeeds; `None` if shutdown came first; an error
/// for a misconfiguration that retrying cannot fix.
async fn setup_topics(
    admin: &Arc<TopicAdmin>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<TopicLayout>> {
    let mut backoff = Duration::from_millis(500);
    loop {
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            attempt = admin.ensure() => attempt,
        };
        match attempt {
            Ok(layout) => {
                if let Some(why) = &layout.unverified {
                    metrics.handled_error(
                        ErrorKind::TopicSetup,
                        &format_args!("cannot check the snapshot topic's cleanup.policy (continuing): {why}"),
                    );
                }
                tracing::info!(input_partitions = layout.input_partitions, "topics ready");
                return Ok(Some(layout));
            }
            Err(e) if e.is_fatal() => return Err(anyhow!(e)),
            Err(e) => metrics.handled_error(ErrorKind::TopicSetup, &format_args!("{e}; retrying in {backoff:?}")),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
