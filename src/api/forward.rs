//! Forwarding a request to the instance that owns its partition.
//!
//! A forwarded request carries [`FORWARDED`]: the receiver answers from its own state or says the
//! partition is moving, and never forwards again, so a stale directory cannot make requests loop.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Marks a request forwarded by a peer; its value is the forwarding instance's id.
pub const FORWARDED: &str = "x-ledgerd-forwarded";

/// Why a forward did not produce the owner's answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("bad target {0}")]
    Target(String),
    #[error("{0}")]
    Http(#[from] hyper_util::client::legacy::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A pooled HTTP/1 client to the peers.
pub struct Forwarder {
    client: Client<HttpConnector, Body>,
    timeout: Duration,
    instance_id: HeaderValue,
}

impl Forwarder {
    pub fn new(instance_id: &str, timeout: Duration) -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        let instance_id = HeaderValue::from_str(instance_id).unwrap_or_else(|_| HeaderValue::from_static("peer"));
        Forwarder { client, timeout, instance_id }
    }

    /// Sends `GET base_url + path_and_query` with the caller's credentials and returns the
    /// peer's response as it is (status, type, body streamed through).
    pub async fn get(
        &self,
        base_url: &str,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<Response, ForwardError> {
        let target = format!("{base_url}{path_and_query}");
        let uri: Uri = target.parse().map_err(|_| ForwardError::Target(target.clone()))?;
        let mut request = Request::get(uri).body(Body::empty()).map_err(|_| ForwardError::Target(target.clone()))?;
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            request.headers_mut().insert(header::AUTHORIZATION, auth.clone());
        }
        request.headers_mut().insert(FORWARDED, self.instance_id.clone());
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| ForwardError::Timeout(self.timeout))??;
        let (parts, body) = response.into_parts();
        let mut out = Response::builder().status(parts.status);
        for name in [header::CONTENT_TYPE, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
            if let Some(value) = parts.headers.get(&name) {
                out = out.header(name, value);
            }
        }
        Ok(out.body(Body::new(body)).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()))
    }
}
