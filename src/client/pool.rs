//! Idle upstream connections, and the rules for putting one back and taking one out. Every
//! rule that keeps a stray answer from reaching the wrong request lives here; each says which
//! attack (seen with a raw-socket origin, `tests/upstream_adversarial.rs`) it stops:
//!
//! 1. **Never after a request with content** ([`may_reuse`]): whatever the answer, its
//!    upstream may not have read the body (a 401, a 302 from a redirect middleware, a 200 from
//!    a handler that ignores it), and would then read it as requests of its own. A body
//!    shaped like a whole request is answered later (a stray); one shaped like half a request
//!    head sends nothing at all, waits silently through every check below, and takes the
//!    next request's head as the rest of its own: that request (a fill, stored and served to
//!    every caller) then gets the smuggled request's answer. Only bodiless requests (and
//!    `Content-Length: 0`) leave a connection reusable; writes are a minority of a sidecar's
//!    traffic, and pay one connect each. (An answer that comes before the body is all sent
//!    also stops the upload: see `client::upload`.) An upgrade request (`Upgrade`,
//!    `Connection: upgrade`) counts as one with content: declined, its connection is closed;
//!    switched (`101`), it leaves the pool's world for the tunnel.
//! 2. **Only a definitely framed answer, read to its end** ([`may_reuse`], and
//!    [`Pool::release`] called only when a body ended): never after a close-delimited body,
//!    a `Connection: close`, an HTTP/1.0 answer without keep-alive, a `101`, a framing
//!    conflict (`Content-Length` with `Transfer-Encoding`), or a body cut short.
//! 3. **Nothing left over** ([`Pool::release`]): bytes after the answer's end (a duplicated
//!    answer in the same segment, a body after a HEAD/204/304) close the connection; they
//!    would be read as the next request's answer.
//! 4. **An idle connection that turned readable is closed at checkout** ([`Pool::take`],
//!    a non-blocking peek of the socket itself, not tokio's cached readiness, which lags
//!    the kernel until the reactor's next turn): a late duplicate, an unsolicited `408`, a
//!    stray body, or the upstream's close. Under TLS (`https://`) the peek is of the TCP
//!    socket under rustls: any TLS record on an idle connection (a late answer, a
//!    `close_notify`, a late session ticket) closes it, as a byte does in the clear; and
//!    plaintext rustls already decrypted but nobody read (or records it received but did not
//!    process) counts as arrived (`io::Io::has_buffered`).
//! 5. **A fill that will be stored takes a quiet connection** ([`Checkout::Quiet`]): idle
//!    for at least `fill_quiet` and still silent, or a new one. Rules 3 and 4 cannot see an
//!    answer still on its way when the next request is written; a stored answer is served
//!    thousands of times, so it never rides a connection that was busy a moment ago.
//!
//! Retries (the client's, not the pool's) are for replayable requests only.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::wire::{Framing, ResponseHead};
use super::Conn;

/// Idle connections, newest at the back: the most recently used one is the least likely to
/// have been closed by the upstream.
#[derive(Debug)]
pub(super) struct Pool {
    pub(super) idle: Mutex<VecDeque<(Conn, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
    fill_quiet: Duration,
}

/// Which idle connection a request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Checkout {
    /// The newest (rule 4 still applies).
    Newest,
    /// The newest of those idle for at least `fill_quiet` (rule 5).
    Quiet,
}

/// Whether the connection may carry another request once this answer's body is read
/// (rules 1 and 2; rule 3 is checked when the body has ended). `had_content`: the request
/// carried body bytes.
pub(super) fn may_reuse(head: &ResponseHead, had_content: bool) -> bool {
    head.keep_alive && !had_content && head.framing != Framing::Close
}

impl Pool {
    pub(super) fn new(max_idle: usize, idle_timeout: Duration, fill_quiet: Duration) -> Pool {
        Pool {
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
            fill_quiet,
        }
    }

    /// An idle connection for a request at `now`, or `None` (connect a new one). Connections
    /// idle for `idle_timeout`, and any found readable (rule 4), are closed on the way.
    pub(super) fn take(&self, now: Instant, checkout: Checkout) -> Option<Conn> {
        loop {
            let conn = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                self.drop_expired(&mut idle, now);
                let at = match checkout {
                    Checkout::Newest => idle.len().checked_sub(1)?,
                    Checkout::Quiet => idle.iter().rposition(|(_, since)| {
                        now.saturating_duration_since(*since) >= self.fill_quiet
                    })?,
                };
                idle.remove(at)?.0
            };
            // The syscall outside the lock.
            let mut conn = conn;
            if conn.is_silent() {
                return Some(conn);
            }
        }
    }

    /// Takes back a connection whose answer was read to its end, if `reusable`
    /// ([`may_reuse`]) and nothing beyond the answer arrived (rule 3).
    pub(super) fn release(&self, conn: Conn, reusable: bool) {
        if reusable && conn.buf.is_empty() {
            self.put(conn);
        }
    }

    fn put(&self, conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        self.drop_expired(&mut idle, now);
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back((conn, now));
    }

    /// Closes the connections idle for `idle_timeout` at `now`: the oldest, at the front.
    fn drop_expired(&self, idle: &mut VecDeque<(Conn, Instant)>, now: Instant) {
        while idle
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
    }

    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        self.idle.lock().unwrap().len()
    }
}

impl Conn {
    /// Whether nothing arrived on an idle connection, the upstream's close included: a
    /// non-blocking one-byte peek of the socket (one syscall). Tokio's readiness is not asked:
    /// it is only as new as the reactor's last turn, and a byte that arrived since would be
    /// read as the next request's answer.
    ///
    /// Under TLS the peek sees records, not plaintext: any record on an idle connection (a
    /// late answer, a close_notify, a late session ticket) closes it, as a byte does in the
    /// clear; and what rustls decrypted or received before but nobody read (`has_buffered`)
    /// counts as arrived.
    pub(super) fn is_silent(&mut self) -> bool {
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        matches!(
            socket2::SockRef::from(self.io.tcp()).peek(&mut byte),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        ) && !self.io.has_buffered()
    }
}
