//! The one place where failures become responses: 502 for a connect or protocol failure,
//! 504 for a timeout, each with a small JSON body naming the side that failed; 429 for a
//! request a rate limit denied.

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use super::body::Body;
use crate::error::ProxyError;

pub fn rescue(error: &ProxyError) -> Response<Body> {
    let name = format!("{}_{}", error.side().as_str(), error.kind());
    let mut resp = json_response(
        error.status(),
        &json!({
            "error": name,
            "side": error.side().as_str(),
            "message": error.to_string(),
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("sidecache; fwd=miss; detail={name}")) {
        resp.headers_mut().insert(super::respond::CACHE_STATUS, v);
    }
    resp
}

/// 400 for a request sidecache refuses before forwarding it (`error` names why).
pub fn bad_request(error: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({ "error": error, "side": "downstream", "message": message }),
    )
}

/// 429 for a request an enforcing rate limit denied.
pub fn rate_limited(rule: &str, retry_after_secs: u64) -> Response<Body> {
    let mut resp = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({
            "error": "rate_limited",
            "rule": rule,
            "retry_after_seconds": retry_after_secs,
        }),
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        super::respond::number(retry_after_secs),
    );
    resp
}

/// A small JSON answer of sidecache's own (errors, admin API): never cached downstream.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Body::full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
