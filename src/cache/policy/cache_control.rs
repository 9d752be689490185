//! Parsing of `Cache-Control` (response and request directives, RFC 9111 §5.2) and `Age`
//! (§5.1), robust to what broken or hostile peers send: duplicates, bad values, lists, junk.
//! Where a field can be read two ways, the stricter reading wins: a shorter lifetime, a
//! directive that forbids rather than allows.

use http::{header, HeaderMap, HeaderName, HeaderValue};

/// The value given to a delta-seconds too large to represent (RFC 9111 §1.2.2).
pub const DELTA_MAX: u64 = 2_147_483_648;

/// The response directives that matter to a shared cache.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// RFC 5861 windows, in seconds: serve stale while one refresh runs / when the origin
    /// fails (see `cache::stale`).
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        Self::parse_field(headers, &header::CACHE_CONTROL)
    }

    /// The directives of one field with `Cache-Control` syntax (`CDN-Cache-Control`,
    /// `Surrogate-Control` and other targeted fields, RFC 9213, parse alike).
    pub fn parse_field(headers: &HeaderMap, field: &HeaderName) -> CacheControl {
        let mut cc = CacheControl::default();
        let ok = for_each_directive(headers, field, |name, arg| {
            if name.eq_ignore_ascii_case(b"no-store") {
                cc.no_store = true;
            } else if name.eq_ignore_ascii_case(b"no-cache") {
                // `no-cache="field"` is honoured as a plain no-cache: stricter, never wrong.
                cc.no_cache = true;
            } else if name.eq_ignore_ascii_case(b"private") {
                // Likewise `private="field"`: the whole response is private.
                cc.private = true;
            } else if name.eq_ignore_ascii_case(b"public") {
                cc.public = true;
            } else if name.eq_ignore_ascii_case(b"must-revalidate") {
                cc.must_revalidate = true;
            } else if name.eq_ignore_ascii_case(b"proxy-revalidate") {
                cc.proxy_revalidate = true;
            } else if name.eq_ignore_ascii_case(b"max-age") {
                cc.max_age = Some(stricter(cc.max_age, delta(arg)));
            } else if name.eq_ignore_ascii_case(b"s-maxage") {
                cc.s_maxage = Some(stricter(cc.s_maxage, delta(arg)));
            } else if name.eq_ignore_ascii_case(b"stale-while-revalidate") {
                // Unparseable: no window (the strict reading); twice: the shorter.
                cc.stale_while_revalidate = Some(stricter(cc.stale_while_revalidate, delta(arg)));
            } else if name.eq_ignore_ascii_case(b"stale-if-error") {
                cc.stale_if_error = Some(stricter(cc.stale_if_error, delta(arg)));
            }
        });
        if !ok {
            // Unreadable directives: assume the strictest reading.
            cc.no_store = true;
        }
        cc
    }
}

/// RFC 9213's field for every CDN-like cache, and the older Edge Architecture one.
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
pub const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// The directives sidecache obeys for storing a response (RFC 9213): the first of
/// `targeted` (the route's own field, default `Sidecache-Cache-Control`),
/// `CDN-Cache-Control` and `Surrogate-Control` that the response carries, in place of
/// `Cache-Control`; else `Cache-Control`.
pub fn effective_cache_control(targeted: Option<&HeaderName>, headers: &HeaderMap) -> CacheControl {
    let fixed = [CDN_CACHE_CONTROL, SURROGATE_CONTROL];
    for field in targeted.into_iter().chain(fixed.iter()) {
        // An empty or unparseable targeted field is ignored, as if absent (RFC 9213 §2.1).
        if headers.contains_key(field) && is_targeted_dictionary(headers, field) {
            return CacheControl::parse_field(headers, field);
        }
    }
    CacheControl::parse(headers)
}

/// Whether the lines of `field` make one valid Structured Field Dictionary (RFC 8941 §3.2)
/// whose lifetime directives are Integers, the syntax RFC 9213 gives targeted fields.
fn is_targeted_dictionary(headers: &HeaderMap, field: &HeaderName) -> bool {
    let mut text = Vec::new();
    for (i, v) in headers.get_all(field).iter().enumerate() {
        if i > 0 {
            text.extend_from_slice(b", ");
        }
        text.extend_from_slice(v.as_bytes());
    }
    sf_dictionary(&text).is_some()
}

/// Parses an SF Dictionary, checking the types of the lifetime directives; `None` if invalid.
fn sf_dictionary(input: &[u8]) -> Option<()> {
    let mut p = SfParser { s: input, i: 0 };
    p.skip_sp();
    if p.done() {
        return None;
    }
    loop {
        let key = p.key()?;
        let integer_expected = [
            &b"max-age"[..],
            b"s-maxage",
            b"stale-while-revalidate",
            b"stale-if-error",
        ]
        .contains(&key);
        if p.eat(b'=') {
            let item = p.bare_item()?;
            if integer_expected && item != SfItem::Integer {
                return None;
            }
        } else if integer_expected {
            // A bare key is the Boolean true: not a lifetime.
            return None;
        }
        p.parameters()?;
        p.skip_ows();
        if p.done() {
            return Some(());
        }
        if !p.eat(b',') {
            return None;
        }
        p.skip_ows();
        if p.done() {
            return None;
        }
    }
}

#[derive(PartialEq)]
enum SfItem {
    Integer,
    Other,
}

struct SfParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> SfParser<'a> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn skip_sp(&mut self) {
        while self.eat(b' ') {}
    }

    fn skip_ows(&mut self) {
        while self.eat(b' ') || self.eat(b'\t') {}
    }

    fn key(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        match self.peek()? {
            b'a'..=b'z' | b'*' => self.i += 1,
            _ => return None,
        }
        while let Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*') = self.peek() {
            self.i += 1;
        }
        Some(&self.s[start..self.i])
    }

    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip_sp();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn bare_item(&mut self) -> Option<SfItem> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => {
                self.i += 1;
                loop {
                    match self.peek()? {
                        b'\\' => {
                            self.i += 1;
                            if !matches!(self.peek()?, b'"' | b'\\') {
                                return None;
                            }
                        }
                        b'"' => {
                            self.i += 1;
                            return Some(SfItem::Other);
                        }
                        0x20..=0x7e => {}
                        _ => return None,
                    }
                    self.i += 1;
                }
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'*' => {
                self.i += 1;
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c) {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                Some(SfItem::Other)
            }
            b':' => {
                self.i += 1;
                while let Some(c) = self.peek() {
                    if c == b':' {
                        self.i += 1;
                        return Some(SfItem::Other);
                    }
                    if !(c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=') {
                        return None;
                    }
                    self.i += 1;
                }
                None
            }
            b'?' => {
                self.i += 1;
                match self.peek()? {
                    b'0' | b'1' => {
                        self.i += 1;
                        Some(SfItem::Other)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn number(&mut self) -> Option<SfItem> {
        self.eat(b'-');
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        let int_digits = self.i - start;
        if int_digits == 0 {
            return None;
        }
        if !self.eat(b'.') {
            return (int_digits <= 15).then_some(SfItem::Integer);
        }
        let frac = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        let frac_digits = self.i - frac;
        (int_digits <= 12 && (1..=3).contains(&frac_digits)).then_some(SfItem::Other)
    }
}

/// The request directives a cache honours (RFC 9111 §5.2.1).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestDirectives {
    pub no_store: bool,
    pub no_cache: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    pub min_fresh: Option<u64>,
    /// `max-stale` alone accepts any staleness (`Some(None)`); with a value, that much.
    pub max_stale: Option<Option<u64>>,
}

impl RequestDirectives {
    pub fn parse(headers: &HeaderMap) -> RequestDirectives {
        let mut rd = RequestDirectives::default();
        let ok = for_each_directive(headers, &header::CACHE_CONTROL, |name, arg| {
            if name.eq_ignore_ascii_case(b"no-store") {
                rd.no_store = true;
            } else if name.eq_ignore_ascii_case(b"no-cache") {
                rd.no_cache = true;
            } else if name.eq_ignore_ascii_case(b"only-if-cached") {
                rd.only_if_cached = true;
            } else if name.eq_ignore_ascii_case(b"max-age") {
                rd.max_age = Some(stricter(rd.max_age, delta(arg)));
            } else if name.eq_ignore_ascii_case(b"min-fresh") {
                // Stricter is *more* freshness demanded; a bad value demands all of it.
                let v = arg.and_then(parse_delta).unwrap_or(DELTA_MAX);
                rd.min_fresh = Some(rd.min_fresh.map_or(v, |old| old.max(v)));
            } else if name.eq_ignore_ascii_case(b"max-stale") {
                // Stricter is less staleness accepted; a bad value accepts none.
                let v = arg.map(|a| parse_delta(a).unwrap_or(0));
                rd.max_stale = Some(match (rd.max_stale, v) {
                    (None, v) | (Some(None), v) => v,
                    (Some(Some(old)), None) => Some(old),
                    (Some(Some(old)), Some(v)) => Some(old.min(v)),
                });
            }
        });
        if !ok {
            // Unreadable request directives: no cached answer is trusted, nothing is stored.
            rd.no_store = true;
            rd.no_cache = true;
        }
        rd
    }
}

/// The `Age` of a response in seconds (RFC 9111 §5.1), read as the public HTTP caching suite
/// (cache-tests.fyi) and the caches it rates read it:
/// - a list (`Age: 7200, 0`, or two lines) counts by its *first* member, so an old response
///   repeated by a second hop is never made young by a later `0`;
/// - a first member that is not delta-seconds (`abc`, `-1`, `1.5`) is an invalid field, which
///   RFC 9110 §5.5 says to ignore: 0, as without one. Freshness then still counts the apparent
///   age (`now - Date`) on routes without `ttl`;
/// - too large becomes [`DELTA_MAX`] (§1.2.2): stale under any lifetime.
pub fn parse_age(headers: &HeaderMap) -> u64 {
    let Some(first) = headers.get(header::AGE) else {
        return 0;
    };
    let bytes = first.as_bytes();
    let member = bytes.split(|&b| b == b',').next().unwrap_or(bytes);
    parse_delta(member.trim_ascii()).unwrap_or(0)
}

/// `delta-seconds`: digits only; too large becomes [`DELTA_MAX`].
pub fn parse_delta(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        std::str::from_utf8(text)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(DELTA_MAX)
            .min(DELTA_MAX),
    )
}

/// A lifetime directive's value; a missing or unparseable one means "stale" (§4.2.1).
fn delta(arg: Option<&[u8]>) -> u64 {
    arg.and_then(parse_delta).unwrap_or(0)
}

/// The shorter of a directive given twice (§4.2.1: duplicates may be read as stale; the
/// smaller value is the safe reading).
fn stricter(old: Option<u64>, new: u64) -> u64 {
    old.map_or(new, |o| o.min(new))
}

/// Calls `f(name, argument)` for each directive of every `Cache-Control` line, with quoted
/// arguments unquoted (commas inside quotes do not split). Returns false if a line is not
/// readable as visible ASCII.
fn for_each_directive(
    headers: &HeaderMap,
    field: &HeaderName,
    mut f: impl FnMut(&[u8], Option<&[u8]>),
) -> bool {
    let mut ok = true;
    for value in headers.get_all(field) {
        ok &= directives(value, &mut f);
    }
    ok
}

fn directives(value: &HeaderValue, f: &mut impl FnMut(&[u8], Option<&[u8]>)) -> bool {
    let bytes = value.as_bytes();
    if bytes
        .iter()
        .any(|b| *b >= 0x7f || (*b < 0x20 && *b != b'\t'))
    {
        return false;
    }
    let mut rest = bytes;
    while !rest.is_empty() {
        // The directive runs to the next comma outside quotes.
        let mut in_quotes = false;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, &b) in rest.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if in_quotes && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = !in_quotes;
            } else if b == b',' && !in_quotes {
                end = i;
                break;
            }
        }
        let item = rest[..end].trim_ascii();
        rest = rest.get(end + 1..).unwrap_or_default();
        if item.is_empty() {
            continue;
        }
        match item.iter().position(|b| *b == b'=') {
            None => f(item, None),
            Some(eq) => {
                let name = item[..eq].trim_ascii();
                let mut arg = item[eq + 1..].trim_ascii();
                if arg.len() >= 2 && arg[0] == b'"' && arg[arg.len() - 1] == b'"' {
                    arg = &arg[1..arg.len() - 1];
                }
                f(name, Some(arg));
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn targeted_fields_take_precedence_unless_they_are_not_a_dictionary() {
        let cdn = |v: &'static str| {
            let m = h(&[("cache-control", "no-store"), ("cdn-cache-control", v)]);
            effective_cache_control(None, &m)
        };
        let ok =
            cdn("max-age=60, stale-if-error=5, private, foo=\"b\\\"a\", t=:AQ==:, d=1.5, n=?0");
        assert!(!ok.no_store && ok.private);
        assert_eq!((ok.max_age, ok.stale_if_error), (Some(60), Some(5)));
        // RFC 9213 §2.1: an invalid field is ignored, and Cache-Control applies.
        for bad in [
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age",
            "Max-Age=5",
            "max-age=5,",
            "max-age=5 s-maxage=6",
            "max-age=1.5",
            "",
        ] {
            assert!(cdn(bad).no_store, "{bad:?}");
        }
        // Several lines make one dictionary.
        let mut m = h(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=5"),
        ]);
        m.append("cdn-cache-control", HeaderValue::from_static("public"));
        let cc = effective_cache_control(None, &m);
        assert!(!cc.no_store && cc.public);
        // The route's own field comes first, then CDN-Cache-Control, Surrogate-Control.
        let own = HeaderName::from_static("sidecache-cache-control");
        m.insert(
            "sidecache-cache-control",
            HeaderValue::from_static("max-age=9"),
        );
        m.insert("surrogate-control", HeaderValue::from_static("max-age=7"));
        assert_eq!(effective_cache_control(Some(&own), &m).max_age, Some(9));
        m.remove("cdn-cache-control");
        assert_eq!(effective_cache_control(None, &m).max_age, Some(7));
    }

    #[test]
    fn response_directives() {
        let cc = CacheControl::parse(&h(&[(
            "cache-control",
            "Public, max-age=60, S-MAXAGE=\"30\", must-revalidate, proxy-revalidate",
        )]));
        assert!(cc.public && cc.must_revalidate && cc.proxy_revalidate);
        assert_eq!((cc.max_age, cc.s_maxage), (Some(60), Some(30)));
        // Duplicates: the shorter lifetime wins, across lines too.
        let cc = CacheControl::parse(&h(&[
            ("cache-control", "max-age=60"),
            ("cache-control", "max-age=10, max-age=20"),
        ]));
        assert_eq!(cc.max_age, Some(10));
        // Bad values mean stale.
        for bad in [
            "max-age=abc",
            "max-age=-1",
            "max-age=",
            "max-age=1.5",
            "max-age",
        ] {
            let cc = CacheControl::parse(&h(&[("cache-control", bad)]));
            assert_eq!(cc.max_age, Some(0), "{bad}");
        }
        // Huge values are capped, not wrapped.
        let cc = CacheControl::parse(&h(&[("cache-control", "max-age=99999999999999999999")]));
        assert_eq!(cc.max_age, Some(DELTA_MAX));
        // A comma inside quotes does not start a directive.
        let cc = CacheControl::parse(&h(&[(
            "cache-control",
            "private=\"a, max-age=5\", s-maxage=9",
        )]));
        assert!(cc.private);
        assert_eq!((cc.max_age, cc.s_maxage), (None, Some(9)));
        let cc = CacheControl::parse(&h(&[("cache-control", "no-cache=\"set-cookie\"")]));
        assert!(cc.no_cache);
    }

    #[test]
    fn request_directives() {
        let rd = RequestDirectives::parse(&h(&[(
            "cache-control",
            "max-age=5, min-fresh=3, max-stale, only-if-cached",
        )]));
        assert_eq!(rd.max_age, Some(5));
        assert_eq!(rd.min_fresh, Some(3));
        assert_eq!(rd.max_stale, Some(None));
        assert!(rd.only_if_cached && !rd.no_cache && !rd.no_store);
        let rd = RequestDirectives::parse(&h(&[(
            "cache-control",
            "max-stale=10, max-stale=4, min-fresh=x",
        )]));
        assert_eq!(rd.max_stale, Some(Some(4)));
        assert_eq!(rd.min_fresh, Some(DELTA_MAX));
        let rd = RequestDirectives::parse(&h(&[("cache-control", "max-stale=x")]));
        assert_eq!(rd.max_stale, Some(Some(0)));
    }

    #[test]
    fn age() {
        assert_eq!(parse_age(&h(&[])), 0);
        assert_eq!(parse_age(&h(&[("age", "  15 ")])), 15);
        // The first member counts.
        assert_eq!(parse_age(&h(&[("age", "7200, 0")])), 7200);
        assert_eq!(parse_age(&h(&[("age", "0, 7200")])), 0);
        assert_eq!(parse_age(&h(&[("age", "7200"), ("age", "0")])), 7200);
        assert_eq!(parse_age(&h(&[("age", "0"), ("age", "7200")])), 0);
        // An invalid field is ignored.
        for bad in ["-1", "1.5", "abc", "", "7200;x=1"] {
            assert_eq!(parse_age(&h(&[("age", bad)])), 0, "{bad:?}");
        }
        assert_eq!(parse_age(&h(&[("age", "2147483647")])), 2_147_483_647);
        assert_eq!(parse_age(&h(&[("age", "999999999999999")])), DELTA_MAX);
    }

    proptest! {
        /// Never panics, and a lifetime read is never longer than any one value given.
        #[test]
        fn lifetime_is_the_smallest_given(values in proptest::collection::vec(0u64..100_000, 1..5),
                                          junk in "[ -~]{0,20}") {
            let text = values.iter().map(|v| format!("max-age={v}")).collect::<Vec<_>>().join(", ");
            let mut m = HeaderMap::new();
            m.append(header::CACHE_CONTROL, HeaderValue::from_str(&text).unwrap());
            if let Ok(j) = HeaderValue::from_str(&junk) {
                m.append(header::CACHE_CONTROL, j);
            }
            let cc = CacheControl::parse(&m);
            prop_assert!(cc.max_age.unwrap() <= *values.iter().min().unwrap());
            let _ = RequestDirectives::parse(&m);
        }

        #[test]
        fn age_is_its_first_member_or_ignored(first in "[ -+--~]{0,12}", rest in "[ -~]{0,12}") {
            // `first` holds no comma: it is the first member whatever follows.
            let mut m = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("{first},{rest}")) {
                m.insert(header::AGE, v);
                let age = parse_age(&m);
                let t = first.trim();
                let valid = !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
                let want = if valid { t.parse::<u64>().map_or(DELTA_MAX, |n| n.min(DELTA_MAX)) } else { 0 };
                prop_assert_eq!(age, want);
            }
        }
    }
}
