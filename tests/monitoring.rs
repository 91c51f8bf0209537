//! The monitoring in `deploy/k8s/monitoring/`: the alert rules pass `promtool check rules` and
//! their unit tests (`tests/prometheus/alerts_test.yml`), and the dashboard and the alerts query
//! only metrics `docs/metrics.md` documents, in valid PromQL. `e2e_prometheus.rs` runs them against
//! a real Prometheus scraping ledgerd.

mod common;

use common::ops::{
    alert_rules, assert_success, dashboard, dashboard_queries, dashboard_variable_selectors, documented_family,
    documented_metrics, metric_names, read, repo, tool, without_grafana_variables, write_rule_file,
};
use serde_json::Value;
use std::collections::BTreeSet;

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rule_file(dir.path());
    let output = tool("promtool", "prometheus").args(["check", "rules"]).arg(&rules).output().unwrap();
    assert_success("promtool check rules", &output);
    std::fs::copy(repo("tests/prometheus/alerts_test.yml"), dir.path().join("alerts_test.yml")).unwrap();
    let output = tool("promtool", "prometheus")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_success("promtool test rules tests/prometheus/alerts_test.yml", &output);

    // Every alert has a unit test, and the issue's alerts are all there.
    let tests = read("tests/prometheus/alerts_test.yml");
    let names: Vec<String> = alert_rules().into_iter().map(|(name, _)| name).collect();
    for name in &names {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} has no case in tests/prometheus/alerts_test.yml"
        );
    }
    for required in [
        "LedgerdConsumerLagGrowing",
        "LedgerdSnapshotStale",
        "LedgerdDeadLetterSpike",
        "LedgerdNotReady",
        "LedgerdCheckpointFailures",
    ] {
        assert!(names.iter().any(|n| n == required), "no {required} alert");
    }
}

#[test]
fn dashboard_and_alerts_query_only_documented_metrics() {
    let documented = documented_metrics();
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "ledgerd");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut used = BTreeSet::new();
    let mut exprs: Vec<(String, String)> =
        queries.iter().map(|q| (format!("panel {:?}", q.panel), q.expr.clone())).collect();
    exprs.extend(dashboard_variable_selectors(&dashboard).into_iter().map(|s| ("a variable".to_owned(), s)));
    exprs.extend(alert_rules().into_iter().map(|(name, expr)| (format!("alert {name}"), expr)));
    for (owner, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{owner}: no metric in {expr}");
        for name in names {
            // `up` is Prometheus' own series for every target.
            if name == "up" {
                continue;
            }
            let family = documented_family(&documented, &name)
                .unwrap_or_else(|| panic!("{owner} queries {name}, which is not in docs/metrics.md: {expr}"));
            used.insert(family.name.clone());
        }
    }
    // What the issue asks the dashboard to show.
    let dashboard_names: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(&q.expr)).collect();
    for shown in [
        "ledgerd_consumer_lag_records",
        "ledgerd_events_total",
        "ledgerd_checkpoint_duration_seconds_bucket",
        "ledgerd_snapshot_age_seconds",
        "ledgerd_restore_remaining_records",
        "ledgerd_restore_records_total",
        "ledgerd_dead_lettered_total",
        "ledgerd_http_request_duration_seconds_bucket",
    ] {
        assert!(dashboard_names.contains(shown), "the dashboard does not show {shown}");
    }
    // Every panel uses the data source variable, so the dashboard imports into any Grafana.
    for panel in dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {}", panel["title"]);
    }

    // PromQL syntax: every dashboard query as a recording rule, through promtool.
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": without_grafana_variables(&q.expr, "5m")}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.yml");
    let groups = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, serde_norway::to_string(&groups).unwrap()).unwrap();
    let output = tool("promtool", "prometheus").args(["check", "rules"]).arg(&file).output().unwrap();
    assert_success("promtool check rules on the dashboard's queries", &output);
}

#[test]
fn promql_metric_names_skip_labels_functions_and_grafana_variables() {
    let names = |expr: &str| metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (route, le) (rate(x_bucket{pod=~"$pod", a="b{c}"}[$__rate_interval])))"#
        ),
        ["x_bucket"]
    );
    assert_eq!(names("sum by (namespace, job) (a{job=\"l\"} + b) == 0 and deriv(c[10m:1m]) > 1e3"), ["a", "b", "c"]);
    assert_eq!(names("sum(rate(a[5m])) / on(pod) group_left(kind) b offset 5m"), ["a", "b"]);
    assert_eq!(names("max(x) by (partition) > bool 900"), ["x"]);
}
