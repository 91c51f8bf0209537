//! The HTTP API: balances of owned accounts, Prometheus metrics, liveness and readiness.
//!
//! Balances are read from checkpointed state, never from uncheckpointed work in progress, so an answer
//! always reflects a consistent prefix of the input.

use crate::metrics::{ErrorKind, Metrics};
use crate::registry::PartitionRegistry;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<PartitionRegistry>,
    pub metrics: Metrics,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/accounts/{account_id}", get(account))
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

async fn account(State(state): State<ApiState>, Path(account_id): Path<String>) -> Response {
    for (partition, store) in state.registry.stores() {
        match store.account_balances(&account_id) {
            Ok(balances) if balances.is_empty() => continue,
            Ok(balances) => {
                let balances: BTreeMap<&str, String> =
                    balances.iter().map(|(currency, amount)| (currency.as_str(), amount.to_string())).collect();
                return Json(json!({ "account_id": account_id, "balances": balances })).into_response();
            }
            Err(e) => {
                // The detail goes to the log, never to the client.
                state.metrics.handled_error(ErrorKind::StateRead, &format_args!("partition {partition}: {e}"));
                return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
        }
    }
    (StatusCode::NOT_FOUND, Json(json!({ "error": "account not found", "account_id": account_id }))).into_response()
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
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let response = next.run(request).await;
    state.metrics.http_requests.with_label_values(&[&route, response.status().as_str()]).inc();
    response
}
