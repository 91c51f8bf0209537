//! Logs: with `log.format = "json"` every line is a JSON object, librdkafka's own lines included,
//! and configured secrets (the SASL password, the API token) never reach a log line or the output
//! of `check-config`.

mod common;

use common::http_get;
use ledgerd::config::Config;
use rdkafka::mocking::MockCluster;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ledgerd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ledgerd"))
}

/// librdkafka's mock cluster speaks no SASL: the SASL settings are configured, and must stay
/// secret, but the connection is plain.
const SECURITY_PROTOCOL: &str = "PLAINTEXT";

/// Secrets no test run reuses, so finding one in the output is never a coincidence.
fn secrets() -> (String, String) {
    let tag = common::unique("s3cret");
    (format!("sasl-pw-{tag}"), format!("api-token-{tag}"))
}

/// A config with both secrets, against `brokers`, logging everything as JSON.
fn config_with_secrets(dir: &std::path::Path, brokers: &str, port: u16, password: &str) -> std::path::PathBuf {
    let path = dir.join("ledgerd.toml");
    let text = format!(
        "[kafka]\n\
         bootstrap_servers = \"{brokers}\"\n\
         [kafka.properties]\n\
         \"security.protocol\" = \"{SECURITY_PROTOCOL}\"\n\
         \"sasl.mechanisms\" = \"PLAIN\"\n\
         \"sasl.username\" = \"ledgerd\"\n\
         \"sasl.password\" = \"{password}\"\n\
         # librdkafka's most verbose logging, its configuration dump included.\n\
         \"debug\" = \"all\"\n\
         [state]\ndir = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:{port}\"\n\
         [log]\nformat = \"json\"\nfilter = \"trace\"\n",
        dir.join("state").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn json_logs_parse_line_by_line_and_never_contain_secrets() {
    let (password, token) = secrets();
    // A broker in this process (librdkafka's mock cluster) so that the consumer and the producers
    // start and log too; the topics ledgerd expects exist (the mock cannot create them itself).
    let defaults = Config::default();
    let mock = MockCluster::new(1).unwrap();
    for topic in [&defaults.kafka.input_topic, &defaults.kafka.dlq_topic, &defaults.snapshot.topic] {
        mock.create_topic(topic, 2, 1).unwrap();
    }
    mock.create_topic(&defaults.routing.topic, 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = config_with_secrets(dir.path(), &mock.bootstrap_servers(), port, &password);
    let log_path = dir.path().join("stderr.log");
    let mut child = ledgerd()
        .args(["run", "--config"])
        .arg(&config)
        // RUST_LOG would win over log.filter.
        .env_remove("RUST_LOG")
        .env("LEDGERD_HTTP__AUTH_TOKEN", &token)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let get = |path: &str| http_get(&format!("http://127.0.0.1:{port}{path}"));

    // Joined, partitions prepared: every client has connected (and logged).
    let deadline = Instant::now() + Duration::from_secs(60);
    while get("/readyz").map(|r| r.0) != Some(200) {
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(child.try_wait().unwrap().is_none(), "ledgerd exited:\n{}", log());
        assert!(Instant::now() < deadline, "not ready after 60s:\n{}", log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get("/v1/accounts/acct-1").map(|r| r.0), Some(401), "the token is required");
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ledgerd did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    drop(mock);

    let log = std::fs::read_to_string(&log_path).unwrap();
    let mut targets = BTreeSet::new();
    let mut lines = 0;
    for (n, line) in log.lines().enumerate() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {line}", n + 1));
        let object = value.as_object().unwrap_or_else(|| panic!("line {} is not an object: {line}", n + 1));
        for field in ["timestamp", "level", "target"] {
            assert!(object.contains_key(field), "line {} has no {field}: {line}", n + 1);
        }
        targets.insert(object["target"].as_str().unwrap_or_default().to_owned());
        assert!(!line.contains(&password), "the SASL password is in line {}: {line}", n + 1);
        assert!(!line.contains(&token), "the API token is in line {}: {line}", n + 1);
        lines += 1;
    }
    // librdkafka's debug output, its configuration dump among it, went through the same checks.
    assert!(lines >= 100, "expected a verbose log, got {lines} lines");
    assert!(targets.contains("librdkafka"), "no librdkafka lines among targets {targets:?}");
    assert!(targets.iter().any(|t| t.starts_with("ledgerd")), "no ledgerd lines among targets {targets:?}");
    // The dump names the setting, so the check above did see where a password would be.
    assert!(log.contains("sasl.password = [redacted]"), "librdkafka's configuration dump is not in the log");
    assert!(log.contains("partition consuming"), "no partition lifecycle line in the log");
}

#[test]
fn check_config_masks_the_sasl_password_and_the_api_token() {
    let (password, token) = secrets();
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_secrets(dir.path(), "127.0.0.1:1", 8080, &password);
    let out = ledgerd()
        .args(["check-config", "--config"])
        .arg(&config)
        .env("LEDGERD_HTTP__AUTH_TOKEN", &token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("sasl.password") && stdout.contains("auth_token"), "{stdout}");
    for secret in [&password, &token] {
        assert!(!stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()), "{stdout}\n{stderr}");
    }
}
