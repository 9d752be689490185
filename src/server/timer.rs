//! hyper's timer for one connection.
//!
//! hyper bounds the wait for each request head (`header_read_timeout`, the slow-loris bound)
//! and asks its timer for a new sleep for every head. A fresh tokio sleep per head costs an
//! allocation, a timer-wheel insert and a removal: ~700 instructions per pass-through request
//! more than this timer (callgrind, 24.5k -> 23.8k). A connection's heads come one after
//! another, so one tokio sleep per connection serves them all: moving its deadline later is a
//! single atomic update in tokio, and the wheel only hears of it when the earlier deadline
//! passes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

type Shared = Arc<Mutex<Pin<Box<tokio::time::Sleep>>>>;

/// Given to hyper per connection (`http1::Builder::timer`). hyper holds at most one sleep of a
/// connection at a time, so every sleep it gets is a view of the same tokio sleep.
#[derive(Debug, Clone)]
pub(super) struct ConnTimer {
    sleep: Shared,
}

impl ConnTimer {
    pub(super) fn new() -> ConnTimer {
        // Registered with the wheel only when first polled, at the first head's deadline.
        let sleep = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
        ConnTimer {
            sleep: Arc::new(Mutex::new(sleep)),
        }
    }
}

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        lock(&self.sleep).as_mut().reset(deadline.into());
        Box::pin(ConnSleep {
            sleep: self.sleep.clone(),
        })
    }
}

/// hyper's handle on the connection's sleep.
struct ConnSleep {
    sleep: Shared,
}

impl Future for ConnSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        lock(&self.sleep).as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for ConnSleep {}

fn lock(sleep: &Shared) -> MutexGuard<'_, Pin<Box<tokio::time::Sleep>>> {
    sleep.lock().unwrap_or_else(|e| e.into_inner())
}
