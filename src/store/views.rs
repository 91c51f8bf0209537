//! Views of a partition's state kept for the HTTP API, so that it can answer from the newest
//! checkpoint the consumer group has acknowledged without waiting.
//!
//! The API serves a checkpoint only once the group has its commit (`http.read_committed`): what
//! one instance served must never be ahead of what the next owner waits for. Read from the newest
//! state, a request made while the partition is catching up finds a checkpoint whose commit is
//! still on its way, and has to wait for the answer (half a second and more from a busy broker).
//! So each checkpoint whose offset goes out as a commit keeps a RocksDB snapshot of itself until
//! the group answers; the answer makes the newest snapshot at or below the acknowledged offset the
//! one reads use, and releases the older ones.
//!
//! A `PartitionStore` lives for one ownership of its partition (opened when assigned, dropped when
//! released), so every view it keeps is of state this instance checkpointed while it owned the
//! partition: none survives a handover to be served after the partition comes back.

use super::keys::{MetaKey, CF_META};
use super::StoreError;
use rocksdb::{SnapshotWithThreadMode, DB};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most snapshots kept waiting for the group's answer: while commits go unanswered, each newer
/// checkpoint replaces the oldest. A commit answer acknowledges everything up to its offset, so a
/// newer snapshot serves as well as a released older one. Each snapshot keeps the values it sees
/// from being overwritten in place, so this also bounds the extra versions kept per key.
const MAX_PENDING: usize = 8;

/// How long after the last read that could use them views are still kept. A snapshot costs the
/// writes of a catch-up a few percent of their CPU (flushes keep the versions it sees), which
/// nobody should pay while the API is not read: without reads, views are released and not kept.
/// The first read after such a pause answers from the newest checkpoint, waiting for its commit.
pub(super) const KEPT_AFTER_READ: Duration = Duration::from_secs(10);

/// A consistent view of a partition's state at one checkpoint, held as long as it is needed.
pub(super) struct View {
    // Declared before `_db`, so released before the database handle it borrows from.
    snapshot: SnapshotWithThreadMode<'static, DB>,
    _db: Arc<DB>,
    /// The next offset of the checkpoint the view sees (0 before the state's first checkpoint).
    pub next_offset: i64,
}

impl View {
    /// A view of the state as it is now.
    pub fn of(db: &Arc<DB>) -> Result<View, StoreError> {
        let db = Arc::clone(db);
        let snapshot = db.snapshot();
        // SAFETY: the snapshot borrows the `DB` inside the `Arc`'s allocation, which never moves
        // and which `_db` keeps alive for as long as the view exists; the snapshot is dropped (and
        // released) first, by field order. The `'static` lifetime never leaves this struct:
        // [`View::snapshot`] lends the snapshot with the view's own borrow as its lifetime, so
        // nothing made from it (iterators carry the snapshot's lifetime) outlives the view.
        let snapshot: SnapshotWithThreadMode<'static, DB> = unsafe { std::mem::transmute(snapshot) };
        let meta = db.cf_handle(CF_META).expect("opened with every column family");
        let next_offset = super::meta_i64(snapshot.get_cf(meta, MetaKey::NextOffset.name()))?.unwrap_or(0);
        Ok(View { snapshot, _db: db, next_offset })
    }

    /// The snapshot, for as long as the view is borrowed.
    pub fn snapshot(&self) -> &SnapshotWithThreadMode<'_, DB> {
        &self.snapshot
    }
}

/// The views of checkpoints committed to the group: those waiting for its answer, oldest first,
/// and the newest it acknowledged.
#[derive(Default)]
pub(super) struct CommittedViews {
    pending: VecDeque<Arc<View>>,
    acknowledged: Option<Arc<View>>,
    /// When a read last asked for the acknowledged view.
    read_at: Option<Instant>,
}

impl CommittedViews {
    /// Whether views are wanted at `now`: a read asked for one within [`KEPT_AFTER_READ`]. If not,
    /// releases those kept.
    pub fn wanted(&mut self, now: Instant) -> bool {
        let wanted = self.read_at.is_some_and(|read_at| now.saturating_duration_since(read_at) < KEPT_AFTER_READ);
        if !wanted {
            self.pending.clear();
            self.acknowledged = None;
        }
        wanted
    }

    /// Keeps `view` until the group acknowledges its offset (or a newer one); at once as the
    /// acknowledged view if the group already has (`group_committed` is at or beyond it).
    pub fn keep(&mut self, view: View, group_committed: i64) {
        let known = |v: &Arc<View>| v.next_offset >= view.next_offset;
        if self.pending.back().is_some_and(known) || self.acknowledged.as_ref().is_some_and(known) {
            // A commit sent again, or one of state older than what is kept: nothing newer to see.
            return;
        }
        let view = Arc::new(view);
        if self.offer(&view, group_committed) {
            return;
        }
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(view);
    }

    /// The group acknowledged `next_offset`: the newest view at or below it becomes the one
    /// served, and the views older than that are released.
    pub fn acknowledge(&mut self, next_offset: i64) {
        while self.pending.front().is_some_and(|v| v.next_offset <= next_offset) {
            let view = self.pending.pop_front();
            if view.as_ref().map(|v| v.next_offset) > self.acknowledged.as_ref().map(|v| v.next_offset) {
                self.acknowledged = view;
            }
        }
    }

    /// The view of the newest acknowledged checkpoint kept, if any, for a read at `now`.
    pub fn acknowledged(&mut self, now: Instant) -> Option<Arc<View>> {
        self.read_at = Some(now);
        self.acknowledged.clone()
    }

    /// Makes `view` the acknowledged view if the group has its offset (`group_committed` is at or
    /// beyond it) and it is newer than the one kept; returns whether it did. A read that found no
    /// acknowledged view offers the view it took of the newest state (a partition idle since its
    /// last commit was answered), so that the next reads need not wait for a commit in flight.
    pub fn offer(&mut self, view: &Arc<View>, group_committed: i64) -> bool {
        let newer = self.acknowledged.as_ref().is_none_or(|kept| view.next_offset > kept.next_offset);
        let taken = newer && view.next_offset <= group_committed;
        if taken {
            self.acknowledged = Some(Arc::clone(view));
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::{Instant, KEPT_AFTER_READ, MAX_PENDING};
    use crate::ledger::{Amount, Currency};
    use crate::store::{test_env, PartitionStore, ReadFrom};

    fn checkpoint(store: &PartitionStore, amount: &str, next_offset: i64) {
        let mut batch = store.begin();
        batch.put_balance("a", Currency::parse("USD").unwrap(), Amount::parse(amount).unwrap(), next_offset);
        batch.commit(next_offset, 0).unwrap();
    }

    /// The offset and USD balance of account "a" as a read `from` sees them.
    fn seen(store: &PartitionStore, from: ReadFrom) -> (i64, String) {
        let read = store.read_account(from, "a", None).unwrap().unwrap();
        (read.next_offset, read.balances[0].1.to_string())
    }

    /// The group's answers as `PartitionHandle` keeps them: the newest acknowledged offset.
    struct Group(i64);

    impl Group {
        fn acknowledge(&mut self, store: &PartitionStore, next_offset: i64) {
            store.acknowledge_commit(next_offset);
            self.0 = self.0.max(next_offset);
        }

        fn read(&self) -> ReadFrom {
            ReadFrom::Acknowledged { group_committed: self.0 }
        }
    }

    #[test]
    fn acknowledged_reads_see_the_newest_kept_checkpoint_the_group_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_env(dir.path()).open_partition("input", 0).unwrap().0;
        let mut group = Group(i64::MIN);
        checkpoint(&store, "1", 10);
        store.keep_view_for_commit(group.0).unwrap();
        assert!(store.committed_views.lock().unwrap().pending.is_empty(), "no read yet: not kept");
        assert_eq!(seen(&store, group.read()), (10, "1".into()), "nothing kept: the newest");

        store.keep_view_for_commit(group.0).unwrap();
        checkpoint(&store, "2", 20);
        store.keep_view_for_commit(group.0).unwrap();
        checkpoint(&store, "3", 30);
        store.keep_view_for_commit(group.0).unwrap();
        store.keep_view_for_commit(group.0).unwrap(); // the same checkpoint, committed again
        checkpoint(&store, "4", 40);
        assert_eq!(seen(&store, group.read()), (40, "4".into()), "none acknowledged yet");

        group.acknowledge(&store, 25);
        assert_eq!(seen(&store, group.read()), (20, "2".into()), "the newest at or below 25");
        assert_eq!(seen(&store, ReadFrom::Newest), (40, "4".into()));
        group.acknowledge(&store, 15);
        assert_eq!(seen(&store, group.read()), (20, "2".into()), "an older answer changes nothing");
        group.acknowledge(&store, 30);
        assert_eq!(seen(&store, group.read()), (30, "3".into()));
        group.acknowledge(&store, 40);
        assert_eq!(seen(&store, group.read()), (30, "3".into()), "40 was never kept");

        // Without reads for a while, the next commit releases the views and keeps none.
        let later = Instant::now() + KEPT_AFTER_READ;
        assert!(!store.committed_views.lock().unwrap().wanted(later));
        assert!(store.committed_views.lock().unwrap().acknowledged.is_none());
    }

    #[test]
    fn a_read_of_state_the_group_has_acknowledged_keeps_its_view() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_env(dir.path()).open_partition("input", 0).unwrap().0;
        let mut group = Group(i64::MIN);
        checkpoint(&store, "1", 10);
        group.acknowledge(&store, 10);
        assert_eq!(seen(&store, group.read()), (10, "1".into()));
        checkpoint(&store, "2", 20);
        assert_eq!(seen(&store, group.read()), (10, "1".into()), "the view the first read took");
        // A view kept for a commit the group already has is the acknowledged one at once.
        group.acknowledge(&store, 20);
        store.keep_view_for_commit(group.0).unwrap();
        assert_eq!(seen(&store, group.read()), (20, "2".into()));
        // A newer read of state beyond the acknowledged offset is not kept.
        checkpoint(&store, "3", 30);
        store.committed_views.lock().unwrap().acknowledged = None;
        assert_eq!(seen(&store, group.read()), (30, "3".into()));
        assert!(store.committed_views.lock().unwrap().acknowledged.is_none());
    }

    #[test]
    fn unanswered_commits_keep_only_the_newest_views() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_env(dir.path()).open_partition("input", 0).unwrap().0;
        let mut group = Group(i64::MIN);
        let views = || store.committed_views.lock().unwrap();
        checkpoint(&store, "0", 0);
        seen(&store, group.read());
        for next_offset in 1..=(MAX_PENDING as i64 + 3) {
            checkpoint(&store, &next_offset.to_string(), next_offset);
            store.keep_view_for_commit(group.0).unwrap();
        }
        let kept: Vec<i64> = views().pending.iter().map(|v| v.next_offset).collect();
        assert_eq!(kept, (4..=11).collect::<Vec<_>>());

        group.acknowledge(&store, 2);
        assert!(views().acknowledged.is_none(), "its view was released: none older is served instead");
        assert_eq!(seen(&store, group.read()), (11, "11".into()));
        group.acknowledge(&store, 11);
        assert_eq!(seen(&store, group.read()), (11, "11".into()));
        assert!(views().pending.is_empty());
    }
}
