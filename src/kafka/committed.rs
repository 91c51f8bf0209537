//! The group's committed input offsets, which preparing a partition compares with its local state
//! (see `prepare`). One client serves every partition of the instance and connects to the group
//! coordinator while the group join is still in flight, so an assignment does not wait for a new
//! client's bootstrap, metadata and coordinator lookup (about 0.4 s per partition on tansu).
//!
//! The offsets of every partition an assignment brings are asked for in one request as the
//! assignment arrives, before any of them is fetched: asked one by one as each partition's state
//! opened, the later requests waited behind the first partitions' fetches, and the partitions
//! were ready one by one (the last about a second later on tansu after a restart). On tansu the
//! first fetch's answer still sets when processing starts (docs/BENCHMARKS.md).

use super::{non_member_client_config, KafkaContext};
use crate::config::Config;
use crate::metrics::{ErrorKind, Metrics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long the start-up lookup that connects the client may take; it only warms the client.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Looks up the group's committed offsets for the input topic. It never joins the group (it never
/// subscribes) and never commits.
pub(super) struct CommittedOffsets {
    consumer: BaseConsumer<KafkaContext>,
    input_topic: String,
    /// Offsets asked for at assignment ([`CommittedOffsets::look_up_ahead`]), by partition, with
    /// the assignment's generation: each is taken once, by that assignment's preparation.
    ahead: Mutex<BTreeMap<i32, (u64, Ahead)>>,
    answered: Condvar,
}

/// An offset asked for at assignment.
enum Ahead {
    Asked,
    Answered(Option<i64>),
}

impl CommittedOffsets {
    pub fn new(config: &Config, context: KafkaContext) -> Result<CommittedOffsets, KafkaError> {
        let consumer = non_member_client_config(&config.kafka).create_with_context(context)?;
        Ok(CommittedOffsets {
            consumer,
            input_topic: config.kafka.input_topic.clone(),
            ahead: Mutex::default(),
            answered: Condvar::new(),
        })
    }

    fn metrics(&self) -> &Metrics {
        &self.consumer.context().metrics
    }

    fn ahead(&self) -> MutexGuard<'_, BTreeMap<i32, (u64, Ahead)>> {
        self.ahead.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group's committed input offsets of `partitions` (`None` where there is none), in one
    /// request.
    fn request(&self, partitions: &[i32], timeout: Duration) -> Result<BTreeMap<i32, Option<i64>>, KafkaError> {
        // The client never consumes: take whatever librdkafka queued for it (error events of a
        // broker connection), so nothing piles up over a long run.
        while let Some(event) = self.consumer.poll(Duration::ZERO) {
            if let Err(e) = event {
                self.metrics().handled_error(ErrorKind::KafkaClient, &format_args!("committed-offset client: {e}"));
            }
        }
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            list.add_partition(&self.input_topic, *partition);
        }
        let committed = self.consumer.committed_offsets(list, timeout)?;
        let offset = |partition: i32| {
            committed.find_partition(&self.input_topic, partition).and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
        };
        Ok(partitions.iter().map(|&partition| (partition, offset(partition))).collect())
    }

    /// The group's committed input offset for the assignment `generation` of `partition` (`None`
    /// when there is none): the answer asked for at assignment if there is one, else a request
    /// of its own; both within `timeout` together.
    pub fn lookup(&self, partition: i32, generation: u64, timeout: Duration) -> Result<Option<i64>, KafkaError> {
        let deadline = Instant::now() + timeout;
        if let Some(offset) = self.take_ahead(partition, generation, deadline) {
            return Ok(offset);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        Ok(self.request(&[partition], left)?.remove(&partition).flatten())
    }

    /// Asks, in one request on a thread of its own, for the committed offsets of the partitions
    /// an assignment has just brought, each with the generation of its assignment. Their
    /// preparations take the answers through [`CommittedOffsets::lookup`].
    pub fn look_up_ahead(self: &Arc<Self>, assigned: Vec<(i32, u64)>, timeout: Duration) {
        if assigned.is_empty() {
            return;
        }
        self.ahead().extend(assigned.iter().map(|&(partition, generation)| (partition, (generation, Ahead::Asked))));
        let client = Arc::clone(self);
        let asked = assigned.clone();
        let spawned = std::thread::Builder::new().name("ledgerd-committed".into()).spawn(move || {
            let partitions: Vec<i32> = assigned.iter().map(|(partition, _)| *partition).collect();
            let answer = client.request(&partitions, timeout);
            if let Err(e) = &answer {
                // Each partition's preparation then asks on its own.
                client.metrics().handled_error(
                    ErrorKind::KafkaClient,
                    &format_args!("looking up the committed offsets of assigned partitions: {e}"),
                );
            }
            client.settle(&assigned, answer.ok());
        });
        if let Err(e) = spawned {
            self.metrics().handled_error(
                ErrorKind::KafkaClient,
                &format_args!("cannot start looking up the committed offsets of assigned partitions: {e}"),
            );
            self.settle(&asked, None);
        }
    }

    /// Records the answers to a request made ahead (none when it failed) and wakes the waiters.
    /// An entry of a newer assignment, asked for since, is left to its own request.
    fn settle(&self, assigned: &[(i32, u64)], answer: Option<BTreeMap<i32, Option<i64>>>) {
        let mut ahead = self.ahead();
        for &(partition, generation) in assigned {
            if ahead.get(&partition).is_some_and(|(asked, _)| *asked == generation) {
                match answer.as_ref().and_then(|answer| answer.get(&partition)) {
                    Some(offset) => ahead.insert(partition, (generation, Ahead::Answered(*offset))),
                    None => ahead.remove(&partition),
                };
            }
        }
        // An answer a revoked preparation never takes stays until the partition's next
        // assignment replaces it (one entry per partition at most).
        drop(ahead);
        self.answered.notify_all();
    }

    /// The answer asked for at assignment `generation` of `partition`, waiting until `deadline`;
    /// `None` when there is none for this assignment or it did not come in time.
    fn take_ahead(&self, partition: i32, generation: u64, deadline: Instant) -> Option<Option<i64>> {
        let mut ahead = self.ahead();
        loop {
            match ahead.get(&partition) {
                Some((asked, Ahead::Answered(offset))) if *asked == generation => {
                    let offset = *offset;
                    ahead.remove(&partition);
                    return Some(offset);
                }
                Some((asked, Ahead::Asked)) if *asked == generation => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    ahead = self.answered.wait_timeout(ahead, left).unwrap_or_else(|e| e.into_inner()).0;
                }
                _ => return None,
            }
        }
    }

    /// Connects the client in the background with one lookup of `partitions` (the ones this
    /// instance has state for), whose answers are dropped: they would be stale by the time the
    /// partitions are assigned, which is when [`CommittedOffsets::look_up_ahead`] asks again.
    pub fn warm_up(self: &Arc<Self>, partitions: Vec<i32>) {
        if partitions.is_empty() {
            // No local state: preparing a partition never looks its committed offset up.
            return;
        }
        let client = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("ledgerd-committed".into()).spawn(move || {
            if let Err(e) = client.request(&partitions, WARM_UP_TIMEOUT) {
                // Nothing to retry here: each assigned partition looks its offset up again.
                client.metrics().handled_error(
                    ErrorKind::KafkaClient,
                    &format_args!("warming up the committed-offset client: {e}"),
                );
            }
        });
        if let Err(e) = spawned {
            self.metrics().handled_error(
                ErrorKind::KafkaClient,
                &format_args!("cannot start warming up the committed-offset client: {e}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that never connects: these tests hand answers over without a broker.
    fn client() -> Arc<CommittedOffsets> {
        let mut config = Config::default();
        config.kafka.bootstrap_servers = "127.0.0.1:1".into();
        Arc::new(CommittedOffsets::new(&config, KafkaContext { metrics: Metrics::new() }).unwrap())
    }

    fn ask(client: &CommittedOffsets, partition: i32, generation: u64) {
        client.ahead().insert(partition, (generation, Ahead::Asked));
    }

    #[test]
    fn an_answer_asked_at_assignment_is_waited_for_and_taken_once() {
        let client = client();
        ask(&client, 0, 7);
        ask(&client, 1, 7);
        let taker = Arc::clone(&client);
        let taken = std::thread::spawn(move || taker.take_ahead(0, 7, Instant::now() + Duration::from_secs(30)));
        client.settle(&[(0, 7), (1, 7)], Some(BTreeMap::from([(0, Some(42)), (1, None)])));
        assert_eq!(taken.join().unwrap(), Some(Some(42)));
        assert_eq!(client.take_ahead(0, 7, Instant::now()), None, "taken once: a second look-up asks anew");
        assert_eq!(client.take_ahead(1, 7, Instant::now()), Some(None), "no committed offset is an answer too");
    }

    #[test]
    fn answers_belong_to_their_assignment() {
        let client = client();
        ask(&client, 0, 7);
        client.settle(&[(0, 7)], Some(BTreeMap::from([(0, Some(42))])));
        assert_eq!(client.take_ahead(0, 8, Instant::now()), None, "a later assignment does not take an older answer");
        // Asked again for a newer assignment before the older request was answered.
        ask(&client, 0, 9);
        client.settle(&[(0, 7)], Some(BTreeMap::from([(0, Some(42))])));
        assert_eq!(client.take_ahead(0, 9, Instant::now()), None, "still waiting for its own answer");
        client.settle(&[(0, 9)], Some(BTreeMap::from([(0, Some(50))])));
        assert_eq!(client.take_ahead(0, 9, Instant::now()), Some(Some(50)));
    }

    #[test]
    fn a_failed_request_sends_its_waiters_to_ask_on_their_own_at_once() {
        let client = client();
        ask(&client, 2, 1);
        let taker = Arc::clone(&client);
        let taken = std::thread::spawn(move || {
            let started = Instant::now();
            (taker.take_ahead(2, 1, started + Duration::from_secs(30)), started.elapsed())
        });
        client.settle(&[(2, 1)], None);
        let (answer, waited) = taken.join().unwrap();
        assert_eq!(answer, None);
        assert!(waited < Duration::from_secs(20), "woken by the failure, not by its timeout ({waited:?})");
        assert!(client.ahead().is_empty());
    }
}
