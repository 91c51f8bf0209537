//! Component tests on librdkafka's in-process mock cluster: the library's `start` with a temp state
//! dir, no external broker. Small and focused; the real-broker tests live in e2e_broker.rs.

mod common;

use common::{http_get, read_all, wait_until};
use ledgerd::config::Config;
use ledgerd::proto::TransactionEvent;
use prost::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::time::Duration;

const PARTITIONS: i32 = 3;

async fn send(producer: &FutureProducer, topic: &str, key: &str, value: &[u8], content_type: Option<&str>) {
    let mut record = FutureRecord::to(topic).key(key).payload(value);
    if let Some(ct) = content_type {
        record = record.headers(
            rdkafka::message::OwnedHeaders::new()
                .insert(rdkafka::message::Header { key: "content-type", value: Some(ct) }),
        );
    }
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("produced");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_and_protobuf_events_reach_the_api_and_bad_ones_the_dlq() {
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    mock.create_topic("transactions", PARTITIONS, 1).unwrap();
    // The mock cluster cannot create topics through the admin API.
    mock.create_topic("transactions-dlq", PARTITIONS, 1).unwrap();
    mock.create_topic("balance-snapshots", PARTITIONS, 1).unwrap();
    mock.create_topic("ledgerd-instances", 1, 1).unwrap();
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("partitioner", "murmur2_random").create().unwrap();

    send(&producer, "transactions", "6ad87cf1", br#"{"transaction_id":"123456789","timestamp":"2024-03-11T12:30:45","account_id":"6ad87cf1","type":"transfer","amount":5000.00,"currency":"USD"}"#, None).await;
    let payment = TransactionEvent {
        transaction_id: "987654321".into(),
        timestamp: "2024-03-11T15:57:09".into(),
        account_id: "6ad87cf1".into(),
        r#type: "payment".into(),
        amount: "-1299.00".into(),
        currency: "USD".into(),
        ..Default::default()
    };
    send(&producer, "transactions", "6ad87cf1", &payment.encode_to_vec(), Some("application/x-protobuf")).await;
    // The same payment again, Confluent-framed: an exact duplicate, skipped.
    let mut framed = vec![0, 0, 0, 0, 7, 0];
    framed.extend(payment.encode_to_vec());
    send(&producer, "transactions", "6ad87cf1", &framed, None).await;
    send(&producer, "transactions", "6ad87cf1", b"\x01\x02 not an event", None).await;
    send(
        &producer,
        "transactions",
        "6ad87cf1",
        br#"{"transaction_id":"r1","timestamp":"2024-03-12T00:00:00","type":"reversal","reverses":"987654321"}"#,
        None,
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.kafka.bootstrap_servers = brokers.clone();
    config.state.dir = dir.path().to_owned();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.checkpoint.interval = Duration::from_millis(100);
    let running = ledgerd::start(config.clone()).await.unwrap();
    let base = format!("http://{}", running.http_addr);

    let url = format!("{base}/v1/accounts/6ad87cf1");
    let expected = r#""balances":{"USD":"5000.00"}"#;
    tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(60), "the reversal to be applied", || {
            http_get(&url).is_some_and(|(status, body)| status == 200 && body.contains(expected))
        })
    })
    .await
    .unwrap();
    let metrics = running.metrics.render();
    assert!(metrics.contains(r#"ledgerd_dead_lettered_total{partition="#), "{metrics}");
    assert!(metrics.contains(r#"reason="malformed_json"} 1"#), "{metrics}");
    let dup_line = metrics.lines().find(|l| l.contains(r#"outcome="duplicate""#) && l.ends_with(" 1"));
    assert!(dup_line.is_some(), "{metrics}");

    let dlq = tokio::task::spawn_blocking(move || read_all(&brokers, "transactions-dlq", PARTITIONS)).await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].headers["__ledgerd.errors.reason"], "malformed_json");
    assert_eq!(dlq[0].value.as_deref(), Some(&b"\x01\x02 not an event"[..]));
    running.stop().await.unwrap();

    // Restarting on the same state resumes after the last record: one new event is the only one applied.
    // A partition that reaches the end of its input checkpoints after a tenth of the interval:
    // the deposit is readable about 2 s after it was applied, not 20 s.
    config.checkpoint.interval = Duration::from_secs(20);
    // This run writes its checkpoints on the consumer thread, the other way to write them.
    config.checkpoint.writer_thread = false;
    let running = ledgerd::start(config).await.unwrap();
    send(&producer, "transactions", "6ad87cf1", br#"{"transaction_id":"after","timestamp":"2024-03-15T00:00:00","type":"deposit","amount":"1.00","currency":"USD"}"#, None).await;
    let url = format!("http://{}/v1/accounts/6ad87cf1", running.http_addr);
    let metrics = running.metrics.clone();
    let applied = move || -> f64 {
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("ledgerd_events_total") && l.contains(r#"outcome="applied""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let applied_after_restart = tokio::task::spawn_blocking(move || {
        // The group takes a while to admit the restarted member on the mock cluster.
        wait_until(Duration::from_secs(90), "the new deposit to be applied", || applied() > 0.0);
        wait_until(Duration::from_secs(10), "the applied deposit to be checkpointed, before the interval", || {
            http_get(&url).is_some_and(|(status, body)| status == 200 && body.contains(r#""USD":"5001.00""#))
        });
        applied()
    })
    .await
    .unwrap();
    assert_eq!(applied_after_restart, 1.0, "the restart re-applied records");
    running.stop().await.unwrap();
}
