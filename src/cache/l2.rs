//! L2: the shared tier in Redis.
//!
//! Keys (never raw input: tags and cache keys are hashed):
//!
//! ```text
//! {prefix}:ns                          the namespace number (purge-all bumps it)
//! {prefix}:<ns>:{<key>}:e              the entry (codec format), with a PX TTL
//! {prefix}:<ns>:{<key>}:e:v:<second>   a Vary variant of it (see below)
//! {prefix}:<ns>:{<key>}:l              the fill lease: a token, SET NX PX lease
//! {prefix}:<ns>:{t:<hash(tag)>}:keys   the entry names of one tag (a set), with a TTL
//! ```
//!
//! A key whose responses carry `Vary` holds a marker (`policy::vary`) and its variants sit
//! beside it, in its slot and under its lease: one put writes the marker and the variant, and
//! registers both in the tag sets.
//!
//! # Placement on Redis Cluster
//!
//! An entry and its lease share the hash tag of the entry's own cache key, so the put script
//! is single-slot and the entries spread over every master however their tags are shared (a
//! layout that placed entries by their first tag put a whole groups cache in one slot). A
//! tag's set lives in the tag's own slot. Nothing ever needs two slots in one command: what
//! must hold across slots is held by the order of the steps below instead.
//!
//! # Protocol
//!
//! - **acquire** (before the upstream is asked): `SET lease token NX PX lease` and, for every
//!   tag, `SADD set entry` + `PEXPIRE set lease NX`; one batch (one pipeline per slot, sent
//!   concurrently). Only when every part answered does the fill count as holding the lease.
//! - **put**, two ordered steps: (1) for every tag `SADD set entry`, `PEXPIRE set ttl NX` and
//!   `PEXPIRE set ttl GT`; (2) only when (1) answered, the put script: store the entry with
//!   `PX ttl` if the lease still holds our token, and drop the lease. Standalone and Sentinel
//!   send both steps in one pipeline (one connection executes them in order); Cluster sends
//!   step 2 after step 1 came back.
//! - **invalidate by tag**: `SMEMBERS` of each set, then `UNLINK` each member entry and its
//!   lease, and `SREM` exactly the members read.
//! - **invalidate by key**: `UNLINK` entry and lease (a stale set member is harmless).
//! - **purge all**: `INCR ns`; the number travels with the purge message and is re-read
//!   after any pub/sub gap. No SCAN, so it works the same on Cluster.
//!
//! # Why the invariants hold
//!
//! 1. *No stale write-back.* A fill that read the old value asked the upstream before the
//!    write committed, so its acquire (membership in every tag set, lease) completed before the
//!    invalidation's `SMEMBERS`: the invalidation sees the entry's name and unlinks its lease.
//!    The put script then finds no lease (or another fill's token) and stores nothing; if it
//!    ran first, the `UNLINK` that follows removes what it stored. Each of these steps is one
//!    command on one slot, so no cross-slot atomicity is needed, only this order.
//! 2. *Every stored entry is reachable from each of its tags for its whole life.* Step (1)
//!    re-adds the membership and lifts each set's TTL to at least the entry's before step (2)
//!    can store it (sets never shrink their TTL: `GT`); a failed step (1) stores nothing. So a
//!    set that expired or lost the member since acquire cannot leave an entry no purge finds.
//!    A member re-added after an invalidation removed it points at nothing (the lease is gone,
//!    so step 2 stores nothing): the next invalidation unlinks a missing key.
//! 3. *Purge by tag on Cluster* reads each set in its slot and unlinks entries in theirs;
//!    entries that gain the tag after the `SMEMBERS` were filled after the write and are new.
//! 4. *Namespace bump* is one key, untouched by placement: a fill from before the purge
//!    writes only into the dead namespace's names.
//!
//! Cost: an L2 hit is one `GET`; a fill is the lookup `GET`, the acquire batch and the put
//! (one more round trip on Cluster when the route has tags, for the order of step 1 and 2).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::{Cmd, Value};
use bytes::Bytes;

use super::{codec, CacheKey, Entry};
use crate::config::L2Config;
use crate::redis::{Redis, RedisError};

/// Stores the entries only if the caller still holds the lease.
/// KEYS[1] lease, KEYS[2..] entries; ARGV[1] token, then each entry's payload and TTL in ms.
const PUT_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  for i = 2, #KEYS do
    redis.call('SET', KEYS[i], ARGV[2 * i - 2], 'PX', ARGV[2 * i - 1])
  end
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// Replaces an entry only if it is still the value read (a soft purge's marked copy must not
/// overwrite a newer fill, nor come back after a delete): with ARGV[2] for ARGV[3] ms, or
/// deletes it when ARGV[2] is empty.
/// KEYS[1] entry; ARGV[1] the value read, ARGV[2] the replacement, ARGV[3] TTL in ms.
const SWAP_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
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
    /// The name this entry had before issue 19 (placed by its first tag), while pods of both
    /// layouts may share L2 during a rolling upgrade: invalidation by key removes both.
    pub legacy_entry: Option<String>,
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
    counter: Arc<AtomicU64>,
    /// The current namespace; `NS_UNKNOWN` until read from Redis.
    ns: Arc<AtomicU64>,
}

const NS_UNKNOWN: u64 = u64::MAX;

impl L2 {
    pub fn new(redis: Redis, config: &L2Config, pod: &str) -> L2 {
        L2 {
            redis,
            prefix: config.prefix.clone(),
            lease: config.lease,
            lease_wait: config.lease_wait,
            pod: pod.to_string(),
            counter: Default::default(),
            ns: Arc::new(AtomicU64::new(NS_UNKNOWN)),
        }
    }

    /// The namespace, read from Redis when not known yet; `None` if Redis does not answer.
    pub async fn namespace(&self) -> Option<u64> {
        match self.ns.load(Ordering::Acquire) {
            NS_UNKNOWN => self.reload_namespace().await,
            ns => Some(ns),
        }
    }

    /// Reads the namespace from Redis (after a pub/sub gap, a purge message may have been
    /// missed).
    pub async fn reload_namespace(&self) -> Option<u64> {
        let key = format!("{}:ns", self.prefix);
        let mut get = Cmd::new();
        get.arg("GET").arg(&key);
        let v = self.redis.exec("namespace", vec![(key, get)]).await.ok()?;
        let ns = match v.first() {
            Some(Value::BulkString(b)) => std::str::from_utf8(b).ok()?.parse().ok()?,
            _ => 0,
        };
        self.ns.store(ns, Ordering::Release);
        Some(ns)
    }

    /// Adopts a namespace announced by another pod (never goes back).
    pub fn set_namespace(&self, ns: u64) {
        let _ = self
            .ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur == NS_UNKNOWN || ns > cur).then_some(ns)
            });
    }

    /// Starts a new, empty namespace: everything stored so far is unreachable. Returns it.
    pub async fn bump_namespace(&self) -> Option<u64> {
        let key = format!("{}:ns", self.prefix);
        let mut incr = Cmd::new();
        incr.arg("INCR").arg(&key);
        let v = self.redis.exec("purge_all", vec![(key, incr)]).await.ok()?;
        let Some(Value::Int(ns)) = v.first() else {
            return None;
        };
        self.set_namespace(*ns as u64);
        Some(*ns as u64)
    }

    /// The key prefix (`[l2] prefix`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// The Redis names of `key`, whose entry carries `tags`; `None` while the namespace
    /// cannot be read. The key itself is the hash tag: entry and lease share a slot, and
    /// entries spread over the cluster whatever their tags.
    pub async fn key(&self, key: CacheKey, tags: &[String]) -> Option<L2Key> {
        let ns = self.namespace().await?;
        let entry = format!("{}:{ns}:{{{key}}}:e", self.prefix);
        Some(L2Key {
            lease: lease_of(&entry),
            entry,
            tag_sets: tags.iter().map(|t| self.tag_set(ns, t)).collect(),
            legacy_entry: tags
                .first()
                .map(|t| format!("{}:{ns}:{{t:{}}}:e:{key}", self.prefix, tag_hash(t))),
        })
    }

    /// The Redis name of the variant `secondary` of the entry `k` (same slot, same lease).
    pub fn variant(k: &L2Key, secondary: CacheKey) -> String {
        format!("{}:v:{secondary}", k.entry)
    }

    /// The set of entry keys carrying `tag`.
    fn tag_set(&self, ns: u64, tag: &str) -> String {
        format!("{}:{ns}:{{t:{}}}:keys", self.prefix, tag_hash(tag))
    }

    /// Deletes every entry carrying one of `tags`, and the `keys`, together with their fill
    /// leases (so that a fill which started earlier cannot store afterwards). Two round trips:
    /// the tag sets' members, then one batch of deletes. Returns the entries deleted, or
    /// `None` when Redis did not answer.
    pub async fn invalidate(&self, tags: &[String], keys: &[L2Key]) -> Option<usize> {
        let ns = self.namespace().await?;
        let sets: Vec<String> = tags.iter().map(|t| self.tag_set(ns, t)).collect();
        let mut members: Vec<Vec<String>> = vec![Vec::new(); sets.len()];
        if !sets.is_empty() {
            let cmds = sets
                .iter()
                .map(|s| (s.clone(), cmd(&["SMEMBERS", s])))
                .collect();
            let replies = self.redis.exec("invalidate_read", cmds).await.ok()?;
            for (i, v) in replies.into_iter().enumerate() {
                if let Value::Array(items) | Value::Set(items) = v {
                    members[i] = items
                        .into_iter()
                        .filter_map(|m| match m {
                            Value::BulkString(b) => String::from_utf8(b).ok(),
                            _ => None,
                        })
                        .collect();
                }
            }
        }
        let mut cmds = Vec::new();
        let entries: Vec<(String, String)> = members
            .iter()
            .flatten()
            .map(|m| (m.clone(), lease_of(m)))
            .chain(keys.iter().map(|k| (k.entry.clone(), k.lease.clone())))
            .chain(
                keys.iter()
                    .filter_map(|k| k.legacy_entry.as_ref())
                    .map(|e| (e.clone(), lease_of(e))),
            )
            .collect();
        for (entry, lease) in &entries {
            cmds.push((entry.clone(), cmd(&["UNLINK", entry])));
            cmds.push((lease.clone(), cmd(&["UNLINK", lease])));
        }
        // Remove exactly the members read: a fill that registered since (so after the write
        // being invalidated) keeps its membership.
        for (set, ms) in sets.iter().zip(&members) {
            if !ms.is_empty() {
                let mut c = cmd(&["SREM", set]);
                c.arg(ms);
                cmds.push((set.clone(), c));
            }
        }
        if cmds.is_empty() {
            return Some(0);
        }
        let replies = self.redis.exec("invalidate", cmds).await.ok()?;
        // Each entry contributed an (entry, lease) pair of UNLINKs, in order.
        let deleted = replies
            .chunks(2)
            .take(entries.len())
            .filter(|pair| matches!(pair.first(), Some(Value::Int(1))))
            .count();
        Some(deleted)
    }

    /// Up to `limit` readable entries carrying `tag` (its set's members, read): for
    /// `POST /admin/verify`. `None` when Redis did not answer.
    pub async fn entries_of_tag(&self, tag: &str, limit: usize) -> Option<Vec<(CacheKey, Entry)>> {
        let ns = self.namespace().await?;
        let set = self.tag_set(ns, tag);
        let replies = self
            .redis
            .exec(
                "verify_members",
                vec![(set.clone(), cmd(&["SMEMBERS", &set]))],
            )
            .await
            .ok()?;
        let names: Vec<String> = match replies.into_iter().next() {
            Some(Value::Array(items) | Value::Set(items)) => items
                .into_iter()
                .filter_map(|m| match m {
                    Value::BulkString(b) => String::from_utf8(b).ok(),
                    _ => None,
                })
                .take(limit)
                .collect(),
            _ => Vec::new(),
        };
        if names.is_empty() {
            return Some(Vec::new());
        }
        let cmds = names
            .iter()
            .map(|n| (n.clone(), cmd(&["GET", n])))
            .collect();
        let values = self.redis.exec("verify_get", cmds).await.ok()?;
        Some(
            names
                .iter()
                .zip(values)
                .filter_map(|(name, v)| {
                    let key = key_of_name(name)?;
                    match v {
                        Value::BulkString(b) => Some((key, codec::decode(Bytes::from(b)).ok()?)),
                        _ => None,
                    }
                })
                .collect(),
        )
    }

    /// Removes the entries and leases of `keys` under this layout's names: what a pod does
    /// with another pod's invalidation by key, which that pod may have applied to L2 under the
    /// earlier layout's names only (a rolling upgrade from before issue 19). Transitional.
    pub async fn unlink_keys(&self, keys: &[CacheKey]) {
        let mut cmds = Vec::with_capacity(2 * keys.len());
        for k in keys {
            if let Some(l2key) = self.key(*k, &[]).await {
                cmds.push((l2key.entry.clone(), cmd(&["UNLINK", &l2key.entry])));
                cmds.push((l2key.lease.clone(), cmd(&["UNLINK", &l2key.lease])));
            }
        }
        if !cmds.is_empty() {
            let _ = self.redis.exec("invalidate_peer_keys", cmds).await;
        }
    }

    /// A soft purge: every entry carrying one of `tags`, and the `keys`, is replaced by a copy
    /// marked stale at `now_ms` (deleted when it has no grace left). Their fill leases go
    /// first, so a fill that started before cannot store what it read; then each entry is
    /// read and swapped only if unchanged. Returns the entries marked, or `None` when Redis
    /// did not answer.
    pub async fn soft_invalidate(
        &self,
        tags: &[String],
        keys: &[L2Key],
        now_ms: u64,
    ) -> Option<usize> {
        let ns = self.namespace().await?;
        let mut names: Vec<String> = keys.iter().map(|k| k.entry.clone()).collect();
        if !tags.is_empty() {
            let cmds = tags
                .iter()
                .map(|t| self.tag_set(ns, t))
                .map(|s| (s.clone(), cmd(&["SMEMBERS", &s])))
                .collect();
            for v in self.redis.exec("invalidate_read", cmds).await.ok()? {
                if let Value::Array(items) | Value::Set(items) = v {
                    names.extend(items.into_iter().filter_map(|m| match m {
                        Value::BulkString(b) => String::from_utf8(b).ok(),
                        _ => None,
                    }));
                }
            }
        }
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Some(0);
        }
        let cmds = names
            .iter()
            .map(|n| (lease_of(n), cmd(&["UNLINK", &lease_of(n)])))
            .collect();
        self.redis.exec("invalidate", cmds).await.ok()?;
        let cmds = names
            .iter()
            .map(|n| (n.clone(), cmd(&["GET", n])))
            .collect();
        let values = self.redis.exec("get", cmds).await.ok()?;
        let mut swaps = Vec::new();
        for (name, v) in names.iter().zip(values) {
            let Value::BulkString(old) = v else { continue };
            let marked = codec::decode(Bytes::from(old.clone()))
                .ok()
                .and_then(|e| e.soft_purged_at(now_ms));
            let (new, ttl) = match &marked {
                Some(e) => (codec::encode(e).to_vec(), e.retain_left_ms(now_ms).max(1)),
                None => (Vec::new(), 1),
            };
            let mut c = Cmd::new();
            c.arg("EVAL")
                .arg(SWAP_SCRIPT)
                .arg(1)
                .arg(name)
                .arg(old)
                .arg(new)
                .arg(ttl);
            swaps.push((name.clone(), c));
        }
        if swaps.is_empty() {
            return Some(0);
        }
        let replies = self.redis.exec("invalidate", swaps).await.ok()?;
        Some(
            replies
                .iter()
                .filter(|r| matches!(r, Value::Int(1)))
                .count(),
        )
    }

    /// One round trip: `GET entry`.
    pub async fn get(&self, k: &L2Key) -> L2Read {
        self.get_name(&k.entry).await
    }

    async fn get_name(&self, name: &str) -> L2Read {
        let mut get = Cmd::new();
        get.arg("GET").arg(name);
        match self.redis.exec("get", vec![(name.to_string(), get)]).await {
            Err(_) => L2Read::Unavailable,
            Ok(v) => match v.into_iter().next() {
                Some(Value::BulkString(bytes)) => match codec::decode(Bytes::from(bytes)) {
                    Ok(e) => L2Read::Hit(Box::new(e)),
                    Err(error) => {
                        tracing::warn!(key = %name, ?error, "Unreadable L2 entry; treating it as a miss.");
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

    /// Stores `entry` if the lease `token` still holds: first every tag set holds the entry's
    /// name for at least its TTL, then the put script (see the module doc). Returns whether the
    /// entry was stored.
    pub async fn put(&self, k: &L2Key, token: &str, entry: &Entry, now_ms: u64) -> bool {
        self.put_all(k, token, &[(&k.entry, entry)], now_ms).await
    }

    /// Stores `entries` (each under its Redis name, all in `k`'s slot: `k.entry` and its
    /// variants) if the lease `token` of `k` still holds; registers them in the tag sets and
    /// extends the sets' TTLs. One pipelined write. Returns whether they were stored.
    pub async fn put_all(
        &self,
        k: &L2Key,
        token: &str,
        entries: &[(&String, &Entry)],
        now_ms: u64,
    ) -> bool {
        // Kept as long as it may be revalidated, not only while fresh.
        let ttls: Vec<u64> = entries
            .iter()
            .map(|(_, e)| e.retain_left_ms(now_ms))
            .collect();
        let max_ttl = ttls.iter().copied().max().unwrap_or(0);
        if ttls.contains(&0) {
            self.release(k, token).await;
            return false;
        }
        // Step (1): every tag set holds every name (the entry, and its variants, which only
        // this put registers) for at least the longest TTL; NX sets a TTL on a set that lost
        // it, GT only ever extends it.
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        // The sets' TTL starts a round trip before the entries' (step 2 comes after): the
        // lease's length on top keeps every set alive past the entries it must reach.
        let set_ttl = max_ttl.saturating_add(self.lease.as_millis() as u64);
        let mut tag_cmds = Vec::with_capacity(3 * k.tag_sets.len() + 1);
        for ts in &k.tag_sets {
            let mut sadd = Cmd::new();
            sadd.arg("SADD").arg(ts).arg(&names);
            tag_cmds.push((ts.clone(), sadd));
            for flag in ["NX", "GT"] {
                let mut exp = Cmd::new();
                exp.arg("PEXPIRE").arg(ts).arg(set_ttl).arg(flag);
                tag_cmds.push((ts.clone(), exp));
            }
        }
        // Step (2): the lease-checked store of every entry, one script in `k`'s slot.
        let mut put = Cmd::new();
        put.arg("EVAL")
            .arg(PUT_SCRIPT)
            .arg(1 + entries.len())
            .arg(&k.lease);
        for name in &names {
            put.arg(*name);
        }
        put.arg(token);
        for ((_, e), ttl) in entries.iter().zip(&ttls) {
            put.arg(codec::encode(e).as_ref()).arg(*ttl);
        }
        let put = (k.entry.clone(), put);
        let ok = |v: &[Value]| v.iter().all(|r| !matches!(r, Value::ServerError(_)));
        if tag_cmds.is_empty() || !self.redis.is_cluster() {
            // One connection runs a pipeline in order: the tag sets come first.
            let n = tag_cmds.len();
            tag_cmds.push(put);
            let v = match self.redis.exec("put", tag_cmds).await {
                Ok(v) => v,
                // An error reply fails the whole pipeline, after Redis ran all of it: the put
                // script may have stored while a tag set refused. Not kept (see below).
                Err(RedisError::Failed(_)) if n > 0 => {
                    self.unlink_all(&names).await;
                    return false;
                }
                Err(_) => return false,
            };
            let stored = matches!(v.get(n), Some(Value::Int(1)));
            if stored && !ok(&v[..n]) {
                // A tag set refused (a key of another type under our name): the entries may
                // not be reachable from that tag, so they must not stay.
                self.unlink_all(&names).await;
                return false;
            }
            stored
        } else {
            match self.redis.exec("put_tags", tag_cmds).await {
                Ok(v) if ok(&v) => matches!(
                    self.redis.exec("put", vec![put]).await.as_deref(),
                    Ok([Value::Int(1)])
                ),
                _ => {
                    self.release(k, token).await;
                    false
                }
            }
        }
    }

    async fn unlink_all(&self, names: &[&str]) {
        let cmds = names
            .iter()
            .map(|n| (n.to_string(), cmd(&["UNLINK", n])))
            .collect();
        let _ = self.redis.exec("unlink", cmds).await;
    }

    /// One round trip: `GET` of a variant's name.
    pub async fn get_variant(&self, name: &str) -> L2Read {
        self.get_name(name).await
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

    /// Waits up to `lease_wait` for another pod's fill of `k` to appear (an entry stored after
    /// `after_ms`: not the stale one being revalidated); `None` on timeout.
    pub async fn wait_for_fill(&self, k: &L2Key, after_ms: u64) -> Option<Entry> {
        let deadline = tokio::time::Instant::now() + self.lease_wait;
        let mut pause = Duration::from_millis(2);
        loop {
            tokio::time::sleep(pause).await;
            match self.get(k).await {
                L2Read::Hit(e) if e.stored_at_ms() > after_ms => return Some(*e),
                L2Read::Hit(_) => {}
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

fn cmd(args: &[&str]) -> Cmd {
    let mut c = Cmd::new();
    for a in args {
        c.arg(*a);
    }
    c
}

/// The cache key in an entry name: `...:{<key>}:e`, or the earlier `...}:e:<key>`.
fn key_of_name(name: &str) -> Option<CacheKey> {
    let hex = match name.rsplit_once("}:e:") {
        Some((_, hex)) => hex,
        None => crate::redis::hash_tag(name.strip_suffix(":e")?),
    };
    u128::from_str_radix(hex, 16).ok().map(CacheKey)
}

/// The lease name of an entry name: the `e` segment after the hash tag becomes `l`.
fn lease_of(entry: &str) -> String {
    match entry.rfind("}:e") {
        Some(i) => format!("{}}}:l{}", &entry[..i], &entry[i + 3..]),
        None => format!("{entry}:lease"),
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
    fn entry_and_lease_share_the_keys_own_slot_and_tags_theirs() {
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
            let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
            let l2 = L2::new(Redis::start(&config.redis("l2"), metrics), &config, "pod");
            l2.set_namespace(3);
            let tags = ["group:VIP".to_string(), "group:VIP:EURUSD".to_string()];
            let k = l2.key(CacheKey(7), &tags).await.unwrap();
            assert!(k.entry.starts_with("sidecache:3:{"), "{}", k.entry);
            let slot = crate::redis::hash_tag(&k.entry);
            assert_eq!(slot, CacheKey(7).to_string(), "placed by its own key");
            assert_eq!(slot, crate::redis::hash_tag(&k.lease));
            assert_eq!(lease_of(&k.entry), k.lease);
            assert!(k.lease.ends_with("}:l"));
            for ts in &k.tag_sets {
                assert_ne!(slot, crate::redis::hash_tag(ts));
                assert!(!ts.contains("VIP"), "raw tag values never reach Redis keys");
            }
            // Two entries sharing every tag still get their own slots.
            let other = l2.key(CacheKey(8), &tags).await.unwrap();
            assert_ne!(slot, crate::redis::hash_tag(&other.entry));
            assert_eq!(other.tag_sets, k.tag_sets);
            // The same key without tags has the same names (tags only add set memberships).
            assert_eq!(l2.key(CacheKey(7), &[]).await.unwrap().entry, k.entry);
            // Names from the earlier layout (placed by first tag) still map to their lease, and
            // a key's earlier name is known, so an invalidation during a rolling upgrade
            // removes both.
            assert_eq!(lease_of("p:3:{t:ab}:e:7"), "p:3:{t:ab}:l:7");
            let legacy = k.legacy_entry.as_deref().unwrap();
            assert_eq!(
                crate::redis::hash_tag(legacy),
                crate::redis::hash_tag(&k.tag_sets[0])
            );
            assert!(legacy.ends_with(&format!("}}:e:{}", CacheKey(7))));
            assert!(l2
                .key(CacheKey(7), &[])
                .await
                .unwrap()
                .legacy_entry
                .is_none());
            assert_eq!(key_of_name(&k.entry), Some(CacheKey(7)));
            assert_eq!(key_of_name(legacy), Some(CacheKey(7)));
        });
    }
}
