//! `docs/metrics.md` lists exactly the metric families ledgerd registers, with their types and
//! labels; the exposition passes `promtool check metrics`; a running binary exposes nothing else.

mod common;

use common::ops::{assert_promtool_accepts_metrics, documented_family, documented_metrics, read};
use ledgerd::ledger::RejectReason;
use ledgerd::metrics::{outcome, ErrorKind, Metrics};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Metrics with a series in every family, through the same calls the pipeline makes.
fn exercised() -> Metrics {
    let metrics = Metrics::new();
    let partition = metrics.for_partition(0);
    partition.applied.inc();
    partition.duplicate.inc();
    partition.dead_lettered(RejectReason::MalformedJson);
    partition.checkpointed_offset.set(3);
    partition.checkpoint_duration.observe(0.004);
    partition.checkpoint_records.observe(3.0);
    metrics.record_high_watermarks([(0, 5)]);
    let snapshot = metrics.snapshot_for_partition(0);
    snapshot.records.inc();
    snapshot.age.set(1.5);
    let restore = metrics.restore_for_partition(0);
    restore.records.inc();
    restore.duration.set(0.2);
    restore.remaining.set(4);
    metrics.rebalance("assign");
    metrics.http_request("/v1/accounts/{account_id}", "200", Duration::from_millis(2));
    metrics
}

/// `# TYPE name type` lines of a text exposition.
fn rendered_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            (name.to_owned(), kind.to_owned())
        })
        .collect()
}

fn difference(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    a.difference(b).cloned().collect()
}

#[test]
fn docs_list_exactly_the_registered_metrics_with_their_types_and_labels() {
    let metrics = exercised();
    let documented = documented_metrics();
    let registered: BTreeMap<String, Vec<String>> =
        metrics.families().iter().map(|f| (f.name.clone(), f.labels.clone())).collect();
    let types = rendered_types(&metrics.render());

    let documented_names: BTreeSet<String> = documented.keys().cloned().collect();
    let registered_names: BTreeSet<String> = registered.keys().cloned().collect();
    let rendered_names: BTreeSet<String> = types.keys().cloned().collect();
    assert!(
        documented_names == registered_names,
        "docs/metrics.md and src/metrics disagree: registered but not documented {:?}; documented but not \
         registered {:?}",
        difference(&registered_names, &documented_names),
        difference(&documented_names, &registered_names),
    );
    assert_eq!(rendered_names, registered_names, "every family must have a series after `exercised()`");

    for (name, doc) in &documented {
        assert_eq!(doc.kind, types[name], "type of {name} in docs/metrics.md");
        assert_eq!(doc.labels, registered[name], "labels of {name} in docs/metrics.md");
        if doc.kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} must end in _total");
        }
    }
    for family in metrics.families() {
        assert!(!family.help.trim().is_empty(), "{} has no help text", family.name);
        assert!(!family.labels.iter().any(|l| l.contains("account")), "{}: never an account label", family.name);
    }
}

#[test]
fn docs_name_every_label_value_with_a_fixed_set() {
    let text = read("docs/metrics.md");
    for kind in ErrorKind::ALL {
        assert!(text.contains(&format!("`{}`", kind.code())), "error kind {} is not documented", kind.code());
    }
    for value in [outcome::APPLIED, outcome::DUPLICATE, outcome::IN_SNAPSHOT, outcome::DEAD_LETTERED] {
        assert!(text.contains(&format!("`{value}`")), "outcome {value} is not documented");
    }
    for result in ["complete", "failed", "abandoned"] {
        assert!(text.contains(&format!("`{result}`")), "snapshot round result {result} is not documented");
    }
}

#[test]
fn every_family_passes_promtool_check_metrics() {
    assert_promtool_accepts_metrics(&exercised().render());
}

/// The binary, started without a reachable broker, serves only documented metrics, every family
/// without labels among them, in a form promtool accepts.
#[test]
fn a_running_ledgerd_exposes_only_documented_metrics() {
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledgerd"))
        .arg("run")
        .env_remove("RUST_LOG")
        // Nothing listens on port 1.
        .env("LEDGERD_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("LEDGERD_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("LEDGERD_STATE__DIR", dir.path())
        .env("LEDGERD_LOG__FILTER", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        // The second scrape also holds the first one's request in the HTTP metrics.
        if common::http_get(&url).is_some() {
            if let Some((200, text)) = common::http_get(&url) {
                break text;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "ledgerd exited");
        assert!(Instant::now() < deadline, "no /metrics after 30s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();

    let documented = documented_metrics();
    let mut exposed = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let series = line.split(['{', ' ']).next().unwrap();
        let family = documented_family(&documented, series)
            .unwrap_or_else(|| panic!("{series} is exposed but not in docs/metrics.md"));
        exposed.insert(family.name.clone());
    }
    for doc in documented.values().filter(|d| d.labels.is_empty()) {
        assert!(exposed.contains(&doc.name), "{} has no labels, so it must always be exposed:\n{text}", doc.name);
    }
    assert!(exposed.contains("ledgerd_http_requests_total"), "{text}");
    assert_promtool_accepts_metrics(&text);
}
