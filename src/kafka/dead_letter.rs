//! The dead-letter producer. A rejected record is copied with its key, value and headers plus
//! `__ledgerd.errors.*` headers saying why and where it came from. Copies are confirmed by the
//! broker before the source offset is checkpointed; an unconfirmed copy is sent again, so nothing is
//! lost (after a crash a copy may be sent twice: consumers can dedupe on topic/partition/offset).

use super::{client_config, KafkaContext};
use crate::config::KafkaConfig;
use crate::ledger::Rejection;
use crate::metrics::{ErrorKind, Metrics};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::Message;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const HEADER_REASON: &str = "__ledgerd.errors.reason";
pub const HEADER_DETAIL: &str = "__ledgerd.errors.detail";
pub const HEADER_TOPIC: &str = "__ledgerd.errors.topic";
pub const HEADER_PARTITION: &str = "__ledgerd.errors.partition";
pub const HEADER_OFFSET: &str = "__ledgerd.errors.offset";

/// An owned copy of a dead-letter record, kept until the broker acknowledges it.
pub struct DeadLetter {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: OwnedHeaders,
    partition: Option<i32>,
}

/// A dead letter on its way to the broker.
pub struct InFlight {
    letter: DeadLetter,
    delivery: DeliveryFuture,
}

/// Stopped waiting because ledgerd is shutting down; the offset must not be checkpointed.
#[derive(Debug, thiserror::Error)]
#[error("gave up confirming dead letters: shutting down")]
pub struct Aborted;

pub struct DeadLetterProducer {
    producer: FutureProducer<KafkaContext>,
    topic: String,
    /// Partitions of the dead-letter topic: copies of partition p go to p when it exists.
    partitions: i32,
    metrics: Metrics,
}

impl DeadLetterProducer {
    pub fn new(config: &KafkaConfig, partitions: i32, context: KafkaContext) -> Result<Self, KafkaError> {
        let metrics = context.metrics.clone();
        let producer = client_config(config)
            // Idempotence + acks=all: a retried send never duplicates or reorders within a session.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Fail a send after 30s so the retry loop below sees (and logs) a broker outage.
            .set("message.timeout.ms", "30000")
            .create_with_context(context)?;
        Ok(DeadLetterProducer { producer, topic: config.dlq_topic.clone(), partitions, metrics })
    }

    /// Copies `message` with the rejection's headers and starts sending it.
    pub fn send(&self, message: &BorrowedMessage<'_>, rejection: &Rejection) -> InFlight {
        let mut headers = OwnedHeaders::new_with_capacity(message.headers().map_or(0, |h| h.count()) + 5);
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        for (key, value) in [
            (HEADER_REASON, rejection.reason.code()),
            (HEADER_DETAIL, rejection.detail.as_str()),
            (HEADER_TOPIC, message.topic()),
            (HEADER_PARTITION, partition.as_str()),
            (HEADER_OFFSET, offset.as_str()),
        ] {
            headers = headers.insert(Header { key, value: Some(value) });
        }
        let letter = DeadLetter {
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
            partition: (message.partition() < self.partitions).then_some(message.partition()),
        };
        self.dispatch(letter)
    }

    fn dispatch(&self, letter: DeadLetter) -> InFlight {
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(letter.headers.clone());
            if let Some(key) = &letter.key {
                record = record.key(key.as_slice());
            }
            if let Some(value) = &letter.value {
                record = record.payload(value.as_slice());
            }
            if let Some(partition) = letter.partition {
                record = record.partition(partition);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => return InFlight { letter, delivery },
                // The local queue is full: librdkafka drains it in the background.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err((e, _)) => {
                    self.metrics.handled_error(ErrorKind::DlqDelivery, &e);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Blocks until every letter is acknowledged, re-sending failures with backoff. Returns
    /// `Err(Aborted)` only when `shutdown` fires while a letter is still unconfirmed.
    pub fn confirm(&self, in_flight: Vec<InFlight>, shutdown: &CancellationToken) -> Result<(), Aborted> {
        for mut pending in in_flight {
            let mut backoff = Duration::from_millis(100);
            loop {
                let error = match futures::executor::block_on(&mut pending.delivery) {
                    Ok(Ok(_)) => break,
                    Ok(Err((error, _))) => error.to_string(),
                    Err(_) => "delivery report lost".to_owned(),
                };
                self.metrics.handled_error(ErrorKind::DlqDelivery, &format_args!("{}: {error}", self.topic));
                if shutdown.is_cancelled() {
                    return Err(Aborted);
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                pending = self.dispatch(pending.letter);
            }
        }
        Ok(())
    }

    /// Waits for queued sends to finish (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            self.metrics.handled_error(ErrorKind::DlqDelivery, &e);
        }
    }
}
