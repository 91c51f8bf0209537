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
//! state's balances. A partition's reads come from the one thread that owns it at the time (the
//! consumer, or the restore before it), and so do its writes, or the checkpoint writer's thread
//! writes them for it (`writer`). Either way no read can put back a value a write replaced: a
//! balance being written is in the partition's sealed batch, where its reads find it, until the
//! write has answered, after the cache has the new value.
//!
//! One cache serves every partition of the process, bounded by `state.balance_cache_size`. It
//! keeps two generations of fixed capacity: entries go into the current one; when it is full, the
//! older one is emptied and becomes the current one. A hit in the older generation is copied into
//! the current one, so a balance used at least once per generation stays. A generation reserves
//! its entries and ids once (memory the kernel maps only as entries arrive); its hash index grows
//! with what it holds, up to the size its limits need (while it doubles, the old table lives until
//! the new one is filled: for that moment the index takes half as much again). Sized up front,
//! the index of a cache that holds few balances spread them over megabytes, and each lookup
//! waited for memory: at 10,000 accounts the lookups were 9.4% of the engine's profile samples
//! against 4.0% with an index grown to fit (docs/BENCHMARKS.md). A generation that replaces a
//! full one takes over the index the older one grew, so a cache that turns generations over does
//! not grow (and rehash) each one again.
//!
//! What decides the hit rate is how many balances a budget holds: with a million accounts over
//! twelve partitions a miss reads RocksDB, and a 32 MiB cache answered 30% of the reads
//! (docs/BENCHMARKS.md). So an entry is packed (28 bytes, the amount's exact 96-bit mantissa
//! and scale included), a generation is sized by the account ids it is actually given (the
//! average length in the generation before it), and its hash index by the power of two of
//! buckets it will allocate anyway.
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

/// Balances [`BalanceCache::put_in_slots`] puts per taking of the lock.
const PUT_CHUNK: usize = 256;

/// Account id bytes a generation is sized for before any generation has filled.
const ASSUMED_ID_BYTES: usize = 16;
/// hashbrown's index of `u32` positions: per bucket a position and a control byte, plus one group
/// of control bytes (16 with SSE2, the widest); buckets are a power of two, filled to 7/8 at most.
const INDEX_BYTES_PER_BUCKET: usize = std::mem::size_of::<u32>() + 1;
const INDEX_GROUP_BYTES: usize = 16;

/// A balance as of its partition's last write.
struct Entry {
    owner: u32,
    /// The account id, in `Generation::ids`.
    id: Span,
    currency: Currency,
    amount: PackedAmount,
}

impl Entry {
    /// Whether this is `owner`'s balance of `account` in `currency` (`ids`: its generation's ids).
    fn is(&self, ids: &str, owner: u32, account: &str, currency: Currency) -> bool {
        self.owner == owner && self.currency == currency && self.id.of(ids) == account
    }
}

/// An [`Amount`] in 13 bytes instead of 16: its decimal's scale (at most 28) and sign share a
/// byte, the 96-bit mantissa follows. Exact: every amount packs and unpacks to itself.
#[derive(Clone, Copy)]
struct PackedAmount {
    scale_and_sign: u8,
    mantissa: [u8; 12],
}

const SIGN_BIT: u8 = 0x80;

impl PackedAmount {
    fn pack(amount: Amount) -> PackedAmount {
        // rust_decimal's layout: flags (bits 16-23 the scale, bit 31 the sign, the rest zero),
        // then the mantissa's low, middle and high 32 bits, all little-endian.
        let bytes = amount.to_bytes();
        debug_assert!(bytes[0] == 0 && bytes[1] == 0 && bytes[3] & !SIGN_BIT == 0 && bytes[2] & SIGN_BIT == 0);
        let mut mantissa = [0; 12];
        mantissa.copy_from_slice(&bytes[4..]);
        PackedAmount { scale_and_sign: bytes[2] | (bytes[3] & SIGN_BIT), mantissa }
    }

    fn unpack(self) -> Amount {
        let mut bytes = [0; 16];
        bytes[2] = self.scale_and_sign & !SIGN_BIT;
        bytes[3] = self.scale_and_sign & SIGN_BIT;
        bytes[4..].copy_from_slice(&self.mantissa);
        Amount::from_bytes(bytes)
    }
}

/// Where the cache holds a balance a lookup found: a write of that balance after the lookup
/// updates the entry in place instead of hashing and probing again, which at a million accounts
/// loads the index, the entry and the id from memory a second time (docs/BENCHMARKS.md).
/// It stays usable until the generation it points into is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSlot {
    /// The generation's number. A u32 wraps only after 2^32 generations, and a slot lives
    /// from a record's lookup to its checkpoint's write, during which a few turn over at most.
    generation: u32,
    position: u32,
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
        BalanceCache {
            generations: Mutex::new(Generations {
                hasher: RandomState::default(),
                generation: 0,
                generation_budget: budget / 2,
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

    /// The cached balance and where it is held (unless the current generation had no room for
    /// it); counts a hit when there is one. A lookup the cache cannot answer counts as a miss
    /// only once RocksDB is read ([`BalanceCache::put_read`]): most absent balances are of new
    /// accounts, which the key filter answers.
    pub(super) fn get(&self, owner: u32, account: &str, currency: Currency) -> Option<(Amount, Option<CacheSlot>)> {
        self.lock().get(owner, account, currency)
    }

    /// Counts a miss: RocksDB was read for the balance, and `read` is what it held (cached).
    pub(super) fn put_read(&self, owner: u32, account: &str, currency: Currency, read: Option<Amount>) {
        let mut generations = self.lock();
        generations.stats.misses += 1;
        if let Some(amount) = read {
            generations.put(owner, account, currency, amount);
        }
    }

    /// [`BalanceCache::put_in_slots`] without slots.
    #[cfg(test)]
    pub(super) fn put<'a>(&self, owner: u32, balances: impl IntoIterator<Item = (&'a str, Currency, Amount)>) {
        self.put_in_slots(
            owner,
            balances.into_iter().map(|(account, currency, amount)| (account, currency, amount, None)),
        );
    }

    /// Records balances that `owner`'s database now holds, each with the slot a lookup of it
    /// returned, if any. The checkpoint writer's thread puts a checkpoint's balances while the
    /// consumer thread reads others, so the lock is taken for [`PUT_CHUNK`] balances at a time:
    /// with a million accounts a checkpoint puts about one balance per record, and a read waited
    /// for the whole batch (tens of thousands of cold entries) otherwise.
    pub(super) fn put_in_slots<'a>(
        &self,
        owner: u32,
        balances: impl IntoIterator<Item = (&'a str, Currency, Amount, Option<CacheSlot>)>,
    ) {
        let mut balances = balances.into_iter().peekable();
        while balances.peek().is_some() {
            let mut generations = self.lock();
            for (account, currency, amount, slot) in balances.by_ref().take(PUT_CHUNK) {
                match slot.and_then(|slot| generations.entry_in(slot, owner)) {
                    Some(entry) => {
                        debug_assert!(generations.current.entries[entry].id.of(&generations.current.ids) == account);
                        debug_assert!(generations.current.entries[entry].currency == currency);
                        generations.current.entries[entry].amount = PackedAmount::pack(amount);
                    }
                    None => generations.put(owner, account, currency, amount),
                }
            }
        }
    }

    pub(super) fn stats(&self) -> CacheStats {
        let generations = self.lock();
        CacheStats { bytes: generations.current.bytes() + generations.older.bytes(), ..generations.stats }
    }
}

/// What one generation holds at most.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Limits {
    entries: usize,
    id_bytes: usize,
}

impl Limits {
    /// The most entries that fit `budget` bytes with ids of `id_bytes` on average, their
    /// index included.
    fn for_budget(budget: usize, id_bytes: usize) -> Limits {
        let per_entry = std::mem::size_of::<Entry>() + id_bytes;
        let mut best = Limits { entries: 0, id_bytes: 0 };
        for buckets in (4..usize::BITS).map(|k| 1usize << k) {
            let Some(room) = budget.checked_sub(buckets * INDEX_BYTES_PER_BUCKET + INDEX_GROUP_BYTES) else { break };
            // Up to 7/8 of the buckets; a bigger index for fewer entries is never chosen.
            let entries = (buckets / 8 * 7).min(room / per_entry);
            if entries > best.entries {
                best = Limits { entries, id_bytes: entries * id_bytes };
            }
        }
        best
    }
}

struct Generations {
    hasher: RandomState,
    /// The current generation's number: raised each time it is replaced.
    generation: u32,
    /// Bytes each of the two generations may allocate.
    generation_budget: usize,
    current: Generation,
    older: Generation,
    stats: CacheStats,
}

impl Generations {
    fn hash(&self, owner: u32, account: &str, currency: Currency) -> u64 {
        self.hasher.hash_one((owner, account, currency))
    }

    fn get(&mut self, owner: u32, account: &str, currency: Currency) -> Option<(Amount, Option<CacheSlot>)> {
        let hash = self.hash(owner, account, currency);
        if let Some(position) = self.current.find(hash, owner, account, currency) {
            self.stats.hits += 1;
            return Some((self.current.entries[position].amount.unpack(), Some(self.slot(position))));
        }
        let position = self.older.find(hash, owner, account, currency)?;
        self.stats.hits += 1;
        let amount = self.older.entries[position].amount.unpack();
        let slot = self.insert(hash, owner, account, currency, amount).map(|position| self.slot(position));
        Some((amount, slot))
    }

    fn slot(&self, position: usize) -> CacheSlot {
        CacheSlot { generation: self.generation, position: position as u32 }
    }

    /// The position in the current generation `slot` points to, if it still does and holds an
    /// entry of `owner`. A generation's entries never move and each key has at most one, which is
    /// never removed from the current generation: a slot that was found for a key stays that key's.
    fn entry_in(&self, slot: CacheSlot, owner: u32) -> Option<usize> {
        let position = slot.position as usize;
        let entry = self.current.entries.get(position).filter(|_| slot.generation == self.generation)?;
        (entry.owner == owner).then_some(position)
    }

    fn put(&mut self, owner: u32, account: &str, currency: Currency, amount: Amount) {
        let hash = self.hash(owner, account, currency);
        // The current generation always holds the newest value of what it holds; an older copy
        // in the other generation is shadowed until it is dropped.
        match self.current.find(hash, owner, account, currency) {
            Some(position) => self.current.entries[position].amount = PackedAmount::pack(amount),
            None => {
                if self.insert(hash, owner, account, currency, amount).is_none() {
                    // Generations are sized apart, so the older one may hold an id the current
                    // one has no room for: its value is no longer the balance.
                    self.older.remove(hash, owner, account, currency);
                }
            }
        }
    }

    /// Adds the entry to the current generation and returns its position; `None` when there is
    /// no room for it.
    fn insert(&mut self, hash: u64, owner: u32, account: &str, currency: Currency, amount: Amount) -> Option<usize> {
        if self.current.limits.entries == 0 {
            // First use (with a budget too small for one entry, this allocates nothing).
            self.current = Generation::with_limits(Limits::for_budget(self.generation_budget, ASSUMED_ID_BYTES));
            self.generation = self.generation.wrapping_add(1);
        }
        if self.current.is_full_for(account) {
            if self.current.entries.is_empty() {
                return None; // caching is off, or an id longer than a generation's ids
            }
            // The next generation is sized for the ids this one was given. The older one's
            // memory is freed first, so two generations are never exceeded, and its index, grown
            // for a full generation, becomes the next one's.
            let id_bytes = self.current.ids.len().div_ceil(self.current.entries.len()).max(1);
            let index = std::mem::take(&mut self.older).index;
            let next = Generation::with_index(Limits::for_budget(self.generation_budget, id_bytes), index);
            self.older = std::mem::replace(&mut self.current, next);
            self.generation = self.generation.wrapping_add(1);
        }
        if self.current.is_full_for(account) {
            return None; // an id longer than a generation's ids
        }
        let Generations { hasher, current, .. } = self;
        Some(current.insert(hasher, hash, owner, account, currency, amount))
    }
}

#[derive(Default)]
struct Generation {
    limits: Limits,
    ids: String,
    entries: Vec<Entry>,
    /// Positions in `entries`, hashed by owner, account id and currency.
    index: HashTable<u32>,
}

impl Generation {
    fn with_limits(limits: Limits) -> Generation {
        Generation::with_index(limits, HashTable::new())
    }

    /// A generation whose index starts from `index`'s memory, emptied, and shrunk when it is
    /// larger than `limits` need.
    fn with_index(limits: Limits, mut index: HashTable<u32>) -> Generation {
        index.clear();
        // An empty table has nothing to rehash: the hasher is never called.
        index.shrink_to(limits.entries, |_| 0);
        Generation {
            limits,
            ids: String::with_capacity(limits.id_bytes),
            entries: Vec::with_capacity(limits.entries),
            index,
        }
    }

    fn is_full_for(&self, account: &str) -> bool {
        self.entries.len() == self.limits.entries || self.ids.len() + account.len() > self.limits.id_bytes
    }

    fn find(&self, hash: u64, owner: u32, account: &str, currency: Currency) -> Option<usize> {
        self.index
            .find(hash, |&position| self.entries[position as usize].is(&self.ids, owner, account, currency))
            .map(|&position| position as usize)
    }

    fn remove(&mut self, hash: u64, owner: u32, account: &str, currency: Currency) {
        let Generation { ids, entries, index, .. } = self;
        let found = index.find_entry(hash, |&position| entries[position as usize].is(ids, owner, account, currency));
        if let Ok(found) = found {
            found.remove();
        }
    }

    /// Returns the entry's position. The caller checked that there is room, so this never grows
    /// `ids` or `entries`; the index grows as hash tables do, never beyond what `limits` need.
    fn insert(
        &mut self,
        hasher: &RandomState,
        hash: u64,
        owner: u32,
        account: &str,
        currency: Currency,
        amount: Amount,
    ) -> usize {
        let position = u32::try_from(self.entries.len()).expect("a generation holds fewer than 2^32 entries");
        let id = Span::push(&mut self.ids, account);
        self.entries.push(Entry { owner, id, currency, amount: PackedAmount::pack(amount) });
        let Generation { ids, entries, index, .. } = self;
        index.insert_unique(hash, position, |&existing| {
            let entry = &entries[existing as usize];
            hasher.hash_one((entry.owner, entry.id.of(ids), entry.currency))
        });
        position as usize
    }

    fn bytes(&self) -> usize {
        self.ids.capacity() + self.entries.capacity() * std::mem::size_of::<Entry>() + self.index.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::test_values::{amount, eur, usd};

    fn get(cache: &BalanceCache, owner: u32, account: &str, currency: Currency) -> Option<Amount> {
        cache.get(owner, account, currency).map(|(amount, _)| amount)
    }

    #[test]
    fn answers_what_was_put_per_owner_account_and_currency() {
        let cache = BalanceCache::new(1 << 20);
        let (first, second) = (cache.new_owner(), cache.new_owner());
        assert_ne!(first, second);
        cache.put(first, [("a", usd(), amount("1.50")), ("a", eur(), amount("2")), ("ab", usd(), amount("3"))]);
        assert_eq!(get(&cache, first, "a", usd()), Some(amount("1.50")));
        assert_eq!(get(&cache, first, "a", eur()), Some(amount("2")));
        assert_eq!(get(&cache, first, "ab", usd()), Some(amount("3")));
        assert_eq!(get(&cache, first, "b", usd()), None, "never put");
        assert_eq!(get(&cache, second, "a", usd()), None, "another state's balance");
        cache.put(first, [("a", usd(), amount("-4"))]);
        assert_eq!(get(&cache, first, "a", usd()), Some(amount("-4")), "a write replaces the balance");
        assert_eq!((cache.stats().hits, cache.stats().misses), (4, 0), "an unanswered lookup is not yet a miss");
        cache.put_read(first, "b", usd(), None);
        cache.put_read(first, "c", usd(), Some(amount("5")));
        assert_eq!(get(&cache, first, "b", usd()), None, "an absent balance is not cached");
        assert_eq!(get(&cache, first, "c", usd()), Some(amount("5")), "a balance read from RocksDB is");
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (5, 2), "each read of RocksDB is a miss");
    }

    #[test]
    fn stays_within_its_budget_and_keeps_what_is_used() {
        let budget = 64 << 10;
        let cache = BalanceCache::new(budget);
        let owner = cache.new_owner();
        let entries = first_generation_entries(budget);
        assert!(entries > 100, "{entries} entries per generation");
        cache.put(owner, [("hot", usd(), amount("7"))]);
        for i in 0..entries * 10 {
            cache.put(owner, [(format!("account-{i}").as_str(), usd(), amount(&i.to_string()))]);
            if i % (entries / 2) == 0 {
                // Used once per half generation: never dropped.
                assert_eq!(get(&cache, owner, "hot", usd()), Some(amount("7")), "after {i}");
            }
        }
        let last = entries * 10 - 1;
        assert_eq!(get(&cache, owner, &format!("account-{last}"), usd()), Some(amount(&last.to_string())));
        assert_eq!(get(&cache, owner, "account-0", usd()), None, "dropped with its generation");
        let bytes = cache.stats().bytes;
        assert!(bytes <= budget, "{bytes} bytes allocated for a budget of {budget}");
    }

    #[test]
    fn an_updated_balance_is_not_shadowed_by_an_older_generation() {
        let cache = BalanceCache::new(64 << 10);
        let owner = cache.new_owner();
        let entries = first_generation_entries(64 << 10);
        cache.put(owner, [("a", usd(), amount("1"))]);
        // Fill the current generation so "a" moves to the older one, then write a new value.
        for i in 0..entries {
            cache.put(owner, [(format!("filler-{i}").as_str(), usd(), amount("0"))]);
        }
        cache.put(owner, [("a", usd(), amount("2"))]);
        assert_eq!(get(&cache, owner, "a", usd()), Some(amount("2")));
        for i in 0..entries {
            cache.put(owner, [(format!("more-{i}").as_str(), usd(), amount("0"))]);
        }
        assert_eq!(get(&cache, owner, "a", usd()), Some(amount("2")), "the newer value outlives the older");
    }

    #[test]
    fn a_write_to_a_slot_updates_the_entry_found_and_a_stale_slot_is_looked_up_again() {
        let budget = 64 << 10;
        let cache = BalanceCache::new(budget);
        let (owner, other) = (cache.new_owner(), cache.new_owner());
        cache.put(owner, [("a", usd(), amount("1")), ("b", usd(), amount("1"))]);
        let slot = cache.get(owner, "a", usd()).and_then(|(_, slot)| slot).expect("in the current generation");
        cache.put_in_slots(owner, [("a", usd(), amount("2"), Some(slot))]);
        assert_eq!(get(&cache, owner, "a", usd()), Some(amount("2")));
        assert_eq!(get(&cache, owner, "b", usd()), Some(amount("1")), "only the slot's entry changed");
        // Another state (as after a failed write, which gets a new owner) does not write through it.
        cache.put_in_slots(other, [("a", usd(), amount("3"), Some(slot))]);
        assert_eq!(get(&cache, owner, "a", usd()), Some(amount("2")));
        assert_eq!(get(&cache, other, "a", usd()), Some(amount("3")));
        // Once its generation is replaced, the slot's position holds some other balance.
        let fillers = first_generation_entries(budget);
        for i in 0..fillers {
            cache.put(owner, [(format!("filler-{i}").as_str(), usd(), amount("0"))]);
        }
        cache.put_in_slots(owner, [("a", usd(), amount("4"), Some(slot))]);
        assert_eq!(get(&cache, owner, "a", usd()), Some(amount("4")));
        for i in 0..fillers {
            assert_eq!(get(&cache, owner, &format!("filler-{i}"), usd()), Some(amount("0")), "filler-{i}");
        }
    }

    fn first_generation_entries(budget: usize) -> usize {
        Limits::for_budget(budget / 2, ASSUMED_ID_BYTES).entries
    }

    #[test]
    fn amounts_pack_exactly() {
        for text in ["0", "-0.00", "1.50", "-1.5", "123456789012345678901234567.8", "-0.0000000000000000000000000001"] {
            let value = amount(text);
            let unpacked = PackedAmount::pack(value).unpack();
            assert_eq!((unpacked, unpacked.to_string()), (value, value.to_string()), "{text}");
        }
        assert_eq!(std::mem::size_of::<Entry>(), 28);
    }

    #[test]
    fn a_generation_fits_its_budget_and_the_next_is_sized_for_the_ids_seen() {
        for budget in [1 << 10, 64 << 10, 1 << 20, 16 << 20] {
            for id_bytes in [1, 16, 36, 256] {
                let limits = Limits::for_budget(budget, id_bytes);
                assert!(limits.entries > 0, "{budget} bytes hold no entry of {id_bytes}-byte ids");
                // Full, its index grown entry by entry.
                let mut generation = Generation::with_limits(limits);
                let hasher = RandomState::default();
                let id = "x".repeat(id_bytes);
                for owner in 0..limits.entries as u32 {
                    let hash = hasher.hash_one((owner, id.as_str(), usd()));
                    generation.insert(&hasher, hash, owner, &id, usd(), amount("1"));
                }
                assert!(generation.is_full_for(&id));
                assert!(generation.bytes() <= budget, "{limits:?}: {} bytes of {budget}", generation.bytes());
                // The next generation takes its index over, emptied, and shrunk if too large.
                let smaller = Limits::for_budget(budget / 4, id_bytes);
                let next = Generation::with_index(smaller, generation.index);
                assert!(next.index.is_empty());
                assert!(next.bytes() <= budget / 4, "{smaller:?}: {} bytes of {}", next.bytes(), budget / 4);
            }
        }
        // Ids of 4 bytes: once the first generation (sized for 16) fills, the next holds more.
        let budget = 64 << 10;
        let cache = BalanceCache::new(budget);
        let owner = cache.new_owner();
        let first = first_generation_entries(budget);
        for i in 0..=first {
            cache.put(owner, [(format!("{i:04}").as_str(), usd(), amount("1"))]);
        }
        let generations = cache.lock();
        assert_eq!(generations.older.entries.len(), first);
        assert!(generations.current.limits.entries > first * 5 / 4, "{:?}", generations.current.limits);
        drop(generations);
        assert!(cache.stats().bytes <= budget);
    }

    #[test]
    fn a_balance_with_no_room_in_the_current_generation_is_not_answered_from_the_older() {
        let cache = BalanceCache::new(64 << 10);
        let owner = cache.new_owner();
        let long = "x".repeat(200);
        cache.put(owner, [(long.as_str(), usd(), amount("1"))]);
        // As after generations of 1-byte ids: the current one's ids cannot take `long`.
        {
            let mut generations = cache.lock();
            let tiny = Generation::with_limits(Limits { entries: 8, id_bytes: 8 });
            generations.older = std::mem::replace(&mut generations.current, tiny);
            generations.generation += 1;
        }
        assert_eq!(get(&cache, owner, &long, usd()), Some(amount("1")), "found in the older generation");
        cache.put(owner, [(long.as_str(), usd(), amount("2"))]);
        assert_eq!(get(&cache, owner, &long, usd()), None, "the older value is dropped, not answered");
    }

    #[test]
    fn a_zero_budget_caches_nothing() {
        let cache = BalanceCache::new(0);
        let owner = cache.new_owner();
        cache.put(owner, [("a", usd(), amount("1"))]);
        assert_eq!(get(&cache, owner, "a", usd()), None);
        assert_eq!(cache.stats().bytes, 0);
    }
}
