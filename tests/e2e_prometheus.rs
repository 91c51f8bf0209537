//! Acceptance: Debian's real Prometheus server scrapes a `ledgerd` processing a known workload on
//! the real broker. Its counters, queried over Prometheus' HTTP API, equal the workload's applied,
//! duplicate and dead-lettered counts; `/metrics` passes `promtool check metrics`; every exposed
//! name is documented; the alert rules evaluate cleanly and stay quiet on a healthy instance; and
//! every dashboard query runs, with data wherever this run produces some.

mod common;

use common::ops::{
    alert_rules, assert_promtool_accepts_metrics, dashboard, dashboard_queries, documented_family, documented_metrics,
    url_encode, without_grafana_variables, Prometheus,
};
use common::workload::{self, Shape};
use common::{balances, brokers, create_topic, produce, unique, wait_caught_up, wait_until, Fixture, Instance};
use std::time::Duration;

const PARTITIONS: i32 = 6;
const READY: Duration = Duration::from_secs(60);
const CATCH_UP: Duration = Duration::from_secs(300);
/// Scrapes are every second and librdkafka's statistics every 5 s: allow for a loaded machine.
const SCRAPED: Duration = Duration::from_secs(60);
/// Panels that stay empty in a run without restores or complete snapshot rounds.
const MAY_BE_EMPTY: [&str; 3] = ["Restore progress", "Last restore duration", "Snapshot offset behind checkpoint"];

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_sees_the_workloads_applied_duplicate_and_dead_lettered_counts() {
    let brokers = brokers();
    let work = workload::generate(53, &Shape { events: 20_000, accounts: 300, ..Shape::default() });
    assert!(work.duplicates > 0 && work.dead_letters > 0, "the workload exercises every outcome");
    let input = unique("transactions");
    create_topic(&brokers, &input, PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let mut ledgerd = Instance::new(&brokers, &input, &dir.path().join("a")).spawn();
    ledgerd.wait_ready(READY);
    // Scraped once before the first record, so rates and histograms cover the processing.
    let prometheus = Prometheus::start(ledgerd.base.trim_start_matches("http://"));
    wait_until(SCRAPED, "a first scrape", || prometheus.value(r#"up{job="ledgerd"}"#) == Some(1.0));
    let end = produce(&brokers, &input, &Fixture::from_workload(&work)).await;
    let total: i64 = end.values().sum();
    wait_caught_up(&[&ledgerd], &end, CATCH_UP);
    for account in work.expected.keys().take(25) {
        assert!(balances(&ledgerd, account).is_some(), "{account} is served");
    }

    let sum = |expr: &str| prometheus.value(&format!("sum({expr})"));
    let wait_for = |expr: &str, expected: f64| {
        wait_until(SCRAPED, &format!("{expr} = {expected} in Prometheus"), || sum(expr) == Some(expected));
    };
    // The acceptance counts, as Prometheus scraped them.
    wait_for(r#"ledgerd_events_total{job="ledgerd", outcome="applied"}"#, work.applied as f64);
    wait_for(r#"ledgerd_events_total{job="ledgerd", outcome="duplicate"}"#, work.duplicates as f64);
    wait_for(r#"ledgerd_events_total{job="ledgerd", outcome="dead_lettered"}"#, work.dead_letters as f64);
    wait_for(r#"ledgerd_dead_lettered_total{job="ledgerd"}"#, work.dead_letters as f64);
    wait_for(r#"ledgerd_events_total{job="ledgerd", outcome="in_snapshot"}"#, 0.0);
    // Caught up: every partition owned and checkpointed to its end, no lag left.
    wait_for(r#"ledgerd_checkpointed_offset{job="ledgerd"}"#, total as f64);
    wait_for(r#"ledgerd_high_watermark_offset{job="ledgerd"}"#, total as f64);
    wait_for(r#"ledgerd_consumer_lag_records{job="ledgerd"}"#, 0.0);
    assert_eq!(prometheus.value(r#"count(ledgerd_consumer_lag_records{job="ledgerd"})"#), Some(f64::from(PARTITIONS)));
    assert_eq!(sum(r#"ledgerd_assigned_partitions{job="ledgerd"}"#), Some(f64::from(PARTITIONS)));
    assert_eq!(sum(r#"ledgerd_ready{job="ledgerd"}"#), Some(1.0));
    assert_eq!(sum(r#"up{job="ledgerd"}"#), Some(1.0));
    let version = format!(r#"ledgerd_build_info{{job="ledgerd", version="{}"}}"#, env!("CARGO_PKG_VERSION"));
    assert_eq!(sum(&version), Some(1.0));
    let api = r#"ledgerd_http_request_duration_seconds_count{job="ledgerd", route="/v1/accounts/{account_id}", status="200"}"#;
    assert!(sum(api).is_some_and(|n| n >= 25.0), "API requests timed: {:?}", sum(api));
    for positive in [
        "ledgerd_rocksdb_block_cache_usage_bytes",
        "ledgerd_rocksdb_memtable_usage_bytes",
        "ledgerd_state_key_filter_bytes",
        "ledgerd_state_balance_cache_bytes",
        "ledgerd_state_disk_usage_bytes",
        "process_resident_memory_bytes",
    ] {
        assert!(sum(positive).is_some_and(|v| v > 0.0), "{positive} = {:?}", sum(positive));
    }

    // promtool finds no problem in the real exposition.
    let (status, exposition) = ledgerd.get("/metrics").expect("/metrics");
    assert_eq!(status, 200);
    assert_promtool_accepts_metrics(&exposition);

    // Every series name Prometheus holds for ledgerd is documented (`up`, `scrape_*` and `ALERTS*`
    // are its own).
    let documented = documented_metrics();
    let names = prometheus
        .api(&format!("/api/v1/label/__name__/values?match[]={}", url_encode(r#"{job="ledgerd"}"#)))
        .expect("series names");
    for name in names.as_array().unwrap().iter().map(|n| n.as_str().unwrap()) {
        if name == "up" || name.starts_with("scrape_") || name.starts_with("ALERTS") {
            continue;
        }
        assert!(documented_family(&documented, name).is_some(), "Prometheus holds {name}, which is not documented");
    }

    // The alert rules load, evaluate without error, and find nothing wrong with this instance.
    wait_until(SCRAPED, "every alert rule evaluated", || {
        prometheus.api("/api/v1/rules").is_ok_and(|data| {
            let rules: Vec<&serde_json::Value> =
                data["groups"].as_array().into_iter().flatten().flat_map(|g| g["rules"].as_array().unwrap()).collect();
            rules.len() == alert_rules().len() && rules.iter().all(|r| r["health"] == "ok")
        })
    });
    for (alert, expr) in alert_rules() {
        let result = prometheus.query(&expr).unwrap_or_else(|e| panic!("{alert}: {e}"));
        assert!(result.is_empty(), "{alert} holds on a healthy, caught-up instance: {result:?}");
    }

    // Every dashboard query runs; all but the restore and snapshot-point panels show data (rates
    // need two scrapes of a series).
    wait_until(SCRAPED, "three scrapes", || {
        prometheus.value(r#"count_over_time(up{job="ledgerd"}[5m])"#).is_some_and(|n| n >= 3.0)
    });
    for query in dashboard_queries(&dashboard()) {
        let expr = without_grafana_variables(&query.expr, "5m");
        let result = prometheus.query(&expr).unwrap_or_else(|e| panic!("panel {:?}: {e}", query.panel));
        if !MAY_BE_EMPTY.contains(&query.panel.as_str()) {
            assert!(!result.is_empty(), "panel {:?} shows nothing: {expr}", query.panel);
        }
    }

    assert!(ledgerd.terminate().success(), "log:\n{}", ledgerd.log());
    drop(prometheus);
}
