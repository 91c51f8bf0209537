//! What every partition's database shares, and how one is opened: the block cache, the memtable
//! budget and the balance cache; RocksDB's options and why each is set; opening a partition's
//! state (checking that it is its own and complete), setting damaged or stale state aside, and
//! deleting state this instance no longer owns.

use super::balance_cache::BalanceCache;
use super::keys::{self, MetaKey, CF_BALANCES, CF_HISTORY, CF_META, CF_TRANSACTIONS, RETIRED_CFS};
use super::{
    codec, CacheStats, CachedBalances, Horizons, MemtableBudget, OpenStates, PartitionStore, StoreError, FORMAT_VERSION,
};
use crate::config::StateConfig;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, CompactionDecision, DBCompressionType,
    IteratorMode, Options, WriteBufferManager, DB,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// One memtable may hold at most this share of `state.write_buffer_size`; the shared budget
/// flushes them sooner when many partitions write at once.
const MEMTABLE_SHARE: usize = 4;

/// One partition's write-ahead logs may hold at most this share of `state.write_buffer_size`
/// (what a restart after kill -9 replays). Past it RocksDB flushes every column family holding
/// the oldest log, which is all of them: `meta` takes a few keys per checkpoint and never fills a
/// memtable, so it always holds the oldest log. At an eighth, that flushed `history` and
/// `transactions` at about half a memtable each, doubling their flushes and the compactions
/// behind them: a third of the engine's CPU at 3M events over 100k accounts (docs/BENCHMARKS.md).
/// At a half, it binds about when both are full anyway.
const WAL_SHARE: usize = 2;

/// Level-0 files that start a compaction into the levels below (RocksDB's default is 4). Every
/// flush spans all accounts, so each level-0 compaction rewrites most of the level below it while
/// a column family is small: waiting for twice as many files halves how often that happens.
/// Lookups that get past the key filters check up to this many more files, each behind its own
/// bloom filter.
pub(super) const LEVEL_ZERO_COMPACTION_TRIGGER: i32 = 8;

/// RocksDB's write buffer manager flushes memtables itself once they hold this many times the
/// shared budget. It flushes the wrong ones for ledgerd: at each write over its limit, the
/// memtable of the written database that was created first, usually `meta`'s few keys or a
/// memtable flushed a moment ago. With its limit at the budget, those flushes averaged 1.3 MB
/// beside the checkpoints' 4.3 MB and doubled the compactions (docs/BENCHMARKS.md). Above the
/// budget the checkpoints flush ([`PartitionStore::flush_largest_memtables_over_budget`]); RocksDB
/// still bounds what they cannot, such as states replaying their logs at once after a restart.
pub(super) const BACKSTOP_SHARE: usize = 2;

/// Flushes write level 0 uncompressed; every level below it is LZ4. Level-0 files are few (usually
/// at most [`LEVEL_ZERO_COMPACTION_TRIGGER`] per column family) and soon merged into the level
/// below, so compressing them spent CPU on bytes about to be rewritten: without it the engine
/// costs about 8% less CPU per record (docs/BENCHMARKS.md). With dynamic level sizes (RocksDB's
/// default) the second entry is the level that level 0 merges into, whatever its number.
const COMPRESSION_PER_LEVEL: [DBCompressionType; 7] = {
    use DBCompressionType::{Lz4, None};
    [None, Lz4, Lz4, Lz4, Lz4, Lz4, Lz4]
};

/// Opening a state after kill -9 replays its write-ahead logs into memtables and, by default,
/// then writes those memtables out as level-0 files before the open returns: about a quarter of
/// the open's time, on the path from a restart to processing again (docs/BENCHMARKS.md). Kept in
/// memtables instead, they flush when full like any other, and the logs stay until they do.
/// RocksDB still flushes during the replay when its own limit on the shared memtables needs the
/// room (as when many states open at once), and then at its end too: memory stays within that
/// limit ([`BACKSTOP_SHARE`] times the budget) until the first checkpoints flush to the budget.
const RECOVERY_OPTIONS: &str = "avoid_flush_during_recovery=true";

/// A checkpoint inserts its keys in key order, but between two of them a memtable usually holds
/// older keys (the same accounts' ids and history from earlier checkpoints). A plain insert then
/// searches its skip list from the top; an insert with a hint starts from where the last one
/// ended and climbs only as far as it must. The hint map is keyed by a prefix of each key: a
/// zero-length prefix makes it one hint per memtable, whatever the number of accounts. It changes
/// where a search starts, never the result; RocksDB ignores it when writers insert concurrently.
/// Memtable inserts took 37% fewer instructions in the engine at 10k accounts, 45% at 200k
/// (docs/BENCHMARKS.md, thirty-second session).
const INSERT_HINT_OPTIONS: &str = "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.0";

/// The API keeps a snapshot of the newest acknowledged checkpoint, and of each one committed but
/// not yet acknowledged ([`super::views`]), so a partition always has one open. A compaction's output
/// keeps the sequence numbers a snapshot may need, and when that snapshot is released RocksDB by
/// default rewrites such bottommost files at once, only to zero them ("BottommostFiles"): three
/// times the compactions of a catch-up without snapshots (docs/BENCHMARKS.md, forty-first
/// session). An hour's delay leaves that to files no ordinary compaction rewrote meanwhile.
const SNAPSHOT_RELEASE_OPTIONS: &str = "bottommost_file_compaction_delay=3600";

/// Shared resources for every partition's database.
pub struct StoreEnv {
    root: PathBuf,
    cache: Cache,
    write_buffers: WriteBufferManager,
    /// Checkpointed balances of every partition, within `state.balance_cache_size`.
    balances: Arc<BalanceCache>,
    /// `state.write_buffer_size`: the shared memtable budget, which also sizes one memtable
    /// ([`MEMTABLE_SHARE`]) and one partition's write-ahead logs ([`WAL_SHARE`]).
    write_buffer_size: usize,
    /// Every open partition's database, for the flushes that keep the memtable budget.
    pub(super) open_states: Arc<OpenStates>,
    /// `state.history_retention` in micros; 0 keeps all history.
    history_retention_micros: i64,
}

/// A partition's state that was found unusable and moved out of the way.
#[derive(Debug)]
pub struct SetAside {
    pub moved_to: PathBuf,
    pub reason: String,
}

impl StoreEnv {
    pub fn new(config: &StateConfig) -> Result<StoreEnv, StoreError> {
        std::fs::create_dir_all(&config.dir).map_err(|source| StoreError::Io { path: config.dir.clone(), source })?;
        let cache = Cache::new_lru_cache(config.block_cache_size.0 as usize);
        // Memtables are charged to the block cache: total memory stays within block_cache_size.
        // RocksDB's own flushes over the budget only back ledgerd's up: see [`BACKSTOP_SHARE`].
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            config.write_buffer_size.0 as usize * BACKSTOP_SHARE,
            false,
            cache.clone(),
        );
        let history_retention_micros = i64::try_from(config.history_retention.as_micros()).unwrap_or(i64::MAX);
        Ok(StoreEnv {
            root: config.dir.clone(),
            cache,
            write_buffers,
            balances: Arc::new(BalanceCache::new(config.balance_cache_size.0 as usize)),
            write_buffer_size: config.write_buffer_size.0 as usize,
            open_states: Arc::default(),
            history_retention_micros,
        })
    }

    pub fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.root.join(format!("{topic}-{partition}"))
    }

    /// Bytes used by the shared block cache (memtables included).
    pub fn cache_usage(&self) -> usize {
        self.cache.get_usage()
    }

    /// Bytes of the shared block cache pinned by readers and memtables.
    pub fn cache_pinned_usage(&self) -> usize {
        self.cache.get_pinned_usage()
    }

    /// Bytes of memtables across every partition (also counted in `cache_usage`).
    pub fn memtable_usage(&self) -> usize {
        self.write_buffers.get_usage()
    }

    /// `state.dir`: every partition's database lives below it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Table options for a column family; `point_lookups` when it is read by key (bloom filters).
    fn table(&self, point_lookups: bool) -> BlockBasedOptions {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        // Point lookups of transaction ids are mostly misses: bloom filters answer them in memory.
        if point_lookups {
            table.set_bloom_filter(10.0, false);
        }
        table.set_cache_index_and_filter_blocks(true);
        // Filters and indexes in 4 KiB partitions under a small pinned top level: a lookup loads
        // the one partition it needs. With whole-file filters, every file a flush or compaction
        // wrote had its entire filter read (and checksummed) on its first lookup, and again
        // whenever the shared cache evicted it: a third of the engine's time once the state
        // outgrew the cache (docs/BENCHMARKS.md).
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_pin_top_level_index_and_filter(true);
        table
    }

    pub(super) fn options(&self) -> Options {
        // The rocksdb crate has no setters for these; strings set them on fresh options, before
        // anything whose lifetime the crate tracks (cache, write buffer manager) is attached.
        let mut options = Options::default()
            .get_options_from_string(RECOVERY_OPTIONS)
            .expect("RECOVERY_OPTIONS is a valid RocksDB options string")
            .get_options_from_string(INSERT_HINT_OPTIONS)
            .expect("INSERT_HINT_OPTIONS is a valid RocksDB options string")
            .get_options_from_string(SNAPSHOT_RELEASE_OPTIONS)
            .expect("SNAPSHOT_RELEASE_OPTIONS is a valid RocksDB options string");
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_block_based_table_factory(&self.table(true));
        // Over the shared budget a checkpoint flushes the largest memtables of all states
        // ([`PartitionStore::flush_largest_memtables_over_budget`]); RocksDB's own flushes only
        // back that up ([`BACKSTOP_SHARE`]). `atomic_flush` would flush every column family at
        // once, but its many small flushes cost more compaction than that saved
        // (docs/BENCHMARKS.md).
        options.set_write_buffer_manager(&self.write_buffers);
        // Without it every memtable is sized as RocksDB's default (64 MiB), and so was the
        // memtable bloom filter `transactions` once had: 6.4 MiB, counted in the memtable's size.
        // With twelve partitions the shared budget then flushed those memtables when they held
        // 1.8 MB of data in 9 MB (docs/BENCHMARKS.md).
        options.set_write_buffer_size(self.write_buffer_size / MEMTABLE_SHARE);
        // What a restart after kill -9 replays; why it is as large as it is: [`WAL_SHARE`].
        options.set_max_total_wal_size((self.write_buffer_size / WAL_SHARE) as u64);
        options.set_compression_per_level(&COMPRESSION_PER_LEVEL);
        options.set_level_zero_file_num_compaction_trigger(LEVEL_ZERO_COMPACTION_TRIGGER);
        options.set_max_open_files(256);
        options.set_keep_log_file_num(3);
        options.set_max_log_file_size(8 << 20);
        options
    }

    /// Opens a partition's database. Compaction drops history entries with a retention time below
    /// `horizons.history` and transactions with an event time below `horizons.dedupe` (nothing is
    /// read back to delete them). Column families of earlier layouts are dropped.
    fn open_db(&self, path: &Path, horizons: &Horizons) -> Result<DB, rocksdb::Error> {
        let options = self.options();
        // A database that does not exist yet has no column families to list.
        let retired: Vec<&str> = match DB::list_cf(&options, path) {
            Ok(existing) => RETIRED_CFS.into_iter().filter(|name| existing.iter().any(|e| e == name)).collect(),
            Err(_) => Vec::new(),
        };
        let cfs = keys::ALL_CFS.iter().chain(&retired).map(|name| {
            let mut cf_options = options.clone();
            if *name == CF_HISTORY {
                // Read only by ranges of one account (never a point lookup): a bloom filter would
                // be built at every flush and compaction and never read.
                cf_options.set_block_based_table_factory(&self.table(false));
                let horizon = Arc::clone(&horizons.history);
                drop_below(
                    &mut cf_options,
                    "ledgerd_history_retention",
                    move || horizon.load(Ordering::Relaxed),
                    codec::history_retention_micros,
                );
            }
            if *name == CF_TRANSACTIONS {
                // No memtable bloom filter: the key filters in front of RocksDB (`filter`) answer
                // lookups of new ids; what reaches RocksDB is mostly ids that are there.
                let (horizon, held) = (Arc::clone(&horizons.dedupe), Arc::clone(&horizons.dedupe_held));
                let below = move || horizon.load(Ordering::Relaxed).min(held.load(Ordering::Relaxed));
                drop_below(&mut cf_options, "ledgerd_dedupe_window", below, codec::transaction_event_time);
            }
            ColumnFamilyDescriptor::new(*name, cf_options)
        });
        let mut db = DB::open_cf_descriptors(&options, path, cfs)?;
        for name in retired {
            db.drop_cf(name)?;
        }
        Ok(db)
    }

    /// Moves the state of `topic`/`partition` aside (e.g. when it is older than the snapshot a
    /// restore is about to load). The caller must have closed it.
    pub fn set_aside(&self, topic: &str, partition: i32, reason: String) -> Result<SetAside, StoreError> {
        let path = self.partition_dir(topic, partition);
        let moved_to = path.with_file_name(format!(
            "{}.aside-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
        ));
        std::fs::rename(&path, &moved_to).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        Ok(SetAside { moved_to, reason })
    }

    /// Deletes the state of a partition this instance no longer owns. Fails, harmlessly, while a
    /// handle to it is still open.
    pub fn delete_partition(&self, topic: &str, partition: i32) -> Result<(), StoreError> {
        let path = self.partition_dir(topic, partition);
        if !path.exists() {
            return Ok(());
        }
        // Destroy takes the database's lock, so it cannot pull state from under an open handle.
        DB::destroy(&self.options(), &path)?;
        std::fs::remove_dir_all(&path).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(StoreError::Io { path, source: e }),
        })
    }

    /// Partitions of `topic` that have a state directory here.
    pub fn local_partitions(&self, topic: &str) -> Vec<i32> {
        let prefix = format!("{topic}-");
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut found: Vec<i32> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| name.strip_prefix(&prefix)?.parse().ok())
            .collect();
        found.sort_unstable();
        found
    }

    /// Opens (or creates) the state of `topic`/`partition`. State that cannot be opened, or that
    /// belongs to another topic, partition or format version, is moved aside and replaced by empty
    /// state, which then rebuilds from the input.
    pub fn open_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<(PartitionStore, Option<SetAside>), StoreError> {
        let path = self.partition_dir(topic, partition);
        let identity = format!("{topic}\0{partition}");
        let mut set_aside = None;
        let horizons = Horizons::default();
        let problem = match self.open_db(&path, &horizons) {
            Ok(db) => match check_identity(&db, &identity).and_then(|()| check_complete(&db)) {
                Ok(()) => return Ok((self.store(db, path, &identity, horizons)?, None)),
                Err(reason) => reason,
            },
            // Our own previous handle may still be closing (e.g. an API read holds it for a moment
            // after a quick revoke and re-assign): that is not damage, the caller retries.
            Err(e) if e.to_string().contains("lock") => return Err(StoreError::Rocks(e)),
            Err(e) => format!("cannot open: {e}"),
        };
        // The failed handle is dropped above, so the directory can be moved.
        set_aside.replace(self.set_aside(topic, partition, problem)?);
        let db = self.open_db(&path, &horizons)?;
        Ok((self.store(db, path, &identity, horizons)?, set_aside))
    }

    /// Lookups the balance cache answered and did not, and its memory.
    pub fn balance_cache_stats(&self) -> CacheStats {
        self.balances.stats()
    }

    fn store(&self, db: DB, path: PathBuf, identity: &str, horizons: Horizons) -> Result<PartitionStore, StoreError> {
        let cache =
            CachedBalances { owner: AtomicU32::new(self.balances.new_owner()), cache: Arc::clone(&self.balances) };
        let memtables = MemtableBudget {
            usage: self.write_buffers.clone(),
            budget: self.write_buffer_size,
            open: Arc::clone(&self.open_states),
        };
        let store = PartitionStore::new(db, path, identity, horizons, self.history_retention_micros, cache, memtables)?;
        store.horizons.history.store(store.retention_horizon(store.watermark_micros), Ordering::Relaxed);
        Ok(store)
    }
}

/// Makes compaction drop the values whose time (read by `time_of`, without decoding them) is below
/// `horizon()`. Undecodable values are kept. RocksDB applies compaction filters to values that
/// open snapshots still see, so a reader of an older view must hold its horizon back meanwhile.
fn drop_below(
    options: &mut Options,
    name: &str,
    horizon: impl Fn() -> i64 + Send + 'static,
    time_of: fn(&[u8]) -> Option<i64>,
) {
    options.set_compaction_filter(name, move |_level: u32, _key: &[u8], value: &[u8]| match time_of(value) {
        Some(time) if time < horizon() => CompactionDecision::Remove,
        _ => CompactionDecision::Keep,
    });
}

/// Fresh databases have no identity yet; existing ones must match exactly.
fn check_identity(db: &DB, identity: &str) -> Result<(), String> {
    let meta = db.cf_handle(CF_META).ok_or("no meta column family")?;
    let read = |key: MetaKey| db.get_cf(meta, key.name()).map_err(|e| format!("cannot read meta: {e}"));
    let format = read(MetaKey::FormatVersion)?;
    let stored_identity = read(MetaKey::Identity)?;
    match (format, stored_identity) {
        (None, None) => Ok(()),
        (Some(format), Some(stored)) => {
            let version = <[u8; 4]>::try_from(format.as_slice()).map(u32::from_be_bytes).ok();
            if version != Some(FORMAT_VERSION) {
                return Err(format!("format version {version:?}, expected {FORMAT_VERSION}"));
            }
            if stored != identity.as_bytes() {
                return Err(format!("belongs to {:?}", String::from_utf8_lossy(&stored).replace('\0', "/")));
            }
            Ok(())
        }
        _ => Err("incomplete meta (format version or identity missing)".into()),
    }
}

/// State without a next offset must be empty: anything else is a restore that was interrupted
/// before its final, offset-bearing batch.
fn check_complete(db: &DB) -> Result<(), String> {
    let meta = db.cf_handle(CF_META).ok_or("no meta column family")?;
    let balances = db.cf_handle(CF_BALANCES).ok_or("no balances column family")?;
    let has_offset = db.get_cf(meta, MetaKey::NextOffset.name()).map_err(|e| format!("cannot read meta: {e}"))?;
    if has_offset.is_some() || db.iterator_cf(balances, IteratorMode::Start).next().is_none() {
        Ok(())
    } else {
        Err("holds balances but no checkpoint (an interrupted restore)".into())
    }
}
