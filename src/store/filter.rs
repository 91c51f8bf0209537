//! In-memory key filters in front of the point lookups that mostly miss.
//!
//! Applying a record looks up its transaction id, which is almost always new, and the balance of
//! an account the checkpoint's overlay does not hold yet, which is new for an account's first
//! record. RocksDB answers such a miss from its own bloom filters, but only after walking every
//! memtable and level: 1.3–1.9 µs per lookup, about a third of the engine's time
//! (docs/BENCHMARKS.md). A [`KeyFilter`] answers most misses from one cache line per generation.
//!
//! A filter may say a key is there when it is not (about 1% of absent keys, which then go to
//! RocksDB as before), never the reverse. Every key written through a checkpoint is added before
//! the write, and a [`Loader`] thread adds the keys the state held when it was opened. Until the
//! loader is done the filter answers "maybe" to every key, so a large state opens as fast as before.
//!
//! Keys go into generations of blocked bloom filters (each key's bits in one 64-byte block).
//! A full generation is followed by one twice its size, so no capacity has to be known up front.
//! Transaction ids expire: a generation whose newest event time is behind the dedupe horizon is
//! dropped whole, so the memory follows the ids inside the dedupe window, not the whole history.

use super::codec;
use super::keys::{CF_BALANCES, CF_TRANSACTIONS};
use foldhash::quality::RandomState;
use rocksdb::{ReadOptions, DB};
use std::hash::BuildHasher;
#[cfg(test)]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// About 1% of absent keys are taken for present with 12 bits per key and 8 bits set per key.
const BITS_PER_KEY: usize = 12;
const BITS_SET_PER_KEY: u32 = 8;
const BLOCK_BITS: usize = 512;
/// Keys in a partition's first generation (96 KiB); each further generation doubles, up to
/// [`MAX_CAPACITY`] keys (6 MiB), so a lookup checks few generations.
const FIRST_CAPACITY: usize = 1 << 16;
const MAX_CAPACITY: usize = 1 << 22;
/// The loader checks whether its state is being closed this often (keys).
const CANCEL_CHECK_EVERY: u64 = 4096;

/// Reads the time after which a stored value's key may expire, without decoding the value.
type TimeOf = fn(&[u8]) -> Option<i64>;

/// One cache line of filter bits.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Block([u64; BLOCK_BITS / 64]);

/// A blocked bloom filter of a fixed capacity.
struct Generation {
    blocks: Box<[Block]>,
    capacity: usize,
    len: usize,
    /// The newest time of a key in it (`i64::MAX` for keys that never expire).
    newest_micros: i64,
}

impl Generation {
    fn with_capacity(capacity: usize) -> Generation {
        let blocks = (capacity * BITS_PER_KEY).div_ceil(BLOCK_BITS).max(1);
        Generation {
            blocks: vec![Block::default(); blocks].into_boxed_slice(),
            capacity,
            len: 0,
            newest_micros: i64::MIN,
        }
    }

    /// The block from the hash's high half (multiply-shift instead of a modulo); the bits in it
    /// from the low half by double hashing with an odd step, so the positions are distinct.
    fn locate(&self, hash: u64) -> (usize, impl Iterator<Item = usize>) {
        let block = (((hash >> 32) * self.blocks.len() as u64) >> 32) as usize;
        let low = hash as u32;
        let (first, step) = (low, (low >> 9) | 1);
        let bits = (0..BITS_SET_PER_KEY).map(move |i| (first.wrapping_add(i.wrapping_mul(step)) as usize) % BLOCK_BITS);
        (block, bits)
    }

    fn contains(&self, hash: u64) -> bool {
        let (block, mut bits) = self.locate(hash);
        let words = &self.blocks[block].0;
        bits.all(|bit| words[bit / 64] & (1 << (bit % 64)) != 0)
    }

    fn insert(&mut self, hash: u64, micros: i64) {
        let (block, bits) = self.locate(hash);
        let words = &mut self.blocks[block].0;
        for bit in bits {
            words[bit / 64] |= 1 << (bit % 64);
        }
        self.len += 1;
        self.newest_micros = self.newest_micros.max(micros);
    }

    fn bytes(&self) -> usize {
        self.blocks.len() * std::mem::size_of::<Block>()
    }
}

/// Generations, oldest first; keys are added to the last.
struct Generations {
    list: Vec<Generation>,
    /// Capacity of the first generation.
    first_capacity: usize,
}

impl Generations {
    fn new(first_capacity: usize) -> Generations {
        Generations { list: Vec::new(), first_capacity: first_capacity.clamp(FIRST_CAPACITY, MAX_CAPACITY) }
    }

    fn contains(&self, hash: u64) -> bool {
        self.list.iter().any(|generation| generation.contains(hash))
    }

    fn insert(&mut self, hash: u64, micros: i64) {
        let capacity = match self.list.last() {
            Some(last) if last.len < last.capacity => None,
            Some(last) => Some((last.capacity * 2).min(MAX_CAPACITY)),
            None => Some(self.first_capacity),
        };
        if let Some(capacity) = capacity {
            self.list.push(Generation::with_capacity(capacity));
        }
        self.list.last_mut().expect("pushed above").insert(hash, micros);
    }
}

struct Filter {
    /// False until the loader has added the keys the state held when it was opened.
    loaded: bool,
    generations: Generations,
}

/// Which keys of one column family may exist.
pub(super) struct KeyFilter {
    hasher: RandomState,
    filter: Mutex<Filter>,
    /// Signalled once `loaded` is set.
    load_done: Condvar,
    /// Lookups answered "absent" without reading RocksDB (tests check the filter is in the way).
    #[cfg(test)]
    absent_answers: AtomicU64,
}

impl KeyFilter {
    fn new() -> KeyFilter {
        KeyFilter {
            hasher: RandomState::default(),
            filter: Mutex::new(Filter { loaded: false, generations: Generations::new(FIRST_CAPACITY) }),
            load_done: Condvar::new(),
            #[cfg(test)]
            absent_answers: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Filter> {
        // The filter is only ever set whole bits at a time: a panic elsewhere cannot leave it torn.
        self.filter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// False when `key` is certainly not in the column family; true when it may be.
    pub(super) fn may_contain(&self, key: &[u8]) -> bool {
        let hash = self.hash(key);
        let filter = self.lock();
        let maybe = !filter.loaded || filter.generations.contains(hash);
        #[cfg(test)]
        if !maybe {
            self.absent_answers.fetch_add(1, Ordering::Relaxed);
        }
        maybe
    }

    /// Adds keys (by [`KeyFilter::hash`]) with the time after which they may expire.
    pub(super) fn add(&self, keys: &[(u64, i64)]) {
        let generations = &mut self.lock().generations;
        for &(hash, micros) in keys {
            generations.insert(hash, micros);
        }
    }

    /// Adds keys that never expire, skipping those the filter already holds: a balance is written
    /// again at every checkpoint that changes it, and counting it again would fill generations
    /// with keys they already have.
    pub(super) fn add_lasting(&self, keys: &[u64]) {
        let generations = &mut self.lock().generations;
        for &hash in keys {
            if !generations.contains(hash) {
                generations.insert(hash, i64::MAX);
            }
        }
    }

    /// Drops the generations whose keys all have a time below `micros`.
    pub(super) fn forget_older_than(&self, micros: i64) {
        self.lock().generations.list.retain(|generation| generation.newest_micros >= micros);
    }

    /// Takes the loader's generations (older than any added since the state opened).
    fn finish_load(&self, loaded: Generations) {
        let mut filter = self.lock();
        let added = std::mem::take(&mut filter.generations.list);
        filter.generations.list = loaded.list;
        filter.generations.list.extend(added);
        filter.loaded = true;
        self.load_done.notify_all();
    }

    pub(super) fn is_loaded(&self) -> bool {
        self.lock().loaded
    }

    /// Waits up to `timeout` for the loader; true once loaded.
    #[cfg(test)]
    pub(super) fn wait_until_loaded(&self, timeout: std::time::Duration) -> bool {
        let filter = self.lock();
        let waited = self.load_done.wait_timeout_while(filter, timeout, |filter| !filter.loaded);
        waited.unwrap_or_else(PoisonError::into_inner).0.loaded
    }

    pub(super) fn bytes(&self) -> usize {
        self.lock().generations.list.iter().map(Generation::bytes).sum()
    }

    /// Keys added and not yet dropped with their generation.
    pub(super) fn keys(&self) -> usize {
        self.lock().generations.list.iter().map(|generation| generation.len).sum()
    }

    #[cfg(test)]
    pub(super) fn absent_answers(&self) -> u64 {
        self.absent_answers.load(Ordering::Relaxed)
    }
}

/// The filters of one partition's state.
pub(super) struct KeyFilters {
    pub balances: KeyFilter,
    pub transactions: KeyFilter,
}

impl KeyFilters {
    pub(super) fn new() -> KeyFilters {
        KeyFilters { balances: KeyFilter::new(), transactions: KeyFilter::new() }
    }
}

/// Adds the keys a state held when it was opened to its filters, on a thread of its own. Dropping
/// it stops the thread and waits for it, so the database closes when its store is dropped.
pub(super) struct Loader {
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Loader {
    pub(super) fn start(db: Arc<DB>, filters: Arc<KeyFilters>, path: String) -> Loader {
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancel);
        let spawned = std::thread::Builder::new().name("ledgerd-keyload".into()).spawn(move || {
            let started = std::time::Instant::now();
            let load = |name: &str, filter: &KeyFilter, expires: Option<TimeOf>| {
                load_column_family(&db, name, filter, expires, &stop)
            };
            let result = load(CF_BALANCES, &filters.balances, None).and_then(|balances| {
                Ok(balances + load(CF_TRANSACTIONS, &filters.transactions, Some(codec::transaction_event_time))?)
            });
            match result {
                Ok(keys) if !stop.load(Ordering::Relaxed) => {
                    tracing::debug!(path, keys, millis = started.elapsed().as_millis() as u64, "key filters loaded")
                }
                Ok(_) => {}
                // Lookups stay correct without the filters, only slower; the gauge of unloaded
                // filters shows it.
                Err(error) => tracing::warn!(path, %error, "key filters not loaded: every lookup reads RocksDB"),
            }
        });
        match spawned {
            Ok(thread) => Loader { cancel, thread: Some(thread) },
            Err(error) => {
                tracing::warn!(%error, "key filter loader not started: every lookup reads RocksDB");
                Loader { cancel, thread: None }
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads every key of `name` into a fresh set of generations and hands them to `filter`; with
/// `expires`, each key's time is read from its value. Returns the number of keys read.
fn load_column_family(
    db: &DB,
    name: &str,
    filter: &KeyFilter,
    expires: Option<TimeOf>,
    cancel: &AtomicBool,
) -> Result<u64, rocksdb::Error> {
    let cf = db.cf_handle(name).expect("opened with every column family");
    let estimate = db.property_int_value_cf(cf, "rocksdb.estimate-num-keys")?.unwrap_or(0);
    let mut loaded = Generations::new(usize::try_from(estimate + estimate / 8).unwrap_or(MAX_CAPACITY));
    let mut read = ReadOptions::default();
    // A one-off scan: leave the cache to the blocks lookups need.
    read.fill_cache(false);
    let mut keys = db.raw_iterator_cf_opt(cf, read);
    keys.seek_to_first();
    let mut count = 0u64;
    while let Some(key) = keys.key() {
        let micros = expires.map_or(i64::MAX, |time_of| keys.value().and_then(time_of).unwrap_or(i64::MAX));
        loaded.insert(filter.hash(key), micros);
        count += 1;
        if count.is_multiple_of(CANCEL_CHECK_EVERY) && cancel.load(Ordering::Relaxed) {
            return Ok(count);
        }
        keys.next();
    }
    keys.status()?;
    filter.finish_load(loaded);
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded_filter() -> KeyFilter {
        let filter = KeyFilter::new();
        filter.finish_load(Generations::new(0));
        filter
    }

    fn key(i: u64) -> Vec<u8> {
        format!("account-{}/txn-{i}", i % 977).into_bytes()
    }

    #[test]
    fn an_unloaded_filter_answers_maybe_to_every_key() {
        let filter = KeyFilter::new();
        assert!((0..1000).all(|i| filter.may_contain(&key(i))));
        assert_eq!(filter.absent_answers(), 0);
    }

    #[test]
    fn every_added_key_is_found_and_few_absent_keys_are_taken_for_present() {
        let filter = loaded_filter();
        // Past the first generation's capacity, so lookups span several generations.
        let added: Vec<(u64, i64)> = (0..200_000).map(|i| (filter.hash(&key(i)), i as i64)).collect();
        filter.add(&added);
        assert!((0..200_000).all(|i| filter.may_contain(&key(i))), "no false negatives");
        let false_positives = (200_000..300_000).filter(|i| filter.may_contain(&key(*i))).count();
        // Three generations (64k, 128k, 256k keys) at about 1% each.
        assert!(false_positives < 4_000, "{false_positives} of 100,000 absent keys taken for present");
        assert!(filter.absent_answers() > 96_000);
    }

    #[test]
    fn keys_added_while_loading_and_keys_loaded_are_both_found() {
        let filter = KeyFilter::new();
        filter.add(&[(filter.hash(b"new"), 10)]);
        let mut loaded = Generations::new(10);
        loaded.insert(filter.hash(b"old"), 5);
        filter.finish_load(loaded);
        assert!(filter.may_contain(b"new") && filter.may_contain(b"old"));
        assert!(!filter.may_contain(b"never written"));
    }

    #[test]
    fn generations_behind_the_horizon_are_forgotten_and_newer_ones_kept() {
        let filter = loaded_filter();
        let old: Vec<(u64, i64)> = (0..FIRST_CAPACITY as u64).map(|i| (filter.hash(&key(i)), 100)).collect();
        filter.add(&old);
        // The first generation is full: these start the second.
        let new: Vec<(u64, i64)> = (0..1000).map(|i| (filter.hash(format!("new-{i}").as_bytes()), 200)).collect();
        filter.add(&new);
        filter.forget_older_than(150);
        assert!((0..1000).all(|i| filter.may_contain(format!("new-{i}").as_bytes())));
        let still_found = (0..FIRST_CAPACITY as u64).filter(|i| filter.may_contain(&key(*i))).count();
        assert!(still_found < FIRST_CAPACITY / 50, "{still_found} forgotten keys still found");
    }

    #[test]
    fn a_lasting_key_written_again_is_counted_once() {
        let filter = loaded_filter();
        let hashes: Vec<u64> = (0..1000).map(|i| filter.hash(&key(i))).collect();
        for _ in 0..100 {
            filter.add_lasting(&hashes);
        }
        let filter = filter.lock();
        assert_eq!(filter.generations.list.len(), 1);
        assert!(filter.generations.list[0].len <= 1000);
    }
}
