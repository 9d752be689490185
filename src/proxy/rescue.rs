//! The one place where failures become responses: 502 for a connect or protocol failure,
//! 504 for a timeout, each with a small JSON body naming the side that failed.

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
