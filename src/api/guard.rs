//! The guard every `/v1/` request passes before its handler: request size (413), the per-instance
//! rate limit (429 with `Retry-After`), then the bearer token when one is configured (401).

use super::{error, ApiState};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Mutex;
use std::time::Instant;

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

/// Middleware on the `/v1/` routes: the handler runs only if the request passes the guard.
pub(super) async fn guard(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    match state.guard.refusal(&request) {
        None => next.run(request).await,
        Some(refusal) => refusal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
