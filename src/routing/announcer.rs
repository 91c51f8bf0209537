//! Announces which partitions this instance serves, on every change and every
//! `routing.announce_interval`.

use super::{now_ms, Announcement, Directory};
use crate::config::Config;
use crate::kafka::producer::{DeliveryFuture, PolledProducer};
use crate::kafka::{producer_client_config, KafkaContext};
use crate::metrics::{ErrorKind, Metrics};
use crate::registry::PartitionRegistry;
use futures::FutureExt;
use rdkafka::producer::FutureRecord;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the announcer looks for a change of the served partitions.
const CHANGE_CHECK: Duration = Duration::from_millis(50);
/// How long the final "leaving" announcement may take.
const LEAVING_FLUSH: Duration = Duration::from_secs(2);

/// Who this instance is to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub instance_id: String,
    pub url: String,
}

pub struct Announcer {
    producer: PolledProducer,
    topic: String,
    input_topic: String,
    interval: Duration,
    identity: Identity,
    registry: Arc<PartitionRegistry>,
    directory: Arc<Directory>,
    metrics: Metrics,
}

impl Announcer {
    pub fn new(
        config: &Config,
        identity: Identity,
        registry: Arc<PartitionRegistry>,
        directory: Arc<Directory>,
        metrics: Metrics,
    ) -> Result<Announcer, rdkafka::error::KafkaError> {
        // Announcements are idempotent by content (the newest per instance wins), so the producer
        // need not be (see `producer_client_config`).
        let mut client = producer_client_config(&config.kafka);
        client
            .set("linger.ms", "0")
            // A slow broker delays an announcement rather than dropping it; the next one follows
            // within an interval anyway.
            .set(
                "message.timeout.ms",
                (config.routing.announce_interval * 3).max(Duration::from_secs(30)).as_millis().to_string(),
            );
        let producer = PolledProducer::new(&client, KafkaContext { metrics: metrics.clone() }, "routing-acks")?;
        Ok(Announcer {
            producer,
            topic: config.routing.topic.clone(),
            input_topic: config.kafka.input_topic.clone(),
            interval: config.routing.announce_interval,
            identity,
            registry,
            directory,
            metrics,
        })
    }

    /// Announces until `shutdown`, then announces that this instance is leaving. Blocking.
    pub fn run(self, shutdown: &CancellationToken) {
        let mut announced: Option<(Vec<i32>, Instant)> = None;
        let mut in_flight = Vec::new();
        while !shutdown.is_cancelled() {
            // Compared, not versioned: a partition becomes served when a checkpoint catches it up
            // with its previous owner, which changes no registry entry.
            let partitions = self.registry.serving_partitions();
            let due = announced.as_ref().is_none_or(|(p, at)| *p != partitions || at.elapsed() >= self.interval);
            if due {
                in_flight.extend(self.announce(partitions.clone(), false));
                announced = Some((partitions, Instant::now()));
            }
            self.check_deliveries(&mut in_flight);
            std::thread::sleep(CHANGE_CHECK);
        }
        in_flight.extend(self.announce(Vec::new(), true));
        if let Err(e) = self.producer.flush(LEAVING_FLUSH) {
            self.metrics.handled_error(ErrorKind::Routing, &format_args!("leaving announcement not confirmed: {e}"));
        }
        self.check_deliveries(&mut in_flight);
    }

    /// Counts announcements the broker refused; keeps the ones still in flight.
    fn check_deliveries(&self, in_flight: &mut Vec<DeliveryFuture>) {
        in_flight.retain_mut(|delivery| match delivery.now_or_never() {
            None => true,
            Some(Ok(Ok(_))) => false,
            Some(Ok(Err((e, _)))) => {
                self.metrics.handled_error(ErrorKind::Routing, &format_args!("announcement not delivered: {e}"));
                false
            }
            Some(Err(_)) => false,
        });
    }

    fn announce(&self, partitions: Vec<i32>, leaving: bool) -> Option<DeliveryFuture> {
        let announcement = Announcement {
            instance_id: self.identity.instance_id.clone(),
            input_topic: self.input_topic.clone(),
            url: self.identity.url.clone(),
            partitions,
            sent_at_ms: now_ms(),
            interval_ms: u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX),
            leaving,
        };
        let payload = serde_json::to_vec(&announcement).expect("plain data serialises");
        // This instance knows its own state first-hand, without the round trip.
        self.directory.learn(announcement);
        let record = FutureRecord::to(&self.topic).partition(0).key(&self.identity.instance_id).payload(&payload);
        match self.producer.send(record) {
            Ok(delivery) => Some(delivery),
            Err(e) => {
                // The next interval announces again.
                self.metrics.handled_error(ErrorKind::Routing, &format_args!("cannot announce: {e}"));
                None
            }
        }
    }
}
