//! Errors of the data path, recording *which side* failed. The proxy's rescue turns each into
//! a response; nothing here ever reaches hyper as an error.

use std::fmt;

use http::StatusCode;

/// The party a failure is attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Upstream,
    Downstream,
    Internal,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Upstream => "upstream",
            Side::Downstream => "downstream",
            Side::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// No connection to the upstream could be made (refused, unreachable, connect timeout).
    UpstreamConnect(String),
    /// The upstream did not answer within `upstream.timeout`.
    UpstreamTimeout,
    /// The upstream broke the exchange (reset, malformed response, body cut short).
    UpstreamProtocol(String),
    /// The TLS handshake with an `https://` upstream failed (its certificate did not verify,
    /// no common protocol version, a client certificate refused, unusable TLS settings).
    UpstreamTls(String),
    /// The client's request body was malformed or cut short (e.g. a bad chunk size).
    ClientBody(String),
    /// The client sent no byte of its request body for `client_body_timeout`.
    ClientBodyTimeout,
}

impl ProxyError {
    pub fn side(&self) -> Side {
        match self {
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTimeout
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::UpstreamTls(_) => Side::Upstream,
            ProxyError::ClientBody(_) | ProxyError::ClientBodyTimeout => Side::Downstream,
        }
    }

    /// A short stable name: the JSON `error` field, the metric `kind` label.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::UpstreamConnect(_) => "connect",
            ProxyError::UpstreamTimeout => "timeout",
            ProxyError::UpstreamProtocol(_) => "protocol",
            ProxyError::UpstreamTls(_) => "tls",
            ProxyError::ClientBody(_) => "body",
            ProxyError::ClientBodyTimeout => "body_timeout",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::UpstreamTls(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::UpstreamConnect(e) => write!(f, "cannot connect to the upstream: {e}"),
            ProxyError::UpstreamTimeout => f.write_str("the upstream did not answer in time"),
            ProxyError::UpstreamProtocol(e) => write!(f, "the upstream broke the exchange: {e}"),
            ProxyError::UpstreamTls(e) => write!(f, "TLS with the upstream failed: {e}"),
            ProxyError::ClientBody(e) => write!(f, "the request body is malformed: {e}"),
            ProxyError::ClientBodyTimeout => {
                f.write_str("the client sent no request body within client_body_timeout")
            }
        }
    }
}

impl std::error::Error for ProxyError {}
