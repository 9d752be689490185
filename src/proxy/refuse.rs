//! Requests answered before any phase, because no phase may see them: what HTTP/1.1 forbids a
//! server to act on, and CONNECT. Checked on every request, so the checks are a version and
//! method comparison and one header lookup.

use http::{header, HeaderValue, Method, Request, StatusCode, Version};
use serde_json::json;

use super::body::Body;
use super::rescue::{bad_request, json_response};

/// The answer to a request the proxy must not forward, or `None` for the usual request.
pub(super) fn check<B>(req: &Request<B>) -> Option<http::Response<Body>> {
    if req.method() == Method::CONNECT {
        // sidecache is a reverse proxy for one upstream; a tunnel to an arbitrary authority
        // is a forward proxy's job. 501 (RFC 9110 §15.6.2: not supported for any resource),
        // not 405, which would have to name the methods a resource allows.
        let mut resp = json_response(
            StatusCode::NOT_IMPLEMENTED,
            &json!({
                "error": "downstream_method_not_supported",
                "side": "downstream",
                "message": "CONNECT is not supported: sidecache is a reverse proxy, not a tunnel",
            }),
        );
        // What follows a CONNECT head is tunnel data (a TLS hello), not a next request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Some(resp);
    }
    // RFC 9112 §3.2: 400 to an HTTP/1.1 request without Host, and to any request with more
    // than one. HTTP/1.0 predates Host and may leave it out.
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let problem = match (hosts.next(), hosts.next()) {
        (Some(_), None) => return None,
        (None, _) if req.version() < Version::HTTP_11 => return None,
        // HTTP/2 carries the authority in `:authority` (the URI); `handle` copied it to Host.
        (None, _) if req.version() == Version::HTTP_2 && req.uri().authority().is_some() => {
            return None
        }
        (None, _) => "an HTTP/1.1 request needs a Host header",
        (Some(_), Some(_)) => "more than one Host header",
    };
    Some(bad_request("downstream_bad_request", problem))
}
