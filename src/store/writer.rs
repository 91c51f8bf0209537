//! The thread that writes checkpoints, so the consumer thread applies the next records meanwhile.
//!
//! A checkpoint's write is RocksDB's work: decoding the batch, inserting every key into the
//! memtables and syncing the log, about 45% of the engine's instructions per record
//! (docs/BENCHMARKS.md). On the consumer thread it stopped applying for that long; here it runs
//! beside the applying of the records after the batch. One thread serves every partition of the
//! process in the order the batches come, each partition with at most one write in flight (a
//! partition seals its next batch only once the last is durable).
//!
//! Nothing about durability changes: the batch is built, its keys added to the key filters and
//! its next offset written into it on the consumer thread, as before; the partition learns that
//! it is durable from the answer, and only then counts it as checkpointed, commits its offset to
//! the group and drops the sealed work its reads still see meanwhile.

use super::{PartitionStore, PreparedWrite, StoreError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

/// One batch to write, and where to answer.
struct Job {
    store: Arc<PartitionStore>,
    write: PreparedWrite,
    answer: SyncSender<Result<(), StoreError>>,
}

/// Writes checkpoints on its own thread; stopped and joined on drop.
pub struct CheckpointWriter {
    /// `None` once dropping: the thread ends when the queue closes.
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// Writes submitted whose answers their partitions have not taken yet (each
    /// [`WriteInFlight`] counts itself out when it goes): until then the consumer must come back
    /// for the answer soon, whether or not the write itself is done.
    unanswered: Arc<AtomicUsize>,
}

impl CheckpointWriter {
    /// Starts the writer's thread (the error: it could not be spawned).
    pub fn start() -> std::io::Result<CheckpointWriter> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new().name("ledgerd-writer".into()).spawn(move || {
            // Like the consumer thread: RocksDB's per-thread perf counters cost every key written.
            super::stop_perf_counters_on_this_thread();
            for Job { store, write, answer } in queue {
                let result = write.write(&store);
                // The store may close once its partition has the answer: let go of it first.
                drop(store);
                let _ = answer.send(result);
            }
        })?;
        Ok(CheckpointWriter { jobs: Some(jobs), thread: Some(thread), unanswered: Arc::default() })
    }

    /// Hands `write` of `store` to the writer's thread. If that thread is gone (it panicked),
    /// writes it here.
    pub(super) fn submit(&self, store: Arc<PartitionStore>, write: PreparedWrite) -> WriteInFlight {
        let (answer, answered) = mpsc::sync_channel(1);
        let mut job = Job { store, write, answer };
        if let Some(jobs) = &self.jobs {
            match jobs.send(job) {
                Ok(()) => {
                    self.unanswered.fetch_add(1, Ordering::AcqRel);
                    let counted = Some(Arc::clone(&self.unanswered));
                    return WriteInFlight { answered: Some(answered), counted };
                }
                Err(mpsc::SendError(returned)) => job = returned,
            }
        }
        let Job { store, write, answer } = job;
        let _ = answer.send(write.write(&store));
        WriteInFlight { answered: Some(answered), counted: None }
    }

    /// Whether some write handed to the writer's thread has an answer not taken yet: it may come
    /// any moment, or has come. A write the thread dropped (it panicked) answers
    /// `StoreError::WriterStopped`, so it too is counted out once its partition looks.
    pub fn busy(&self) -> bool {
        self.unanswered.load(Ordering::Acquire) > 0
    }
}

impl Drop for CheckpointWriter {
    /// Writes what was submitted, then stops the thread.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A checkpoint write handed to the writer, until its answer is taken. Dropping one unanswered
/// waits for the answer: the write holds its partition's store open until then, and a state
/// reopened meanwhile would find its database locked.
pub struct WriteInFlight {
    answered: Option<Receiver<Result<(), StoreError>>>,
    /// The writer's count of unanswered writes, while this one is in it.
    counted: Option<Arc<AtomicUsize>>,
}

impl WriteInFlight {
    /// The write's result once it is done; the write itself back while it is not.
    pub fn poll(mut self) -> Result<Result<(), StoreError>, WriteInFlight> {
        let Some(answered) = self.answered.take() else { return Ok(Err(StoreError::WriterStopped)) };
        match answered.try_recv() {
            Ok(result) => Ok(result),
            Err(TryRecvError::Empty) => Err(WriteInFlight { answered: Some(answered), counted: self.counted.take() }),
            Err(TryRecvError::Disconnected) => Ok(Err(StoreError::WriterStopped)),
        }
    }

    /// Waits for the write's result.
    pub fn wait(mut self) -> Result<(), StoreError> {
        let answered = self.answered.take().ok_or(StoreError::WriterStopped)?;
        answered.recv().unwrap_or(Err(StoreError::WriterStopped))
    }
}

impl Drop for WriteInFlight {
    /// Waits for an answer not taken yet, then counts the write out.
    fn drop(&mut self) {
        if let Some(answered) = self.answered.take() {
            let _ = answered.recv();
        }
        if let Some(unanswered) = self.counted.take() {
            unanswered.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
