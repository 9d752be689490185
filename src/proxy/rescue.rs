//! The one place where failures become responses: 502 for a connect or protocol failure,
//! 504 for a timeout, each with a small JSON body naming the side that failed; 429 for a
//! request a rate limit denied.

use http::{header, HeaderValue, Response};

use super::body::Body;
use crate::error::ProxyError;

pub fn rescue(error: &ProxyError) -> Response<Body> {
    let body = serde_json::json!({
        "error": format!("{}_{}", error.side().as_str(), error.kind()),
        "side": error.side().as_str(),
        "message": error.to_string(),
    })
    .to_string();
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = error.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "sidecache; fwd=miss; detail={}_{}",
        error.side().as_str(),
        error.kind()
    )) {
        h.insert(super::respond::CACHE_STATUS, v);
    }
    resp
}

/// 429 for a request an enforcing rate limit denied.
pub fn rate_limited(rule: &str, retry_after_secs: u64) -> Response<Body> {
    let body = serde_json::json!({
        "error": "rate_limited",
        "rule": rule,
        "retry_after_seconds": retry_after_secs,
    })
    .to_string();
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::RETRY_AFTER,
        super::respond::number(retry_after_secs),
    );
    resp
}
