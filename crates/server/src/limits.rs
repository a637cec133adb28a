//! Request size refusals in the documented form.
//!
//! tonic refuses a request over the decoding limit before any handler runs, with OUT_OF_RANGE
//! and no reason code. The API promises RESOURCE_EXHAUSTED with a reason for anything too
//! large, so this layer rewrites exactly that refusal: a trailers-only response (status in the
//! headers, which is how tonic answers a request it could not decode) whose message is tonic's
//! length-limit message.

use http::HeaderValue;

/// tonic's message when a request exceeds `max_decoding_message_size`.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// Rewrites tonic's oversize-request refusal to RESOURCE_EXHAUSTED with reason
/// `envelope.request_too_large`.
pub fn rewrite_oversize<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| percent_decoded_starts_with(m, TONIC_TOO_LARGE));
    if out_of_range && too_large {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        headers.insert(
            crate::REASON_KEY,
            HeaderValue::from_static("envelope.request_too_large"),
        );
    }
    response
}

/// grpc-message is percent-encoded; compare without decoding everything.
fn percent_decoded_starts_with(encoded: &str, prefix: &str) -> bool {
    encoded
        .replace("%20", " ")
        .replace("%2C", ",")
        .starts_with(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: &str, message: &str) -> http::Response<()> {
        let mut r = http::Response::new(());
        r.headers_mut()
            .insert("grpc-status", HeaderValue::from_str(status).unwrap());
        r.headers_mut()
            .insert("grpc-message", HeaderValue::from_str(message).unwrap());
        r
    }

    #[test]
    fn only_the_oversize_refusal_is_rewritten() {
        let r = rewrite_oversize(response(
            "11",
            "Error,%20decoded%20message%20length%20too%20large:%20found%205%20bytes",
        ));
        assert_eq!(r.headers()["grpc-status"], "8");
        assert_eq!(r.headers()[crate::REASON_KEY], "envelope.request_too_large");
        let r = rewrite_oversize(response("11", "index out of range"));
        assert_eq!(r.headers()["grpc-status"], "11");
        assert!(r.headers().get(crate::REASON_KEY).is_none());
    }
}
