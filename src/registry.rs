//! Which partitions this instance owns right now, shared between the consumer thread (which adds
//! and removes them on rebalance) and the HTTP API (which reads their checkpointed state).

use crate::store::PartitionStore;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Default)]
pub struct PartitionRegistry {
    stores: RwLock<BTreeMap<i32, Arc<PartitionStore>>>,
    /// Set once the instance has joined its group and received a first assignment.
    joined: AtomicBool,
    stopping: AtomicBool,
}

impl PartitionRegistry {
    pub fn insert(&self, partition: i32, store: Arc<PartitionStore>) {
        self.stores.write().unwrap_or_else(|e| e.into_inner()).insert(partition, store);
    }

    pub fn remove(&self, partition: i32) {
        self.stores.write().unwrap_or_else(|e| e.into_inner()).remove(&partition);
    }

    /// A snapshot of the owned partitions' stores.
    pub fn stores(&self) -> Vec<(i32, Arc<PartitionStore>)> {
        let stores = self.stores.read().unwrap_or_else(|e| e.into_inner());
        stores.iter().map(|(p, s)| (*p, Arc::clone(s))).collect()
    }

    pub fn mark_joined(&self) {
        self.joined.store(true, Ordering::Release);
    }

    pub fn mark_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Ready to serve: joined the group and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.joined.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire)
    }
}
