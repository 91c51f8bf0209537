//! Metrics read when Prometheus scrapes rather than updated by events: readiness, RocksDB memory,
//! the state's size on disk, and each owned partition's consumer lag (the last fetched high
//! watermark minus the checkpointed offset, so records consumed but not yet durable count as lag).

use crate::registry::PartitionRegistry;
use crate::store::StoreEnv;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// The scrape-time gauges, registered as one collector that refreshes them on each scrape.
#[derive(Clone)]
pub(super) struct ScrapeTime {
    ready: IntGauge,
    block_cache: IntGauge,
    block_cache_pinned: IntGauge,
    memtables: IntGauge,
    key_filters: IntGauge,
    key_filters_loading: IntGauge,
    balance_cache: IntGauge,
    /// Follows the cache's own counts (`result`: `hit` or `miss`).
    balance_cache_lookups: IntCounterVec,
    disk: IntGauge,
    lag: IntGaugeVec,
    /// Read, not exposed here: registered on their own.
    checkpointed: IntGaugeVec,
    high_watermark: IntGaugeVec,
    /// Also serialises scrapes, so a lag reset and refill is never seen half done.
    watched: Arc<Mutex<Option<Watched>>>,
}

/// The running instance's parts a scrape reads. Weak: metrics must not keep a stopped instance's
/// RocksDB cache alive.
struct Watched {
    registry: Weak<PartitionRegistry>,
    env: Weak<StoreEnv>,
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

impl ScrapeTime {
    pub(super) fn new(checkpointed: IntGaugeVec, high_watermark: IntGaugeVec) -> ScrapeTime {
        ScrapeTime {
            ready: gauge(
                "ledgerd_ready",
                "1 while /readyz answers 200: the topics are checked, the group is joined and every assigned partition is prepared.",
            ),
            block_cache: gauge(
                "ledgerd_rocksdb_block_cache_usage_bytes",
                "Bytes held by the block cache shared by every partition's RocksDB, memtables included (bounded by state.block_cache_size).",
            ),
            block_cache_pinned: gauge(
                "ledgerd_rocksdb_block_cache_pinned_usage_bytes",
                "Bytes of the block cache pinned by readers and memtables (cannot be evicted).",
            ),
            memtables: gauge(
                "ledgerd_rocksdb_memtable_usage_bytes",
                "Bytes of memtables across every partition's RocksDB (bounded by state.write_buffer_size, charged to the block cache).",
            ),
            key_filters: gauge(
                "ledgerd_state_key_filter_bytes",
                "Bytes of the in-memory filters that answer lookups of absent balances and transaction ids without reading RocksDB (about 1.5 bytes per balance and per remembered transaction id), over the owned partitions.",
            ),
            key_filters_loading: gauge(
                "ledgerd_state_key_filters_loading",
                "Owned partitions whose key filters are still being filled with the keys their state held when opened (their lookups read RocksDB meanwhile). One that stays up logged why its filters were not loaded.",
            ),
            balance_cache: gauge(
                "ledgerd_state_balance_cache_bytes",
                "Bytes allocated to the in-memory cache of checkpointed balances shared by every partition (bounded by state.balance_cache_size).",
            ),
            balance_cache_lookups: IntCounterVec::new(
                Opts::new(
                    "ledgerd_state_balance_cache_lookups_total",
                    "Reads of a stored balance while applying records, by whether the balance cache answered (hit) or RocksDB did (miss).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            disk: gauge(
                "ledgerd_state_disk_usage_bytes",
                "Disk space allocated to files under state.dir: every partition's RocksDB, and state set aside or awaiting deletion.",
            ),
            lag: IntGaugeVec::new(
                Opts::new(
                    "ledgerd_consumer_lag_records",
                    "Records of the owned partition not yet checkpointed: high watermark minus checkpointed offset.",
                ),
                &["partition"],
            )
            .expect("valid metric"),
            checkpointed,
            high_watermark,
            watched: Arc::default(),
        }
    }

    fn gauges(&self) -> [&IntGauge; 8] {
        [
            &self.ready,
            &self.block_cache,
            &self.block_cache_pinned,
            &self.memtables,
            &self.key_filters,
            &self.key_filters_loading,
            &self.balance_cache,
            &self.disk,
        ]
    }

    pub(super) fn watch(&self, registry: Weak<PartitionRegistry>, env: Weak<StoreEnv>) {
        self.watched.lock().unwrap_or_else(|e| e.into_inner()).replace(Watched { registry, env });
    }

    fn refresh(&self, watched: Option<&Watched>) {
        let registry = watched.and_then(|w| w.registry.upgrade());
        self.ready.set(i64::from(registry.as_ref().is_some_and(|r| r.is_ready())));
        let env = watched.and_then(|w| w.env.upgrade());
        let bytes = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.block_cache.set(env.as_ref().map_or(0, |e| bytes(e.cache_usage())));
        self.block_cache_pinned.set(env.as_ref().map_or(0, |e| bytes(e.cache_pinned_usage())));
        self.memtables.set(env.as_ref().map_or(0, |e| bytes(e.memtable_usage())));
        let stores = registry.as_ref().map(|r| r.stores()).unwrap_or_default();
        self.key_filters.set(bytes(stores.iter().map(|(_, store)| store.key_filter_bytes()).sum()));
        let loading = stores.iter().filter(|(_, store)| !store.key_filters_loaded()).count();
        self.key_filters_loading.set(i64::try_from(loading).unwrap_or(i64::MAX));
        let cache = env.as_ref().map(|e| e.balance_cache_stats()).unwrap_or_default();
        self.balance_cache.set(bytes(cache.bytes));
        for (result, count) in [("hit", cache.hits), ("miss", cache.misses)] {
            let counter = self.balance_cache_lookups.with_label_values(&[result]);
            // A counter only rises: an instance restarted in the same process starts again from 0.
            counter.inc_by(count.saturating_sub(counter.get()));
        }
        let disk = env.as_ref().map_or(0, |e| disk_usage(e.root()));
        self.disk.set(i64::try_from(disk).unwrap_or(i64::MAX));

        // Only partitions with both a checkpoint and a fetched high watermark have a lag; a
        // partition that moved away loses both series, so its lag disappears with them.
        let checkpointed = partition_values(&self.checkpointed);
        self.lag.reset();
        for (partition, mark) in partition_values(&self.high_watermark) {
            if let Some(next) = checkpointed.get(&partition) {
                // The watermark is up to statistics.interval.ms old; the checkpoint may be ahead.
                self.lag.with_label_values(&[&partition.to_string()]).set((mark - next).max(0));
            }
        }
    }
}

impl Collector for ScrapeTime {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = Vec::new();
        for gauge in self.gauges() {
            descs.extend(gauge.desc());
        }
        descs.extend(self.balance_cache_lookups.desc());
        descs.extend(self.lag.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(watched.as_ref());
        let mut families = Vec::new();
        for gauge in self.gauges() {
            families.extend(gauge.collect());
        }
        families.extend(self.balance_cache_lookups.collect());
        families.extend(self.lag.collect());
        families
    }
}

/// The current value of each `partition` series of a gauge vector, without creating any.
pub(super) fn partition_values(vec: &IntGaugeVec) -> BTreeMap<i32, i64> {
    vec.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .filter_map(|metric| {
            let label = metric.get_label().iter().find(|label| label.name() == "partition")?;
            Some((label.value().parse().ok()?, metric.get_gauge().get_value() as i64))
        })
        .collect()
}

/// Bytes allocated on disk to the files under `root` (not following symbolic links). Files that
/// vanish during the walk (RocksDB compacting, state being deleted) are skipped.
fn disk_usage(root: &Path) -> u64 {
    let mut total = 0;
    let mut dirs: Vec<PathBuf> = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                total += allocated(&meta);
            }
        }
    }
    total
}

#[cfg(unix)]
fn allocated(meta: &std::fs::Metadata) -> u64 {
    // Blocks, not length: RocksDB preallocates its WAL and MANIFEST files.
    std::os::unix::fs::MetadataExt::blocks(meta) * 512
}

#[cfg(not(unix))]
fn allocated(meta: &std::fs::Metadata) -> u64 {
    meta.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("t-0")).unwrap();
        // Incompressible bytes, so a compressing file system allocates about their length.
        let mut seed = 0x2545_f491_u32;
        let noise: Vec<u8> = (0..110_000)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect();
        std::fs::write(dir.path().join("t-0/000001.sst"), &noise[..100_000]).unwrap();
        std::fs::write(dir.path().join("top"), &noise[100_000..]).unwrap();
        let used = disk_usage(dir.path());
        assert!((110_000..=200_000).contains(&used), "{used}");
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
    }
}
