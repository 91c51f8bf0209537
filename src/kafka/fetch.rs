//! Fetched records, handed over by librdkafka many at a time from each partition's own queue.
//!
//! rust-rdkafka's `BaseConsumer::poll` hands over one record per call: a queue pop, an event
//! wrapped in an `Arc` and several clock reads each, about a fifth of the consumer thread's time
//! at a million records (docs/BENCHMARKS.md). librdkafka can hand over many records per call,
//! but on the consumer's queue such a call would also serve the rebalance events, and without a
//! native rebalance callback librdkafka then unassigns everything. So each partition's fetch
//! queue is detached from the consumer's queue before the partition is assigned
//! ([`PartitionQueue::new`]) and served here, with `rd_kafka_consume_callback_queue`; the
//! consumer's queue keeps the group's events (rebalances, commit results, errors) for
//! `BaseConsumer::poll`, which still runs the rebalance callbacks.
//!
//! Detaching marks the partition's queue as the application's, so librdkafka's later fetch
//! starts (a re-assignment after a revoke) leave it detached: a partition's records never arrive
//! on two queues, and its one queue keeps them in offset order.
//!
//! A queue that gets a record (or a group event) while it was empty wakes the consumer thread
//! ([`Wakeup`]), which parks when a pass over every queue found nothing.

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use std::collections::BTreeMap;
use std::ffi::{c_void, CStr, CString};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::thread::Thread;

/// One input record, wherever it was read from: the consumer thread applies it or dead-letters it.
pub(super) trait InputRecord {
    fn topic(&self) -> &str;
    fn partition(&self) -> i32;
    fn offset(&self) -> i64;
    fn key(&self) -> Option<&[u8]>;
    fn payload(&self) -> Option<&[u8]>;
    fn header_count(&self) -> usize;
    /// The header at `index` (0-based, in record order): its name and value.
    fn header(&self, index: usize) -> Option<(&str, Option<&[u8]>)>;

    /// The value of the first header named `name` (ASCII case-insensitive).
    fn header_value(&self, name: &str) -> Option<&[u8]> {
        (0..self.header_count())
            .filter_map(|i| self.header(i))
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| value)
    }
}

/// A record `BaseConsumer::poll` returned. Records come from the partition queues, so this is
/// the path of a record that reached the consumer's queue all the same; it is applied like any.
impl InputRecord for BorrowedMessage<'_> {
    fn topic(&self) -> &str {
        Message::topic(self)
    }

    fn partition(&self) -> i32 {
        Message::partition(self)
    }

    fn offset(&self) -> i64 {
        Message::offset(self)
    }

    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }

    fn payload(&self) -> Option<&[u8]> {
        Message::payload(self)
    }

    fn header_count(&self) -> usize {
        self.headers().map_or(0, |h| h.count())
    }

    fn header(&self, index: usize) -> Option<(&str, Option<&[u8]>)> {
        self.headers()?.try_get(index).map(|h| (h.key, h.value))
    }
}

/// Wakes the consumer thread when one of its queues gets something while it was empty. The
/// callback runs on a librdkafka thread with the queue's lock held, so it only unparks.
#[derive(Clone)]
pub(super) struct Wakeup {
    thread: Arc<Thread>,
}

impl Wakeup {
    /// Wakes the calling thread, which is to park in [`Wakeup::park`].
    pub fn for_current_thread() -> Wakeup {
        Wakeup { thread: Arc::new(std::thread::current()) }
    }

    /// Waits up to `timeout`, or less if a queue got something meanwhile (also since the last
    /// park: the wake-up is remembered, so one that came before this call is not lost).
    pub fn park(&self, timeout: std::time::Duration) {
        std::thread::park_timeout(timeout);
    }

    /// Registers the callback on `queue`. Safety: `queue` is a valid queue handle, and the
    /// callback is unregistered ([`unregister`]) before this `Wakeup`'s thread handle is dropped.
    unsafe fn register(&self, queue: *mut rd::rd_kafka_queue_t) {
        let opaque = Arc::as_ptr(&self.thread) as *mut c_void;
        unsafe { rd::rd_kafka_queue_cb_event_enable(queue, Some(wake_thread), opaque) };
    }
}

unsafe extern "C" fn wake_thread(_client: *mut rd::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Thread` of a `Wakeup` that outlives the registration (`register`).
    let thread = unsafe { &*(opaque as *const Thread) };
    thread.unpark();
}

/// Unregisters a queue's wake-up callback. Registration and callbacks both hold the queue's lock,
/// so no callback runs after this returns.
unsafe fn unregister(queue: *mut rd::rd_kafka_queue_t) {
    unsafe { rd::rd_kafka_queue_cb_event_enable(queue, None, ptr::null_mut()) };
}

/// The consumer's own queue (group events) wakes the consumer thread while it parks.
pub(super) struct GroupEvents {
    queue: NonNull<rd::rd_kafka_queue_t>,
    _wakeup: Wakeup,
}

impl GroupEvents {
    pub fn watch<C: ConsumerContext>(consumer: &BaseConsumer<C>, wakeup: &Wakeup) -> GroupEvents {
        // SAFETY: the client pointer is valid while `consumer` lives; the handle this returns
        // holds a reference on the queue until `Drop` destroys it.
        let queue = unsafe { rd::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        let queue = NonNull::new(queue).expect("a group consumer has a consumer queue");
        // SAFETY: valid handle; `Drop` unregisters before the `Wakeup` it keeps goes.
        unsafe { wakeup.register(queue.as_ptr()) };
        GroupEvents { queue, _wakeup: wakeup.clone() }
    }

    /// Whether events wait on the consumer's queue. `BaseConsumer::poll` serves one per call and
    /// may return nothing after serving one (a log line, statistics), and the queue wakes the
    /// thread only when it was empty: before parking, this tells whether to poll again instead.
    pub fn pending(&self) -> bool {
        // SAFETY: a valid handle.
        unsafe { rd::rd_kafka_queue_length(self.queue.as_ptr()) > 0 }
    }
}

impl Drop for GroupEvents {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and still valid; the callback goes before the handle.
        unsafe {
            unregister(self.queue.as_ptr());
            rd::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

/// The detached queues of the partitions handed to the consumer, by partition.
pub(super) struct PartitionQueues {
    topic: String,
    wakeup: Wakeup,
    queues: BTreeMap<i32, PartitionQueue>,
}

impl PartitionQueues {
    pub fn new(topic: &str, wakeup: Wakeup) -> PartitionQueues {
        PartitionQueues { topic: topic.to_owned(), wakeup, queues: BTreeMap::new() }
    }

    /// Detaches `partition`'s queue ([`PartitionQueue::new`]); call it before assigning the
    /// partition. Returns false if librdkafka has no queue for it: its records then come through
    /// `BaseConsumer::poll`.
    pub fn detach<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, partition: i32) -> bool {
        // The callback is registered on the queue, not on the handle: the old handle (of an
        // earlier assignment) unregisters it, so it goes before the new one registers.
        self.queues.remove(&partition);
        match PartitionQueue::new(consumer, &self.topic, partition, &self.wakeup) {
            Some(queue) => {
                self.queues.insert(partition, queue);
                true
            }
            None => false,
        }
    }

    /// Drops the queues of partitions that `keep` rejects (released ones).
    pub fn retain(&mut self, mut keep: impl FnMut(i32) -> bool) {
        self.queues.retain(|partition, _| keep(*partition));
    }

    pub fn iter(&self) -> impl Iterator<Item = (i32, &PartitionQueue)> {
        self.queues.iter().map(|(partition, queue)| (*partition, queue))
    }

    pub fn len(&self) -> usize {
        self.queues.len()
    }
}

/// One assigned partition's fetch queue, detached from the consumer's queue.
pub(super) struct PartitionQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    client: *mut rd::rd_kafka_t,
    _wakeup: Wakeup,
}

impl PartitionQueue {
    /// Detaches `partition`'s fetch queue from the consumer's queue. Call it before the partition
    /// is assigned, so none of its records reach the consumer's queue.
    pub fn new<C: ConsumerContext>(
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
        wakeup: &Wakeup,
    ) -> Option<PartitionQueue> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: valid client and C string; librdkafka creates the partition's object if it does
        // not know it yet, and the handle holds a reference on its queue until `Drop`.
        let queue =
            unsafe { rd::rd_kafka_queue_get_partition(consumer.client().native_ptr(), topic.as_ptr(), partition) };
        let queue = NonNull::new(queue)?;
        // SAFETY: valid handle. Forwarding to nothing keeps the records on this queue, also
        // across later fetch starts; the callback is unregistered in `Drop`, before the `Wakeup`.
        unsafe {
            rd::rd_kafka_queue_forward(queue.as_ptr(), ptr::null_mut());
            wakeup.register(queue.as_ptr());
        }
        Some(PartitionQueue { queue, client: consumer.client().native_ptr(), _wakeup: wakeup.clone() })
    }

    /// Hands up to `limit` (at least 1) of the queued records and partition events, such as its
    /// end, to `each`, in order, without waiting. Returns how many. `each` runs inside librdkafka's
    /// dispatch: a panic in it aborts the process rather than unwind through C.
    pub fn serve<F: FnMut(Fetched<'_>)>(&self, limit: usize, each: F) -> usize {
        let mut serving = Serving { client: self.client, limit, served: 0, each };
        // SAFETY: valid handle; `serving` outlives the call, which runs `consume::<F>` on this
        // thread only. librdkafka destroys each message after the callback returns.
        unsafe {
            rd::rd_kafka_consume_callback_queue(
                self.queue.as_ptr(),
                0,
                Some(consume::<F>),
                (&mut serving as *mut Serving<F>).cast(),
            )
        };
        serving.served
    }
}

/// The state of one [`PartitionQueue::serve`] call, for its callback.
struct Serving<F> {
    client: *mut rd::rd_kafka_t,
    limit: usize,
    served: usize,
    each: F,
}

/// librdkafka's consume callback. Not `rd_kafka_consume_batch_queue`, which fills an array: in
/// librdkafka 2.12 it moves the partition's application position one past *every* message it
/// returns, the end-of-partition event included, and librdkafka resumes a partition it paused for
/// a rebalance from that position. A record that arrived after the end was then skipped: in
/// tests/e2e_query.rs offset 0 of a partition read to its end while empty, in 5 of 8 runs. The
/// callback API moves the position past records only, as `poll` does.
unsafe extern "C" fn consume<F: FnMut(Fetched<'_>)>(message: *mut rd::rd_kafka_message_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Serving` of the `serve` call running on this thread.
    let serving = unsafe { &mut *(opaque as *mut Serving<F>) };
    // SAFETY: a live message until this returns.
    (serving.each)(Fetched { message: unsafe { &*message } });
    serving.served += 1;
    if serving.served >= serving.limit {
        // Stops this dispatch; librdkafka puts the ops not yet handed over back at the queue's head.
        // SAFETY: a valid client, called from within its callback dispatch as the API requires.
        unsafe { rd::rd_kafka_yield(serving.client) };
    }
}

impl Drop for PartitionQueue {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and still valid; the callback goes before the handle.
        unsafe {
            unregister(self.queue.as_ptr());
            rd::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

/// What a partition queue hands over: a record, or an event of its partition.
pub(super) enum FetchedEntry<'a> {
    Record(Fetched<'a>),
    /// The partition was read to its end (`enable.partition.eof`).
    End,
    Error(KafkaError),
}

/// A message a partition queue hands over, alive during the callback.
pub(super) struct Fetched<'a> {
    message: &'a rd::rd_kafka_message_t,
}

impl<'a> Fetched<'a> {
    pub fn entry(self) -> FetchedEntry<'a> {
        match self.message.err {
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => FetchedEntry::Record(self),
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => FetchedEntry::End,
            error => FetchedEntry::Error(KafkaError::MessageConsumption(RDKafkaErrorCode::from(error))),
        }
    }

    fn headers(&self) -> Option<*const rd::rd_kafka_headers_t> {
        let mut headers = ptr::null_mut();
        // SAFETY: a live message; librdkafka parses its headers once and keeps them with it.
        let err = unsafe { rd::rd_kafka_message_headers(self.message, &mut headers) };
        (err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && !headers.is_null()).then_some(headers)
    }
}

/// Bytes librdkafka owns for as long as the message lives. Safety: unless null, `data` points to
/// `len` bytes that live for `'a`.
unsafe fn bytes<'a>(data: *const c_void, len: usize) -> Option<&'a [u8]> {
    (!data.is_null()).then(|| unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
}

impl InputRecord for Fetched<'_> {
    fn topic(&self) -> &str {
        // SAFETY: a consumed message has its topic; the name lives as long as the topic object,
        // which the message holds a reference on.
        let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.message.rkt)) };
        name.to_str().unwrap_or("<non-UTF-8 topic name>")
    }

    fn partition(&self) -> i32 {
        self.message.partition
    }

    fn offset(&self) -> i64 {
        self.message.offset
    }

    fn key(&self) -> Option<&[u8]> {
        // SAFETY: the key lives as long as the message.
        unsafe { bytes(self.message.key, self.message.key_len) }
    }

    fn payload(&self) -> Option<&[u8]> {
        // SAFETY: the payload lives as long as the message.
        unsafe { bytes(self.message.payload, self.message.len) }
    }

    fn header_count(&self) -> usize {
        // SAFETY: headers parsed by `headers`, alive with the message.
        self.headers().map_or(0, |headers| unsafe { rd::rd_kafka_header_cnt(headers) })
    }

    fn header(&self, index: usize) -> Option<(&str, Option<&[u8]>)> {
        let headers = self.headers()?;
        let (mut name, mut value, mut len) = (ptr::null(), ptr::null(), 0);
        // SAFETY: headers alive with the message; librdkafka fills the three out-parameters.
        let err = unsafe { rd::rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut len) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: a NUL-terminated name owned by the headers.
        let name = unsafe { CStr::from_ptr(name) }.to_str().unwrap_or("<non-UTF-8 header name>");
        // SAFETY: the value (`len` bytes, or null) is owned by the headers too.
        Some((name, unsafe { bytes(value, len) }))
    }
}
