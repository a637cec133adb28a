//! Request ids and per-call observability for the gRPC listeners: a tower layer that gives every
//! call a request id (the caller's `x-request-id` when it sends a usable one, else a new UUID),
//! runs the call inside a tracing span carrying the id, the method and the peer address, echoes
//! the id in the response metadata, and records call counts and commit latency.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};
use tracing::Instrument;

/// The metadata key of the request id (request and response).
pub const REQUEST_ID_KEY: &str = "x-request-id";

/// Longest incoming request id that is honoured; a longer one is replaced (it would bloat
/// every log line of the call).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Methods whose successful answer means "committed": their latency is the commit latency.
const COMMIT_METHODS: [&str; 2] = [
    "/wasteledger.v1.LedgerService/Submit",
    "/wasteledger.v1.LedgerService/SubmitBatch",
];

/// The caller's request id, if usable: printable ASCII without spaces, not too long.
fn incoming_id(headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    let value = headers.get(REQUEST_ID_KEY)?;
    let bytes = value.as_bytes();
    let usable = !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes.iter().all(|b| b.is_ascii_graphic());
    usable.then(|| value.clone())
}

fn new_id() -> http::HeaderValue {
    let id = uuid::Uuid::new_v4().to_string();
    // A hyphenated UUID is always a valid header value.
    http::HeaderValue::from_str(&id).unwrap_or_else(|_| http::HeaderValue::from_static("invalid"))
}

/// The layer; add it with `tonic::transport::Server::builder().layer(RequestIdLayer)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// The service [`RequestIdLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for RequestIdService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let id = incoming_id(request.headers()).unwrap_or_else(new_id);
        // Handlers see the id the caller will see, whichever of the two it is.
        request.headers_mut().insert(REQUEST_ID_KEY, id.clone());
        let method = request.uri().path().to_owned();
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(|c| c.remote_addr());
        let span = tracing::info_span!(
            "rpc",
            request_id = %String::from_utf8_lossy(id.as_bytes()),
            method = %method,
            peer = ?peer,
        );
        // The clone that was polled ready is the one to call (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let started = Instant::now();
                let mut response = inner.call(request).await?;
                // A failed unary call answers with headers only, status included; a successful
                // one sends its status in trailers, after the body.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from_i32)
                    .unwrap_or(tonic::Code::Ok);
                let elapsed = started.elapsed();
                let elapsed_ms = elapsed.as_millis() as u64;
                match code {
                    // Refusals are routine (rule violations, no leader); these are not.
                    tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => {
                        tracing::warn!(code = ?code, elapsed_ms, "rpc failed");
                    }
                    _ => tracing::debug!(code = ?code, elapsed_ms, "rpc answered"),
                }
                // The path is chosen by the caller: a method no service knows is counted under
                // one label, so random paths cannot grow the registry without bound.
                let method_label = if code == tonic::Code::Unimplemented {
                    "unknown".to_owned()
                } else {
                    method.clone()
                };
                metrics::counter!(
                    "wasteledger_grpc_requests_total",
                    "method" => method_label,
                    "code" => format!("{code:?}")
                )
                .increment(1);
                if code == tonic::Code::Ok && COMMIT_METHODS.contains(&method.as_str()) {
                    metrics::histogram!("wasteledger_commit_seconds", "method" => method)
                        .record(elapsed.as_secs_f64());
                }
                response.headers_mut().insert(REQUEST_ID_KEY, id);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_incoming_ids_are_kept() {
        let mut h = http::HeaderMap::new();
        assert!(incoming_id(&h).is_none());
        h.insert(REQUEST_ID_KEY, http::HeaderValue::from_static("abc-123"));
        assert_eq!(incoming_id(&h).unwrap(), "abc-123");
        h.insert(REQUEST_ID_KEY, http::HeaderValue::from_static("has space"));
        assert!(incoming_id(&h).is_none());
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        h.insert(REQUEST_ID_KEY, http::HeaderValue::from_str(&long).unwrap());
        assert!(incoming_id(&h).is_none());
        assert_eq!(new_id().len(), 36);
    }
}
