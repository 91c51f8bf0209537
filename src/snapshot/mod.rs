//! Balance snapshots on a log-compacted topic, and restores from them.
//!
//! A node that takes over a partition without usable local state loads the partition's snapshot
//! (one record per account, so its size follows the number of accounts) and replays only the input
//! after it, instead of the whole history.
//!
//! ## Writing (see [`round`])
//! Every `snapshot.interval`, for each owned partition, a *round* reads one consistent RocksDB view
//! of the last checkpoint (next offset `N`), and writes a record for every account whose balance
//! changed in a checkpoint with next offset above `S`, the offset of the partition's previous
//! *complete* round, each with `valid_through = N`. Once the broker acknowledged all of them it
//! writes the marker `complete_through = N`, and only after the marker is acknowledged does `S`
//! become `N`. Only the marker's place matters: it is sent after every record of its round is
//! acknowledged, so a retry, which may duplicate a record or let it overtake another of its round,
//! never moves a record past its marker, and a restore picks records by `valid_through`, not by
//! position. The producer is therefore not idempotent (librdkafka's idempotent producer busy-polls
//! while one partition's batch is in flight, see `kafka::producer_client_config`).
//!
//! Rounds are paced: after a round that took `d`, the writer starts no other round (of any
//! partition) for `4 × d`, and then the partition due longest goes first. While state changes
//! faster than rounds keep up, as in a catch-up where nearly every account changes within the
//! interval, each round rewrites the whole state, and back to back they would cost as much as the
//! processing; paced, they take at most a fifth of the writer's time. A round's duration grows with
//! the accounts it writes, so the input a restore replays after the newest marker stays bounded by
//! the number of accounts (times the rate of the input), not by the length of the history.
//!
//! A partition that is catching up also makes its due round wait: one that the consumer has not
//! read to its end since its last round waits until it has consumed 4 input records per balance
//! it holds since that round (`ledgerd_snapshot_round_waiting` is 1 meanwhile). Each round of a
//! catch-up is about a copy of the whole state; waiting, one round covers more input, and the input
//! a restore replays stays below 4 records per balance plus an interval's worth. A partition read to
//! its end since its last round is current and follows the interval. In a 5M-event catch-up over a
//! million accounts, the rounds were all of the extra work ledgerd gave the broker over a bare
//! consumer (docs/BENCHMARKS.md).
//!
//! ## Why a restore is exact
//! Every account record holds the account's state as of exactly the input records below its
//! `valid_through` (it was read from a checkpoint, where state and offset are one atomic batch).
//!
//! Invariant: when a marker `R` is written, every account with an input record below `R` has a
//! record whose `valid_through` `v` satisfies `v >= R`, or `v < R` with no record of the account in
//! `[v, R)`. By induction on complete rounds: the round that writes marker `R` includes every account
//! changed by a checkpoint above `S`, i.e. every account with a change in `[S, R)`, with `v = R`;
//! accounts without such a change already satisfied the invariant for `S`. A round that is
//! interrupted (crash, revoke) between records and marker does not advance `S`, so the next round
//! covers its accounts again.
//!
//! A restore reads the snapshot partition to its end and keeps, per account, the record with the
//! highest `valid_through`, and the marker with the highest `complete_through` `R`. Choosing a
//! higher `v` for an account never breaks the invariant, so it holds for the chosen records and `R`.
//! The restored state is every account's chosen record; consumption starts at `R`, and a record of
//! account `a` at offset `o` is applied only if `o >= v(a)`; `v(a) > R` happens only for accounts
//! written by an interrupted (or later) round, and those few are persisted as "restore skips" until
//! the partition reads past them. Every account thus sees each of its input records exactly once.
//!
//! Compaction keeps the newest record per key, which is the highest `v` for an account as long as
//! rounds of one partition are not written concurrently. One owner's rounds are not: a round ends
//! only once every one of its records has its delivery report (acknowledged, or failed after the
//! delivery timeout), and only then does the next round send anything. Nor are two owners' rounds:
//! a revoked partition's round stops at its next record and never writes its marker, and the revoke
//! waits (up to a few seconds, to stay inside the poll deadline) for its records to be
//! acknowledged. Records still queued or in flight after that land within the producer's delivery
//! timeout, while the new owner writes its first round only a full `snapshot.interval` after it
//! took the partition over (and after reading the snapshot to its end), so a late record cannot
//! overtake a newer one unless its delivery takes longer than that interval. Compaction may also
//! remove old markers; the newest one survives. Records of an interrupted round that follow the
//! newest marker are harmless for the same reason.
//!
//! ## Duplicates after a restore
//! Account records carry the account's remembered transaction ids (those inside `dedupe.window` of
//! event time behind the partition's newest event), so a re-delivered transaction applied before
//! the restore point is still recognised, and reversals still find their target. The bound is the
//! dedupe window itself, as without a restore, except for an account whose ids in the window do not
//! fit in `snapshot.max_record_size`: it keeps the newest that fit (counted in
//! `ledgerd_snapshot_transactions_truncated_total`). A snapshot's size therefore grows with the
//! number of accounts plus the transactions inside the dedupe window, not with the history.

pub mod codec;
pub mod restore;
pub mod round;
pub mod writer;

pub use codec::{Entry, Marker, MARKER_KEY};
