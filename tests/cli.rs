//! The binary's command line: help, version, config errors that name the key, check-config, demo.

mod common;

use common::http_get;
use std::process::Command;

fn ledgerd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ledgerd"))
}

#[test]
fn help_and_version() {
    let help = ledgerd().arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for command in ["run", "demo", "check-config"] {
        assert!(text.contains(command), "{text}");
    }
    let version = ledgerd().arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("ledgerd {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn bad_config_fails_fast_naming_the_key() {
    let out = ledgerd().args(["run"]).env("LEDGERD_CHECKPOINT__INTERVAL", "soon").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checkpoint.interval"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[kafka]\nbootstrap = \"x:1\"\n").unwrap();
    let out = ledgerd().args(["run", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bootstrap") && err.contains("kafka"), "{err}");

    let out = ledgerd().args(["run", "--config", "/no/such/file.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_prints_effective_settings_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledgerd.toml");
    std::fs::write(&file, "[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n").unwrap();
    let out = ledgerd()
        .args(["check-config", "--config"])
        .arg(&file)
        .env("LEDGERD_KAFKA__GROUP_ID", "from-env")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("from-env"), "{text}");
    assert!(text.contains("sasl.password") && !text.contains("hunter2"), "{text}");
}

#[test]
fn demo_runs_without_any_broker() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = ledgerd()
        .args(["demo", "--exit-after", "1", "--events", "300", "--http-listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("3701.00 USD"), "{stdout}");
    assert!(stdout.contains("120 USD"), "{stdout}");
    assert!(stdout.contains("all exact"), "{stdout}");
}

#[test]
fn stays_up_while_the_broker_is_unreachable_and_stops_cleanly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = ledgerd()
        .arg("run")
        // Nothing listens on port 1: every metadata request fails.
        .env("LEDGERD_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("LEDGERD_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("LEDGERD_STATE__DIR", dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str| http_get(&format!("http://127.0.0.1:{port}{path}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Alive but not ready, and the failed topic set-up is counted.
    loop {
        let metrics = get("/metrics").map(|(_, body)| body);
        if metrics.is_some_and(|m| !m.contains(r#"ledgerd_errors_total{kind="topic_setup"} 0"#)) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "ledgerd exited while the broker was down");
        assert!(std::time::Instant::now() < deadline, "no topic set-up error was counted");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(get("/livez").map(|r| r.0), Some(200));
    assert_eq!(get("/readyz").map(|r| r.0), Some(503));

    let asked = std::time::Instant::now();
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        // Well inside the default shutdown.timeout (20s): the pending metadata request is abandoned.
        assert!(asked.elapsed() < std::time::Duration::from_secs(10), "SIGTERM did not stop ledgerd");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
