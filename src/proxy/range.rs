//! Range requests answered from a stored full `200` (RFC 9110 §14): one byte range gives a
//! `206` with `Content-Range` and that slice of the stored body; an unsatisfiable one a `416`
//! with `Content-Range: bytes */<length>`. Anything else is answered whole, as RFC 9110 §14.2
//! allows a server to ignore `Range`: several ranges (multipart answers buy a cache little),
//! another unit, a malformed field, an `If-Range` that does not match, a stored status other
//! than `200`, a HEAD.
//!
//! The cache only ever stores whole representations: a fill drops the client's `Range` (and
//! its conditionals) before asking the upstream, then answers the range from the entry it
//! stored, and a `206` from the upstream is never stored (`cache::policy::storability`).
//! Fetching the whole on a miss costs the first reader the full transfer from the upstream,
//! once: every later range of the URI is then a hit; an answer too large to store streams
//! through whole, which the client must accept as the answer to a Range it asked for.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::body::Body;
use crate::cache::Entry;

/// Fields a `416` from an entry carries: its validators and caching metadata.
const UNSATISFIABLE_FIELDS: [HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::VARY,
];

/// What a `Range` field asks of a representation of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ranged {
    /// Answer the whole representation: no single byte range was asked for.
    Full,
    /// Bytes `start..=end` (both within the representation).
    Partial { start: u64, end: u64 },
    /// The one range asked for lies outside the representation.
    Unsatisfiable,
}

/// A number in a range spec: absent, a value (saturating: a huge first position is past any
/// end, a huge last one means the end), or not digits.
enum Num {
    Absent,
    Value(u64),
    Bad,
}

fn number(text: &[u8]) -> Num {
    if text.is_empty() {
        return Num::Absent;
    }
    if !text.iter().all(u8::is_ascii_digit) {
        return Num::Bad;
    }
    Num::Value(text.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// Evaluates a `Range` field against a representation of `len` bytes (RFC 9110 §14.1.2):
/// `bytes=a-b`, `bytes=a-`, `bytes=-n`.
pub(super) fn parse(value: &[u8], len: u64) -> Ranged {
    let Some(eq) = value.iter().position(|&b| b == b'=') else {
        return Ranged::Full;
    };
    if !value[..eq].trim_ascii().eq_ignore_ascii_case(b"bytes") {
        return Ranged::Full;
    }
    // A list: empty elements are allowed and mean nothing (RFC 9110 §5.6.1).
    let mut specs = value[eq + 1..]
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return Ranged::Full;
    };
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return Ranged::Full;
    };
    match (number(&spec[..dash]), number(&spec[dash + 1..])) {
        // An invalid spec makes the field invalid: ignored.
        (Num::Value(first), Num::Value(last)) if last < first => Ranged::Full,
        (Num::Value(first), _) if first >= len => match number(&spec[dash + 1..]) {
            Num::Bad => Ranged::Full,
            _ => Ranged::Unsatisfiable,
        },
        (Num::Value(start), Num::Value(last)) => Ranged::Partial {
            start,
            end: last.min(len - 1),
        },
        (Num::Value(start), Num::Absent) => Ranged::Partial {
            start,
            end: len - 1,
        },
        // A suffix: the last n bytes; none of an empty representation.
        (Num::Absent, Num::Value(0)) => Ranged::Unsatisfiable,
        (Num::Absent, Num::Value(_)) if len == 0 => Ranged::Unsatisfiable,
        (Num::Absent, Num::Value(n)) => Ranged::Partial {
            start: len - n.min(len),
            end: len - 1,
        },
        _ => Ranged::Full,
    }
}

/// Whether `If-Range` lets the range through (RFC 9110 §13.1.5): an entity tag must match the
/// entry's by strong comparison (neither weak, same bytes), a date must equal its
/// `Last-Modified` exactly.
pub(super) fn if_range_holds(
    value: &HeaderValue,
    etag: &[u8],
    last_modified: Option<HeaderValue>,
) -> bool {
    let v = value.as_bytes().trim_ascii();
    if v.starts_with(b"\"") || v.starts_with(b"W/") {
        return v.starts_with(b"\"") && etag.starts_with(b"\"") && v == etag;
    }
    let date = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
    };
    match (date(v), last_modified.and_then(|lm| date(lm.as_bytes()))) {
        (Some(asked), Some(ours)) => asked == ours,
        _ => false,
    }
}

/// The `206` or `416` that answers `range` from `entry` (a stored `200`), or `None` when the
/// whole answer is due. `age` and `cache_status` are the answer's, as for a whole one.
/// Kept out of line: a hit without `Range` pays one header lookup for it, not a larger
/// `from_entry`.
#[inline(never)]
pub(super) fn answer(
    entry: &Entry,
    range: &HeaderValue,
    request: &HeaderMap,
    age: &HeaderValue,
    cache_status: &HeaderValue,
) -> Option<Response<Body>> {
    let len = entry.body_len() as u64;
    let ranged = parse(range.as_bytes(), len);
    if ranged == Ranged::Full {
        return None;
    }
    if let Some(if_range) = request.get(header::IF_RANGE) {
        let last_modified = entry
            .headers()
            .find(|(n, _)| **n == header::LAST_MODIFIED)
            .map(|(_, v)| v);
        if !if_range_holds(if_range, entry.etag(), last_modified) {
            return None;
        }
    }
    let parts = entry.parts();
    let mut r = match ranged {
        Ranged::Partial { start, end } => {
            let body = parts.body().slice(start as usize..=end as usize);
            let mut r = Response::new(Body::full(body));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            *r.headers_mut() = parts.response_headers(age.clone(), cache_status.clone());
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_LENGTH,
                super::respond::number(end - start + 1),
            );
            h.insert(
                header::CONTENT_RANGE,
                content_range(&format!("{start}-{end}"), len),
            );
            r
        }
        _ => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = r.headers_mut();
            for (name, value) in entry.headers() {
                if UNSATISFIABLE_FIELDS.contains(name) {
                    h.append(name.clone(), value);
                }
            }
            h.insert(header::CONTENT_RANGE, content_range("*", len));
            h.insert(header::AGE, age.clone());
            h.insert(super::respond::CACHE_STATUS, cache_status.clone());
            r
        }
    };
    r.headers_mut()
        .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    Some(r)
}

fn content_range(range: &str, len: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes {range}/{len}")).expect("ASCII header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(v: &str, len: u64) -> Ranged {
        parse(v.as_bytes(), len)
    }

    fn part(start: u64, end: u64) -> Ranged {
        Ranged::Partial { start, end }
    }

    #[test]
    fn single_ranges() {
        assert_eq!(p("bytes=0-4", 10), part(0, 4));
        assert_eq!(p("bytes=5-", 10), part(5, 9));
        assert_eq!(p("bytes=-3", 10), part(7, 9));
        assert_eq!(p("bytes=-30", 10), part(0, 9));
        assert_eq!(p("bytes=2-200", 10), part(2, 9));
        assert_eq!(p("bytes=9-9", 10), part(9, 9));
        assert_eq!(p("Bytes = 1-2 ,", 10), part(1, 2));
        assert_eq!(p("bytes=0-99999999999999999999999", 10), part(0, 9));
        assert_eq!(p("bytes=-99999999999999999999999", 10), part(0, 9));
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(p("bytes=10-", 10), Ranged::Unsatisfiable);
        assert_eq!(p("bytes=10-20", 10), Ranged::Unsatisfiable);
        assert_eq!(p("bytes=-0", 10), Ranged::Unsatisfiable);
        assert_eq!(p("bytes=0-", 0), Ranged::Unsatisfiable);
        assert_eq!(p("bytes=-5", 0), Ranged::Unsatisfiable);
        assert_eq!(
            p("bytes=99999999999999999999999-", 10),
            Ranged::Unsatisfiable
        );
    }

    #[test]
    fn the_rest_is_answered_whole() {
        for v in [
            "bytes=0-1,3-4",
            "bytes=0-1, -2",
            "bytes=5-4",
            "bytes=-",
            "bytes=",
            "bytes=a-b",
            "bytes=1-2x",
            "bytes=1 -2",
            "bytes=+1-2",
            "bytes 0-1",
            "items=0-1",
            "",
            "bytes=10-x",
        ] {
            assert_eq!(p(v, 10), Ranged::Full, "{v:?}");
        }
    }

    #[test]
    fn if_range_needs_a_strong_match_or_the_exact_date() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        let lm = Some(v("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(if_range_holds(&v("\"a\""), b"\"a\"", None));
        assert!(!if_range_holds(&v("\"b\""), b"\"a\"", None));
        assert!(!if_range_holds(&v("W/\"a\""), b"W/\"a\"", None));
        assert!(!if_range_holds(&v("\"a\""), b"W/\"a\"", None));
        assert!(if_range_holds(
            &v("Sun, 06 Nov 1994 08:49:37 GMT"),
            b"\"a\"",
            lm.clone()
        ));
        assert!(!if_range_holds(
            &v("Sun, 06 Nov 1994 08:49:38 GMT"),
            b"\"a\"",
            lm.clone()
        ));
        assert!(!if_range_holds(
            &v("Sun, 06 Nov 1994 08:49:37 GMT"),
            b"\"a\"",
            None
        ));
        assert!(!if_range_holds(&v("junk"), b"\"a\"", lm));
    }

    proptest! {
        /// Never a panic, and a partial answer always lies within the representation.
        #[test]
        fn any_field_gives_a_slice_within_the_body(v in "[ -~]{0,30}", len in 0u64..50) {
            if let Ranged::Partial { start, end } = parse(v.as_bytes(), len) {
                prop_assert!(start <= end && end < len, "{v:?} {len}: {start}-{end}");
            }
        }

        /// `bytes=a-b` follows RFC 9110 §14.1.2 for every a, b and length.
        #[test]
        fn first_last_ranges(first in 0u64..60, last in 0u64..60, len in 0u64..50) {
            let got = parse(format!("bytes={first}-{last}").as_bytes(), len);
            let want = if last < first {
                Ranged::Full
            } else if first >= len {
                Ranged::Unsatisfiable
            } else {
                Ranged::Partial { start: first, end: last.min(len - 1) }
            };
            prop_assert_eq!(got, want);
        }

        /// `bytes=-n` is the last n bytes, the whole when n is larger; nothing of nothing.
        #[test]
        fn suffix_ranges(n in 0u64..60, len in 0u64..50) {
            let got = parse(format!("bytes=-{n}").as_bytes(), len);
            let want = if n == 0 || len == 0 {
                Ranged::Unsatisfiable
            } else {
                Ranged::Partial { start: len.saturating_sub(n), end: len - 1 }
            };
            prop_assert_eq!(got, want);
        }

        /// Two ranges or more are answered whole, whatever they are.
        #[test]
        fn several_ranges_are_ignored(a in 0u64..60, b in 0u64..60, len in 0u64..50) {
            let v = format!("bytes={a}-{b},{b}-");
            prop_assert_eq!(parse(v.as_bytes(), len), Ranged::Full);
        }
    }
}
