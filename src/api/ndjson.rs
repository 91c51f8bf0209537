//! Many accounts at once, as NDJSON: one partition's accounts from local state, and every
//! account gathered from every instance (the partitions served elsewhere through their owners).

use super::{
    balances_json, before_history, error, moving, parse_as_of, uncommitted, ApiState, AsOfQuery, Place, RequestParts,
};
use crate::metrics::ErrorKind;
use crate::registry::PartitionHandle;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

const NDJSON: &str = "application/x-ndjson";

/// One partition's accounts at `as_of` (or now), as NDJSON lines, from local state only. Lines
/// stream while the scan runs, so a large partition starts answering at once (a forwarding peer's
/// `routing.forward_timeout` covers the wait for the first bytes, not the whole scan).
pub(super) async fn partition_balances(
    State(state): State<ApiState>,
    Path(partition): Path<i32>,
    Query(query): Query<AsOfQuery>,
) -> Response {
    let as_of = match parse_as_of(query.as_of.as_deref()) {
        Ok(as_of) => as_of,
        Err(refusal) => return refusal,
    };
    let Some(handle) = state.registry.serving(partition) else { return moving(Some(partition)) };
    let (lines_tx, lines_rx) = tokio::sync::mpsc::channel(4);
    let (start_tx, start_rx) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        stream_partition(&state, &handle, &runtime, partition, as_of, start_tx, lines_tx)
    });
    match start_rx.await {
        Ok(Start::Lines) => ([(header::CONTENT_TYPE, NDJSON)], body_of(lines_rx)).into_response(),
        Ok(Start::BeforeHistory(floor)) => before_history(floor),
        Ok(Start::Uncommitted) => uncommitted(partition),
        // The scan failed before its first line; it logged and counted why.
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

/// Lines buffered before they are handed to the response.
const NDJSON_CHUNK: usize = 64 << 10;

type Chunk = Result<axum::body::Bytes, std::io::Error>;

fn body_of(rx: tokio::sync::mpsc::Receiver<Chunk>) -> Body {
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// How a partition's scan begins.
enum Start {
    /// Lines follow.
    Lines,
    /// `as_of` is before the partition's history floor, this one.
    BeforeHistory(i64),
    /// The group has not acknowledged the scanned checkpoint as committed in time
    /// ([`ApiState::committed`]).
    Uncommitted,
}

/// Scans one partition into `lines`. `start` learns first whether lines follow, or why not; a
/// failure after that aborts the stream.
fn stream_partition(
    state: &ApiState,
    handle: &PartitionHandle,
    // Where the scan, on a blocking thread, waits for the group ([`ApiState::committed`]).
    runtime: &tokio::runtime::Handle,
    partition: i32,
    as_of: Option<i64>,
    start: tokio::sync::oneshot::Sender<Start>,
    lines: tokio::sync::mpsc::Sender<Chunk>,
) {
    let mut start = Some(start);
    let offset = std::cell::Cell::new(0);
    let mut out = Vec::new();
    let send = |out: &mut Vec<u8>| lines.blocking_send(Ok(std::mem::take(out).into())).is_ok();
    let scan = handle.store.scan_balances_as_of(
        state.read_from(handle),
        as_of,
        |next_offset, floor| {
            offset.set(next_offset);
            let begins = if as_of.is_some_and(|time| time < floor) {
                Start::BeforeHistory(floor)
            } else if !runtime.block_on(state.committed(handle, next_offset)) {
                Start::Uncommitted
            } else {
                Start::Lines
            };
            let lines_follow = matches!(begins, Start::Lines);
            let _ = start.take().map(|start| start.send(begins));
            if lines_follow {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        },
        |account, balances| {
            if !balances.is_empty() {
                let line = json!({
                    "account_id": account,
                    "balances": balances_json(&balances),
                    "partition": partition,
                    "offset": offset.get(),
                });
                serde_json::to_writer(&mut out, &line).expect("writing to a Vec");
                out.push(b'\n');
            }
            // Stop when the client is gone.
            if out.len() >= NDJSON_CHUNK && !send(&mut out) {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        },
    );
    match scan {
        Ok(()) if !out.is_empty() => {
            send(&mut out);
        }
        Ok(()) => {}
        Err(e) => {
            state.metrics.handled_error(ErrorKind::StateRead, &format_args!("partition {partition}: {e}"));
            // Before the first line this drops `start` (500); after it, the stream aborts.
            drop(start);
            let _ = lines.blocking_send(Err(std::io::Error::other("state read failed")));
        }
    }
}

/// Every account's balances at `as_of` (or now), gathered from every instance, as NDJSON. Every
/// partition's answer is opened before the first line is sent, so a refusal (503 while a partition
/// moves, 422 for an `as_of` before a partition's history) is answered as itself; a partition that
/// fails after that aborts the stream, so a client never mistakes a partial answer for a whole one.
pub(super) async fn all_balances(
    State(state): State<ApiState>,
    Query(query): Query<AsOfQuery>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = parse_as_of(query.as_of.as_deref()) {
        return refusal;
    }
    let partitions = state.routing.partitions.load(Ordering::Acquire);
    if partitions <= 0 {
        return moving(None);
    }
    let mut places = Vec::new();
    for partition in 0..partitions {
        match state.locate(partition, &HeaderMap::new()) {
            Place::Moving => return moving(Some(partition)),
            place => places.push((partition, place)),
        }
    }
    let query_string = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    // Dropping an opened answer stops its scan (local) or closes its connection (remote).
    let mut opened = Vec::with_capacity(places.len());
    for (partition, place) in places {
        let response = match place {
            Place::Local(_) | Place::Moving => {
                partition_balances(
                    State(state.clone()),
                    Path(partition),
                    Query(AsOfQuery { as_of: query.as_of.clone() }),
                )
                .await
            }
            Place::Remote(owner) => {
                let path = format!("/v1/partitions/{partition}/balances{query_string}");
                let parts = RequestParts { uri: path.parse().expect("a valid path"), headers: headers.clone() };
                state.forward(partition, &owner, &parts).await
            }
        };
        if response.status() != StatusCode::OK {
            return response;
        }
        opened.push((partition, response));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(4);
    tokio::spawn(async move {
        for (partition, response) in opened {
            let mut body = response.into_body().into_data_stream();
            while let Some(chunk) = body.next().await {
                // A failure aborts the stream (the client sees it incomplete); the reason is logged and counted.
                let chunk = chunk.map_err(|e| {
                    let why = format!("partition {partition} failed part-way: {e}");
                    state.metrics.handled_error(ErrorKind::Forward, &format_args!("all-accounts balances: {why}"));
                    std::io::Error::other(why)
                });
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    ([(header::CONTENT_TYPE, NDJSON)], body_of(rx)).into_response()
}
