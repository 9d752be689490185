//! Telling open connections to finish, and waiting until they have.
//!
//! hyper-util's `GracefulShutdown` does the same with a `watch` channel whose `changed()`
//! future every connection polls on every wake-up: a lock and a waker swap per request
//! (~350 instructions, callgrind). Here a connection checks one flag per poll; the lock is
//! taken when a connection opens, the first time it is polled, and when it closes, and the
//! stop wakes each registered connection task once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use hyper::server::conn::{http1, http2};
use tokio::sync::Notify;

/// The stop signal of one listener's connections.
#[derive(Default, Clone)]
pub(super) struct Drain {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    // A std Mutex: held for one map operation, never across an await.
    open: Mutex<Open>,
    /// Notified when the last connection closes after the stop.
    all_closed: Notify,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    /// Each open connection's task waker, once it has been polled.
    wakers: HashMap<u64, Option<Waker>>,
}

/// What a connection is asked to do when the stop comes.
pub(super) trait Finish {
    fn finish(self: Pin<&mut Self>);
}

impl<I, S, B> Finish for http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn finish(self: Pin<&mut Self>) {
        // In-flight requests complete; an idle keep-alive connection closes at once.
        self.graceful_shutdown();
    }
}

impl<I, S, B> Finish for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Finish for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn finish(self: Pin<&mut Self>) {
        // GOAWAY: streams in flight complete, no new ones are accepted.
        self.graceful_shutdown();
    }
}

impl Drain {
    /// `conn`, told to finish when [`Drain::stop`] is called, and counted until it ends.
    pub(super) fn watch<C: Future + Finish>(&self, conn: C) -> Watched<C> {
        let mut open = self.shared.open.lock().expect("drain lock");
        let id = open.next_id;
        open.next_id += 1;
        open.wakers.insert(id, None);
        drop(open);
        Watched {
            conn: Box::pin(conn),
            shared: self.shared.clone(),
            id,
            waker: None,
            finishing: false,
        }
    }

    /// Tells every open connection to finish, then waits until all have ended.
    pub(super) async fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = {
            let open = self.shared.open.lock().expect("drain lock");
            open.wakers.values().flatten().cloned().collect()
        };
        wakers.into_iter().for_each(Waker::wake);
        loop {
            let closed = self.shared.all_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Connections not yet ended.
    fn open(&self) -> usize {
        self.shared.open.lock().expect("drain lock").wakers.len()
    }
}

/// A connection under a [`Drain`].
pub(super) struct Watched<C> {
    // Boxed so that the wrapper is `Unpin` without unsafe pin projection: one allocation per
    // connection, not per request.
    conn: Pin<Box<C>>,
    shared: Arc<Shared>,
    id: u64,
    /// The waker registered for the stop, kept to notice when the task's waker changes.
    waker: Option<Waker>,
    finishing: bool,
}

impl<C: Future + Finish> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        if !this.finishing {
            if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                // Registered under the lock before the flag is read: a stop either sees this
                // waker, or set the flag before taking the lock, which this poll then reads.
                let waker = cx.waker().clone();
                let mut open = this.shared.open.lock().expect("drain lock");
                open.wakers.insert(this.id, Some(waker.clone()));
                this.waker = Some(waker);
            }
            if this.shared.stopping.load(Ordering::SeqCst) {
                this.finishing = true;
                this.conn.as_mut().finish();
            }
        }
        this.conn.as_mut().poll(cx)
    }
}

impl<C> Drop for Watched<C> {
    fn drop(&mut self) {
        let mut open = self.shared.open.lock().expect("drain lock");
        open.wakers.remove(&self.id);
        let last = open.wakers.is_empty();
        drop(open);
        if last && self.shared.stopping.load(Ordering::SeqCst) {
            self.shared.all_closed.notify_waiters();
        }
    }
}
