//! Everything that talks to Kafka for the input: client settings, topic setup, the dead-letter
//! producer, and the consumer-group thread that owns partitions and drives them (`group` bridges
//! rebalances, `prepare` readies an assigned partition's state). Snapshot I/O lives in `snapshot`.

pub mod consumer;
pub mod dead_letter;
mod group;
mod prepare;
pub mod topics;

use crate::config::KafkaConfig;
use crate::metrics::{ErrorKind, Metrics};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Settings every client shares: the brokers and the user's passthrough properties (TLS, SASL, …).
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap_servers);
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

/// Routes librdkafka's logs to `tracing` and counts its errors.
#[derive(Clone)]
pub struct KafkaContext {
    pub metrics: Metrics,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    /// Client-level errors (brokers down, authentication failures). librdkafka keeps retrying.
    fn error(&self, error: KafkaError, reason: &str) {
        // Reaching the end of a partition is how the snapshot reader knows it is done, not an error.
        if matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            return;
        }
        self.metrics.handled_error(ErrorKind::KafkaClient, &format_args!("{error}: {reason}"));
    }
}

/// For consumers that never join a group (the snapshot reader): default rebalance handling.
impl ConsumerContext for KafkaContext {}
