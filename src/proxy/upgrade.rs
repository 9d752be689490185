//! Upgrade requests (WebSocket and any other `Upgrade` protocol): forwarded with their
//! `Upgrade` and `Connection: upgrade`; on the upstream's `101` both connections are joined
//! into a byte tunnel until either side closes. Never cached; counted and drained by
//! `server::Tunnels`. Any other answer to an upgrade request is a normal response.
//!
//! An upgrade is recognised only on HTTP/1.1, with `Connection: upgrade` and exactly one
//! `Upgrade` field (RFC 9110 §7.8: `Upgrade` without the `Connection` option is ignored).
//! The check runs only on requests that carry `Connection`, before its fields are stripped:
//! the hit path does not pay for it.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::body::Body;
use crate::client::{Upgraded, UpgradedIo};
use crate::server::Tunnels;

/// The `Upgrade` value of a request that asks for one, in its extensions from the strip of
/// its hop-by-hop fields to the forward.
#[derive(Debug, Clone)]
pub(super) struct Asked(HeaderValue);

/// Marks `req` as an upgrade request if it is one (call before its `Connection` fields go).
pub(super) fn mark(req: &mut Request<Incoming>) {
    if req.version() != Version::HTTP_11 {
        return;
    }
    let h = req.headers();
    let listed = h.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    if !listed {
        return;
    }
    let mut values = h.get_all(header::UPGRADE).iter();
    if let (Some(v), None) = (values.next(), values.next()) {
        let asked = Asked(v.clone());
        req.extensions_mut().insert(asked);
    }
}

/// Whether `req` was marked by [`mark`]: one type lookup in (usually empty) extensions.
pub(super) fn asked(req: &Request<Incoming>) -> bool {
    req.extensions().get::<Asked>().is_some()
}

/// Takes the mark and the client side's pending upgrade off `req`.
pub(super) fn take(req: &mut Request<Incoming>) -> Option<(HeaderValue, OnUpgrade)> {
    let asked = req.extensions_mut().remove::<Asked>()?;
    Some((asked.0, hyper::upgrade::on(req)))
}

/// The upstream's answer to an upgrade request, passed on: a `101` with the upstream's
/// connection starts the tunnel (which waits for hyper to hand over the client's once the
/// `101` is written); anything else is a normal answer.
pub(super) fn answer(
    mut resp: Response<Body>,
    asked: HeaderValue,
    client: OnUpgrade,
    tunnels: &Tunnels,
) -> Response<Body> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return resp;
    }
    let Some(upstream) = resp
        .extensions_mut()
        .remove::<Upgraded>()
        .and_then(|u| u.take())
    else {
        return resp;
    };
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if !h.contains_key(header::UPGRADE) {
        h.insert(header::UPGRADE, asked);
    }
    let mut guard = tunnels.open();
    tokio::spawn(async move {
        let work = async {
            let client = client.await.map_err(std::io::Error::other)?;
            tunnel(TokioIo::new(client), upstream).await
        };
        tokio::select! {
            result = work => {
                if let Err(error) = result {
                    tracing::debug!(%error, "Upgraded connection ended with an error.");
                }
            }
            _ = guard.closing() => {}
        }
        drop(guard);
    });
    resp
}

/// Copies both ways until both sides have closed; what the upstream sent with its `101` goes
/// first.
async fn tunnel<C>(mut client: C, upstream: UpgradedIo) -> std::io::Result<()>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let UpgradedIo { mut io, read_ahead } = upstream;
    if !read_ahead.is_empty() {
        client.write_all(&read_ahead).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut io).await?;
    Ok(())
}
