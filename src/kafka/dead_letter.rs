//! The dead-letter producer. A rejected record is copied with its key, value and headers plus
//! `__ledgerd.errors.*` headers saying why and where it came from.
//!
//! A copy is sent at once and acknowledged by the broker before its source offset is checkpointed,
//! so nothing is lost; an unacknowledged copy is sent again. The consumer does not wait for the
//! acknowledgements: the checkpoint waits (see `partition` on sealed batches), so the dead-letter
//! topic's latency delays durability, not throughput. After a crash a copy may be sent twice:
//! consumers can dedupe on the topic/partition/offset headers.

use super::producer::{DeliveryFuture, PolledProducer};
use super::topics::TopicGate;
use super::{producer_client_config, KafkaContext};
use crate::config::KafkaConfig;
use crate::ledger::Rejection;
use crate::metrics::{ErrorKind, Metrics};
use futures::FutureExt;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const HEADER_REASON: &str = "__ledgerd.errors.reason";
pub const HEADER_DETAIL: &str = "__ledgerd.errors.detail";
pub const HEADER_TOPIC: &str = "__ledgerd.errors.topic";
pub const HEADER_PARTITION: &str = "__ledgerd.errors.partition";
pub const HEADER_OFFSET: &str = "__ledgerd.errors.offset";
/// Set instead of the value when the record was too large for the dead-letter topic: the copy
/// keeps key and headers, and the source headers point at the original.
pub const HEADER_VALUE_OMITTED: &str = "__ledgerd.errors.value_omitted";

/// An owned copy of a rejected record, kept until the broker acknowledges it.
struct DeadLetter {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: OwnedHeaders,
    /// The dead-letter topic's partition; `None` lets the producer choose.
    partition: Option<i32>,
}

/// The dead letter of the record at `offset`, on its way to the broker.
pub struct PendingLetter {
    offset: i64,
    letter: DeadLetter,
    delivery: DeliveryFuture,
}

pub struct DeadLetterProducer {
    producer: PolledProducer,
    topic: String,
    /// The dead-letter topic's partition count, once start-up has checked it: copies of partition p
    /// go to p when it exists.
    topics: Arc<TopicGate>,
    shutdown: CancellationToken,
    metrics: Metrics,
}

impl DeadLetterProducer {
    pub fn new(
        config: &KafkaConfig,
        topics: Arc<TopicGate>,
        shutdown: CancellationToken,
        context: KafkaContext,
    ) -> Result<Self, KafkaError> {
        let metrics = context.metrics.clone();
        // Not idempotent (see `producer_client_config`): the topic is at-least-once anyway
        // (copies are re-sent after a crash; dedupe on the source headers).
        let mut client = producer_client_config(config);
        client
            // Nothing waits on a single letter (checkpoints wait for whole batches), so batching
            // costs no throughput and keeps the request count, and the broker's load, low.
            .set("linger.ms", "50")
            // Fail a send after 30s so the retry loop below sees (and logs) a broker outage.
            .set("message.timeout.ms", "30000");
        let producer = PolledProducer::new(&client, context, "dlq-acks")?;
        Ok(DeadLetterProducer { producer, topic: config.dlq_topic.clone(), topics, shutdown, metrics })
    }

    /// Copies `message` with the rejection's headers and starts sending it.
    pub fn send(&self, message: &BorrowedMessage<'_>, rejection: &Rejection) -> PendingLetter {
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
        let mut letter = DeadLetter {
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
            partition: (message.partition() < self.partitions()).then_some(message.partition()),
        };
        PendingLetter { offset: message.offset(), delivery: self.dispatch(&mut letter), letter }
    }

    /// The dead-letter topic's partition count. Processing starts while start-up still checks the
    /// topics (it may be creating this one), so the first letters may wait for it here; at
    /// shutdown, 0: the producer then places the copy by key.
    fn partitions(&self) -> i32 {
        match self.topics.layout() {
            Some(layout) => layout.dlq_partitions,
            None => self.topics.wait(&self.shutdown).map_or(0, |layout| layout.dlq_partitions),
        }
    }

    /// Drops the value of a letter the topic refused as too large, saying so in a header. Returns
    /// false when there was no value to drop (the refusal has another cause).
    fn omit_value(&self, letter: &mut DeadLetter) -> bool {
        let Some(value) = letter.value.take() else { return false };
        let note = format!("{} bytes: larger than the dead-letter topic accepts", value.len());
        letter.headers = letter.headers.clone().insert(Header { key: HEADER_VALUE_OMITTED, value: Some(&note) });
        self.metrics
            .handled_error(ErrorKind::DlqDelivery, &format_args!("{}: sending without the value: {note}", self.topic));
        true
    }

    fn dispatch(&self, letter: &mut DeadLetter) -> DeliveryFuture {
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
            match self.producer.send(record) {
                Ok(delivery) => return delivery,
                // The local queue is full: librdkafka drains it in the background.
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))
                    if self.omit_value(letter) => {}
                Err(e) => {
                    self.metrics.handled_error(ErrorKind::DlqDelivery, &e);
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Checks `letters` without blocking: drops acknowledged ones, sends failed ones again (logged
    /// and counted; librdkafka retries internally first, so a failure here means an outage of
    /// `message.timeout.ms` or a rejected record). Returns how many are still unacknowledged.
    pub fn poll(&self, letters: &mut Vec<PendingLetter>) -> usize {
        letters.retain_mut(|pending| {
            let error = match (&mut pending.delivery).now_or_never() {
                None => return true,
                Some(Ok(Ok(_))) => return false,
                Some(Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))))
                    if self.omit_value(&mut pending.letter) =>
                {
                    None
                }
                Some(Ok(Err((error, _)))) => Some(error.to_string()),
                Some(Err(_)) => Some("delivery report lost".to_owned()),
            };
            if let Some(error) = error {
                self.metrics.handled_error(
                    ErrorKind::DlqDelivery,
                    &format_args!("{} (source offset {}): {error}; sending again", self.topic, pending.offset),
                );
            }
            pending.delivery = self.dispatch(&mut pending.letter);
            true
        });
        letters.len()
    }

    /// Like [`DeadLetterProducer::poll`], but waits up to `max_wait` for every letter to be
    /// acknowledged. Returns how many are still unacknowledged.
    pub fn wait(&self, letters: &mut Vec<PendingLetter>, max_wait: Duration) -> usize {
        let deadline = Instant::now() + max_wait;
        loop {
            let pending = self.poll(letters);
            if pending == 0 || Instant::now() >= deadline {
                return pending;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for queued sends to finish (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            self.metrics.handled_error(ErrorKind::DlqDelivery, &e);
        }
    }
}
