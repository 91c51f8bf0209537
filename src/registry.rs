//! Which partitions this instance owns right now, shared between the consumer thread (which adds
//! and removes them on rebalance), the snapshot writer (which writes their rounds) and the HTTP API
//! (which reads their checkpointed state).

use crate::store::{PartitionStore, ReadFrom};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// An owned partition's state as the other threads see it.
pub struct PartitionHandle {
    pub partition: i32,
    pub store: Arc<PartitionStore>,
    released: AtomicBool,
    /// Held by the snapshot writer for the whole of a round, so a release can wait for it.
    round: Mutex<()>,
    /// The next offset at which the consumer last read the partition to its end (`i64::MIN`
    /// before it first did): the snapshot writer tells a partition catching up from one that is
    /// current by it.
    reached_end_at: AtomicI64,
    /// The group's committed offset when the partition was assigned here: how far its previous
    /// owner had checkpointed, and so what it may have served. The API serves this partition only
    /// once its state has been checkpointed that far, so a read never goes back in time across a
    /// handover (a restore from a snapshot starts behind the previous owner, then replays).
    serve_from: i64,
    /// The newest offset the group acknowledged as committed for this partition while it is owned
    /// here (the committed offset found at assignment, to begin with). The API answers from a
    /// checkpoint only once the group has it: a checkpoint that this instance served and never
    /// committed (a crash, or being dropped from the group, in between) would be missing from the
    /// committed offset the next owner waits for, and the next owner would serve older state.
    group_committed: tokio::sync::watch::Sender<i64>,
}

impl PartitionHandle {
    /// A handle served at once, every checkpoint as if committed (tests; the consumer passes the
    /// committed offset it found).
    #[cfg(test)]
    pub fn new(partition: i32, store: Arc<PartitionStore>) -> PartitionHandle {
        let handle = PartitionHandle::serving_from(partition, store, None);
        handle.acknowledge_commit(i64::MAX);
        handle
    }

    /// A handle served once its state is checkpointed up to `committed`, the group's committed
    /// offset at assignment (at once without one).
    pub fn serving_from(partition: i32, store: Arc<PartitionStore>, committed: Option<i64>) -> PartitionHandle {
        PartitionHandle {
            partition,
            store,
            released: AtomicBool::new(false),
            round: Mutex::new(()),
            reached_end_at: AtomicI64::new(i64::MIN),
            serve_from: committed.unwrap_or(i64::MIN),
            group_committed: tokio::sync::watch::Sender::new(committed.unwrap_or(i64::MIN)),
        }
    }

    /// Records that the group acknowledged `next_offset` as this partition's committed offset: the
    /// API may answer from the checkpoints up to it, and from the store's view of the newest of
    /// them at once ([`crate::store::ReadFrom::Acknowledged`]).
    pub fn acknowledge_commit(&self, next_offset: i64) {
        self.store.acknowledge_commit(next_offset);
        self.group_committed.send_if_modified(|committed| {
            let newer = next_offset > *committed;
            if newer {
                *committed = next_offset;
            }
            newer
        });
    }

    /// The newest committed offset the group acknowledged (see `group_committed`).
    pub fn group_committed(&self) -> i64 {
        *self.group_committed.borrow()
    }

    /// Reads from the newest checkpoint the group acknowledged, as far as its view is kept.
    pub fn read_acknowledged(&self) -> ReadFrom {
        ReadFrom::Acknowledged { group_committed: self.group_committed() }
    }

    /// Waits, at most `max_wait`, until the group has acknowledged a committed offset of at least
    /// `next_offset`: until state checkpointed up to it may be served. Returns whether it did.
    pub async fn wait_committed(&self, next_offset: i64, max_wait: Duration) -> bool {
        let mut committed = self.group_committed.subscribe();
        // The sender lives as long as this handle, which the caller holds: `wait_for` ends by
        // reaching the offset or by the timeout.
        let reached = tokio::time::timeout(max_wait, committed.wait_for(|&committed| committed >= next_offset)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Whether the state has caught up with what the partition's previous owner had checkpointed.
    pub fn is_serving(&self) -> bool {
        let checkpointed = self.store.last_checkpoint().unwrap_or(i64::MIN);
        checkpointed >= self.serve_from
            // A committed offset beyond the partition's end (the topic was deleted and created
            // again) is never reached: checkpointed through the end is as far as anyone gets.
            || self.reached_end_at().is_some_and(|end| checkpointed >= end)
    }

    /// Records that the consumer read the partition to its end, with `next_offset` consumed.
    pub fn mark_reached_end(&self, next_offset: i64) {
        self.reached_end_at.fetch_max(next_offset, Ordering::Relaxed);
    }

    /// The next offset at which the consumer last read the partition to its end, if it ever did
    /// since this handle was made (since the partition was assigned here).
    pub fn reached_end_at(&self) -> Option<i64> {
        Some(self.reached_end_at.load(Ordering::Relaxed)).filter(|&offset| offset != i64::MIN)
    }

    /// Marks the partition as leaving and waits, at most `max_wait`, until no snapshot round of it
    /// is running: a round stops at its next record once it sees the flag, never writes its marker,
    /// and drops what it has not sent yet. Returns false if the round was still running.
    pub fn release(&self, max_wait: Duration) -> bool {
        self.released.store(true, Ordering::Release);
        let deadline = Instant::now() + max_wait;
        loop {
            if self.round.try_lock().is_ok() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Held while writing a snapshot round.
    pub fn lock_round(&self) -> MutexGuard<'_, ()> {
        self.round.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
pub struct PartitionRegistry {
    owned: RwLock<BTreeMap<i32, Arc<PartitionHandle>>>,
    /// Assigned partitions whose state is still being opened, checked or restored.
    preparing: RwLock<BTreeSet<i32>>,
    /// Set once the instance has joined its group and received a first assignment.
    joined: AtomicBool,
    /// Set once start-up has checked the topics (the API then knows the input's partition count).
    topics_checked: AtomicBool,
    stopping: AtomicBool,
}

impl PartitionRegistry {
    pub fn insert(&self, handle: Arc<PartitionHandle>) {
        self.preparing.write().unwrap_or_else(|e| e.into_inner()).remove(&handle.partition);
        self.owned.write().unwrap_or_else(|e| e.into_inner()).insert(handle.partition, handle);
    }

    pub fn remove(&self, partition: i32) -> Option<Arc<PartitionHandle>> {
        self.preparing.write().unwrap_or_else(|e| e.into_inner()).remove(&partition);
        self.owned.write().unwrap_or_else(|e| e.into_inner()).remove(&partition)
    }

    /// `partition`'s handle if it is owned here and served (see [`PartitionHandle::is_serving`]).
    pub fn serving(&self, partition: i32) -> Option<Arc<PartitionHandle>> {
        let owned = self.owned.read().unwrap_or_else(|e| e.into_inner());
        owned.get(&partition).filter(|h| h.is_serving()).cloned()
    }

    /// `partition`'s handle if it is owned here, served or not.
    pub fn owned(&self, partition: i32) -> Option<Arc<PartitionHandle>> {
        self.owned.read().unwrap_or_else(|e| e.into_inner()).get(&partition).cloned()
    }

    /// Whether `partition` is assigned here but still restoring, or not yet caught up with its
    /// previous owner.
    pub fn is_preparing(&self, partition: i32) -> bool {
        if self.preparing.read().unwrap_or_else(|e| e.into_inner()).contains(&partition) {
            return true;
        }
        let owned = self.owned.read().unwrap_or_else(|e| e.into_inner());
        owned.get(&partition).is_some_and(|h| !h.is_serving())
    }

    /// The owned partitions the API serves, in order: what this instance announces.
    pub fn serving_partitions(&self) -> Vec<i32> {
        let owned = self.owned.read().unwrap_or_else(|e| e.into_inner());
        owned.values().filter(|h| h.is_serving()).map(|h| h.partition).collect()
    }

    pub fn mark_preparing(&self, partition: i32) {
        self.preparing.write().unwrap_or_else(|e| e.into_inner()).insert(partition);
    }

    /// The owned partitions, ready ones only.
    pub fn handles(&self) -> Vec<Arc<PartitionHandle>> {
        self.owned.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// A snapshot of the owned partitions' stores.
    pub fn stores(&self) -> Vec<(i32, Arc<PartitionStore>)> {
        let owned = self.owned.read().unwrap_or_else(|e| e.into_inner());
        owned.iter().map(|(p, h)| (*p, Arc::clone(&h.store))).collect()
    }

    pub fn preparing(&self) -> Vec<i32> {
        self.preparing.read().unwrap_or_else(|e| e.into_inner()).iter().copied().collect()
    }

    pub fn mark_joined(&self) {
        self.joined.store(true, Ordering::Release);
    }

    pub fn mark_topics_checked(&self) {
        self.topics_checked.store(true, Ordering::Release);
    }

    pub fn mark_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Ready to serve: topics checked, joined the group, every assigned partition restored, and
    /// not shutting down.
    pub fn is_ready(&self) -> bool {
        self.topics_checked.load(Ordering::Acquire)
            && self.joined.load(Ordering::Acquire)
            && !self.stopping.load(Ordering::Acquire)
            && self.preparing.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_for_a_commit_ends_when_the_group_acknowledges_it_or_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::test_env(dir.path());
        let (store, _) = env.open_partition("input", 0).unwrap();
        let handle = Arc::new(PartitionHandle::serving_from(0, Arc::new(store), Some(10)));
        assert!(handle.wait_committed(10, Duration::ZERO).await, "found committed at assignment");
        assert!(!handle.wait_committed(11, Duration::from_millis(20)).await);

        let waiting = tokio::spawn({
            let handle = Arc::clone(&handle);
            async move { handle.wait_committed(15, Duration::from_secs(30)).await }
        });
        handle.acknowledge_commit(12);
        handle.acknowledge_commit(15);
        assert!(waiting.await.unwrap());
        handle.acknowledge_commit(11);
        assert_eq!(handle.group_committed(), 15, "an older answer never moves it back");
    }
}
