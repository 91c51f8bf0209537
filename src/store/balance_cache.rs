//! Checkpointed balances kept in memory, in front of RocksDB.
//!
//! With many accounts per partition, most records are their account's first in a checkpoint, so
//! applying one reads its account's balance from RocksDB: a walk of the memtables, a filter, an
//! index and a data block, about a fifth of the engine's time with 600,000 accounts in one
//! partition (docs/BENCHMARKS.md). The cache answers such reads from one hash probe.
//!
//! It mirrors the database, never runs ahead of it: a balance goes in after the write that made it
//! durable returned, or after it was read from RocksDB. Every opened [`PartitionStore`] (and every
//! one whose write failed) gets an owner number the process never hands out again, and entries
//! are keyed by it, so a state reopened, replaced or restored anew can never read an earlier
//! state's balances. A partition's reads and writes come from the one thread that owns it at the
//! time (the consumer, or the restore before it), so no read can put back a value a write replaced.
//!
//! One cache serves every partition of the process, bounded by `state.balance_cache_size`. It
//! keeps two generations of fixed capacity: entries go into the current one; when it is full, the
//! older one is emptied and becomes the current one. A hit in the older generation is copied into
//! the current one, so a balance used at least once per generation stays. Each generation
//! allocates its capacity once, so memory never exceeds the budget and nothing is ever rehashed.
//!
//! [`PartitionStore`]: super::PartitionStore

use crate::arena::Span;
use crate::ledger::{Amount, Currency};
// Seeded per process, like the overlay's tables: crafted account ids cannot aim at collisions.
use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Account id bytes budgeted per entry; longer ids fill a generation's id arena first.
const ASSUMED_ID_BYTES: usize = 24;
/// Index bytes per entry: a `u32` and a control byte per bucket, at most 8/7 buckets per entry,
/// rounded up to a power of two (so up to twice that).
const INDEX_BYTES_PER_ENTRY: usize = 12;

/// A balance as of its partition's last write.
struct Entry {
    owner: u32,
    /// The account id, in `Generation::ids`.
    id: Span,
    currency: Currency,
    amount: Amount,
}

/// How many lookups the cache answered and did not, since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Memory the generations allocated.
    pub bytes: usize,
}

pub(super) struct BalanceCache {
    generations: Mutex<Generations>,
    next_owner: AtomicU32,
}

impl BalanceCache {
    /// A cache of at most about `budget` bytes; 0 turns it off.
    pub(super) fn new(budget: usize) -> BalanceCache {
        let per_generation = budget / 2;
        let entries = per_generation / (std::mem::size_of::<Entry>() + ASSUMED_ID_BYTES + INDEX_BYTES_PER_ENTRY);
        let limits = Limits { entries, id_bytes: entries * ASSUMED_ID_BYTES };
        BalanceCache {
            generations: Mutex::new(Generations {
                hasher: RandomState::default(),
                limits,
                current: Generation::default(),
                older: Generation::default(),
                stats: CacheStats::default(),
            }),
            next_owner: AtomicU32::new(0),
        }
    }

    /// A number no other state of this process has had or will have.
    pub(super) fn new_owner(&self) -> u32 {
        // 2^32 opens or failed writes would wrap: far beyond any process's life.
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Generations> {
        // Every update leaves the generations consistent, so a panic elsewhere poisons nothing.
        self.generations.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn get(&self, owner: u32, account: &str, currency: Currency) -> Option<Amount> {
        self.lock().get(owner, account, currency)
    }

    /// Records balances that are now in `owner`'s database (written, or read from it).
    pub(super) fn put<'a>(&self, owner: u32, balances: impl IntoIterator<Item = (&'a str, Currency, Amount)>) {
        let mut generations = self.lock();
        for (account, currency, amount) in balances {
            generations.put(owner, account, currency, amount);
        }
    }

    pub(super) fn stats(&self) -> CacheStats {
        let generations = self.lock();
        CacheStats { bytes: generations.current.bytes() + generations.older.bytes(), ..generations.stats }
    }
}

#[derive(Clone, Copy)]
struct Limits {
    entries: usize,
    id_bytes: usize,
}

struct Generations {
    hasher: RandomState,
    limits: Limits,
    current: Generation,
    older: Generation,
    stats: CacheStats,
}

impl Generations {
    fn hash(&self, owner: u32, account: &str, currency: Currency) -> u64 {
        self.hasher.hash_one((owner, account, currency))
    }

    fn get(&mut self, owner: u32, account: &str, currency: Currency) -> Option<Amount> {
        let hash = self.hash(owner, account, currency);
        if let Some(position) = self.current.find(hash, owner, account, currency) {
            self.stats.hits += 1;
            return Some(self.current.entries[position].amount);
        }
        let Some(position) = self.older.find(hash, owner, account, currency) else {
            self.stats.misses += 1;
            return None;
        };
        self.stats.hits += 1;
        let amount = self.older.entries[position].amount;
        self.insert(hash, owner, account, currency, amount);
        Some(amount)
    }

    fn put(&mut self, owner: u32, account: &str, currency: Currency, amount: Amount) {
        let hash = self.hash(owner, account, currency);
        // The current generation always holds the newest value of what it holds; an older copy
        // in the other generation is shadowed until it is dropped.
        match self.current.find(hash, owner, account, currency) {
            Some(position) => self.current.entries[position].amount = amount,
            None => self.insert(hash, owner, account, currency, amount),
        }
    }

    fn insert(&mut self, hash: u64, owner: u32, account: &str, currency: Currency, amount: Amount) {
        let limits = self.limits;
        if limits.entries == 0 || account.len() > limits.id_bytes {
            return;
        }
        if self.current.entries.len() == limits.entries || self.current.ids.len() + account.len() > limits.id_bytes {
            std::mem::swap(&mut self.current, &mut self.older);
            self.current.clear();
        }
        if self.current.entries.capacity() == 0 {
            self.current = Generation::with_limits(limits);
        }
        let Generations { hasher, current, .. } = self;
        current.insert(hasher, hash, owner, account, currency, amount);
    }
}

#[derive(Default)]
struct Generation {
    ids: String,
    entries: Vec<Entry>,
    /// Positions in `entries`, hashed by owner, account id and currency.
    index: HashTable<u32>,
}

impl Generation {
    fn with_limits(limits: Limits) -> Generation {
        Generation {
            ids: String::with_capacity(limits.id_bytes),
            entries: Vec::with_capacity(limits.entries),
            index: HashTable::with_capacity(limits.entries),
        }
    }

    fn find(&self, hash: u64, owner: u32, account: &str, currency: Currency) -> Option<usize> {
        self.index
            .find(hash, |&position| {
                let entry = &self.entries[position as usize];
                entry.owner == owner && entry.currency == currency && entry.id.of(&self.ids) == account
            })
            .map(|&position| position as usize)
    }

    /// The caller checked that there is room, so this never grows a buffer.
    fn insert(
        &mut self,
        hasher: &RandomState,
        hash: u64,
        owner: u32,
        account: &str,
        currency: Currency,
        amount: Amount,
    ) {
        let position = u32::try_from(self.entries.len()).expect("a generation holds fewer than 2^32 entries");
        let id = Span::push(&mut self.ids, account);
        self.entries.push(Entry { owner, id, currency, amount });
        let Generation { ids, entries, index } = self;
        index.insert_unique(hash, position, |&existing| {
            let entry = &entries[existing as usize];
            hasher.hash_one((entry.owner, entry.id.of(ids), entry.currency))
        });
    }

    fn clear(&mut self) {
        self.ids.clear();
        self.entries.clear();
        self.index.clear();
    }

    fn bytes(&self) -> usize {
        self.ids.capacity() + self.entries.capacity() * std::mem::size_of::<Entry>() + self.index.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::test_values::{amount, eur, usd};

    #[test]
    fn answers_what_was_put_per_owner_account_and_currency() {
        let cache = BalanceCache::new(1 << 20);
        let (first, second) = (cache.new_owner(), cache.new_owner());
        assert_ne!(first, second);
        cache.put(first, [("a", usd(), amount("1.50")), ("a", eur(), amount("2")), ("ab", usd(), amount("3"))]);
        assert_eq!(cache.get(first, "a", usd()), Some(amount("1.50")));
        assert_eq!(cache.get(first, "a", eur()), Some(amount("2")));
        assert_eq!(cache.get(first, "ab", usd()), Some(amount("3")));
        assert_eq!(cache.get(first, "b", usd()), None, "never put");
        assert_eq!(cache.get(second, "a", usd()), None, "another state's balance");
        cache.put(first, [("a", usd(), amount("-4"))]);
        assert_eq!(cache.get(first, "a", usd()), Some(amount("-4")), "a write replaces the balance");
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (4, 2));
    }

    #[test]
    fn stays_within_its_budget_and_keeps_what_is_used() {
        let budget = 64 << 10;
        let cache = BalanceCache::new(budget);
        let owner = cache.new_owner();
        let entries = cache.lock().limits.entries;
        assert!(entries > 100, "{entries} entries per generation");
        cache.put(owner, [("hot", usd(), amount("7"))]);
        for i in 0..entries * 10 {
            cache.put(owner, [(format!("account-{i}").as_str(), usd(), amount(&i.to_string()))]);
            if i % (entries / 2) == 0 {
                // Used once per half generation: never dropped.
                assert_eq!(cache.get(owner, "hot", usd()), Some(amount("7")), "after {i}");
            }
        }
        let last = entries * 10 - 1;
        assert_eq!(cache.get(owner, &format!("account-{last}"), usd()), Some(amount(&last.to_string())));
        assert_eq!(cache.get(owner, "account-0", usd()), None, "dropped with its generation");
        let bytes = cache.stats().bytes;
        assert!(bytes <= budget, "{bytes} bytes allocated for a budget of {budget}");
    }

    #[test]
    fn an_updated_balance_is_not_shadowed_by_an_older_generation() {
        let cache = BalanceCache::new(64 << 10);
        let owner = cache.new_owner();
        let entries = cache.lock().limits.entries;
        cache.put(owner, [("a", usd(), amount("1"))]);
        // Fill the current generation so "a" moves to the older one, then write a new value.
        for i in 0..entries {
            cache.put(owner, [(format!("filler-{i}").as_str(), usd(), amount("0"))]);
        }
        cache.put(owner, [("a", usd(), amount("2"))]);
        assert_eq!(cache.get(owner, "a", usd()), Some(amount("2")));
        for i in 0..entries {
            cache.put(owner, [(format!("more-{i}").as_str(), usd(), amount("0"))]);
        }
        assert_eq!(cache.get(owner, "a", usd()), Some(amount("2")), "the newer value outlives the older");
    }

    #[test]
    fn a_zero_budget_caches_nothing() {
        let cache = BalanceCache::new(0);
        let owner = cache.new_owner();
        cache.put(owner, [("a", usd(), amount("1"))]);
        assert_eq!(cache.get(owner, "a", usd()), None);
        assert_eq!(cache.stats().bytes, 0);
    }
}
