//! Local states opened at start-up, while the group join is in flight.
//!
//! A restarted instance usually gets its partitions back, and opening a state (replaying its
//! write-ahead log) is the part of a restart that is ledgerd's own work. So every partition with
//! state in `state.dir` starts opening as the instance starts; preparing an assigned partition
//! takes its state from here instead of opening it ([`EarlyStates::take`]). States the first
//! assignment does not include are closed ([`EarlyStates::keep_only`]): a state stays open only
//! for a partition this instance is about to own.

use super::prepare::report_set_aside;
use crate::metrics::{ErrorKind, Metrics};
use crate::store::{PartitionStore, StoreEnv};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

enum Slot {
    Opening,
    Open(Box<PartitionStore>),
    /// Being closed, or opening and to be closed when done: not open again until it is gone.
    Closing,
}

/// See the module documentation.
pub(super) struct EarlyStates {
    slots: Mutex<BTreeMap<i32, Slot>>,
    /// Signalled whenever an open or a close finishes.
    opened: Condvar,
    /// Whether the first assignment has come ([`EarlyStates::keep_only`]).
    assigned: AtomicBool,
}

impl EarlyStates {
    /// Starts opening `partitions`' states, each on a thread of its own (as preparing does).
    pub fn open(env: &Arc<StoreEnv>, topic: &str, partitions: &[i32], metrics: &Metrics) -> Arc<EarlyStates> {
        let early = Arc::new(EarlyStates {
            slots: Mutex::new(partitions.iter().map(|p| (*p, Slot::Opening)).collect()),
            opened: Condvar::new(),
            assigned: AtomicBool::new(false),
        });
        for &partition in partitions {
            let opener = (Arc::clone(&early), Arc::clone(env), topic.to_owned(), metrics.clone());
            let spawned = std::thread::Builder::new().name(format!("ledgerd-open-{partition}")).spawn(move || {
                let (early, env, topic, metrics) = opener;
                early.open_one(&env, &topic, partition, &metrics)
            });
            if let Err(e) = spawned {
                // Preparing opens it then, as it does without this.
                metrics.handled_error(
                    ErrorKind::StateOpen,
                    &format_args!("partition {partition}: cannot start opening its state early: {e}"),
                );
                early.slots().remove(&partition);
            }
        }
        early
    }

    fn slots(&self) -> MutexGuard<'_, BTreeMap<i32, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_one(&self, env: &StoreEnv, topic: &str, partition: i32, metrics: &Metrics) {
        let started = Instant::now();
        match env.open_partition(topic, partition) {
            Ok((store, set_aside)) => {
                report_set_aside(metrics, partition, set_aside);
                let mut slots = self.slots();
                if matches!(slots.get(&partition), Some(Slot::Opening)) {
                    tracing::info!(partition, seconds = started.elapsed().as_secs_f64(), "local state opened early");
                    slots.insert(partition, Slot::Open(Box::new(store)));
                } else {
                    drop(slots);
                    drop(store);
                    self.slots().remove(&partition);
                }
            }
            Err(e) => {
                // Preparing opens it again, with retries, if the partition is assigned here.
                metrics.handled_error(
                    ErrorKind::StateOpen,
                    &format_args!("partition {partition}: opening its state early: {e}"),
                );
                self.slots().remove(&partition);
            }
        }
        self.opened.notify_all();
    }

    /// The partition's state if it was opened early, waiting for an open or a close in flight;
    /// `None` if there is none (no local state, the early open failed, or it was closed): the
    /// caller opens it then.
    pub fn take(&self, partition: i32) -> Option<PartitionStore> {
        let mut slots = self.slots();
        loop {
            match slots.remove(&partition) {
                Some(Slot::Open(store)) => return Some(*store),
                Some(slot @ (Slot::Opening | Slot::Closing)) => {
                    slots.insert(partition, slot);
                    slots = self.opened.wait(slots).unwrap_or_else(|e| e.into_inner());
                }
                None => return None,
            }
        }
    }

    /// With the first assignment: closes every state opened early except `assigned`'s (their
    /// preparation takes them), and has opens still in flight close theirs when done. Later
    /// assignments change nothing here (the first one's preparations may not have taken theirs
    /// yet); a partition assigned later opens its state when it is prepared.
    pub fn keep_only(&self, assigned: &[i32]) {
        if self.assigned.swap(true, Ordering::AcqRel) {
            return;
        }
        let unwanted: Vec<i32> = self.slots().keys().filter(|p| !assigned.contains(p)).copied().collect();
        for partition in unwanted {
            self.close(partition);
        }
    }

    /// Closes the partition's state if it was opened early and not taken (the partition is not
    /// assigned here, or its state is about to be deleted), so it can be opened or deleted after
    /// this. An open still in flight closes its state when done: `false` then.
    pub fn close(&self, partition: i32) -> bool {
        let mut slots = self.slots();
        match slots.insert(partition, Slot::Closing) {
            Some(Slot::Open(store)) => {
                drop(slots);
                drop(store);
                self.slots().remove(&partition);
                self.opened.notify_all();
                tracing::info!(partition, "closed a state opened early: its partition did not take it");
                true
            }
            Some(Slot::Opening | Slot::Closing) => false,
            None => {
                slots.remove(&partition);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "transactions";

    /// A state directory with `partitions`' states, each checkpointed at next offset 5.
    fn env_with_states(dir: &std::path::Path, partitions: &[i32]) -> Arc<StoreEnv> {
        let env = Arc::new(crate::store::test_env(dir));
        for &partition in partitions {
            let (store, _) = env.open_partition(TOPIC, partition).unwrap();
            store.begin().commit(5, 0).unwrap();
        }
        env
    }

    #[test]
    fn preparation_takes_the_state_opened_early_and_the_first_assignment_closes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_with_states(dir.path(), &[0, 1]);
        let early = EarlyStates::open(&env, TOPIC, &[0, 1], &Metrics::new());
        early.keep_only(&[0, 2]);
        // Partition 1's state is closed (or closes when its open finishes): it can be opened again.
        assert!(early.take(1).is_none());
        assert_eq!(env.open_partition(TOPIC, 1).unwrap().0.stored_next_offset(), Some(5));
        let store = early.take(0).expect("opened early");
        assert_eq!(store.stored_next_offset(), Some(5));
        assert!(early.take(0).is_none(), "taken once");
        assert!(early.take(2).is_none(), "no local state");
        // A later assignment closes nothing: partition 3 is not there, but nothing changes.
        early.keep_only(&[3]);
    }

    #[test]
    fn a_closed_state_can_be_opened_or_deleted_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_with_states(dir.path(), &[4]);
        let early = EarlyStates::open(&env, TOPIC, &[4], &Metrics::new());
        // Closed now, or by its opener when its open finishes; `take` waits for either.
        early.close(4);
        assert!(early.take(4).is_none());
        env.delete_partition(TOPIC, 4).unwrap();
        assert!(env.local_partitions(TOPIC).is_empty());
    }
}
