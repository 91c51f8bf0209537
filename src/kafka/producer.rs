//! A producer whose delivery reports are served by a thread that sleeps while nothing is in flight.
//!
//! rust-rdkafka's `FutureProducer` serves them from a thread that polls in 100 ms periods, and
//! its poll loop passes what is left of each period to librdkafka in whole milliseconds,
//! truncated: the last fraction of every period is spent in non-blocking polls. ledgerd keeps
//! three producers (dead letters, snapshots, routing announcements) that are idle most of the
//! time, and their three polling threads cost about half a CPU-second per million events in the
//! end-to-end benchmark while producing nothing (docs/BENCHMARKS.md). Here the thread serves
//! whatever is queued without blocking, then parks: for [`BUSY_PERIOD`] while messages are in
//! flight, for [`IDLE_PERIOD`] (or until the next send wakes it) while none are.

use super::KafkaContext;
use crate::metrics::ErrorKind;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{DeliveryResult, Message, ToBytes};
use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureRecord, Producer, ProducerContext};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::{self, JoinHandle};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long the delivery thread parks between rounds while messages are in flight: the most a
/// delivery report waits before it is served.
const BUSY_PERIOD: Duration = Duration::from_millis(2);
/// How long it parks while nothing is in flight. A send wakes it at once; this only bounds how
/// late a client-level error or log line is reported.
const IDLE_PERIOD: Duration = Duration::from_millis(100);

/// Completes a send's [`DeliveryFuture`] from its delivery report.
#[derive(Clone)]
struct DeliveryContext(KafkaContext);

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.0.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.0.stats_raw(statistics);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<oneshot::Sender<OwnedDeliveryResult>>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        let owned = match result {
            Ok(message) => Ok(Delivery {
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp(),
            }),
            Err((error, message)) => Err((error.clone(), message.detach())),
        };
        // The sender may have stopped waiting (a shutdown); the report then has no reader.
        let _ = reply.send(owned);
    }
}

/// The delivery report of one send, once the broker answered (or librdkafka gave up).
pub struct DeliveryFuture(oneshot::Receiver<OwnedDeliveryResult>);

/// The producer went away before the message's delivery report was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryLost;

impl Future for DeliveryFuture {
    type Output = Result<OwnedDeliveryResult, DeliveryLost>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|received| received.map_err(|_| DeliveryLost))
    }
}

struct Shared {
    producer: BaseProducer<DeliveryContext>,
    stop: AtomicBool,
    /// Set while the delivery thread parks with nothing in flight: the next send wakes it.
    idle: AtomicBool,
    idle_period: Duration,
}

/// A Kafka producer with a parked delivery thread (see the module documentation).
pub struct PolledProducer {
    shared: Arc<Shared>,
    delivery_thread: Option<JoinHandle<()>>,
}

impl PolledProducer {
    /// Creates the producer from `config`; its delivery thread is named `thread_name` (at most 15
    /// bytes, Linux's limit).
    pub fn new(config: &ClientConfig, context: KafkaContext, thread_name: &str) -> KafkaResult<PolledProducer> {
        PolledProducer::with_idle_period(config, context, thread_name, IDLE_PERIOD)
    }

    fn with_idle_period(
        config: &ClientConfig,
        context: KafkaContext,
        thread_name: &str,
        idle_period: Duration,
    ) -> KafkaResult<PolledProducer> {
        let producer = BaseProducer::from_config_and_context(config, DeliveryContext(context))?;
        let shared =
            Arc::new(Shared { producer, stop: AtomicBool::new(false), idle: AtomicBool::new(false), idle_period });
        let delivery_thread = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(thread_name.to_owned())
                .spawn(move || serve_deliveries(&shared))
                .map_err(|e| KafkaError::ClientCreation(format!("cannot start the delivery thread: {e}")))?
        };
        Ok(PolledProducer { shared, delivery_thread: Some(delivery_thread) })
    }

    /// Queues `record` for sending. Unlike rust-rdkafka's `send_result`, a refused record is not
    /// handed back: every caller keeps what it sent and builds the record again.
    pub fn send<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<DeliveryFuture, KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (reply, delivery) = oneshot::channel();
        let base = BaseRecord {
            topic: record.topic,
            partition: record.partition,
            payload: record.payload,
            key: record.key,
            timestamp: record.timestamp,
            headers: record.headers,
            delivery_opaque: Box::new(reply),
        };
        self.shared.producer.send(base).map_err(|(error, _)| error)?;
        // SeqCst pairs with the delivery thread's store of `idle` before it looks at the in-flight
        // count: either it sees this message or this send sees it idle.
        if self.shared.idle.load(Ordering::SeqCst) {
            if let Some(thread) = &self.delivery_thread {
                thread.thread().unpark();
            }
        }
        Ok(DeliveryFuture(delivery))
    }

    /// Waits up to `timeout` for every queued message to be delivered (or to fail).
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.shared.producer.flush(timeout)
    }
}

impl Drop for PolledProducer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.delivery_thread.take() {
            thread.thread().unpark();
            if thread.join().is_err() {
                let metrics = &self.shared.producer.context().0.metrics;
                metrics.handled_error(ErrorKind::KafkaClient, &"a producer's delivery thread panicked");
            }
        }
    }
}

/// The delivery thread: serves every queued event (delivery reports, errors, logs) without
/// blocking, then parks.
fn serve_deliveries(shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        // `poll` with a zero timeout serves at most one event. A served delivery report lowers the
        // in-flight count, so go on while it falls; anything left waits for the next round.
        let mut in_flight = shared.producer.in_flight_count();
        loop {
            shared.producer.poll(Duration::ZERO);
            let before = std::mem::replace(&mut in_flight, shared.producer.in_flight_count());
            if in_flight == 0 || in_flight >= before {
                break;
            }
        }
        if in_flight > 0 {
            thread::park_timeout(BUSY_PERIOD);
            continue;
        }
        shared.idle.store(true, Ordering::SeqCst);
        if shared.producer.in_flight_count() == 0 && !shared.stop.load(Ordering::SeqCst) {
            thread::park_timeout(shared.idle_period);
        }
        shared.idle.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use rdkafka::mocking::MockCluster;
    use std::time::Instant;

    /// The idle period is long enough that a test waiting it out would notice.
    const TEST_IDLE_PERIOD: Duration = Duration::from_secs(30);

    fn producer(bootstrap: &str) -> PolledProducer {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap).set("linger.ms", "0");
        let context = KafkaContext { metrics: Metrics::new() };
        PolledProducer::with_idle_period(&config, context, "test-deliveries", TEST_IDLE_PERIOD).unwrap()
    }

    /// Waits (up to 10 s) until the delivery thread is in its idle park.
    fn wait_until_idle(producer: &PolledProducer) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !producer.shared.idle.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the delivery thread never went idle");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn every_send_is_reported_delivered_at_its_offset() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("reports", 1, 1).unwrap();
        let producer = producer(&cluster.bootstrap_servers());
        let deliveries: Vec<DeliveryFuture> = (0..500)
            .map(|i| {
                let payload = format!("message {i}");
                producer.send(FutureRecord::<(), _>::to("reports").payload(&payload)).unwrap()
            })
            .collect();
        for (i, delivery) in deliveries.into_iter().enumerate() {
            let delivered = futures::executor::block_on(delivery).unwrap().unwrap();
            assert_eq!((delivered.partition, delivered.offset), (0, i as i64));
        }
        // librdkafka counts a message out after its delivery callback returns, so just after the
        // last report the count may still include it for a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        while producer.shared.producer.in_flight_count() != 0 {
            assert!(Instant::now() < deadline, "messages still in flight after every report");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_send_after_an_idle_spell_is_reported_without_waiting_for_the_idle_period() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("reports", 1, 1).unwrap();
        let producer = producer(&cluster.bootstrap_servers());
        let first = producer.send(FutureRecord::<(), _>::to("reports").payload("warm-up"));
        futures::executor::block_on(first.unwrap()).unwrap().unwrap();
        for _ in 0..3 {
            wait_until_idle(&producer);
            let sent = Instant::now();
            let delivery = producer.send(FutureRecord::<(), _>::to("reports").payload("x"));
            futures::executor::block_on(delivery.unwrap()).unwrap().unwrap();
            // Woken by the send: waiting out the idle park would take 30 s.
            assert!(sent.elapsed() < TEST_IDLE_PERIOD / 3, "the delivery report took {:?}", sent.elapsed());
        }
    }

    #[test]
    fn dropping_the_producer_stops_its_delivery_thread() {
        let cluster = MockCluster::new(1).unwrap();
        let producer = producer(&cluster.bootstrap_servers());
        let thread = producer.delivery_thread.as_ref().unwrap().thread().clone();
        assert_eq!(thread.name(), Some("test-deliveries"));
        wait_until_idle(&producer);
        let started = Instant::now();
        drop(producer);
        // Woken from its idle park, not waited out.
        assert!(started.elapsed() < TEST_IDLE_PERIOD / 3, "dropping took {:?}", started.elapsed());
    }
}
