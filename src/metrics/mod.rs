//! Every Prometheus metric ledgerd exposes, defined and registered in one place, and the one function
//! through which every handled error is both logged and counted.
//!
//! Labels are bounded: `partition` (the input's partition count), `outcome`, `reason` (the fixed set
//! of [`RejectReason`] codes), `kind` (the fixed set of [`ErrorKind`]s and rebalance kinds), `result`,
//! and `route`/`status` (the router's route templates, never raw paths). Never an account id.
//! `docs/metrics.md` describes every family; a test keeps it equal to [`Metrics::families`].

mod labels;
mod scrape;

use crate::ledger::RejectReason;
use crate::registry::PartitionRegistry;
use crate::store::StoreEnv;
pub use labels::{outcome, ErrorKind};
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use scrape::{partition_values, ScrapeTime};
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

/// A registered metric family: what `docs/metrics.md` must describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub name: String,
    pub help: String,
    /// Label names, sorted.
    pub labels: Vec<String>,
}

/// All of ledgerd's metrics, registered in their own registry (no process-wide globals). Cheap to
/// clone: one shared set of handles (every API request clones it a few times through axum's
/// `State`; cloning the 25 handles one by one was 9% of a loaded instance's CPU).
#[derive(Clone)]
pub struct Metrics(Arc<MetricSet>);

/// The metric handles behind [`Metrics`].
pub struct MetricSet {
    registry: Registry,
    families: Vec<Family>,
    events: IntCounterVec,
    dead_lettered: IntCounterVec,
    checkpointed_offset: IntGaugeVec,
    checkpoint_duration: HistogramVec,
    checkpoint_records: HistogramVec,
    high_watermark: IntGaugeVec,
    errors: IntCounterVec,
    rebalances: IntCounterVec,
    pub assigned_partitions: IntGauge,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    snapshot_records: IntCounterVec,
    snapshot_rounds: IntCounterVec,
    snapshot_age: GaugeVec,
    snapshot_round_duration: GaugeVec,
    snapshot_offset: IntGaugeVec,
    snapshot_waiting: IntGaugeVec,
    snapshot_truncated: IntCounter,
    restore_records: IntCounterVec,
    restore_duration: GaugeVec,
    restore_remaining: IntGaugeVec,
    pub restoring_partitions: IntGauge,
    scrape: ScrapeTime,
}

/// Builds metrics and registers each one, remembering its family for [`Metrics::families`].
struct Registrar {
    registry: Registry,
    families: Vec<Family>,
}

impl Registrar {
    fn register<C: Collector + 'static>(&mut self, collector: C) {
        for desc in collector.desc() {
            let mut labels: Vec<String> = desc
                .const_label_pairs
                .iter()
                .map(|pair| pair.name().to_owned())
                .chain(desc.variable_labels.iter().cloned())
                .collect();
            labels.sort();
            self.families.push(Family { name: desc.fq_name.clone(), help: desc.help.clone(), labels });
        }
        self.registry.register(Box::new(collector)).expect("metric names are constants defined once in this module");
    }

    fn add<C: Collector + Clone + 'static>(&mut self, collector: C) -> C {
        self.register(collector.clone());
        collector
    }

    fn counter(&mut self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid metric"))
    }

    fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauge(&mut self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid metric"))
    }

    fn gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn float_gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn histogram_vec(&mut self, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
        self.add(HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric"))
    }
}

/// Latency buckets, in seconds, from half a millisecond (a cached API read) to half a minute (a
/// checkpoint waiting for dead-letter acknowledgements from a slow broker).
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registrar { registry: Registry::new(), families: Vec::new() };
        let events = r.counter_vec(
            "ledgerd_events_total",
            "Input records processed, by partition and outcome (applied, duplicate, in_snapshot, dead_lettered).",
            &["partition", "outcome"],
        );
        let dead_lettered = r.counter_vec(
            "ledgerd_dead_lettered_total",
            "Input records copied to the dead-letter topic, by partition and reason code.",
            &["partition", "reason"],
        );
        let checkpointed_offset = r.gauge_vec(
            "ledgerd_checkpointed_offset",
            "Next input offset to read, as durably stored with the partition's state.",
            &["partition"],
        );
        let checkpoint_duration = r.histogram_vec(
            "ledgerd_checkpoint_duration_seconds",
            "Time from sealing a checkpoint to its durable write (its dead letters acknowledged, WriteBatch synced); processing goes on meanwhile.",
            &["partition"],
            LATENCY_BUCKETS.to_vec(),
        );
        let checkpoint_records = r.histogram_vec(
            "ledgerd_checkpoint_records",
            "Input records covered by one checkpoint.",
            &["partition"],
            prometheus::exponential_buckets(1.0, 4.0, 10).expect("valid buckets"),
        );
        let high_watermark = r.gauge_vec(
            "ledgerd_high_watermark_offset",
            "End of the owned input partition (offset of its next record) as the consumer last fetched it.",
            &["partition"],
        );
        let errors = r.counter_vec("ledgerd_errors_total", "Handled errors by kind; each is also logged.", &["kind"]);
        let rebalances = r.counter_vec(
            "ledgerd_rebalances_total",
            "Rebalance callbacks by kind (assign, revoke, error).",
            &["kind"],
        );
        let assigned_partitions =
            r.gauge("ledgerd_assigned_partitions", "Input partitions currently owned by this instance.");
        let http_requests = r.counter_vec(
            "ledgerd_http_requests_total",
            "HTTP requests by route template and status code.",
            &["route", "status"],
        );
        let http_duration = r.histogram_vec(
            "ledgerd_http_request_duration_seconds",
            "Time to answer an HTTP request (until the response head is ready), by route template and status code.",
            &["route", "status"],
            LATENCY_BUCKETS.to_vec(),
        );
        let snapshot_records = r.counter_vec(
            "ledgerd_snapshot_records_total",
            "Account records written to the snapshot topic.",
            &["partition"],
        );
        let snapshot_rounds = r.counter_vec(
            "ledgerd_snapshot_rounds_total",
            "Snapshot rounds by result (complete: marker acknowledged; failed; abandoned: partition moved).",
            &["partition", "result"],
        );
        let snapshot_age = r.float_gauge_vec(
            "ledgerd_snapshot_age_seconds",
            "Seconds since the partition's last complete snapshot round (or since it was assigned).",
            &["partition"],
        );
        let snapshot_round_duration = r.float_gauge_vec(
            "ledgerd_snapshot_round_duration_seconds",
            "Duration of the partition's last complete snapshot round; the writer rests four times as long after a round.",
            &["partition"],
        );
        let snapshot_waiting = r.gauge_vec(
            "ledgerd_snapshot_round_waiting",
            "1 while the partition's due snapshot round waits for the partition to catch up, else 0.",
            &["partition"],
        );
        let snapshot_offset = r.gauge_vec(
            "ledgerd_snapshot_offset",
            "Input offset the partition's last complete snapshot round is valid through: a restore replays from here.",
            &["partition"],
        );
        let snapshot_truncated = r.counter(
            "ledgerd_snapshot_transactions_truncated_total",
            "Snapshot records that could not hold all of an account's remembered transaction ids.",
        );
        let restore_records = r.counter_vec(
            "ledgerd_restore_records_total",
            "Snapshot records read while restoring partitions.",
            &["partition"],
        );
        let restore_duration = r.float_gauge_vec(
            "ledgerd_restore_duration_seconds",
            "Duration of the partition's last restore from the snapshot topic.",
            &["partition"],
        );
        let restore_remaining = r.gauge_vec(
            "ledgerd_restore_remaining_records",
            "Snapshot records (offsets) still to read by a restore in progress.",
            &["partition"],
        );
        let restoring_partitions = r.gauge(
            "ledgerd_restoring_partitions",
            "Assigned partitions still being prepared (state opened, checked, or restored).",
        );
        let build_info = r.gauge_vec(
            "ledgerd_build_info",
            "Always 1; the labels name the build: its version, and its source revision (LEDGERD_REVISION at build time).",
            &["version", "revision"],
        );
        let revision = match option_env!("LEDGERD_REVISION") {
            Some(revision) if !revision.is_empty() => revision,
            _ => "unknown",
        };
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), revision]).set(1);
        let scrape = r.add(ScrapeTime::new(checkpointed_offset.clone(), high_watermark.clone()));
        // process_*: CPU, resident memory, open file descriptors, threads, start time (Linux only).
        #[cfg(target_os = "linux")]
        r.register(prometheus::process_collector::ProcessCollector::for_self());

        // Pre-create error series so a zero is visible before the first error.
        for kind in ErrorKind::ALL {
            errors.with_label_values(&[kind.code()]);
        }

        Metrics(Arc::new(MetricSet {
            registry: r.registry,
            families: r.families,
            events,
            dead_lettered,
            checkpointed_offset,
            checkpoint_duration,
            checkpoint_records,
            high_watermark,
            errors,
            rebalances,
            assigned_partitions,
            http_requests,
            http_duration,
            snapshot_records,
            snapshot_rounds,
            snapshot_age,
            snapshot_round_duration,
            snapshot_offset,
            snapshot_waiting,
            snapshot_truncated,
            restore_records,
            restore_duration,
            restore_remaining,
            restoring_partitions,
            scrape,
        }))
    }

    /// Every registered metric family, in registration order.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// Lets scrapes read readiness, RocksDB memory and the state's disk usage from the running
    /// instance. Held weakly: once the instance is gone a scrape reads zeros.
    pub fn watch(&self, registry: &Arc<PartitionRegistry>, env: &Arc<StoreEnv>) {
        self.scrape.watch(Arc::downgrade(registry), Arc::downgrade(env));
    }

    /// Pre-resolved snapshot metric handles for one partition.
    pub fn snapshot_for_partition(&self, partition: i32) -> SnapshotMetrics {
        let p = partition.to_string();
        SnapshotMetrics {
            records: self.snapshot_records.with_label_values(&[&p]),
            complete: self.snapshot_rounds.with_label_values(&[&p, "complete"]),
            failed: self.snapshot_rounds.with_label_values(&[&p, "failed"]),
            abandoned: self.snapshot_rounds.with_label_values(&[&p, "abandoned"]),
            age: self.snapshot_age.with_label_values(&[&p]),
            round_duration: self.snapshot_round_duration.with_label_values(&[&p]),
            offset: self.snapshot_offset.with_label_values(&[&p]),
            waiting: self.snapshot_waiting.with_label_values(&[&p]),
            truncated: self.snapshot_truncated.clone(),
        }
    }

    /// Pre-resolved restore metric handles for one partition.
    pub fn restore_for_partition(&self, partition: i32) -> RestoreMetrics {
        let p = partition.to_string();
        RestoreMetrics {
            records: self.restore_records.with_label_values(&[&p]),
            duration: self.restore_duration.with_label_values(&[&p]),
            remaining: self.restore_remaining.with_label_values(&[&p]),
        }
    }

    /// Pre-resolved handles for one partition, so the per-event path does no label lookups.
    pub fn for_partition(&self, partition: i32) -> PartitionMetrics {
        let p = partition.to_string();
        PartitionMetrics {
            applied: self.events.with_label_values(&[&p, outcome::APPLIED]),
            in_snapshot: self.events.with_label_values(&[&p, outcome::IN_SNAPSHOT]),
            duplicate: self.events.with_label_values(&[&p, outcome::DUPLICATE]),
            dead_lettered_total: self.events.with_label_values(&[&p, outcome::DEAD_LETTERED]),
            dead_lettered: self.dead_lettered.clone(),
            partition_label: p.clone(),
            checkpointed_offset: self.checkpointed_offset.with_label_values(&[&p]),
            checkpoint_duration: self.checkpoint_duration.with_label_values(&[&p]),
            checkpoint_records: self.checkpoint_records.with_label_values(&[&p]),
        }
    }

    /// Forgets a partition's gauges when it moves away (counters keep their history).
    pub fn remove_partition(&self, partition: i32) {
        let p = partition.to_string();
        let _ = self.checkpointed_offset.remove_label_values(&[&p]);
        let _ = self.high_watermark.remove_label_values(&[&p]);
        let _ = self.snapshot_age.remove_label_values(&[&p]);
        let _ = self.snapshot_round_duration.remove_label_values(&[&p]);
        let _ = self.snapshot_offset.remove_label_values(&[&p]);
        let _ = self.snapshot_waiting.remove_label_values(&[&p]);
        let _ = self.restore_remaining.remove_label_values(&[&p]);
    }

    /// The checkpointed next offset of an owned partition (0 when not owned).
    pub fn checkpointed_offset(&self, partition: i32) -> i64 {
        // Read without creating a series: a series is what marks the partition as owned.
        partition_values(&self.checkpointed_offset).get(&partition).copied().unwrap_or(0)
    }

    /// Records the input's high watermarks as the group consumer last fetched them, for the
    /// partitions this instance owns (those with a checkpointed offset); the lag behind them is
    /// derived at scrape time.
    pub fn record_high_watermarks(&self, marks: impl IntoIterator<Item = (i32, i64)>) {
        let owned = partition_values(&self.checkpointed_offset);
        for (partition, mark) in marks {
            if owned.contains_key(&partition) {
                self.high_watermark.with_label_values(&[&partition.to_string()]).set(mark);
            }
        }
    }

    pub fn rebalance(&self, kind: &str) {
        self.rebalances.with_label_values(&[kind]).inc();
    }

    /// Counts an answered HTTP request. `route` is the matched route template (bounded), never
    /// the raw path.
    pub fn http_request(&self, route: &str, status: &str, elapsed: Duration) {
        self.http_requests.with_label_values(&[route, status]).inc();
        self.http_duration.with_label_values(&[route, status]).observe(elapsed.as_secs_f64());
    }

    /// Logs and counts a handled error. Every error ledgerd recovers from goes through here.
    pub fn handled_error(&self, kind: ErrorKind, error: &dyn Display) {
        self.errors.with_label_values(&[kind.code()]).inc();
        if kind.is_severe() {
            tracing::error!(kind = kind.code(), error = %error, "handled error");
        } else {
            tracing::warn!(kind = kind.code(), error = %error, "handled error");
        }
    }

    pub fn error_count(&self, kind: ErrorKind) -> u64 {
        self.errors.with_label_values(&[kind.code()]).get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding into a Vec does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl std::ops::Deref for Metrics {
    type Target = MetricSet;

    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One partition's snapshot-writer metric handles.
#[derive(Clone)]
pub struct SnapshotMetrics {
    pub records: IntCounter,
    pub complete: IntCounter,
    pub failed: IntCounter,
    pub abandoned: IntCounter,
    pub age: Gauge,
    pub round_duration: Gauge,
    pub offset: IntGauge,
    /// 1 while the partition's due round waits for its catch-up.
    pub waiting: IntGauge,
    pub truncated: IntCounter,
}

/// One partition's restore metric handles.
#[derive(Clone)]
pub struct RestoreMetrics {
    pub records: IntCounter,
    pub duration: Gauge,
    pub remaining: IntGauge,
}

/// One partition's metric handles.
#[derive(Clone)]
pub struct PartitionMetrics {
    pub applied: IntCounter,
    pub in_snapshot: IntCounter,
    pub duplicate: IntCounter,
    dead_lettered_total: IntCounter,
    dead_lettered: IntCounterVec,
    partition_label: String,
    pub checkpointed_offset: IntGauge,
    pub checkpoint_duration: Histogram,
    pub checkpoint_records: Histogram,
}

impl PartitionMetrics {
    pub fn dead_lettered(&self, reason: RejectReason) {
        self.dead_lettered_total.inc();
        self.dead_lettered.with_label_values(&[&self.partition_label, reason.code()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_by_partition_and_outcome() {
        let metrics = Metrics::new();
        let p3 = metrics.for_partition(3);
        p3.applied.inc_by(2);
        p3.dead_lettered(RejectReason::ConflictingDuplicate);
        metrics.handled_error(ErrorKind::DlqDelivery, &"broker gone");
        let text = metrics.render();
        assert!(text.contains(r#"ledgerd_events_total{outcome="applied",partition="3"} 2"#), "{text}");
        assert!(
            text.contains(r#"ledgerd_dead_lettered_total{partition="3",reason="conflicting_duplicate"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"ledgerd_errors_total{kind="dlq_delivery"} 1"#), "{text}");
        assert!(text.contains("ledgerd_build_info"), "{text}");
    }

    #[test]
    fn lag_is_the_high_watermark_minus_the_checkpoint_of_owned_partitions() {
        let metrics = Metrics::new();
        metrics.for_partition(1).checkpointed_offset.set(40);
        metrics.record_high_watermarks([(1, 100), (2, 7)]);
        let text = metrics.render();
        assert!(text.contains(r#"ledgerd_consumer_lag_records{partition="1"} 60"#), "{text}");
        assert!(!text.contains(r#"partition="2""#), "partition 2 is not owned:\n{text}");

        // A checkpoint ahead of a stale watermark is no lag, not a negative one.
        metrics.for_partition(1).checkpointed_offset.set(120);
        assert!(metrics.render().contains(r#"ledgerd_consumer_lag_records{partition="1"} 0"#));

        metrics.remove_partition(1);
        let text = metrics.render();
        assert!(!text.contains("ledgerd_consumer_lag_records{"), "{text}");
        assert!(!text.contains("ledgerd_high_watermark_offset{"), "{text}");
    }

    #[test]
    fn reading_a_checkpointed_offset_does_not_claim_the_partition() {
        let metrics = Metrics::new();
        assert_eq!(metrics.checkpointed_offset(5), 0);
        metrics.record_high_watermarks([(5, 10)]);
        assert!(!metrics.render().contains(r#"partition="5""#));
    }

    #[test]
    fn http_requests_are_counted_and_timed_by_route_and_status() {
        let metrics = Metrics::new();
        metrics.http_request("/v1/accounts/{account_id}", "200", Duration::from_millis(3));
        let text = metrics.render();
        assert!(
            text.contains(r#"ledgerd_http_requests_total{route="/v1/accounts/{account_id}",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ledgerd_http_request_duration_seconds_bucket{route="/v1/accounts/{account_id}",status="200",le="0.005"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn scrape_time_gauges_read_the_watched_instance_and_zero_once_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let env = Arc::new(crate::store::test_env(dir.path()));
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        let registry = Arc::new(PartitionRegistry::default());
        let metrics = Metrics::new();
        metrics.watch(&registry, &env);
        let text = metrics.render();
        assert!(text.contains("ledgerd_ready 0"), "not joined yet:\n{text}");
        let disk = series_value(&text, "ledgerd_state_disk_usage_bytes");
        assert!(disk > 0.0, "{text}");

        registry.mark_joined();
        assert!(metrics.render().contains("ledgerd_ready 0"), "topics not checked yet");
        registry.mark_topics_checked();
        assert!(metrics.render().contains("ledgerd_ready 1"));

        drop(store);
        drop(registry);
        drop(env);
        let text = metrics.render();
        assert!(text.contains("ledgerd_ready 0"), "{text}");
        assert_eq!(series_value(&text, "ledgerd_state_disk_usage_bytes"), 0.0);
    }

    #[test]
    fn families_name_every_rendered_metric() {
        let metrics = Metrics::new();
        metrics.for_partition(0).applied.inc();
        metrics.snapshot_for_partition(0);
        metrics.restore_for_partition(0);
        metrics.rebalance("assign");
        metrics.http_request("/livez", "200", Duration::ZERO);
        let text = metrics.render();
        let names: Vec<&str> = metrics.families().iter().map(|f| f.name.as_str()).collect();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(names.contains(&name), "{name} is rendered but not a registered family");
        }
        let events = metrics.families().iter().find(|f| f.name == "ledgerd_events_total").unwrap();
        assert_eq!(events.labels, ["outcome", "partition"]);
    }

    fn series_value(text: &str, name: &str) -> f64 {
        let line =
            text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }
}
