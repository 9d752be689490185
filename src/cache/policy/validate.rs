//! Validation (RFC 9111 §4.3, RFC 9110 §13): the preconditions of a client evaluated against a
//! stored entry, the conditional request that revalidates an entry with the origin, and the
//! header merge of a `304` (or a freshening `HEAD`) into the stored response (§3.2).

use http::{header, HeaderMap, HeaderName, HeaderValue};

use super::flags;

/// The result of evaluating a request's preconditions against a stored response
/// (RFC 9110 §13.2.2: `If-None-Match` wins over `If-Modified-Since`). `If-None-Match` uses the
/// weak comparison (§13.1.2): `W/"x"` matches `"x"`.
pub fn not_modified(request: &HeaderMap, etag: &[u8], last_modified: u64) -> bool {
    let mut inm = request.get_all(header::IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        let ours = opaque(etag);
        return inm.any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .map(|t| t.trim_ascii())
                .any(|t| t == b"*" || opaque(t) == ours)
        });
    }
    if let Some(ims) = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(http_date)
    {
        return last_modified <= ims;
    }
    false
}

/// The opaque part of an entity tag, for the weak comparison (RFC 9110 §8.8.3.2).
pub fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// A weak ETag computed from the body, for a response that came without one: weak because it
/// is derived here, not the origin's claim of byte-for-byte identity.
pub fn body_etag(body: &[u8]) -> HeaderValue {
    let h = xxhash_rust::xxh3::xxh3_128(body);
    HeaderValue::from_str(&format!("W/\"{h:032x}\"")).expect("hex is a valid header value")
}

/// Unix seconds of an HTTP date.
pub fn http_date(text: &str) -> Option<u64> {
    httpdate::parse_http_date(text)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Whether an entry with these `flags` can be revalidated: it holds a validator the origin
/// gave (its own ETag, or a `Last-Modified`).
pub fn has_validator(flags: u16) -> bool {
    flags & flags::ETAG_DERIVED == 0 || flags & flags::LAST_MODIFIED != 0
}

/// The preconditions that revalidate a stored entry (RFC 9111 §4.3.1): `If-None-Match` with
/// the origin's ETag, and `If-Modified-Since` with its `Last-Modified`. A derived ETag is
/// ours and never sent; `Date` is never used in place of `Last-Modified`.
pub fn conditional_fields(
    etag: &[u8],
    last_modified: u64,
    entry_flags: u16,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(2);
    if entry_flags & flags::ETAG_DERIVED == 0 {
        if let Ok(v) = HeaderValue::from_bytes(etag) {
            out.push((header::IF_NONE_MATCH, v));
        }
    }
    if entry_flags & flags::LAST_MODIFIED != 0 {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(last_modified);
        let text = httpdate::fmt_http_date(t);
        out.push((
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_str(&text).expect("an HTTP date is a header value"),
        ));
    }
    out
}

/// Whether a `304` (or a `HEAD` answer) describes the stored entry, so its fields may be
/// merged in (RFC 9111 §4.3.4): its ETag, when it sends one, must match the stored one
/// (weakly for a 304 to our own If-None-Match); without an ETag, its `Last-Modified`, when
/// sent, must equal the stored one. A 304 naming another representation does not update the
/// entry.
pub fn describes_entry(
    fields: &HeaderMap,
    etag: &[u8],
    last_modified: u64,
    entry_flags: u16,
) -> bool {
    if let Some(theirs) = fields.get(header::ETAG) {
        if entry_flags & flags::ETAG_DERIVED != 0 {
            // Our ETag is not theirs: a new ETag means a representation we don't hold.
            return false;
        }
        return opaque(theirs.as_bytes()) == opaque(etag);
    }
    match fields
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(http_date)
    {
        Some(lm) => entry_flags & flags::LAST_MODIFIED != 0 && lm == last_modified,
        None => true,
    }
}

/// Fields of a 304 / HEAD answer that never replace the stored ones (RFC 9111 §3.2): the
/// framing of the stored body, and what each answer computes anew.
const NOT_MERGED: [HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::TRANSFER_ENCODING,
    header::AGE,
    header::ETAG,
];

/// The stored fields updated by a 304's (RFC 9111 §3.2): every field it carries replaces the
/// stored lines of that name, except those in [`NOT_MERGED`] and `Cache-Status`.
pub fn merge_fields<'a>(
    stored: impl Iterator<Item = (&'a HeaderName, HeaderValue)>,
    update: &HeaderMap,
) -> HeaderMap {
    let replaced = |n: &HeaderName| {
        update.contains_key(n) && !NOT_MERGED.contains(n) && n != super::super::shape::CACHE_STATUS
    };
    let mut out = HeaderMap::new();
    for (name, value) in stored {
        if !replaced(name) {
            out.append(name.clone(), value);
        }
    }
    for (name, value) in update {
        if replaced(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn conditionals() {
        let etag: &[u8] = b"\"abc\"";
        let nm = |v| not_modified(&headers(&[("if-none-match", v)]), etag, 0);
        assert!(nm("\"abc\""));
        assert!(nm("\"x\", W/\"abc\""));
        assert!(nm("*"));
        assert!(!nm("\"x\""));
        // Weak comparison both ways.
        assert!(not_modified(
            &headers(&[("if-none-match", "\"w\"")]),
            b"W/\"w\"",
            0
        ));
        let ims = headers(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(not_modified(&ims, etag, 784_111_777));
        assert!(!not_modified(&ims, etag, 784_111_778));
        // If-None-Match wins over If-Modified-Since.
        let both = headers(&[
            ("if-none-match", "\"x\""),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!not_modified(&both, etag, 0));
        assert!(!not_modified(&HeaderMap::new(), etag, 0));
    }

    #[test]
    fn derived_etags_are_weak_and_stable() {
        assert_eq!(body_etag(b"x"), body_etag(b"x"));
        assert_ne!(body_etag(b"x"), body_etag(b"y"));
        assert!(body_etag(b"x").as_bytes().starts_with(b"W/\""));
    }

    #[test]
    fn conditional_request_uses_only_the_origins_validators() {
        let both = conditional_fields(b"W/\"v\"", 784_111_777, flags::LAST_MODIFIED);
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].1, "W/\"v\"");
        assert_eq!(both[1].1, "Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(conditional_fields(b"W/\"h\"", 1, flags::ETAG_DERIVED).is_empty());
        assert!(!has_validator(flags::ETAG_DERIVED));
        assert!(has_validator(flags::ETAG_DERIVED | flags::LAST_MODIFIED));
        assert!(has_validator(0));
    }

    #[test]
    fn a_304_for_another_representation_is_not_merged() {
        let h = headers(&[("etag", "\"b\"")]);
        assert!(!describes_entry(&h, b"\"a\"", 0, 0));
        assert!(describes_entry(&h, b"W/\"b\"", 0, 0));
        assert!(!describes_entry(&h, b"W/\"b\"", 0, flags::ETAG_DERIVED));
        assert!(describes_entry(&HeaderMap::new(), b"\"a\"", 0, 0));
        let lm = headers(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(describes_entry(
            &lm,
            b"x",
            784_111_777,
            flags::LAST_MODIFIED
        ));
        assert!(!describes_entry(
            &lm,
            b"x",
            784_111_778,
            flags::LAST_MODIFIED
        ));
    }

    #[test]
    fn merge_replaces_all_lines_of_a_name_and_keeps_framing() {
        let stored = headers(&[
            ("content-type", "text/plain"),
            ("x-a", "1"),
            ("x-a", "2"),
            ("content-length", "5"),
            ("etag", "\"e\""),
        ]);
        let update = headers(&[
            ("x-a", "3"),
            ("content-length", "0"),
            ("cache-control", "max-age=9"),
            ("etag", "W/\"e\""),
        ]);
        let merged = merge_fields(stored.iter().map(|(n, v)| (n, v.clone())), &update);
        assert_eq!(merged.get_all("x-a").iter().collect::<Vec<_>>(), ["3"]);
        assert_eq!(merged["content-length"], "5");
        assert_eq!(merged["etag"], "\"e\"");
        assert_eq!(merged["cache-control"], "max-age=9");
        assert_eq!(merged["content-type"], "text/plain");
    }
}
