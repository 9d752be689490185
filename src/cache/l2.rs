//! L2: the shared tier in Redis.
//!
//! Keys (never raw input: tags and cache keys are hashed):
//!
//! ```text
//! {prefix}:{t:<hash(primary tag)>}:e:<key>   the entry (codec format), with a PX TTL
//! {prefix}:{t:<hash(primary tag)>}:l:<key>   the fill lease: a token, SET NX PX lease
//! {prefix}:{t:<hash(tag)>}:keys              the entries of one tag (a set), with a TTL
//! {prefix}:{<key>}:e  {prefix}:{<key>}:l     entry and lease of a route without tags
//! ```
//!
//! An entry and its lease share the hash tag of the route's first tag, so the put script is
//! single-slot on Redis Cluster, and one tag's entries share its slot. Routes without tags
//! use the key as hash tag and spread over the cluster.
//!
//! A fill is guarded by its lease: the lease is taken (and the key added to every tag set)
//! *before* the upstream is asked, and the put stores the entry only while the lease still
//! holds the same token. Invalidation deletes leases along with entries, so a fill that
//! started before an invalidation cannot write its old result back afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::redis::{Cmd, Value};
use bytes::Bytes;

use super::{codec, CacheKey, Entry};
use crate::config::L2Config;
use crate::redis::Redis;

/// Stores the entry only if the caller still holds the lease.
/// KEYS[1] entry, KEYS[2] lease; ARGV[1] token, ARGV[2] payload, ARGV[3] TTL in ms.
const PUT_SCRIPT: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
";

/// Deletes the lease only if it is still ours.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// The Redis names of one cache key.
#[derive(Debug, Clone)]
pub struct L2Key {
    pub entry: String,
    pub lease: String,
    /// Tag sets the key belongs to.
    pub tag_sets: Vec<String>,
}

/// What an L2 read found.
#[derive(Debug)]
pub enum L2Read {
    Hit(Box<Entry>),
    Miss,
    /// A value that is not a readable entry (garbage, another version): a miss that the next
    /// fill overwrites.
    Corrupt,
    /// Redis did not answer (down, slow, breaker open): a miss.
    Unavailable,
}

/// The outcome of asking for the fill lease.
#[derive(Debug)]
pub enum Lease {
    /// This pod fills; the token must accompany the put.
    Acquired(String),
    /// Another pod is filling.
    Busy,
    /// Redis did not answer: fill without L2.
    Unavailable,
}

#[derive(Debug, Clone)]
pub struct L2 {
    redis: Redis,
    prefix: String,
    lease: Duration,
    lease_wait: Duration,
    pod: String,
    counter: std::sync::Arc<AtomicU64>,
}

impl L2 {
    pub fn new(redis: Redis, config: &L2Config, pod: &str) -> L2 {
        L2 {
            redis,
            prefix: config.prefix.clone(),
            lease: config.lease,
            lease_wait: config.lease_wait,
            pod: pod.to_string(),
            counter: Default::default(),
        }
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// The Redis names of `key`, whose entry carries `tags` (the first one picks the slot).
    pub fn key(&self, key: CacheKey, tags: &[String]) -> L2Key {
        let p = &self.prefix;
        let (entry, lease) = match tags.first() {
            Some(t) => {
                let h = tag_hash(t);
                (
                    format!("{p}:{{t:{h}}}:e:{key}"),
                    format!("{p}:{{t:{h}}}:l:{key}"),
                )
            }
            // No tag: the key itself is the hash tag, so entry and lease still share a slot
            // while untagged entries spread over the cluster.
            None => (format!("{p}:{{{key}}}:e"), format!("{p}:{{{key}}}:l")),
        };
        L2Key {
            entry,
            lease,
            tag_sets: tags.iter().map(|t| self.tag_set(t)).collect(),
        }
    }

    /// The set of entry keys carrying `tag`.
    pub fn tag_set(&self, tag: &str) -> String {
        format!("{}:{{t:{}}}:keys", self.prefix, tag_hash(tag))
    }

    /// One round trip: `GET entry`.
    pub async fn get(&self, k: &L2Key) -> L2Read {
        let mut get = Cmd::new();
        get.arg("GET").arg(&k.entry);
        match self.redis.exec("get", vec![(k.entry.clone(), get)]).await {
            Err(_) => L2Read::Unavailable,
            Ok(v) => match v.into_iter().next() {
                Some(Value::BulkString(bytes)) => match codec::decode(Bytes::from(bytes)) {
                    Ok(e) => L2Read::Hit(Box::new(e)),
                    Err(error) => {
                        tracing::warn!(key = %k.entry, ?error, "Unreadable L2 entry; treating it as a miss.");
                        L2Read::Corrupt
                    }
                },
                Some(Value::Nil) | None => L2Read::Miss,
                Some(_) => L2Read::Corrupt,
            },
        }
    }

    /// Takes the fill lease of `k` and registers `k` in its tag sets, in one batch.
    pub async fn acquire(&self, k: &L2Key) -> Lease {
        let token = format!(
            "{}:{}",
            self.pod,
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let lease_ms = self.lease.as_millis() as u64;
        let mut cmds = Vec::with_capacity(1 + 2 * k.tag_sets.len());
        let mut set = Cmd::new();
        set.arg("SET")
            .arg(&k.lease)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(lease_ms);
        cmds.push((k.lease.clone(), set));
        for ts in &k.tag_sets {
            let mut sadd = Cmd::new();
            sadd.arg("SADD").arg(ts).arg(&k.entry);
            cmds.push((ts.clone(), sadd));
            // A new set gets a TTL now; `put` extends it to the entry's TTL.
            let mut exp = Cmd::new();
            exp.arg("PEXPIRE").arg(ts).arg(lease_ms).arg("NX");
            cmds.push((ts.clone(), exp));
        }
        match self.redis.exec("lease", cmds).await {
            Err(_) => Lease::Unavailable,
            Ok(v) => match v.first() {
                Some(Value::Okay) => Lease::Acquired(token),
                Some(Value::SimpleString(s)) if s == "OK" => Lease::Acquired(token),
                _ => Lease::Busy,
            },
        }
    }

    /// Stores `entry` if the lease `token` still holds, and extends the tag sets' TTLs; one
    /// pipelined write. Returns whether the entry was stored.
    pub async fn put(&self, k: &L2Key, token: &str, entry: &Entry, now_ms: u64) -> bool {
        let age_ms = now_ms.saturating_sub(entry.stored_at_ms) + entry.initial_age * 1000;
        let ttl_ms = entry.ttl_ms.saturating_sub(age_ms);
        if ttl_ms == 0 {
            self.release(k, token).await;
            return false;
        }
        let mut cmds = Vec::with_capacity(1 + 2 * k.tag_sets.len());
        let mut put = Cmd::new();
        put.arg("EVAL")
            .arg(PUT_SCRIPT)
            .arg(2)
            .arg(&k.entry)
            .arg(&k.lease)
            .arg(token)
            .arg(codec::encode(entry).as_ref())
            .arg(ttl_ms);
        cmds.push((k.entry.clone(), put));
        for ts in &k.tag_sets {
            // NX sets a TTL on a set that lost it; GT only ever extends it.
            for flag in ["NX", "GT"] {
                let mut exp = Cmd::new();
                exp.arg("PEXPIRE").arg(ts).arg(ttl_ms).arg(flag);
                cmds.push((ts.clone(), exp));
            }
        }
        match self.redis.exec("put", cmds).await {
            Ok(v) => matches!(v.first(), Some(Value::Int(1))),
            Err(_) => false,
        }
    }

    /// Gives the lease back (the response was not cacheable), so other pods stop waiting.
    pub async fn release(&self, k: &L2Key, token: &str) {
        let mut cmd = Cmd::new();
        cmd.arg("EVAL")
            .arg(RELEASE_SCRIPT)
            .arg(1)
            .arg(&k.lease)
            .arg(token);
        let _ = self
            .redis
            .exec("release", vec![(k.lease.clone(), cmd)])
            .await;
    }

    /// Waits up to `lease_wait` for another pod's fill of `k` to appear; `None` on timeout.
    pub async fn wait_for_fill(&self, k: &L2Key) -> Option<Entry> {
        let deadline = tokio::time::Instant::now() + self.lease_wait;
        let mut pause = Duration::from_millis(2);
        loop {
            tokio::time::sleep(pause).await;
            match self.get(k).await {
                L2Read::Hit(e) => return Some(*e),
                L2Read::Unavailable => return None,
                L2Read::Miss | L2Read::Corrupt => {}
            }
            if tokio::time::Instant::now() + pause >= deadline {
                return None;
            }
            pause = (pause * 2).min(Duration::from_millis(25));
        }
    }
}

/// A tag's hash in key names: tags are user input (path params) and never appear raw.
fn tag_hash(tag: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(tag.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_and_lease_share_the_primary_tag_slot() {
        let config = crate::config::Config::parse(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[l2]\nurl = \"redis://127.0.0.1:1\"",
        )
        .unwrap()
        .l2
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let metrics = std::sync::Arc::new(crate::metrics::Metrics::new(&[]));
            let l2 = L2::new(Redis::start(&config, metrics), &config, "pod");
            let k = l2.key(
                CacheKey(7),
                &["group:VIP".into(), "group:VIP:EURUSD".into()],
            );
            let slot = crate::redis::hash_tag(&k.entry);
            assert_eq!(slot, crate::redis::hash_tag(&k.lease));
            assert_eq!(slot, crate::redis::hash_tag(&k.tag_sets[0]));
            assert_ne!(slot, crate::redis::hash_tag(&k.tag_sets[1]));
            assert!(
                !k.entry.contains("VIP"),
                "raw tag values never reach Redis keys"
            );
            let bare = l2.key(CacheKey(7), &[]);
            assert_eq!(
                crate::redis::hash_tag(&bare.entry),
                crate::redis::hash_tag(&bare.lease)
            );
            assert_eq!(crate::redis::hash_tag(&bare.entry), CacheKey(7).to_string());
        });
    }
}
