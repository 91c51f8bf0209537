//! Which partitions this instance owns right now, shared between the consumer thread (which adds
//! and removes them on rebalance), the snapshot writer (which writes their rounds) and the HTTP API
//! (which reads their checkpointed state).

use crate::store::PartitionStore;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
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
}

impl PartitionHandle {
    pub fn new(partition: i32, store: Arc<PartitionStore>) -> PartitionHandle {
        PartitionHandle {
            partition,
            store,
            released: AtomicBool::new(false),
            round: Mutex::new(()),
            reached_end_at: AtomicI64::new(i64::MIN),
        }
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
    /// Bumped whenever the set of ready partitions changes (the announcer watches it).
    version: AtomicU64,
}

impl PartitionRegistry {
    pub fn insert(&self, handle: Arc<PartitionHandle>) {
        self.preparing.write().unwrap_or_else(|e| e.into_inner()).remove(&handle.partition);
        self.owned.write().unwrap_or_else(|e| e.into_inner()).insert(handle.partition, handle);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    pub fn remove(&self, partition: i32) -> Option<Arc<PartitionHandle>> {
        self.preparing.write().unwrap_or_else(|e| e.into_inner()).remove(&partition);
        let removed = self.owned.write().unwrap_or_else(|e| e.into_inner()).remove(&partition);
        self.version.fetch_add(1, Ordering::AcqRel);
        removed
    }

    /// Changes whenever a partition becomes ready or leaves.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The store of `partition` if it is owned and ready here.
    pub fn store(&self, partition: i32) -> Option<Arc<PartitionStore>> {
        let owned = self.owned.read().unwrap_or_else(|e| e.into_inner());
        owned.get(&partition).map(|h| Arc::clone(&h.store))
    }

    /// Whether `partition` is assigned here but still restoring.
    pub fn is_preparing(&self, partition: i32) -> bool {
        self.preparing.read().unwrap_or_else(|e| e.into_inner()).contains(&partition)
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
