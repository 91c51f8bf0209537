//! The operations kit: repository files, external tools (yamllint, promtool, prometheus) that fail
//! naming their Debian package, the manifests as JSON values, `docs/metrics.md`, metric names in
//! PromQL, the dashboard's queries, and a throwaway Prometheus server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A path in the repository.
pub fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn read(relative: &str) -> String {
    std::fs::read_to_string(repo(relative)).unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// A command for an external tool; panics naming the Debian package when the tool is missing.
pub fn tool(program: &str, debian_package: &str) -> Command {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "`{program}` is not installed: install the Debian package `{debian_package}` \
         (scripts/system-packages.sh does, and scripts/test.sh runs it)"
    );
    Command::new(program)
}

/// Runs a command to completion, feeding it `stdin`.
pub fn run_with_input(mut command: Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    child.stdin.take().expect("piped stdin").write_all(stdin).expect("write stdin");
    child.wait_with_output().expect("wait for the command")
}

/// Panics with the command's output unless it succeeded.
pub fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `promtool check metrics` on a text exposition: no error and no lint finding.
pub fn assert_promtool_accepts_metrics(exposition: &str) {
    let output = run_with_input(
        {
            let mut command = tool("promtool", "prometheus");
            command.args(["check", "metrics"]);
            command
        },
        exposition.as_bytes(),
    );
    assert_success("promtool check metrics", &output);
    let findings = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(findings.trim().is_empty(), "promtool check metrics found problems:\n{findings}");
}

/// Every YAML document of a file, as JSON values (empty documents skipped).
pub fn yaml_documents(relative: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    let text = read(relative);
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            serde_json::Value::deserialize(document).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
        })
        .filter(|value| !value.is_null())
        .collect()
}

/// The documents of a kustomization's resources, following resource directories.
pub fn kustomized(dir: &str) -> Vec<serde_json::Value> {
    let kustomization = yaml_documents(&format!("{dir}/kustomization.yaml")).remove(0);
    let mut documents = Vec::new();
    for resource in kustomization["resources"].as_array().into_iter().flatten() {
        let resource = format!("{dir}/{}", resource.as_str().expect("resource paths are strings"));
        if repo(&resource).is_dir() {
            documents.extend(kustomized(&resource));
        } else {
            documents.extend(yaml_documents(&resource));
        }
    }
    documents
}

/// The one document of `kind` named `name` among `documents`.
pub fn find<'a>(documents: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    let matches: Vec<_> = documents.iter().filter(|d| d["kind"] == kind && d["metadata"]["name"] == name).collect();
    assert_eq!(matches.len(), 1, "expected one {kind} named {name}");
    matches[0]
}

/// The groups of the PrometheusRule, written as a Prometheus rule file in `dir`.
pub fn write_rule_file(dir: &Path) -> PathBuf {
    let documents = yaml_documents("deploy/k8s/monitoring/prometheusrule.yaml");
    let rule = documents.iter().find(|d| d["kind"] == "PrometheusRule").expect("a PrometheusRule");
    let groups = serde_json::json!({ "groups": rule["spec"]["groups"] });
    let path = dir.join("rules.yml");
    std::fs::write(&path, serde_norway::to_string(&groups).expect("rules as YAML")).expect("write rules.yml");
    path
}

/// Every alert of the PrometheusRule: (name, expression).
pub fn alert_rules() -> Vec<(String, String)> {
    let documents = yaml_documents("deploy/k8s/monitoring/prometheusrule.yaml");
    let rule = documents.iter().find(|d| d["kind"] == "PrometheusRule").expect("a PrometheusRule");
    rule["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .map(|rule| {
            (
                rule["alert"].as_str().expect("alerting rules only").to_owned(),
                rule["expr"].as_str().expect("expr").to_owned(),
            )
        })
        .collect()
}

/// One row of `docs/metrics.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentedMetric {
    pub name: String,
    pub kind: String,
    /// Sorted label names.
    pub labels: Vec<String>,
}

/// The metric tables of `docs/metrics.md`, by name.
pub fn documented_metrics() -> BTreeMap<String, DocumentedMetric> {
    let mut documented = BTreeMap::new();
    for line in read("docs/metrics.md").lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(cells.len() >= 5, "a metric row has name, type, labels and meaning: {line}");
        let name = cells[1].trim_matches('`').to_owned();
        let mut labels: Vec<String> = match cells[3] {
            "—" | "" => Vec::new(),
            list => list.split(',').map(|l| l.trim().trim_matches('`').to_owned()).collect(),
        };
        labels.sort();
        let metric = DocumentedMetric { name: name.clone(), kind: cells[2].to_owned(), labels };
        assert!(documented.insert(name.clone(), metric).is_none(), "{name} is documented twice");
    }
    documented
}

/// The documented family a series name belongs to (`x_bucket`, `x_sum`, `x_count` of histogram x).
pub fn documented_family<'a>(
    documented: &'a BTreeMap<String, DocumentedMetric>,
    series: &str,
) -> Option<&'a DocumentedMetric> {
    if let Some(metric) = documented.get(series) {
        return Some(metric);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let metric = documented.get(series.strip_suffix(suffix)?)?;
        (metric.kind == "histogram").then_some(metric)
    })
}

/// Keywords that take a parenthesised label list rather than an expression.
const GROUPING: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
const KEYWORDS: [&str; 7] = ["and", "or", "unless", "bool", "offset", "inf", "nan"];

/// The metric names a PromQL expression selects. Skips strings, label matchers, ranges, grouping
/// label lists, functions and aggregations, keywords, numbers and durations, and Grafana's `$…`
/// variables.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let next_non_space = |from: usize| chars[from..].iter().copied().find(|c| !c.is_whitespace());
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(&chars, i, '{', '}');
            } else {
                while chars.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            while chars.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_')) {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while chars.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':')) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = next_non_space(i);
            if GROUPING.contains(&word.as_str()) {
                if next == Some('(') {
                    let open = i + chars[i..].iter().position(|c| *c == '(').expect("an opening parenthesis");
                    i = skip_group(&chars, open, '(', ')');
                }
            } else if !KEYWORDS.contains(&word.as_str()) && next != Some('(') && !before_grouping(&chars, i) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Whether the next word after index `from` is `by` or `without`: what precedes them is an
/// aggregation (`sum by (pod) (…)`), not a metric.
fn before_grouping(chars: &[char], from: usize) -> bool {
    let start = from + chars[from..].iter().take_while(|c| c.is_whitespace()).count();
    let word: String = chars[start..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').collect();
    word == "by" || word == "without"
}

/// Index after the string starting at `start` (backslash escapes honoured).
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// Index after the bracketed group starting at `start`, nested groups and strings included.
fn skip_group(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// A panel query of the dashboard.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub panel: String,
    pub expr: String,
}

pub fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/k8s/monitoring/dashboards/ledgerd.json"))
        .unwrap_or_else(|e| panic!("the dashboard is not valid JSON: {e}"))
}

/// Every panel query of the dashboard, rows' nested panels included.
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<PanelQuery> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<PanelQuery>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
                out.push(PanelQuery { panel: title.to_owned(), expr: expr.to_owned() });
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The metric selector of each `label_values(selector, label)` template variable query.
pub fn dashboard_variable_selectors(dashboard: &serde_json::Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|variable| variable["type"] == "query")
        .map(|variable| {
            let query = variable["query"]["query"].as_str().or(variable["query"].as_str()).expect("a query");
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("unsupported variable query {query:?}"));
            inner.rsplit_once(',').expect("label_values(selector, label)").0.trim().to_owned()
        })
        .collect()
}

/// A dashboard query as Prometheus can run it: Grafana's variables replaced by what "All" and
/// automatic intervals stand for.
pub fn without_grafana_variables(expr: &str, rate_interval: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("$__interval", rate_interval)
        .replace("$namespace", ".*")
        .replace("$pod", ".*")
}

/// A Prometheus server in a temporary directory, scraping one target every second and loading
/// ledgerd's alert rules; killed when dropped.
pub struct Prometheus {
    child: Child,
    pub base: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        write_rule_file(dir.path());
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yml\n\
             scrape_configs:\n  - job_name: ledgerd\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("prometheus.yml");
        let port = super::free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = tool("prometheus", "prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let server = Prometheus { child, base: format!("http://127.0.0.1:{port}"), dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(super::http_get(&format!("{}/-/ready", server.base)), Some((200, _))) {
            assert!(Instant::now() < deadline, "prometheus not ready after 60s; log:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; the `data` of a successful answer, or the error Prometheus gave.
    pub fn api(&self, path_and_query: &str) -> Result<serde_json::Value, String> {
        let (status, body) = super::http_get(&format!("{}{path_and_query}", self.base))
            .ok_or_else(|| format!("no answer from prometheus for {path_and_query}"))?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{status} {path_and_query}: {e}: {body}"))?;
        if status == 200 && answer["status"] == "success" {
            Ok(answer["data"].clone())
        } else {
            Err(format!("{status} {path_and_query}: {body}"))
        }
    }

    /// An instant query: the result vector.
    pub fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The single value of an instant query that must return one series.
    pub fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr).ok()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
