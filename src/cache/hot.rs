//! Hot keys: a small, sampled top-k of the keys this pod serves, shared through L2 so that a
//! new pod can load the hottest entries from L2 into its L1 before `/readyz` turns ready.
//!
//! Recording costs the L1 hit path a thread-local counter: one hit in [`SAMPLE_EVERY`] is
//! counted, in a map of at most `4 * k` keys (when full, a new key replaces the least counted
//! one: the space-saving approximation of a top-k). Every `hot_keys_every` the top `k` are
//! added to a sorted set in L2 and the local counts halve, so what was hot long ago fades.
//!
//! ```text
//! {prefix}:<ns>:{hot}:<window>   ZSET cache key (hex) → sampled hits; one per 10 minutes,
//!                                 capped at 1000 members, expires after two windows
//! ```
//!
//! A new pod reads the current and the previous window, merges them, and loads the top `k`
//! entries that are still fresh, each under a fill ticket taken before its read (an
//! invalidation that lands meanwhile keeps it out, as for any fill). Entries only: never a
//! value that did not come from L2, never an identity-scoped one (no route to check its tiers).

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ::redis::{Cmd, Value};
use bytes::Bytes;

use super::{clock, codec, CacheKey, Entry, L1, L2};

/// One L1 hit in this many is counted.
pub const SAMPLE_EVERY: u32 = 16;
/// The L2 window of hot keys.
const WINDOW_SECS: u64 = 600;
/// Members kept per window.
const WINDOW_CAP: i64 = 1000;

thread_local! {
    static TICK: Cell<u32> = const { Cell::new(0) };
}

/// Whether this call is the sampled one (cheap: a thread-local add and a mask).
#[inline]
pub fn sampled() -> bool {
    TICK.with(|t| {
        let n = t.get().wrapping_add(1);
        t.set(n);
        n % SAMPLE_EVERY == 0
    })
}

#[derive(Debug)]
pub struct HotKeys {
    k: usize,
    // A std Mutex: held for a map update, never across an await.
    counts: Mutex<HashMap<u128, u32>>,
}

impl HotKeys {
    /// Tracks the top `k` (0: records nothing).
    pub fn new(k: usize) -> HotKeys {
        HotKeys {
            k,
            counts: Mutex::new(HashMap::with_capacity(4 * k)),
        }
    }

    pub fn enabled(&self) -> bool {
        self.k > 0
    }

    /// Counts one (sampled) use of `key`.
    pub fn record(&self, key: CacheKey) {
        if self.k == 0 {
            return;
        }
        let mut counts = self.counts.lock().expect("hot keys lock");
        if let Some(c) = counts.get_mut(&key.0) {
            *c = c.saturating_add(1);
            return;
        }
        if counts.len() >= 4 * self.k {
            // The newcomer takes the least counted key's place, with its own count only: a
            // long tail churns among itself and never outgrows what is really hot.
            let Some((&victim, _)) = counts.iter().min_by_key(|(_, c)| **c) else {
                return;
            };
            counts.remove(&victim);
            counts.insert(key.0, 1);
        } else {
            counts.insert(key.0, 1);
        }
    }

    /// The top `k` with their counts, and the counts halved (old heat fades).
    pub fn take_top(&self) -> Vec<(CacheKey, u32)> {
        let mut counts = self.counts.lock().expect("hot keys lock");
        let mut top: Vec<(u128, u32)> = counts.iter().map(|(k, c)| (*k, *c)).collect();
        top.sort_unstable_by_key(|e| std::cmp::Reverse(e.1));
        top.truncate(self.k);
        counts.retain(|_, c| {
            *c /= 2;
            *c > 0
        });
        top.into_iter().map(|(k, c)| (CacheKey(k), c)).collect()
    }
}

fn window_key(l2: &L2, ns: u64, window: u64) -> String {
    format!("{}:{ns}:{{hot}}:{window}", l2.prefix())
}

/// Adds this pod's top keys to the current window in L2.
pub async fn publish(hot: &HotKeys, l2: &L2) {
    let top = hot.take_top();
    if top.is_empty() {
        return;
    }
    let Some(ns) = l2.namespace().await else {
        return;
    };
    let window = clock::now_ms() / 1000 / WINDOW_SECS;
    let key = window_key(l2, ns, window);
    let mut cmds = Vec::with_capacity(top.len() + 2);
    for (k, c) in &top {
        let mut z = Cmd::new();
        z.arg("ZINCRBY").arg(&key).arg(*c).arg(k.to_string());
        cmds.push((key.clone(), z));
    }
    let mut trim = Cmd::new();
    trim.arg("ZREMRANGEBYRANK")
        .arg(&key)
        .arg(0)
        .arg(-(WINDOW_CAP + 1));
    cmds.push((key.clone(), trim));
    let mut exp = Cmd::new();
    exp.arg("EXPIRE").arg(&key).arg(2 * WINDOW_SECS);
    cmds.push((key.clone(), exp));
    let _ = l2.redis().exec("hot_keys", cmds).await;
}

/// The hottest `k` keys in L2 (current and previous window, merged).
pub async fn read(l2: &L2, k: usize) -> Vec<CacheKey> {
    let Some(ns) = l2.namespace().await else {
        return Vec::new();
    };
    let window = clock::now_ms() / 1000 / WINDOW_SECS;
    let cmds = [window, window.saturating_sub(1)]
        .iter()
        .map(|w| {
            let key = window_key(l2, ns, *w);
            let mut z = Cmd::new();
            z.arg("ZREVRANGE")
                .arg(&key)
                .arg(0)
                .arg(k as i64 - 1)
                .arg("WITHSCORES");
            (key, z)
        })
        .collect();
    let Ok(replies) = l2.redis().exec("hot_keys_read", cmds).await else {
        return Vec::new();
    };
    let mut scores: HashMap<u128, f64> = HashMap::new();
    for reply in replies {
        let items = match reply {
            Value::Array(items) => items,
            _ => continue,
        };
        // RESP2: member, score, member, score...; RESP3: [member, score] pairs.
        let mut flat = Vec::new();
        for item in items {
            match item {
                Value::Array(pair) => flat.extend(pair),
                other => flat.push(other),
            }
        }
        for pair in flat.chunks(2) {
            let member = match &pair[0] {
                Value::BulkString(b) => std::str::from_utf8(b).ok(),
                _ => None,
            };
            let score = match pair.get(1) {
                Some(Value::BulkString(b)) => {
                    std::str::from_utf8(b).ok().and_then(|s| s.parse().ok())
                }
                Some(Value::Double(d)) => Some(*d),
                Some(Value::Int(i)) => Some(*i as f64),
                _ => None,
            };
            if let (Some(m), Some(s)) =
                (member.and_then(|m| u128::from_str_radix(m, 16).ok()), score)
            {
                *scores.entry(m).or_default() += s;
            }
        }
    }
    let mut top: Vec<(u128, f64)> = scores.into_iter().collect();
    top.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    top.into_iter().take(k).map(|(k, _)| CacheKey(k)).collect()
}

/// Loads the entries of `keys` from L2 into L1 (fresh ones whose route keeps entries in L1,
/// as `admit` says); returns how many were loaded. One batch of GETs.
pub async fn load(l1: &L1, l2: &L2, keys: &[CacheKey], admit: impl Fn(&Entry) -> bool) -> usize {
    let mut named = Vec::with_capacity(keys.len());
    for k in keys {
        if let Some(l2key) = l2.key(*k, &[]).await {
            named.push((*k, l2key.entry));
        }
    }
    if named.is_empty() {
        return 0;
    }
    // Taken before anything is read: an invalidation from here on keeps what it touches out.
    let ticket = l1.begin_fill();
    let cmds = named
        .iter()
        .map(|(_, name)| {
            let mut get = Cmd::new();
            get.arg("GET").arg(name);
            (name.clone(), get)
        })
        .collect();
    let Ok(values) = l2.redis().exec("hot_keys_load", cmds).await else {
        return 0;
    };
    let now = clock::now_ms();
    let mut loaded = 0;
    for ((key, _), value) in named.into_iter().zip(values) {
        let Value::BulkString(b) = value else {
            continue;
        };
        let Ok(entry) = codec::decode(Bytes::from(b)) else {
            continue;
        };
        if entry.ttl_left_ms(now) == 0 || entry.path().is_empty() || !admit(&entry) {
            continue;
        }
        if l1.insert_fill(key, entry, ticket) {
            loaded += 1;
        }
    }
    loaded
}

/// How often a pod publishes its top keys, when not configured.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_k_survive_and_old_heat_fades() {
        let hot = HotKeys::new(2);
        for _ in 0..10 {
            hot.record(CacheKey(1));
        }
        for _ in 0..5 {
            hot.record(CacheKey(2));
        }
        // A long tail of one-off keys never pushes the hot ones out.
        for k in 100..200 {
            hot.record(CacheKey(k));
        }
        let top = hot.take_top();
        assert_eq!(top[0], (CacheKey(1), 10));
        assert_eq!(top.len(), 2);
        // Halved: 5 and 2 remain for keys 1 and 2.
        let again = hot.take_top();
        assert_eq!(again[0], (CacheKey(1), 5));
        assert!(HotKeys::new(0).take_top().is_empty());
        let sampled_hits = (0..SAMPLE_EVERY * 4).filter(|_| sampled()).count();
        assert_eq!(sampled_hits, 4);
    }
}
