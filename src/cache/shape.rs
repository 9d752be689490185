//! Header shapes: the ordered field names of a stored response, kept once and shared by every
//! entry with the same names (one route's responses nearly always have the same ones).
//!
//! An entry keeps only its field *values*, packed into its one buffer; the names live here as a
//! template `HeaderMap` whose values are empty placeholders. A hit clones the template and
//! writes the entry's values into it in order, which costs what cloning a whole per-entry map
//! cost, while an entry no longer holds a map of its own (a `HeaderMap` of 7 fields is
//! ~1.3 KiB of index and bucket vectors plus one allocation per value: measured, it was 60 %
//! of an L1 entry's memory).
//!
//! The template ends with two slots, `Age` and `Cache-Status`, that every answer sets: filled
//! in place, they cost no hash lookup and never grow the map.
//!
//! Must never: take its lock on the hit path. Only [`intern`], at store time, takes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The RFC 9211 field every answer carries.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// At most this many distinct shapes are shared. Past it (an upstream sending ever new field
/// names), an entry gets a shape of its own, which its weight then counts: memory stays bounded
/// by `l1.max_bytes` either way.
const MAX_SHARED: usize = 1024;

/// Bytes a private shape costs per field: a `HeaderMap` bucket (~104 B), its index slot, and
/// slack for a custom name's own allocation. An estimate, used only for the weight.
const PRIVATE_BYTES_PER_FIELD: usize = 136;

#[derive(Debug)]
pub struct Shape {
    /// The stored names (one per value, in `HeaderMap` iteration order), then `Age` and
    /// `Cache-Status`; every value empty.
    template: HeaderMap,
    /// The number of stored values (the template has two more).
    len: usize,
    /// Whether the registry shares this shape; a private one is charged to its entry.
    shared: bool,
}

impl Shape {
    fn new(names: &[HeaderName], shared: bool) -> Shape {
        let mut template = HeaderMap::with_capacity(names.len() + 2);
        for name in names {
            // An owned copy: a name parsed by hyper may be a slice of a connection's read
            // buffer, which a long-lived shape must not keep alive.
            let name =
                HeaderName::from_bytes(name.as_str().as_bytes()).expect("a valid name stays valid");
            template.append(name, HeaderValue::from_static(""));
        }
        template.append(header::AGE, HeaderValue::from_static(""));
        template.append(CACHE_STATUS, HeaderValue::from_static(""));
        Shape {
            template,
            len: names.len(),
            shared,
        }
    }

    /// The number of stored field values.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The name of each stored value, in order.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        // `keys()` would yield a multi-valued name once; a shape needs one name per value.
        self.template.iter().map(|(name, _)| name).take(self.len)
    }

    /// Bytes of this shape that its entry is charged for: none when shared (the registry
    /// bounds those), the template when private.
    pub fn charged_bytes(&self) -> usize {
        if self.shared {
            0
        } else {
            (self.len + 2) * PRIVATE_BYTES_PER_FIELD
        }
    }

    /// The answer's header map: the template with `values` (exactly [`Shape::len`] of them,
    /// in order), then `age` and `cache_status`, written in place.
    pub fn fill(
        &self,
        values: impl Iterator<Item = HeaderValue>,
        age: HeaderValue,
        cache_status: HeaderValue,
    ) -> HeaderMap {
        let mut map = self.template.clone();
        let mut slots = map.values_mut();
        // `values` first: `zip` stops at the first `None` without taking a slot from the other.
        for (value, slot) in values.zip(&mut slots) {
            *slot = value;
        }
        if let Some(slot) = slots.next() {
            *slot = age;
        }
        if let Some(slot) = slots.next() {
            *slot = cache_status;
        }
        map
    }
}

/// The shape of `names` (one per value, in the iteration order of the `HeaderMap` they come
/// from), shared with every entry of the same names while the registry has room.
pub fn intern(names: &[HeaderName]) -> Arc<Shape> {
    type Registry = Mutex<HashMap<Box<[HeaderName]>, Weak<Shape>>>;
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(Default::default);
    // A std Mutex: held for one map operation at store time, never across an await.
    let mut shapes = registry.lock().expect("shape registry lock");
    if let Some(shape) = shapes.get(names).and_then(Weak::upgrade) {
        return shape;
    }
    if shapes.len() >= MAX_SHARED {
        shapes.retain(|_, shape| shape.strong_count() > 0);
        if shapes.len() >= MAX_SHARED {
            return Arc::new(Shape::new(names, false));
        }
    }
    let shape = Arc::new(Shape::new(names, true));
    let key: Box<[HeaderName]> = shape.names().cloned().collect();
    shapes.insert(key, Arc::downgrade(&shape));
    shape
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(map: &HeaderMap) -> Vec<HeaderName> {
        map.iter().map(|(n, _)| n.clone()).collect()
    }

    #[test]
    fn equal_names_share_one_shape() {
        let mut a = HeaderMap::new();
        a.insert(header::CONTENT_TYPE, HeaderValue::from_static("a/b"));
        a.insert("x-shape-test", HeaderValue::from_static("1"));
        let mut b = HeaderMap::new();
        b.insert(header::CONTENT_TYPE, HeaderValue::from_static("c/d"));
        b.insert("x-shape-test", HeaderValue::from_static("2"));
        let (sa, sb) = (intern(&names(&a)), intern(&names(&b)));
        assert!(Arc::ptr_eq(&sa, &sb));
        assert_eq!(sa.charged_bytes(), 0);
    }

    #[test]
    fn fill_writes_values_in_iteration_order() {
        let mut src = HeaderMap::new();
        src.append("x-fill-a", HeaderValue::from_static("1"));
        src.append(header::VARY, HeaderValue::from_static("v1"));
        src.append("x-fill-a", HeaderValue::from_static("2"));
        src.append(header::VARY, HeaderValue::from_static("v2"));
        let shape = intern(&names(&src));
        assert_eq!(shape.len(), 4);
        let values = src.iter().map(|(_, v)| v.clone());
        let out = shape.fill(
            values,
            HeaderValue::from_static("7"),
            HeaderValue::from_static("hit"),
        );
        let mut expected = src.clone();
        expected.insert(header::AGE, HeaderValue::from_static("7"));
        expected.insert(CACHE_STATUS, HeaderValue::from_static("hit"));
        assert_eq!(out, expected);
        assert_eq!(out.len(), 6);
    }
}
