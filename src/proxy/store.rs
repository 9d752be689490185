//! The store phase: a fetched or refreshed entry into L1 (at once, under the fill ticket) and
//! then L2 (under the fill lease). A response with `Vary` is stored as a variant beside the
//! primary key's marker (`policy::vary`): both go in together, in both tiers.

use http::{HeaderMap, HeaderName, StatusCode};

use super::{LeaseGuard, Proxy, Target};
use crate::cache::l1::FillTicket;
use crate::cache::policy::{flags, vary::Marker};
use crate::cache::{CacheKey, Entry, Meta, NoStoreReason, L2};
use crate::route::Route;

/// What L2 is to get once the followers are released: each entry under the primary key's
/// name (`None`) or a variant's.
pub(super) struct L2Write {
    entries: Vec<(Option<CacheKey>, Entry)>,
}

impl Proxy {
    /// Stores `entry` in L1 under `target`'s primary key, or, when the response varies on
    /// `vary`, under the variant key that `request` selects with the marker renewed (same
    /// names: same salt, one more variant; other names: a new marker, whose salt leaves the
    /// old variants unreachable; so does a marker that has `max_variants` already).
    /// `Err(Invalidated)`: an invalidation overlapped the fill.
    pub(super) fn store_l1(
        &self,
        route: &Route,
        target: &Target,
        entry: &Entry,
        vary: &[HeaderName],
        request: &HeaderMap,
        ticket: FillTicket,
    ) -> Result<L2Write, NoStoreReason> {
        // A route without L1 still asks L1's invalidation book whether the fill may store.
        let store = |key: CacheKey, e: &Entry| {
            if route.config.tiers.l1 {
                self.l1.insert_fill(key, e.clone(), ticket)
            } else {
                !self.l1.superseded(&key, e, ticket)
            }
        };
        if vary.is_empty() {
            if !store(target.primary, entry) {
                return Err(NoStoreReason::Invalidated);
            }
            return Ok(L2Write {
                entries: vec![(None, entry.clone())],
            });
        }
        let mut same = target
            .marker
            .as_ref()
            .and_then(|m| Marker::decode(m.body_bytes()))
            .filter(|m| m.names == vary);
        if let Some(m) = &same {
            let known =
                target.stale.is_some() && m.secondary(target.primary, request) == target.key;
            if !known && m.variants >= route.config.max_variants {
                // Full: a new generation (a new salt) replaces the old, whose variants become
                // unreachable and leave by eviction or expiry. A count that only grew would
                // refuse every refill once variants had expired often enough.
                same = None;
            }
        }
        let renewed = same.is_some();
        let mut marker = same.unwrap_or_else(|| Marker::new(vary.to_vec(), target.primary));
        let secondary = marker.secondary(target.primary, request);
        // A refresh of a variant already counted is not a new one.
        if !(renewed && target.stale.is_some() && secondary == target.key) {
            marker.variants = marker.variants.saturating_add(1);
        }
        let now = entry.stored_at_ms();
        // The marker lives as long as any variant under it may.
        let keep = entry.retain_left_ms(now).max(
            target
                .marker
                .as_ref()
                .filter(|_| renewed)
                .map_or(0, |m| m.retain_left_ms(now)),
        );
        let meta = Meta {
            status: StatusCode::OK,
            last_modified: 0,
            stored_at_ms: now,
            initial_age: 0,
            ttl_ms: keep,
            flags: flags::VARY_MARKER,
            // Never served, so never stale; it lives as long as its variants (`keep`).
            grace_ms: 0,
            swr_ms: 0,
        };
        let tags: Vec<&str> = entry.tags().collect();
        let marker = Entry::new(meta, &HeaderMap::new(), &marker.encode(), &tags, "");
        if !store(target.primary, &marker) || !store(secondary, entry) {
            return Err(NoStoreReason::Invalidated);
        }
        Ok(L2Write {
            entries: vec![(None, marker), (Some(secondary), entry.clone())],
        })
    }

    /// Writes what [`Self::store_l1`] stored to L2, if this fill holds the lease.
    pub(super) async fn store_l2(&self, lease: &mut LeaseGuard, write: L2Write, now_ms: u64) {
        let (Some(l2), Some((k, token))) = (&self.l2, lease.take()) else {
            return;
        };
        let names: Vec<String> = write
            .entries
            .iter()
            .map(|(secondary, _)| match secondary {
                None => k.entry.clone(),
                Some(s) => L2::variant(&k, *s),
            })
            .collect();
        let entries: Vec<(&String, &Entry)> = names
            .iter()
            .zip(write.entries.iter().map(|(_, e)| e))
            .collect();
        l2.put_all(&k, &token, &entries, now_ms).await;
    }
}
