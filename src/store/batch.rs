//! A checkpoint's write batch, encoded here and handed to RocksDB whole.
//!
//! Each `WriteBatch::put_cf` crosses into C++ and costs about 600 instructions there (a save point,
//! a column family lookup, two length-prefixed appends to a growing string, bookkeeping), 7% of
//! everything the engine did per record (callgrind, docs/BENCHMARKS.md, thirty-third session).
//! A checkpoint writes about 1.4 keys per record, so it appends them to one Rust buffer in
//! RocksDB's own batch encoding instead, and RocksDB copies that buffer once. RocksDB then reads
//! such a batch once more to learn what kinds of records it holds (about 280 instructions per
//! key), so the engine saves 1.7% of its instructions, not 7%.
//!
//! The encoding is RocksDB's documented and stable `WriteBatch` format (it is also the write-ahead
//! log's): a 12-byte header (sequence number, then record count, both little-endian), then each
//! record as a type byte, the column family id as a varint unless it is the default family, and
//! the key and value as varint-length-prefixed strings. The type byte and column family id of
//! each kind of record are not written down here: [`RecordPrefix::learn`] reads them from a batch
//! RocksDB itself encoded, so the only assumption left is the header and the length prefixes.

use rocksdb::{ColumnFamily, WriteBatch};

/// Sequence number (8 bytes, set by RocksDB on write) and record count (4 bytes).
const HEADER_LEN: usize = 12;
const COUNT_AT: usize = 8;

/// The bytes one kind of record (a put or a range deletion, in one column family) starts with.
#[derive(Clone, Copy)]
pub(super) struct RecordPrefix {
    /// A type byte and a varint32 column family id fit in six.
    bytes: [u8; 6],
    len: u8,
}

impl RecordPrefix {
    /// A put into `cf`.
    pub(super) fn put(cf: &ColumnFamily) -> RecordPrefix {
        RecordPrefix::learn(|batch| batch.put_cf(cf, b"", b""))
    }

    /// A range deletion in `cf`.
    pub(super) fn delete_range(cf: &ColumnFamily) -> RecordPrefix {
        RecordPrefix::learn(|batch| batch.delete_range_cf(cf, b"", b""))
    }

    /// Has RocksDB encode one record with two empty strings and keeps what precedes them (each
    /// empty string is a single zero length byte).
    fn learn(write_one: impl FnOnce(&mut WriteBatch)) -> RecordPrefix {
        let mut probe = WriteBatch::default();
        write_one(&mut probe);
        let record = &probe.data()[HEADER_LEN..];
        let prefix = record
            .strip_suffix(&[0, 0])
            .filter(|prefix| (1..=6).contains(&prefix.len()))
            .unwrap_or_else(|| panic!("RocksDB encoded a record as {record:?}, not a prefix and two empty strings"));
        let mut bytes = [0; 6];
        bytes[..prefix.len()].copy_from_slice(prefix);
        RecordPrefix { bytes, len: prefix.len() as u8 }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Records in RocksDB's batch encoding, not yet written.
pub(super) struct EncodedBatch {
    rep: Vec<u8>,
    count: u32,
}

impl EncodedBatch {
    /// An empty batch with room for `bytes` of records, so that one the size of the last does
    /// not grow by doubling: each doubling copied what the batch held so far, about 70
    /// instructions per record in all (callgrind).
    pub(super) fn with_capacity(bytes: usize) -> EncodedBatch {
        let mut rep = Vec::with_capacity(HEADER_LEN + bytes);
        rep.resize(HEADER_LEN, 0);
        EncodedBatch { rep, count: 0 }
    }

    /// Bytes of the records so far.
    pub(super) fn records_len(&self) -> usize {
        self.rep.len() - HEADER_LEN
    }

    /// A record of the kind `prefix` names with two strings: a put's key and value, or a range
    /// deletion's first and end keys.
    pub(super) fn push(&mut self, prefix: RecordPrefix, first: &[u8], second: &[u8]) {
        self.rep.extend_from_slice(prefix.as_bytes());
        push_length_prefixed(&mut self.rep, first);
        push_length_prefixed(&mut self.rep, second);
        self.count += 1;
    }

    /// The batch as RocksDB takes it (which copies the encoding once).
    pub(super) fn into_write_batch(mut self) -> WriteBatch {
        self.rep[COUNT_AT..HEADER_LEN].copy_from_slice(&self.count.to_le_bytes());
        WriteBatch::from_data(&self.rep)
    }
}

/// `bytes` after its length as a varint32, as RocksDB's `PutLengthPrefixedSlice` writes it.
fn push_length_prefixed(rep: &mut Vec<u8>, bytes: &[u8]) {
    let mut len = u32::try_from(bytes.len()).expect("RocksDB keys and values are shorter than 4 GiB");
    while len >= 0x80 {
        rep.push(len as u8 | 0x80);
        len >>= 7;
    }
    rep.push(len as u8);
    rep.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rocksdb::{Options, DB};

    fn db_with_families(dir: &std::path::Path) -> DB {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        DB::open_cf(&options, dir, ["first", "second"]).unwrap()
    }

    /// A key or value: lengths around the varint's one- and two-byte boundary and beyond.
    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..140),
            proptest::collection::vec(any::<u8>(), 16_380..16_390),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The encoding equals, byte for byte, the batch RocksDB builds from the same calls.
        #[test]
        fn encodes_as_rocksdb_does(records in proptest::collection::vec((0..3u8, bytes(), bytes()), 0..12)) {
            let dir = tempfile::tempdir().unwrap();
            let db = db_with_families(dir.path());
            let (first, second) = (db.cf_handle("first").unwrap(), db.cf_handle("second").unwrap());
            let mut ours = EncodedBatch::with_capacity(0);
            let mut theirs = WriteBatch::default();
            for (kind, a, b) in &records {
                match kind {
                    0 => {
                        ours.push(RecordPrefix::put(first), a, b);
                        theirs.put_cf(first, a, b);
                    }
                    1 => {
                        ours.push(RecordPrefix::put(second), a, b);
                        theirs.put_cf(second, a, b);
                    }
                    _ => {
                        ours.push(RecordPrefix::delete_range(second), a, b);
                        theirs.delete_range_cf(second, a, b);
                    }
                }
            }
            let ours = ours.into_write_batch();
            prop_assert_eq!(ours.len(), records.len());
            prop_assert_eq!(ours.data(), theirs.data());
        }
    }

    #[test]
    fn a_written_batch_reads_back_in_its_column_families() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_families(dir.path());
        let (first, second) = (db.cf_handle("first").unwrap(), db.cf_handle("second").unwrap());
        let long_value = vec![7u8; 300];
        let mut batch = EncodedBatch::with_capacity(0);
        batch.push(RecordPrefix::put(first), b"a", b"1");
        batch.push(RecordPrefix::put(second), b"a", &long_value);
        batch.push(RecordPrefix::put(second), b"b", b"2");
        batch.push(RecordPrefix::put(second), b"c", b"3");
        batch.push(RecordPrefix::delete_range(second), b"b", b"c");
        db.write(batch.into_write_batch()).unwrap();

        assert_eq!(db.get_cf(first, b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(db.get_cf(second, b"a").unwrap(), Some(long_value));
        assert_eq!(db.get_cf(second, b"b").unwrap(), None);
        assert_eq!(db.get_cf(second, b"c").unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(db.get_cf(first, b"b").unwrap(), None);
    }
}
