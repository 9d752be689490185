//! The write phase: a request an `[[invalidate]]` rule matched is forwarded, then its tags are
//! invalidated (L2, L1 here, the other pods) before the answer leaves, so the caller reads its
//! own write. A write whose outcome is unknown invalidates all the same: it may have committed.
//! That includes a write whose caller went away mid-exchange (hyper then drops this future):
//! a guard armed before the request is sent invalidates from its own task if the phase never
//! completes.

use std::sync::Arc;

use crate::cache::CacheOutcome;
use crate::client::Outgoing;
use crate::invalidate::rules::Matched;
use crate::invalidate::{Invalidator, Source, Target};
use hyper::body::Incoming;

use super::{Answer, Proxy};

/// Which invalidation a write's answer calls for: the rule's own on success; an uncertain one
/// (no refresh: what to fetch is unknown) on a 502/504, sidecache's for an upstream that broke
/// or timed out, or a gateway's in front of the backend; none when the upstream said the write
/// failed, or the client's own request was at fault (sidecache's 400/408).
fn invalidation(outcome: CacheOutcome, status: u16, write: &Matched) -> Option<(Source, bool)> {
    match status {
        _ if outcome != CacheOutcome::Error && write.succeeded(status) => {
            Some((Source::Write, write.refresh()))
        }
        502 | 504 => Some((Source::WriteUncertain, false)),
        _ => None,
    }
}

/// Invalidates `tags` as an uncertain write from a task of its own if dropped armed.
struct Armed {
    invalidator: Arc<Invalidator>,
    tags: Option<Vec<String>>,
}

impl Drop for Armed {
    fn drop(&mut self) {
        let (Some(tags), Ok(runtime)) = (self.tags.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let invalidator = self.invalidator.clone();
        runtime.spawn(async move {
            let target = Target {
                tags,
                ..Target::default()
            };
            invalidator
                .invalidate(target, Source::WriteUncertain, false)
                .await;
        });
    }
}

impl Proxy {
    pub(super) async fn write(&self, out: Outgoing<Incoming>, write: Matched) -> Answer {
        let mut armed = Armed {
            invalidator: self.invalidator.clone(),
            tags: Some(write.tags.clone()),
        };
        let answer = self.pass_through(out).await;
        let status = answer.response.status().as_u16();
        if let Some((source, refresh)) = invalidation(answer.outcome, status, &write) {
            let target = Target {
                tags: write.tags,
                ..Target::default()
            };
            // Before the response leaves: the caller must read its own write afterwards.
            Box::pin(self.invalidator.invalidate(target, source, refresh)).await;
        }
        armed.tags = None;
        answer
    }
}
