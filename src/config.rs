//! Configuration: one strict struct, loaded from TOML plus `LEDGERD_<SECTION>__<KEY>` environment
//! overrides, validated at start-up with messages that name the key.
//!
//! `config/ledgerd.toml` documents every key with its default; `Config::default()` is the same set of
//! defaults, so a missing file or key means the documented default.

use crate::input::InputFormat;
use crate::routing::Partitioner;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of environment overrides: `LEDGERD_KAFKA__BOOTSTRAP_SERVERS` sets `kafka.bootstrap_servers`.
pub const ENV_PREFIX: &str = "LEDGERD_";

/// librdkafka settings ledgerd owns; setting them in `kafka.properties` would break its guarantees.
const RESERVED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.bootstrap_servers instead"),
    ("group.id", "set kafka.group_id instead"),
    ("group.instance.id", "set kafka.group_instance_id instead"),
    ("enable.auto.commit", "ledgerd commits after each checkpoint"),
    ("enable.auto.offset.store", "ledgerd stores offsets after each checkpoint"),
    ("auto.offset.reset", "ledgerd decides the start offset from its own state"),
    ("partition.assignment.strategy", "ledgerd needs cooperative-sticky"),
    ("enable.partition.eof", "ledgerd manages partition EOF itself"),
    ("acks", "ledgerd's producers need acks=all: a dead letter or snapshot counts once replicated"),
    ("enable.idempotence", "ledgerd's producers are not idempotent (librdkafka busy-polls; see docs/BENCHMARKS.md)"),
];

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub input: InputConfig,
    pub state: StateConfig,
    pub checkpoint: CheckpointConfig,
    pub dedupe: DedupeConfig,
    pub snapshot: SnapshotConfig,
    pub http: HttpConfig,
    pub routing: RoutingConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
}

/// `[kafka]`: the cluster, the consumer group, and the topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// Consumer group id; every ledgerd instance of one deployment shares it.
    pub group_id: String,
    /// Static group membership id (e.g. the pod name) for rolling restarts without rebalances; empty
    /// means dynamic membership.
    pub group_instance_id: String,
    /// Topic of transaction events, keyed by account id.
    pub input_topic: String,
    /// Dead-letter topic; created with the input's partition count when missing.
    pub dlq_topic: String,
    /// Replication factor for topics ledgerd creates; -1 is the broker's default.
    pub replication_factor: i32,
    /// The partitioner the input's producers use, so the API finds an account's partition:
    /// "murmur2" (Java clients' default) or "consistent" (librdkafka's default, CRC32).
    pub partitioner: Partitioner,
    /// Extra librdkafka properties for every client (TLS, SASL, tuning), e.g.
    /// `"security.protocol" = "SASL_SSL"`.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            group_id: "ledgerd".into(),
            group_instance_id: String::new(),
            input_topic: "transactions".into(),
            dlq_topic: "transactions-dlq".into(),
            replication_factor: -1,
            partitioner: Partitioner::Murmur2,
            properties: BTreeMap::new(),
        }
    }
}

/// `[input]`: how records are decoded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// `auto`, `json` or `protobuf`.
    pub format: InputFormat,
}

/// `[state]`: the local RocksDB state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory holding one RocksDB database per assigned partition (`<topic>-<partition>/`).
    pub dir: PathBuf,
    /// Block cache shared by all partitions' databases.
    pub block_cache_size: ByteSize,
    /// Memory for checkpointed balances shared by all partitions, in front of RocksDB (they save
    /// a RocksDB read per account and checkpoint). "0B" turns it off. State memory in total is
    /// about `block_cache_size` plus this. It keeps every balance when it has about 100 bytes per
    /// balance (two generations of 28 bytes per entry plus the account id and its index slot):
    /// the default holds a million balances with 14-byte account ids.
    pub balance_cache_size: ByteSize,
    /// Memtable budget shared by all partitions' databases (charged to the block cache). Past
    /// seven eighths of it, the next checkpoint flushes the largest memtables of all partitions.
    /// One memtable holds at most a quarter of it; one partition keeps about half of it in
    /// write-ahead logs (what a restart replays).
    pub write_buffer_size: ByteSize,
    /// State of a partition that moved to another instance is deleted this long after it left (it
    /// is reused as is if the partition comes back before then).
    #[serde(with = "humantime_serde")]
    pub release_grace: Duration,
    /// How much event time of per-account history (audit trail, point-in-time balances) is kept,
    /// behind the partition's newest event; "0s" keeps all of it. Reads leave older entries out
    /// at once; the disk frees them at compaction, an account's entries of one checkpoint
    /// together (once the newest of them is older).
    #[serde(with = "humantime_serde")]
    pub history_retention: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("state"),
            block_cache_size: ByteSize(160 << 20),
            balance_cache_size: ByteSize(96 << 20),
            write_buffer_size: ByteSize(64 << 20),
            release_grace: Duration::from_secs(600),
            history_retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// `[checkpoint]`: how often applied work becomes durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Checkpoint each partition at least this often while it has unapplied work.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// ...or as soon as this many records were consumed since its last checkpoint. While a
    /// checkpoint waits for its dead letters or its write, at most this many more are processed.
    ///
    /// It also bounds the memory of the checkpoints in flight, which no cache budget counts:
    /// a few hundred bytes per record, up to twice this many records per partition. At 50,000,
    /// a restart behind a fast broker with a million accounts over 12 partitions peaked at up to
    /// 519 MiB, over the 512 MiB the default budgets are sized for; at 20,000, 421–435 MiB
    /// (docs/BENCHMARKS.md, thirty-seventh session). A broker that delivers fewer records per
    /// partition per `interval` than this never reaches it.
    pub max_records: u64,
    /// Write each checkpoint's batch on a thread of its own while the consumer thread applies
    /// the next records. Behind a broker faster than ledgerd, catch-ups on two cores ran 20%–24%
    /// faster with it than without (same build, 10k and a million accounts), at the same CPU per
    /// record within the noise (docs/BENCHMARKS.md, forty-fourth session). `false` writes on the
    /// consumer thread, for a process that must keep to one core.
    pub writer_thread: bool,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { interval: Duration::from_secs(1), max_records: 20_000, writer_thread: true }
    }
}

/// `[dedupe]`: how long transaction ids are remembered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    /// Ids are remembered for this much event time behind the newest event of the partition. A
    /// duplicate older than that is applied again, and a reversal of a forgotten transaction is
    /// dead-lettered as `reversal_unknown_transaction`.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig { window: Duration::from_secs(7 * 24 * 3600) }
    }
}

/// `[snapshot]`: periodic balance snapshots to a log-compacted topic, and restores from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Log-compacted topic of balance snapshots, with the input's partition count; created when missing.
    pub topic: String,
    /// Each owned partition writes the accounts changed since its last round this often.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Largest snapshot record written; an account with more remembered transactions keeps the
    /// newest that fit. Keep it below the topic's `max.message.bytes`.
    pub max_record_size: ByteSize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            topic: "balance-snapshots".into(),
            interval: Duration::from_secs(60),
            max_record_size: ByteSize(900_000),
        }
    }
}

/// `[http]`: the query API and metrics endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Bearer token every `/v1/` request must carry (`Authorization: Bearer <token>`); empty means
    /// no authentication. `/livez`, `/readyz` and `/metrics` stay open.
    pub auth_token: String,
    /// A file holding the token instead (e.g. a mounted Kubernetes secret); surrounding whitespace
    /// is ignored. Set at most one of `auth_token` and `auth_token_file`.
    pub auth_token_file: PathBuf,
    /// Largest request accepted on `/v1/` routes (request line, headers and declared body).
    pub max_request_size: ByteSize,
    /// Requests per second this instance serves on `/v1/` routes (bursts up to one second's
    /// worth); beyond it, 429 with `Retry-After`. 0 means unlimited.
    pub rate_limit: u32,
    /// Answer from a checkpoint only once the consumer group has acknowledged its commit, so no
    /// answer is newer than what the partition's next owner waits for, even after a crash. Reads
    /// answer from the newest acknowledged checkpoint, whose RocksDB snapshot is kept while the
    /// partition is read; the first read after 10 s without reads waits for the newest
    /// checkpoint's commit (up to 1 s, else 503). `false` answers from the newest checkpoint, and
    /// a crash between a checkpoint and its commit can make the next owner answer older balances
    /// than were served.
    pub read_committed: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth_token: String::new(),
            auth_token_file: PathBuf::new(),
            max_request_size: ByteSize(16 << 10),
            rate_limit: 0,
            read_committed: true,
        }
    }
}

impl HttpConfig {
    /// The bearer token in force, read from `auth_token_file` when that is set.
    pub fn resolve_auth_token(&self) -> Result<Option<String>, ConfigError> {
        if self.auth_token_file.as_os_str().is_empty() {
            return Ok((!self.auth_token.is_empty()).then(|| self.auth_token.clone()));
        }
        if !self.auth_token.is_empty() {
            return Err(invalid("http.auth_token_file", "is set together with http.auth_token: keep one of them"));
        }
        let text = std::fs::read_to_string(&self.auth_token_file).map_err(|e| {
            invalid("http.auth_token_file", format!("cannot read {}: {e}", self.auth_token_file.display()))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(invalid("http.auth_token_file", format!("{} is empty", self.auth_token_file.display())));
        }
        Ok(Some(token.to_owned()))
    }
}

/// `[routing]`: how instances find each other, so any of them answers for any account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Log-compacted topic (one partition) where instances announce the partitions they serve;
    /// created when missing.
    pub topic: String,
    /// This instance's name among its peers; empty: `kafka.group_instance_id` when set, else
    /// `<hostname>-<pid>`.
    pub instance_id: String,
    /// The URL other instances reach this one's API at (e.g. `http://ledgerd-0.ledgerd:8080`);
    /// empty: `http://<http.listen>`, with the host name instead of an unspecified address.
    pub advertised_url: String,
    /// Announce at least this often (and at once on every change); silence for three intervals
    /// expires an instance's claims.
    #[serde(with = "humantime_serde")]
    pub announce_interval: Duration,
    /// A forwarded request not answered within this time gets 503.
    #[serde(with = "humantime_serde")]
    pub forward_timeout: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            topic: "ledgerd-instances".into(),
            instance_id: String::new(),
            advertised_url: String::new(),
            announce_interval: Duration::from_secs(5),
            forward_timeout: Duration::from_secs(5),
        }
    }
}

impl RoutingConfig {
    /// The instance id in force (see `instance_id`).
    pub fn effective_instance_id(&self, kafka: &KafkaConfig) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        if !kafka.group_instance_id.is_empty() {
            return kafka.group_instance_id.clone();
        }
        format!("{}-{}", host_name(), std::process::id())
    }

    /// The advertised URL in force, given the address the API really listens on.
    pub fn effective_url(&self, listening: SocketAddr) -> String {
        if !self.advertised_url.is_empty() {
            return self.advertised_url.trim_end_matches('/').to_owned();
        }
        if listening.ip().is_unspecified() {
            format!("http://{}:{}", host_name(), listening.port())
        } else {
            format!("http://{listening}")
        }
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "ledgerd".into())
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// `RUST_LOG`-style filter; the `RUST_LOG` variable wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Pretty, filter: "info".into() }
    }
}

/// `[shutdown]`: graceful stop on SIGTERM/SIGINT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Drain, checkpoint, commit and flush within this time; keep it below `session.timeout.ms`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { timeout: Duration::from_secs(20) }
    }
}

/// A byte count written as an integer or with a unit: `268435456`, `"256MiB"`, `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Option<ByteSize> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().ok()?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return None,
        };
        number.checked_mul(factor).map(ByteSize)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).ok_or_else(|| {
                serde::de::Error::custom(format!("{t:?} is not a size (use e.g. 268435456, \"256MiB\", \"1GB\")"))
            }),
        }
    }
}

/// A configuration problem, naming the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, problem: problem.into() }
}

impl Config {
    /// Loads defaults, then `path` (which must exist when given), then environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env = std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect::<Vec<_>>();
        Config::load_from(path, env)
    }

    /// [`Config::load`] with an explicit environment, for tests.
    pub fn load_from(path: Option<&Path>, env: Vec<(String, String)>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    message: "not found (pass an existing file to --config, or omit it for defaults)".into(),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        // Each LEDGERD_<SECTION>__<KEY> becomes the dotted key section.key. Values are read like
        // TOML scalars ("5" is a number, "true" a boolean) so numeric and boolean keys work.
        // Variables reserved for the test kit (LEDGERD_TEST_*) are not configuration.
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            if rest.starts_with("TEST_") {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let value: figment::value::Value = value.parse().unwrap_or_else(|never| match never {});
            figment = figment.merge(Serialized::default(&key, value));
        }
        let config: Config = figment.extract().map_err(|e| {
            ConfigError::Parse(
                e.into_iter()
                    .map(|e| {
                        let key = e.path.join(".");
                        format!("{}{}", if key.is_empty() { String::new() } else { format!("`{key}`: ") }, e.kind)
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The effective configuration as TOML, with `http.auth_token` and secret-looking
    /// `kafka.properties` values masked.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        if !masked.http.auth_token.is_empty() {
            masked.http.auth_token = "****".into();
        }
        for (key, value) in masked.kafka.properties.iter_mut() {
            if is_secret_property(key) {
                *value = "****".into();
            }
        }
        toml::to_string_pretty(&masked).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }

    /// Checks values serde cannot: emptiness, ranges, reserved passthrough properties.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            return Err(invalid("kafka.bootstrap_servers", "is empty: list brokers as host:port[,host:port]"));
        }
        for (key, value) in
            [("kafka.group_id", &k.group_id), ("kafka.input_topic", &k.input_topic), ("kafka.dlq_topic", &k.dlq_topic)]
        {
            if value.trim().is_empty() {
                return Err(invalid(key, "is empty"));
            }
        }
        if k.dlq_topic == k.input_topic {
            return Err(invalid("kafka.dlq_topic", "must differ from kafka.input_topic"));
        }
        let topic = &self.snapshot.topic;
        if topic.trim().is_empty() {
            return Err(invalid("snapshot.topic", "is empty"));
        }
        if topic == &k.input_topic || topic == &k.dlq_topic {
            return Err(invalid("snapshot.topic", "must differ from kafka.input_topic and kafka.dlq_topic"));
        }
        if self.snapshot.interval < Duration::from_secs(1) {
            return Err(invalid("snapshot.interval", "must be at least 1s (default \"60s\")"));
        }
        if self.snapshot.max_record_size.0 < 4096 {
            return Err(invalid("snapshot.max_record_size", "must be at least 4096 bytes (default 900000)"));
        }
        if k.replication_factor == 0 || k.replication_factor < -1 {
            return Err(invalid("kafka.replication_factor", "must be -1 (broker default) or >= 1"));
        }
        for (name, why) in RESERVED_PROPERTIES {
            if k.properties.contains_key(*name) {
                return Err(invalid("kafka.properties", format!("must not set {name:?}: {why}")));
            }
        }
        if self.state.dir.as_os_str().is_empty() {
            return Err(invalid("state.dir", "is empty"));
        }
        if self.state.block_cache_size.0 < 1 << 20 {
            return Err(invalid("state.block_cache_size", "must be at least 1MiB"));
        }
        if self.state.write_buffer_size.0 < 1 << 20 {
            return Err(invalid("state.write_buffer_size", "must be at least 1MiB"));
        }
        if self.checkpoint.interval.is_zero() {
            return Err(invalid("checkpoint.interval", "must be > 0 (e.g. \"1s\")"));
        }
        if self.http.max_request_size.0 < 1024 {
            return Err(invalid("http.max_request_size", "must be at least 1KiB (default \"16KiB\")"));
        }
        self.http.resolve_auth_token()?;
        if self.checkpoint.max_records == 0 {
            return Err(invalid("checkpoint.max_records", "must be > 0"));
        }
        if self.dedupe.window < Duration::from_secs(1) {
            return Err(invalid("dedupe.window", "must be at least 1s (default \"7d\")"));
        }
        let routing = &self.routing;
        if routing.topic.trim().is_empty() {
            return Err(invalid("routing.topic", "is empty"));
        }
        if [&k.input_topic, &k.dlq_topic, topic].contains(&&routing.topic) {
            return Err(invalid("routing.topic", "must differ from the input, dead-letter and snapshot topics"));
        }
        if !routing.advertised_url.is_empty() && !routing.advertised_url.starts_with("http://") {
            return Err(invalid(
                "routing.advertised_url",
                "must start with http:// (e.g. \"http://ledgerd-0.ledgerd:8080\"); instances forward to each other \
                 over plain HTTP inside the cluster",
            ));
        }
        if routing.announce_interval < Duration::from_millis(100) {
            return Err(invalid("routing.announce_interval", "must be at least 100ms (default \"5s\")"));
        }
        if routing.forward_timeout.is_zero() {
            return Err(invalid("routing.forward_timeout", "must be > 0 (default \"5s\")"));
        }
        if self.shutdown.timeout.is_zero() {
            return Err(invalid("shutdown.timeout", "must be > 0"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.filter)
            .map_err(|e| invalid("log.filter", format!("is not a valid filter: {e}")))?;
        Ok(())
    }
}

/// librdkafka properties whose values must never be printed or logged.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "private", "credential"].iter().any(|word| key.contains(word))
        || key.ends_with(".key.pem")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn masked_toml_hides_secrets() {
        let mut config = Config::default();
        config.kafka.properties.insert("sasl.password".into(), "hunter2".into());
        config.kafka.properties.insert("security.protocol".into(), "SASL_SSL".into());
        let text = config.to_masked_toml();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("SASL_SSL"), "{text}");
        // The rendering is itself a loadable config file.
        let f = file(&text);
        let reloaded = Config::load_from(Some(f.path()), vec![]).unwrap();
        assert_eq!(reloaded.kafka.properties["sasl.password"], "****");
    }

    #[test]
    fn the_auth_token_comes_from_one_place_and_is_never_shown() {
        let mut config = Config::default();
        assert_eq!(config.http.resolve_auth_token().unwrap(), None);
        config.http.auth_token = "s3cret-token".into();
        assert_eq!(config.http.resolve_auth_token().unwrap().as_deref(), Some("s3cret-token"));
        assert!(!config.to_masked_toml().contains("s3cret-token"));

        let token_file = file("  from-a-file\n");
        config.http.auth_token_file = token_file.path().to_owned();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("http.auth_token_file") && err.contains("http.auth_token"), "{err}");
        config.http.auth_token.clear();
        assert_eq!(config.http.resolve_auth_token().unwrap().as_deref(), Some("from-a-file"));

        config.http.auth_token_file = "/nonexistent/token".into();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("http.auth_token_file") && err.contains("/nonexistent/token"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn shipped_config_file_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ledgerd.toml");
        assert_eq!(Config::load_from(Some(&path), vec![]).unwrap(), Config::default());
    }

    #[test]
    fn env_overrides_file() {
        let f = file("[kafka]\nbootstrap_servers = \"a:1\"\ngroup_id = \"g\"\n[checkpoint]\ninterval = \"250ms\"\n");
        let config = Config::load_from(
            Some(f.path()),
            env(&[
                ("LEDGERD_KAFKA__BOOTSTRAP_SERVERS", "b:2"),
                ("LEDGERD_CHECKPOINT__MAX_RECORDS", "10"),
                ("LEDGERD_CHECKPOINT__WRITER_THREAD", "false"),
                ("LEDGERD_TEST_BROKERS", "ignored:1"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "b:2");
        assert_eq!(config.kafka.group_id, "g");
        assert_eq!(config.checkpoint.interval, Duration::from_millis(250));
        assert_eq!(config.checkpoint.max_records, 10);
        assert!(!config.checkpoint.writer_thread);
    }

    #[test]
    fn unknown_keys_are_named() {
        let f = file("[kafka]\nbootstrap_server = \"a:1\"\n");
        let err = Config::load_from(Some(f.path()), vec![]).unwrap_err().to_string();
        assert!(err.contains("bootstrap_server") && err.contains("kafka"), "{err}");
        let err = Config::load_from(None, env(&[("LEDGERD_KAFKA__NOPE", "1")])).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let f = file("[checkpoint]\ninterval = \"soon\"\n");
        let err = Config::load_from(Some(f.path()), vec![]).unwrap_err().to_string();
        assert!(err.contains("checkpoint.interval"), "{err}");
        let f = file("[http]\nlisten = \"localhost\"\n");
        let err = Config::load_from(Some(f.path()), vec![]).unwrap_err().to_string();
        assert!(err.contains("http.listen"), "{err}");
        let err = Config::load_from(None, env(&[("LEDGERD_CHECKPOINT__MAX_RECORDS", "0")])).unwrap_err().to_string();
        assert!(err.contains("checkpoint.max_records"), "{err}");
        let f = file("[kafka.properties]\n\"enable.auto.commit\" = \"true\"\n");
        let err = Config::load_from(Some(f.path()), vec![]).unwrap_err().to_string();
        assert!(err.contains("enable.auto.commit"), "{err}");
        let f = file("[kafka.properties]\n\"enable.idempotence\" = \"true\"\n");
        let err = Config::load_from(Some(f.path()), vec![]).unwrap_err().to_string();
        assert!(err.contains("enable.idempotence"), "{err}");
        let f = file("[state]\nblock_cache_size = \"lots\"\n");
        let err = Config::load_from(Some(f.path()), vec![]).unwrap_err().to_string();
        assert!(err.contains("state.block_cache_size"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load_from(Some(Path::new("/nonexistent/ledgerd.toml")), vec![]).unwrap_err();
        assert!(err.to_string().contains("--config"), "{err}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("256MiB"), Some(ByteSize(256 << 20)));
        assert_eq!(ByteSize::parse("1GB"), Some(ByteSize(1_000_000_000)));
        assert_eq!(ByteSize::parse("42"), Some(ByteSize(42)));
        assert_eq!(ByteSize::parse("1TiB"), None);
    }
}
