//! An upstream response body. Read by the task that awaits it (the request's own task): no
//! connection task, no channel between the socket and the reader. A body that was already
//! in the read buffer with its head (most small responses) is handed over whole, and its
//! connection is back in the pool before the response is written downstream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::wire::{Chunked, Step};
use super::{Conn, Pool};

#[derive(Debug)]
pub struct UpstreamBody(Inner);

#[derive(Debug)]
enum Inner {
    Buffered(Option<Bytes>),
    Streaming(Box<Streaming>),
    /// An HTTP/2 upstream's body: data and trailers as hyper reads them. Boxed: unboxed it
    /// made every answer (hits included) larger, and moving one cost a `memcpy` call more.
    H2(Box<hyper::body::Incoming>),
}

#[derive(Debug)]
struct Streaming {
    /// `None` once the body ended (the connection went back to the pool or was closed).
    conn: Option<Conn>,
    framing: Framing,
    /// The connection may carry another request once the body has ended (`pool::may_reuse`).
    reusable: bool,
    pool: Arc<Pool>,
    /// Trailer fields read so far (chunked bodies), sent as the last frame.
    trailers: Option<Box<HeaderMap>>,
}

#[derive(Debug)]
pub(super) enum Framing {
    Length(u64),
    Chunked(Chunked),
    Close,
}

impl UpstreamBody {
    pub(super) fn buffered(bytes: Option<Bytes>) -> UpstreamBody {
        UpstreamBody(Inner::Buffered(bytes.filter(|b| !b.is_empty())))
    }

    pub(super) fn streaming(
        conn: Conn,
        framing: Framing,
        reusable: bool,
        pool: Arc<Pool>,
    ) -> UpstreamBody {
        UpstreamBody(Inner::Streaming(Box::new(Streaming {
            conn: Some(conn),
            framing,
            reusable,
            pool,
            trailers: None,
        })))
    }

    pub(super) fn h2(body: hyper::body::Incoming) -> UpstreamBody {
        UpstreamBody(Inner::H2(Box::new(body)))
    }

    /// The whole body if it is already in memory, else the body as it was.
    pub fn into_buffered(self) -> Result<Bytes, UpstreamBody> {
        match self.0 {
            Inner::Buffered(b) => Ok(b.unwrap_or_default()),
            streaming => Err(UpstreamBody(streaming)),
        }
    }
}

impl From<Bytes> for UpstreamBody {
    fn from(bytes: Bytes) -> UpstreamBody {
        UpstreamBody::buffered(Some(bytes))
    }
}

impl Streaming {
    /// The message ended: a connection that may carry another request goes back to the pool.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.release(conn, self.reusable);
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.framing {
                Framing::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let n = (*left).min(conn.buf.len() as u64);
                    let data = conn.buf.split_to(n as usize).freeze();
                    *left -= n;
                    if *left == 0 {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(decoder) => match decoder.step(&mut conn.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Trailer(line)) => {
                        let t = self.trailers.get_or_insert_with(Default::default);
                        super::wire::add_trailer(t, &line);
                        continue;
                    }
                    Ok(Step::Done) => {
                        self.finish();
                        return Poll::Ready(
                            self.trailers
                                .take()
                                .filter(|t| !t.is_empty())
                                .map(|t| Ok(Frame::trailers(*t))),
                        );
                    }
                    Ok(Step::NeedMore) => {}
                    Err(e) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(protocol(e))));
                    }
                },
                Framing::Close if !conn.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                }
                Framing::Length(_) | Framing::Close => {}
            }
            let read = ready!(conn.poll_fill(cx));
            match read {
                Ok(0) if matches!(self.framing, Framing::Close) => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(protocol(
                        "upstream closed the connection in the middle of the body".into(),
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

fn protocol(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut self.get_mut().0 {
            Inner::Buffered(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Streaming(s) => s.poll_frame(cx),
            Inner::H2(b) => Pin::new(&mut **b)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(std::io::Error::other))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Buffered(bytes) => bytes.is_none(),
            Inner::Streaming(s) => s.conn.is_none() || matches!(s.framing, Framing::Length(0)),
            Inner::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Buffered(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Streaming(s) => match (&s.conn, &s.framing) {
                (None, _) => SizeHint::with_exact(0),
                (Some(_), Framing::Length(left)) => SizeHint::with_exact(*left),
                (Some(_), _) => SizeHint::new(),
            },
            Inner::H2(b) => b.size_hint(),
        }
    }
}
