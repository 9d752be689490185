//! An upstream connection's byte stream: plain TCP, or TLS over TCP (`https://` upstreams).
//!
//! The plain case keeps its own read (`poll_fill_tcp`: a readiness check and one `read`,
//! the short read saying the socket is drained); TLS reads through rustls. Both expose the
//! TCP socket for the pool's checkout peek (rule 4, see `pool`): under TLS a byte on the
//! socket of an idle connection is a TLS record (a late answer, a close_notify alert, a late
//! session ticket), and any of them closes the connection as a byte would in the clear. What
//! rustls already decrypted but nobody read is checked besides (`Io::has_buffered`): it
//! would be the next request's answer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::{MIN_READ, READ_BUF};

#[derive(Debug)]
pub enum Io {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    /// The TCP socket under the stream.
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(t) => t,
            #[cfg(feature = "tls")]
            Io::Tls(t) => t.get_ref().0,
        }
    }

    /// Whether TLS holds bytes read from the socket that were not read from it yet: records
    /// not yet processed, or plaintext not yet taken.
    pub(super) fn has_buffered(&mut self) -> bool {
        match self {
            Io::Plain(_) => false,
            #[cfg(feature = "tls")]
            Io::Tls(t) => match t.get_mut().1.process_new_packets() {
                Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
                Err(_) => true,
            },
        }
    }

    /// Whether the TLS handshake agreed on HTTP/2 (ALPN `h2`).
    #[cfg(feature = "tls")]
    pub(super) fn alpn_h2(&self) -> bool {
        match self {
            Io::Plain(_) => false,
            Io::Tls(t) => t.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

/// Reads what the stream has into `buf`; `Ok(0)` is the upstream's close.
pub(super) fn poll_fill(
    io: &mut Io,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    match io {
        Io::Plain(t) => poll_fill_tcp(t, buf, cx),
        #[cfg(feature = "tls")]
        Io::Tls(t) => poll_fill_stream(&mut **t, buf, cx),
    }
}

#[cfg(feature = "tls")]
/// Reads from any stream into the spare room of `buf` (zeroed first: safe code cannot hand
/// uninitialised memory to `poll_read`; TLS decryption costs far more than the memset).
pub(super) fn poll_fill_stream<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(READ_BUF);
    }
    let start = buf.len();
    buf.resize(buf.capacity(), 0);
    let mut read = ReadBuf::new(&mut buf[start..]);
    let result = Pin::new(io).poll_read(cx, &mut read);
    let n = read.filled().len();
    buf.truncate(start + n);
    ready!(result)?;
    Poll::Ready(Ok(n))
}

/// The plain-TCP read of [`poll_fill`]; apart so that a caller can read through a shared
/// reference while it writes through another (the upload watches for an early answer).
pub(super) fn poll_fill_tcp(
    io: &TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(READ_BUF);
    }
    loop {
        ready!(io.poll_read_ready(cx))?;
        let space = buf.capacity() - buf.len();
        let mut read = 0;
        // A short read drained the socket. Saying so (WouldBlock inside `try_io` clears
        // the readiness, guarded by its event tick, so no wakeup is lost) makes the next
        // wait go to epoll instead of a read that fails with EAGAIN: one syscall less per
        // response, as tokio's own `poll_read` does.
        let result = io.try_io(Interest::READABLE, || {
            read = io.try_read_buf(buf)?;
            match read {
                n if n > 0 && n < space => Err(io::ErrorKind::WouldBlock.into()),
                _ => Ok(()),
            }
        });
        match result {
            Ok(()) => return Poll::Ready(Ok(read)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && read > 0 => {
                return Poll::Ready(Ok(read))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Io::Tls(t) => Pin::new(&mut **t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Io::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_flush(cx),
            #[cfg(feature = "tls")]
            Io::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Io::Tls(t) => Pin::new(&mut **t).poll_shutdown(cx),
        }
    }
}

#[cfg(feature = "tls")]
/// A writer through a lock, for TLS uploads: rustls reads and writes through one state, so
/// the upload's writer and the watch for an early answer take turns on it (both in the same
/// task; the lock is never contended and never held across an await).
pub(super) struct Locked<'a, S>(pub(super) &'a std::sync::Mutex<&'a mut S>);

#[cfg(feature = "tls")]
impl<S: AsyncWrite + Unpin> AsyncWrite for Locked<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Pin::new(&mut **s).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Pin::new(&mut **s).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Pin::new(&mut **s).poll_shutdown(cx)
    }
}
