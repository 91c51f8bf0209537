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
mod guard;
mod ndjson;

pub use forward::{Forwarder, FORWARDED};
pub use guard::Guard;

use crate::ledger::history::balances_as_of;
use crate::ledger::{Amount, Currency, HistoryEntry};
use crate::metrics::{ErrorKind, Metrics};
use crate::registry::{PartitionHandle, PartitionRegistry};
use crate::routing::directory::Owner;
use crate::routing::{Directory, Partitioner};
use crate::store::ReadFrom;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ndjson::{all_balances, partition_balances};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<PartitionRegistry>,
    pub metrics: Metrics,
    pub guard: Arc<Guard>,
    pub routing: Arc<Routing>,
    /// `http.read_committed`: answer from a checkpoint only once the group has its commit.
    pub read_committed: bool,
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
        .route_layer(middleware::from_fn_with_state(state.clone(), guard::guard));
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
        Some(p) => format!("partition {p} is moving between instances or still catching up; retry shortly"),
        None => "this instance does not know the input's partitions yet; retry shortly".to_owned(),
    };
    retry_shortly(message, partition)
}

/// 503 with `Retry-After: 1`: an answer is coming, not from this state yet.
fn retry_shortly(message: String, partition: Option<i32>) -> Response {
    let mut response =
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": message, "partition": partition }))).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// How long a read waits for the group to acknowledge the checkpoint it read, before it answers
/// 503 ([`PartitionHandle::wait_committed`]). Reads answer from the newest acknowledged checkpoint
/// whose view is kept ([`ReadFrom::Acknowledged`]), so they wait only while none is: state found
/// ahead of the group's committed offset at assignment waits for its first commit's answer.
const COMMIT_WAIT: Duration = Duration::from_secs(1);

/// The answer while the checkpoint a read found is not yet acknowledged as committed by the group
/// (the broker is slow to answer commits, or this instance is no longer a member).
fn uncommitted(partition: i32) -> Response {
    let message = format!("partition {partition}: its state is not yet committed to the consumer group; retry shortly");
    retry_shortly(message, Some(partition))
}

/// Logs and counts a storage failure; the client learns only that it was internal.
fn internal(state: &ApiState, partition: i32, e: &dyn std::fmt::Display) -> Response {
    state.metrics.handled_error(ErrorKind::StateRead, &format_args!("partition {partition}: {e}"));
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// Where a partition's answers come from.
enum Place {
    Local(Arc<PartitionHandle>),
    Remote(Owner),
    Moving,
}

impl ApiState {
    /// Whether state checkpointed up to `next_offset` may be served: at once unless
    /// `http.read_committed`, else once the group has acknowledged it (waiting up to [`COMMIT_WAIT`]).
    async fn committed(&self, handle: &PartitionHandle, next_offset: i64) -> bool {
        !self.read_committed || handle.wait_committed(next_offset, COMMIT_WAIT).await
    }

    /// Which checkpoint reads of `handle` answer from: with `http.read_committed`, the newest the
    /// group has acknowledged when its view is kept, so that reads need not wait for a commit in
    /// flight.
    fn read_from(&self, handle: &PartitionHandle) -> ReadFrom {
        if self.read_committed {
            handle.read_acknowledged()
        } else {
            ReadFrom::Newest
        }
    }

    fn partition_of(&self, account: &str) -> Option<i32> {
        let partitions = self.routing.partitions.load(Ordering::Acquire);
        (partitions > 0).then(|| self.routing.partitioner.partition(account.as_bytes(), partitions))
    }

    /// Local if this instance serves `partition`; else its owner, unless the request was already
    /// forwarded once (then the directory that sent it here is stale: the partition is moving).
    fn locate(&self, partition: i32, headers: &HeaderMap) -> Place {
        if let Some(handle) = self.registry.serving(partition) {
            return Place::Local(handle);
        }
        if headers.contains_key(FORWARDED) || self.registry.is_preparing(partition) {
            return Place::Moving;
        }
        match self.routing.directory.owner(partition) {
            Some(owner) if owner.instance_id != self.routing.instance_id => Place::Remote(owner),
            _ => Place::Moving,
        }
    }

    /// The account's partition and its local handle, or the answer to send instead: the owner's
    /// (forwarded), or 503 while the partition is moving. Takes the request itself: its URI and
    /// headers are moved, not cloned, and only a forward uses them.
    async fn serving_handle(
        &self,
        account_id: &str,
        request: Request,
    ) -> Result<(i32, Arc<PartitionHandle>), Response> {
        let Some(partition) = self.partition_of(account_id) else { return Err(moving(None)) };
        let (axum::http::request::Parts { uri, headers, .. }, _) = request.into_parts();
        match self.locate(partition, &headers) {
            Place::Local(handle) => Ok((partition, handle)),
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
    request: Request,
) -> Response {
    let as_of = match parse_as_of(query.as_of.as_deref()) {
        Ok(as_of) => as_of,
        Err(refusal) => return refusal,
    };
    let (partition, handle) = match state.serving_handle(&account_id, request).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let read = match handle.store.read_account(state.read_from(&handle), &account_id, as_of) {
        Ok(Some(read)) => read,
        Ok(None) => {
            return (StatusCode::NOT_FOUND, Json(json!({ "error": "account not found", "account_id": account_id })))
                .into_response()
        }
        Err(e) => return internal(&state, partition, &e),
    };
    if !state.committed(&handle, read.next_offset).await {
        return uncommitted(partition);
    }
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
    request: Request,
) -> Response {
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return error(StatusCode::BAD_REQUEST, "limit must be between 1 and 1000 (default 100)");
    }
    let (partition, handle) = match state.serving_handle(&account_id, request).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let page = match handle.store.history_page(state.read_from(&handle), &account_id, query.before, limit) {
        Ok(page) => page,
        Err(e) => return internal(&state, partition, &e),
    };
    if !state.committed(&handle, page.next_offset).await {
        return uncommitted(partition);
    }
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

async fn count_requests(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    // The matched route template, never the raw path: labels stay bounded.
    // (A clone of the matched path shares its text; no string is built per request.)
    let route = request.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("", MatchedPath::as_str);
    state.metrics.http_request(route, response.status().as_str(), started.elapsed());
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
            read_committed: true,
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

    #[tokio::test]
    async fn the_openapi_document_lists_exactly_the_routes_the_router_serves() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
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
    async fn all_accounts_before_a_partitions_history_get_422_not_a_cut_stream() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::store::test_env(dir.path());
        let (store, _) = env.open_partition("transactions", 0).unwrap();
        let mut batch = store.begin();
        batch.put_balance("acct-1", Currency::parse("USD").unwrap(), Amount::parse("12.50").unwrap(), 1);
        // As after a restore from a snapshot: the history starts at the newest restored event.
        let floor = parse_as_of(Some("2024-06-01T00:00:00Z")).ok().flatten().unwrap();
        batch.commit_with_floor(1, floor, floor).unwrap();
        let registry = Arc::new(PartitionRegistry::default());
        registry.insert(Arc::new(PartitionHandle::new(0, Arc::new(store))));
        let app = router(ApiState {
            registry,
            metrics: Metrics::new(),
            guard: Arc::new(Guard::new(None, 16 << 10, 0)),
            routing: Arc::new(one_partition()),
            read_committed: true,
        });
        let request = |path: &str| axum::http::Request::builder().uri(path).body(Body::empty()).unwrap();
        let before = app.clone().oneshot(request("/v1/balances?as_of=2024-05-01T00:00:00Z")).await.unwrap();
        assert_eq!(before.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = axum::body::to_bytes(before.into_body(), 1 << 20).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["history_from"], "2024-06-01T00:00:00Z");
        let after = app.clone().oneshot(request("/v1/balances?as_of=2024-07-01T00:00:00Z")).await.unwrap();
        assert_eq!(after.status(), StatusCode::OK);
        let body = axum::body::to_bytes(after.into_body(), 1 << 20).await.unwrap();
        let line: serde_json::Value = serde_json::from_slice(body.trim_ascii_end()).unwrap();
        assert_eq!(line["balances"]["USD"], "12.50");
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
            read_committed: true,
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

    /// Partition 0's state in `dir`.
    fn open_store(dir: &std::path::Path) -> Arc<crate::store::PartitionStore> {
        Arc::new(crate::store::test_env(dir).open_partition("transactions", 0).unwrap().0)
    }

    /// Checkpoints `amount` USD as `account`'s balance, with `next_offset` as the next offset.
    fn checkpoint_balance(store: &crate::store::PartitionStore, account: &str, amount: &str, next_offset: i64) {
        let mut batch = store.begin();
        batch.put_balance(account, Currency::parse("USD").unwrap(), Amount::parse(amount).unwrap(), next_offset);
        batch.commit(next_offset, 0).unwrap();
    }

    /// The API of one instance that owns partition 0 through `handle`, with `http.read_committed`.
    fn serving(handle: &Arc<PartitionHandle>) -> (Arc<PartitionRegistry>, Router) {
        serving_with(handle, true)
    }

    fn serving_with(handle: &Arc<PartitionHandle>, read_committed: bool) -> (Arc<PartitionRegistry>, Router) {
        let registry = Arc::new(PartitionRegistry::default());
        registry.insert(Arc::clone(handle));
        let app = router(ApiState {
            registry: Arc::clone(&registry),
            metrics: Metrics::new(),
            guard: Arc::new(Guard::new(None, 16 << 10, 0)),
            routing: Arc::new(one_partition()),
            read_committed,
        });
        (registry, app)
    }

    #[tokio::test]
    async fn a_partition_taken_over_behind_its_previous_owner_answers_503_until_it_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        // As after a restore from a snapshot through offset 10, where the previous owner had
        // checkpointed (and served) through offset 40.
        checkpoint_balance(&store, "acct-1", "12.50", 10);
        let (registry, app) = serving(&Arc::new(PartitionHandle::serving_from(0, Arc::clone(&store), Some(40))));

        let (status, headers) = get(&app, "/v1/accounts/acct-1", &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "12.50 is older than what was served before");
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert!(registry.serving_partitions().is_empty(), "not announced while behind");

        checkpoint_balance(&store, "acct-1", "20.00", 39);
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[]).await.0, StatusCode::SERVICE_UNAVAILABLE);

        checkpoint_balance(&store, "acct-1", "31.25", 40);
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[]).await.0, StatusCode::OK);
        assert_eq!(registry.serving_partitions(), vec![0]);

        // A committed offset the partition never reaches (its topic was created again): served
        // once checkpointed through the partition's end.
        let handle = Arc::new(PartitionHandle::serving_from(0, Arc::clone(&store), Some(1_000)));
        registry.insert(Arc::clone(&handle));
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[]).await.0, StatusCode::SERVICE_UNAVAILABLE);
        handle.mark_reached_end(41);
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[]).await.0, StatusCode::SERVICE_UNAVAILABLE);
        checkpoint_balance(&store, "acct-1", "31.50", 41);
        assert_eq!(get(&app, "/v1/accounts/acct-1", &[]).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_checkpoint_the_group_has_not_acknowledged_answers_503_until_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        // State found ahead of the group's committed offset at assignment: checkpointed through
        // 20 by an earlier run, which crashed before its commit. Were this instance to crash now,
        // the next owner would wait only for offset 10, and would answer 12.50 after 20.00.
        checkpoint_balance(&store, "acct-1", "12.50", 10);
        checkpoint_balance(&store, "acct-1", "20.00", 20);
        let handle = Arc::new(PartitionHandle::serving_from(0, Arc::clone(&store), Some(10)));
        let (_, app) = serving(&handle);
        let paths =
            ["/v1/accounts/acct-1", "/v1/accounts/acct-1/transactions", "/v1/partitions/0/balances", "/v1/balances"];
        for path in paths {
            let (status, headers) = get(&app, path, &[]).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(headers[header::RETRY_AFTER], "1", "{path}");
        }
        // Unless `http.read_committed` is off: then the newest checkpoint is served at once.
        let (_, eager) = serving_with(&handle, false);
        for path in paths {
            assert_eq!(get(&eager, path, &[]).await.0, StatusCode::OK, "{path}, not read_committed");
        }

        handle.acknowledge_commit(20);
        for path in paths {
            assert_eq!(get(&app, path, &[]).await.0, StatusCode::OK, "{path}");
        }
        // A read of state the group has keeps its view: a newer checkpoint whose commit is in
        // flight is not waited for (see the next test).
        checkpoint_balance(&store, "acct-1", "31.00", 30);
        let (status, body) = get_json(&app, "/v1/accounts/acct-1").await;
        assert_eq!((status, &body["offset"], &body["balances"]["USD"]), (StatusCode::OK, &json!(20), &json!("20.00")));
    }

    /// The status and body of a GET of `path`.
    async fn get_body(app: &Router, path: &str) -> (StatusCode, String) {
        let request = axum::http::Request::builder().uri(path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get_json(app: &Router, path: &str) -> (StatusCode, serde_json::Value) {
        let (status, body) = get_body(app, path).await;
        (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn while_a_commit_is_in_flight_reads_answer_from_the_acknowledged_checkpoint_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        checkpoint_balance(&store, "acct-1", "12.50", 10);
        let handle = Arc::new(PartitionHandle::serving_from(0, Arc::clone(&store), Some(10)));
        let (_, app) = serving(&handle);
        // A first read: of the checkpoint the group has, which its views then start from.
        assert_eq!(get_json(&app, "/v1/accounts/acct-1").await.1["balances"]["USD"], json!("12.50"));
        // As the consumer does: a view of each checkpoint it commits, while reads come.
        checkpoint_balance(&store, "acct-1", "20.00", 20);
        store.keep_view_for_commit(handle.group_committed()).unwrap();

        // Without the kept view this would wait for the group, then answer 503 (see above).
        let (status, body) = get_json(&app, "/v1/accounts/acct-1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!((&body["offset"], &body["balances"]["USD"]), (&json!(10), &json!("12.50")));
        let (status, body) = get_json(&app, "/v1/accounts/acct-1/transactions").await;
        assert_eq!((status, &body["offset"]), (StatusCode::OK, &json!(10)));
        for path in ["/v1/partitions/0/balances", "/v1/balances"] {
            let (status, body) = get_body(&app, path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(body.contains("12.50") && !body.contains("20.00"), "{path}: {body}");
        }

        handle.acknowledge_commit(20);
        let (status, body) = get_json(&app, "/v1/accounts/acct-1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!((&body["offset"], &body["balances"]["USD"]), (&json!(20), &json!("20.00")));
    }
}
