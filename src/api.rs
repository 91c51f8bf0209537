//! The HTTP API: balances (now or at a past event time) and the audit trail of any account,
//! every account's balances as NDJSON, Prometheus metrics, liveness and readiness.
//!
//! Any instance answers for any account: it finds the account's partition with the producers'
//! partitioner and answers from its own state or forwards to the owner (see `routing`). Answers
//! are read from checkpointed state, never from uncheckpointed work in progress, so each reflects
//! a consistent prefix of its partition: the `offset` in the response (every input record below it).
//!
//! `/v1/` routes pass a [`Guard`] first: request size, the rate limit, then the bearer token.
//! `/livez`, `/readyz` and `/metrics` stay open, so probes and scrapers need no secret.

mod forward;

pub use forward::{Forwarder, FORWARDED};

use crate::ledger::history::balances_as_of;
use crate::ledger::{Amount, Currency, HistoryEntry};
use crate::metrics::{ErrorKind, Metrics};
use crate::registry::PartitionRegistry;
use crate::routing::directory::Owner;
use crate::routing::{Directory, Partitioner};
use crate::store::PartitionStore;
use axum::body::Body;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<PartitionRegistry>,
    pub metrics: Metrics,
    pub guard: Arc<Guard>,
    pub routing: Arc<Routing>,
}

/// What the API needs to find the instance serving an account.
pub struct Routing {
    pub instance_id: String,
    pub partitioner: Partitioner,
    /// The input topic's partition count; 0 until the topics are set up.
    pub partitions: AtomicI32,
    pub directory: Arc<Directory>,
    pub forwarder: Forwarder,
}

/// What a `/v1/` request must pass before its handler runs.
pub struct Guard {
    /// The bearer token; `None` means no authentication.
    token: Option<String>,
    max_request_bytes: usize,
    limiter: Option<Mutex<TokenBucket>>,
}

impl Guard {
    /// `rate_limit` is requests per second (0: unlimited), with bursts of one second's worth.
    pub fn new(token: Option<String>, max_request_bytes: u64, rate_limit: u32) -> Guard {
        let limiter = (rate_limit > 0).then(|| {
            let rate = f64::from(rate_limit);
            Mutex::new(TokenBucket { rate, tokens: rate, last: Instant::now() })
        });
        Guard { token, max_request_bytes: usize::try_from(max_request_bytes).unwrap_or(usize::MAX), limiter }
    }

    /// The refusal to send instead of running the handler, if any.
    fn refusal(&self, request: &Request) -> Option<Response> {
        let declared_body = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let target = request.uri().path_and_query().map_or(0, |target| target.as_str().len());
        let size = target + header_bytes(request.headers()) + declared_body;
        if size > self.max_request_bytes {
            return Some(error(StatusCode::PAYLOAD_TOO_LARGE, "request too large"));
        }
        if let Some(limiter) = &self.limiter {
            if !limiter.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let mut refusal = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
                refusal.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                return Some(refusal);
            }
        }
        if let Some(token) = &self.token {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
                let mut refusal = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                refusal.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                return Some(refusal);
            }
        }
        None
    }
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum()
}

/// Compares without stopping at the first difference, so response time does not reveal how much
/// of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Refills at `rate` tokens per second up to `rate`; a request takes one.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// The `/v1/` routes, as documented in `docs/openapi.json` (a test keeps the two in sync).
pub const V1_ROUTES: [&str; 4] = [
    "/v1/accounts/{account_id}",
    "/v1/accounts/{account_id}/transactions",
    "/v1/balances",
    "/v1/partitions/{partition}/balances",
];

pub fn router(state: ApiState) -> Router {
    let guarded = Router::new()
        .route(V1_ROUTES[0], get(account))
        .route(V1_ROUTES[1], get(transactions))
        .route(V1_ROUTES[2], get(all_balances))
        .route(V1_ROUTES[3], get(partition_balances))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    Router::new()
        .merge(guarded)
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route_layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// 503 with `Retry-After`: the partition is between owners (or this instance is still starting).
fn moving(partition: Option<i32>) -> Response {
    let message = match partition {
        Some(p) => format!("partition {p} is moving between instances or still restoring; retry shortly"),
        None => "this instance does not know the input's partitions yet; retry shortly".to_owned(),
    };
    let mut response =
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": message, "partition": partition }))).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// Logs and counts a storage failure; the client learns only that it was internal.
fn internal(state: &ApiState, partition: i32, e: &dyn std::fmt::Display) -> Response {
    state.metrics.handled_error(ErrorKind::StateRead, &format_args!("partition {partition}: {e}"));
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// Where a partition's answers come from.
enum Place {
    Local(Arc<PartitionStore>),
    Remote(Owner),
    Moving,
}

impl ApiState {
    fn partition_of(&self, account: &str) -> Option<i32> {
        let partitions = self.routing.partitions.load(Ordering::Acquire);
        (partitions > 0).then(|| self.routing.partitioner.partition(account.as_bytes(), partitions))
    }

    /// Local if this instance serves `partition`; else its owner, unless the request was already
    /// forwarded once (then the directory that sent it here is stale: the partition is moving).
    fn locate(&self, partition: i32, headers: &HeaderMap) -> Place {
        if let Some(store) = self.registry.store(partition) {
            return Place::Local(store);
        }
        if headers.contains_key(FORWARDED) || self.registry.is_preparing(partition) {
            return Place::Moving;
        }
        match self.routing.directory.owner(partition) {
            Some(owner) if owner.instance_id != self.routing.instance_id => Place::Remote(owner),
            _ => Place::Moving,
        }
    }

    /// The account's partition and its local store, or the answer to send instead: the owner's
    /// (forwarded), or 503 while the partition is moving.
    async fn serving_store(
        &self,
        account_id: &str,
        uri: axum::http::Uri,
        headers: HeaderMap,
    ) -> Result<(i32, Arc<PartitionStore>), Response> {
        let Some(partition) = self.partition_of(account_id) else { return Err(moving(None)) };
        match self.locate(partition, &headers) {
            Place::Local(store) => Ok((partition, store)),
            Place::Remote(owner) => Err(self.forward(partition, &owner, &RequestParts { uri, headers }).await),
            Place::Moving => Err(moving(Some(partition))),
        }
    }

    async fn forward(&self, partition: i32, owner: &Owner, request: &RequestParts) -> Response {
        let target = request.uri.path_and_query().map_or("/", |p| p.as_str());
        match self.routing.forwarder.get(&owner.url, target, &request.headers).await {
            Ok(response) => response,
            Err(e) => {
                self.metrics.handled_error(
                    ErrorKind::Forward,
                    &format_args!("partition {partition} to {} at {}: {e}", owner.instance_id, owner.url),
                );
                moving(Some(partition))
            }
        }
    }
}

/// What a handler needs of the request to forward it.
struct RequestParts {
    uri: axum::http::Uri,
    headers: HeaderMap,
}

#[derive(Deserialize)]
struct AsOfQuery {
    as_of: Option<String>,
}

/// Parses an RFC 3339 `as_of` into event-time micros, or the 400 to answer.
#[allow(clippy::result_large_err)] // The error is the response itself, built once per bad request.
fn parse_as_of(as_of: Option<&str>) -> Result<Option<i64>, Response> {
    let Some(text) = as_of else { return Ok(None) };
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| Some(t.timestamp_micros()))
        .map_err(|_| error(StatusCode::BAD_REQUEST, "as_of must be an RFC 3339 timestamp, e.g. 2024-03-11T15:57:09Z"))
}

fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

fn balances_json(balances: &[(Currency, Amount)]) -> serde_json::Map<String, serde_json::Value> {
    balances.iter().map(|(currency, amount)| (currency.as_str().to_owned(), json!(amount.to_string()))).collect()
}

/// The refusal for an `as_of` before the history the partition holds.
fn before_history(floor: i64) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({
            "error": "as_of is before the history this partition holds (history starts after a restore from a \
                      snapshot, an upgrade, or state.history_retention)",
            "history_from": rfc3339(floor),
        })),
    )
        .into_response()
}

async fn account(
    State(state): State<ApiState>,
    Path(account_id): Path<String>,
    Query(query): Query<AsOfQuery>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let as_of = match parse_as_of(query.as_of.as_deref()) {
        Ok(as_of) => as_of,
        Err(refusal) => return refusal,
    };
    let (partition, store) = match state.serving_store(&account_id, uri, headers).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let read = match store.read_account(&account_id, as_of) {
        Ok(Some(read)) => read,
        Ok(None) => {
            return (StatusCode::NOT_FOUND, Json(json!({ "error": "account not found", "account_id": account_id })))
                .into_response()
        }
        Err(e) => return internal(&state, partition, &e),
    };
    let mut body = json!({
        "account_id": account_id,
        "partition": partition,
        "offset": read.next_offset,
        "served_by": state.routing.instance_id,
    });
    let balances = match as_of {
        None => read.balances,
        Some(time) if time < read.history_floor_micros => return before_history(read.history_floor_micros),
        Some(time) => {
            body["as_of"] = json!(rfc3339(time));
            balances_as_of(&read.balances, &read.applied_history, time)
        }
    };
    body["balances"] = serde_json::Value::Object(balances_json(&balances));
    Json(body).into_response()
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    before: Option<i64>,
}

/// Largest page of the audit trail.
const MAX_PAGE: usize = 1000;

async fn transactions(
    State(state): State<ApiState>,
    Path(account_id): Path<String>,
    Query(query): Query<PageQuery>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return error(StatusCode::BAD_REQUEST, "limit must be between 1 and 1000 (default 100)");
    }
    let (partition, store) = match state.serving_store(&account_id, uri, headers).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let page = match store.history_page(&account_id, query.before, limit) {
        Ok(page) => page,
        Err(e) => return internal(&state, partition, &e),
    };
    let entries: Vec<serde_json::Value> = page.entries.iter().map(entry_json).collect();
    let mut body = json!({
        "account_id": account_id,
        "partition": partition,
        "offset": page.next_offset,
        "served_by": state.routing.instance_id,
        "transactions": entries,
    });
    if page.more {
        body["next_before"] = json!(page.entries.last().map(|e| e.offset));
    }
    Json(body).into_response()
}

fn entry_json(entry: &HistoryEntry) -> serde_json::Value {
    let mut out = json!({ "offset": entry.offset, "outcome": entry.outcome.as_str() });
    if !entry.transaction_id.is_empty() {
        out["transaction_id"] = json!(entry.transaction_id);
    }
    if let Some(kind) = entry.kind {
        out["type"] = json!(kind.as_str());
    }
    if let Some(time) = entry.event_time_micros {
        out["timestamp"] = json!(rfc3339(time));
    }
    if let Some((amount, currency)) = entry.effect {
        out["effect"] = json!({ "amount": amount.to_string(), "currency": currency.as_str() });
    }
    if let Some(reverses) = &entry.reverses {
        out["reverses"] = json!(reverses);
    }
    if let Some(reason) = &entry.reason {
        out["reason"] = json!(reason);
    }
    out
}

const NDJSON: &str = "application/x-ndjson";

/// One partition's accounts at `as_of` (or now), as NDJSON lines, from local state only. Lines
/// stream while the scan runs, so a large partition starts answering at once (a forwarding peer's
/// `routing.forward_timeout` covers the wait for the first bytes, not the whole scan).
async fn partition_balances(
    State(state): State<ApiState>,
    Path(partition): Path<i32>,
    Query(query): Query<AsOfQuery>,
) -> Response {
    let as_of = match parse_as_of(query.as_of.as_deref()) {
        Ok(as_of) => as_of,
        Err(refusal) => return refusal,
    };
    let Some(store) = state.registry.store(partition) else { return moving(Some(partition)) };
    let (lines_tx, lines_rx) = tokio::sync::mpsc::channel(4);
    let (start_tx, start_rx) = tokio::sync::oneshot::channel();
    let metrics = state.metrics.clone();
    tokio::task::spawn_blocking(move || stream_partition(&store, partition, as_of, start_tx, lines_tx, &metrics));
    match start_rx.await {
        Ok(Ok(())) => ([(header::CONTENT_TYPE, NDJSON)], body_of(lines_rx)).into_response(),
        Ok(Err(floor)) => before_history(floor),
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

/// Scans one partition into `lines`. `start` learns first whether `as_of` is within the history
/// (else the floor it is before); a failure after that aborts the stream.
fn stream_partition(
    store: &PartitionStore,
    partition: i32,
    as_of: Option<i64>,
    start: tokio::sync::oneshot::Sender<Result<(), i64>>,
    lines: tokio::sync::mpsc::Sender<Chunk>,
    metrics: &Metrics,
) {
    let mut start = Some(start);
    let offset = std::cell::Cell::new(0);
    let mut out = Vec::new();
    let send = |out: &mut Vec<u8>| lines.blocking_send(Ok(std::mem::take(out).into())).is_ok();
    let scan = store.scan_balances_as_of(
        as_of,
        |next_offset, floor| {
            offset.set(next_offset);
            let refused = as_of.is_some_and(|time| time < floor);
            let _ = start.take().map(|start| start.send(if refused { Err(floor) } else { Ok(()) }));
            if refused {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
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
            metrics.handled_error(ErrorKind::StateRead, &format_args!("partition {partition}: {e}"));
            // Before the first line this drops `start` (500); after it, the stream aborts.
            drop(start);
            let _ = lines.blocking_send(Err(std::io::Error::other("state read failed")));
        }
    }
}

/// Every account's balances at `as_of` (or now), gathered from every instance, as NDJSON. Every
/// partition must have a known owner first (else 503); a partition that fails part-way aborts the
/// stream, so a client never mistakes a partial answer for a whole one.
async fn all_balances(
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
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(4);
    tokio::spawn(async move {
        for (partition, place) in places {
            let path = format!("/v1/partitions/{partition}/balances{query_string}");
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
                    let parts = RequestParts { uri: path.parse().expect("a valid path"), headers: headers.clone() };
                    state.forward(partition, &owner, &parts).await
                }
            };
            // A failure aborts the stream (the client sees it incomplete); the reason is logged and counted.
            let abort = |why: String| {
                state.metrics.handled_error(ErrorKind::Forward, &format_args!("all-accounts balances: {why}"));
                Err(std::io::Error::other(why))
            };
            if response.status() != StatusCode::OK {
                let _ = tx.send(abort(format!("partition {partition} answered {}", response.status()))).await;
                return;
            }
            let mut body = response.into_body().into_data_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.or_else(|e| abort(format!("partition {partition} failed part-way: {e}")));
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    ([(header::CONTENT_TYPE, NDJSON)], body_of(rx)).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.registry.is_ready() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn guard(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    match state.guard.refusal(&request) {
        None => next.run(request).await,
        Some(refusal) => refusal,
    }
}

async fn count_requests(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    // The matched route template, never the raw path: labels stay bounded.
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.http_request(&route, response.status().as_str(), started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::PartitionHandle;
    use axum::body::Body;
    use tower::ServiceExt;

    /// A router over one partition holding account `acct-1` with 12.50 USD.
    fn app(guard: Guard, dir: &std::path::Path) -> Router {
        let env = crate::store::test_env(dir);
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        let mut batch = store.begin();
        batch.put_balance("acct-1", Currency::parse("USD").unwrap(), Amount::parse("12.50").unwrap(), 1);
        batch.commit(1, 0).unwrap();
        let registry = Arc::new(PartitionRegistry::default());
        registry.insert(Arc::new(PartitionHandle::new(0, Arc::new(store))));
        router(ApiState {
            registry,
            metrics: Metrics::new(),
            guard: Arc::new(guard),
            routing: Arc::new(one_partition()),
        })
    }

    /// Routing for a one-partition input served here.
    fn one_partition() -> Routing {
        Routing {
            instance_id: "test".into(),
            partitioner: Partitioner::Murmur2,
            partitions: AtomicI32::new(1),
            directory: Arc::new(Directory::default()),
            forwarder: Forwarder::new("test", std::time::Duration::from_secs(1)),
        }
    }

    async fn get(app: &Router, path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap) {
        let mut request = axum::http::Request::builder().uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        (response.status(), response.headers().clone())
    }

    #[tokio::test]
    async fn v1_routes_need_the_bearer_token_and_probes_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(Guard::new(Some("t0k3n".into()), 16 << 10, 0), dir.path());
        let (status, headers) = get(&app, "/v1/accounts/acct-1", &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        for wrong in ["Bearer t0k3", "Bearer t0k3n2", "t0k3n", "Basic t0k3n"] {
            assert_eq!(get(&app, "/v1/accounts/acct-1", &[("authorization", wrong)]).await.0, StatusCode::UNAUTHORIZED);
        }
        let with_token = [("authorization", "Bearer t0k3n")];
        assert_eq!(get(&app, "/v1/accounts/acct-1", &with_token).await.0, StatusCode::OK);
        assert_eq!(get(&app, "/v1/accounts/nobody", &with_token).await.0, StatusCode::NOT_FOUND);
        assert_eq!(get(&app, "/livez", &[]).await.0, StatusCode::OK);
        assert_eq!(get(&app, "/metrics", &[]).await.0, StatusCode::OK);
        // Not ready (no group joined), but answered without a token.
        assert_eq!(get(&app, "/readyz", &[]).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn without_a_token_configured_v1_routes_are_open() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(Guard::new(None, 16 << 10, 0), dir.path());
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[]).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn requests_beyond_the_rate_limit_get_429_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(Guard::new(None, 16 << 10, 2), dir.path());
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[]).await.0, StatusCode::OK);
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[]).await.0, StatusCode::OK);
        let (status, headers) = get(&app, "/v1/accounts/acct-1", &[]).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_eq!(get(&app, "/livez", &[]).await.0, StatusCode::OK, "probes are not rate limited");
    }

    #[tokio::test]
    async fn oversized_requests_get_413() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(Guard::new(None, 4096, 0), dir.path());
        let big = "x".repeat(5000);
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[("x-padding", &big)]).await.0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(get(&app, &format!("/v1/accounts/{big}"), &[]).await.0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            get(&app, "/v1/accounts/acct-1", &[("content-length", "10000")]).await.0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[]).await.0, StatusCode::OK);
    }

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[tokio::test]
    async fn the_openapi_document_lists_exactly_the_routes_the_router_serves() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("../docs/openapi.json")).unwrap();
        let documented: std::collections::BTreeSet<&str> =
            doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        let served: std::collections::BTreeSet<&str> =
            V1_ROUTES.iter().copied().chain(["/livez", "/readyz", "/metrics"]).collect();
        assert_eq!(documented, served);
        let dir = tempfile::tempdir().unwrap();
        let app = app(Guard::new(None, 16 << 10, 0), dir.path());
        for path in documented {
            let concrete = path.replace("{account_id}", "acct-1").replace("{partition}", "0");
            let response = app
                .clone()
                .oneshot(axum::http::Request::builder().uri(&concrete).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert!(
                [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE].contains(&response.status()),
                "{concrete}: {}",
                response.status()
            );
        }
    }

    #[tokio::test]
    async fn an_account_of_a_partition_nobody_serves_gets_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::test_env(dir.path());
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        let registry = Arc::new(PartitionRegistry::default());
        registry.insert(Arc::new(PartitionHandle::new(0, Arc::new(store))));
        let routing = one_partition();
        routing.partitions.store(64, Ordering::Release);
        let app = router(ApiState {
            registry,
            metrics: Metrics::new(),
            guard: Arc::new(Guard::new(None, 16 << 10, 0)),
            routing: Arc::new(routing),
        });
        // Some of these accounts live in partitions 1..63, which no instance announced.
        let mut moving = 0;
        for n in 0..20 {
            let (status, headers) = get(&app, &format!("/v1/accounts/a{n}"), &[]).await;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(headers[header::RETRY_AFTER], "1");
                moving += 1;
            }
        }
        assert!(moving > 10, "{moving}");
    }
}
