//! Templates in the config: route matches (`"GET /api/groups/{group}/{symbol}"`) and tag
//! templates (`"group:{group}:{symbol}"`). Parsed and checked once at load; the router and the
//! cache only ever see these validated forms.

use http::Method;

/// Most path parameters a route may have; a fixed bound keeps matching allocation-free.
pub const MAX_PARAMS: usize = 8;

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must equal this text exactly.
    Literal(String),
    /// Matches any one non-empty segment; the value is parameter number `.0`.
    Param(usize),
    /// `{*name}`, last only: everything after the preceding `/`, zero or more segments (the
    /// value may be empty or contain `/`); the value is parameter number `.0`.
    Rest(usize),
}

impl Segment {
    /// Specificity rank at one position: a literal beats a parameter beats a catch-all.
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 0,
            Segment::Param(_) => 1,
            Segment::Rest(_) => 2,
        }
    }
}

/// A parsed `METHOD /path/{param}` match.
#[derive(Debug, Clone)]
pub struct MatchTemplate {
    pub method: Method,
    pub segments: Vec<Segment>,
    /// Parameter names in path order.
    pub params: Vec<String>,
    /// The text as written, for logs and `explain`.
    pub text: String,
    /// `* /path`: any method (only a `[[limit]]` may say so; `method` then holds `*`).
    pub any_method: bool,
}

impl MatchTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = Self::parse_limit(text)?;
        if t.any_method {
            return Err(format!(
                "`{text}`: `*` (any method) is for [[limit]] matches only; name the method"
            ));
        }
        Ok(t)
    }

    /// As [`parse`](Self::parse), and `*` as the method means any method (`[[limit]]`).
    pub fn parse_limit(text: &str) -> Result<Self, String> {
        let (method, path) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("`{text}`: write `METHOD /path/{{param}}`"))?;
        let any_method = method == "*";
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("`{text}`: `{method}` is not an HTTP method"))?;
        let path = path.trim();
        if !path.starts_with('/') {
            return Err(format!("`{text}`: the path must start with `/`"));
        }
        let mut segments = Vec::new();
        let mut params: Vec<String> = Vec::new();
        let raws: Vec<&str> = path[1..].split('/').collect();
        for (at, raw) in raws.iter().enumerate() {
            let inner = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}'));
            let (name, rest) = match inner.map(|n| n.strip_prefix('*').ok_or(n)) {
                Some(Ok(n)) => (Some(n), true),
                Some(Err(n)) => (Some(n), false),
                None => (None, false),
            };
            if rest && at + 1 != raws.len() {
                return Err(format!(
                    "`{text}`: a catch-all `{{*{}}}` must be the last segment",
                    name.unwrap_or_default()
                ));
            }
            if let Some(name) = name {
                if !is_identifier(name) {
                    return Err(format!(
                        "`{text}`: `{{{name}}}` is not a valid parameter name"
                    ));
                }
                if params.iter().any(|p| p == name) {
                    return Err(format!("`{text}`: parameter `{name}` appears twice"));
                }
                segments.push(if rest {
                    Segment::Rest(params.len())
                } else {
                    Segment::Param(params.len())
                });
                params.push(name.to_string());
            } else if raw.contains(['{', '}']) {
                return Err(format!(
                    "`{text}`: a parameter must be a whole segment, like `/{{name}}/`"
                ));
            } else {
                segments.push(Segment::Literal(raw.to_string()));
            }
        }
        if params.len() > MAX_PARAMS {
            return Err(format!("`{text}`: at most {MAX_PARAMS} parameters"));
        }
        Ok(Self {
            method,
            segments,
            params,
            text: text.trim().to_string(),
            any_method,
        })
    }

    /// Whether a request with `method` is this template's (before the path is looked at).
    pub fn allows(&self, method: &Method) -> bool {
        self.any_method || self.method == method
    }

    /// Whether the path ends in a catch-all `{*name}`.
    pub fn is_catch_all(&self) -> bool {
        matches!(self.segments.last(), Some(Segment::Rest(_)))
    }

    /// Orders templates most specific first: at the first position where two differ in kind,
    /// a literal beats a parameter beats a catch-all. Of two templates that match one path,
    /// the one ordered first is the more specific (they differ in kind somewhere, or they are
    /// [`ambiguous_with`](Self::ambiguous_with) each other).
    pub fn specificity(&self) -> impl Ord + '_ {
        self.segments.iter().map(Segment::rank).collect::<Vec<_>>()
    }

    /// Whether both templates match exactly the same paths (same method, same shape, same
    /// literals): which one serves a request is then only decided by config order.
    pub fn ambiguous_with(&self, other: &MatchTemplate) -> bool {
        self.method == other.method
            && self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    _ => a.rank() == b.rank(),
                })
    }
}

/// A string template such as `"user:{user_type}:{user_id}"`, filled from named values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`{text}`: `{{` without a closing `}}`"))?
                + open;
            let name = &rest[open + 1..close];
            if !is_field_path(name) {
                return Err(format!("`{text}`: `{{{name}}}` is not a valid field name"));
            }
            parts.push(Part::Field(name.to_string()));
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("`{text}`: `}}` without an opening `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        if parts.is_empty() {
            return Err("empty template".into());
        }
        Ok(Self {
            parts,
            text: text.to_string(),
        })
    }

    /// The names this template reads.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Fills the template; `None` when a field has no value.
    pub fn render<'a>(&self, mut value: impl FnMut(&str) -> Option<&'a str>) -> Option<String> {
        let mut out = String::with_capacity(self.text.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Field(f) => out.push_str(value(f)?),
            }
        }
        Some(out)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Field names may be dotted paths (`data.user_id`) for JSON payloads.
fn is_field_path(name: &str) -> bool {
    !name.is_empty() && name.split('.').all(is_identifier)
}

#[cfg(test)]
mod tests {
    #[test]
    fn any_method_is_for_limits_only() {
        let t = MatchTemplate::parse_limit("* /api/{*rest}").unwrap();
        assert!(t.any_method && t.is_catch_all());
        assert!(t.allows(&Method::DELETE) && t.allows(&Method::GET));
        let e = MatchTemplate::parse("* /api/{*rest}").unwrap_err();
        assert!(e.contains("[[limit]]"), "{e}");
        let post = MatchTemplate::parse_limit("POST /api/orders").unwrap();
        assert!(post.allows(&Method::POST) && !post.allows(&Method::GET));
    }

    use super::*;

    #[test]
    fn match_template() {
        let t = MatchTemplate::parse("GET /api/groups/{group}/{symbol}").unwrap();
        assert_eq!(t.method, Method::GET);
        assert_eq!(t.params, vec!["group", "symbol"]);
        assert_eq!(
            t.segments,
            vec![
                Segment::Literal("api".into()),
                Segment::Literal("groups".into()),
                Segment::Param(0),
                Segment::Param(1)
            ]
        );
        assert!(MatchTemplate::parse("/api").is_err());
        assert!(MatchTemplate::parse("GET api").is_err());
        assert!(MatchTemplate::parse("GET /a/{x}/{x}").is_err());
        assert!(MatchTemplate::parse("GET /a/x{y}").is_err());
    }

    #[test]
    fn catch_all_template() {
        let t = MatchTemplate::parse("GET /api/{*rest}").unwrap();
        assert_eq!(t.params, vec!["rest"]);
        assert_eq!(
            t.segments,
            vec![Segment::Literal("api".into()), Segment::Rest(0)]
        );
        assert!(t.is_catch_all());
        assert!(MatchTemplate::parse("GET /{*path}").unwrap().is_catch_all());
        assert!(MatchTemplate::parse("GET /{*path}/x").is_err());
        assert!(MatchTemplate::parse("GET /a/{*}").is_err());
        assert!(MatchTemplate::parse("GET /a/{*p}/{q}").is_err());
        assert!(MatchTemplate::parse("GET /a/{p}/{*p}").is_err());
    }

    #[test]
    fn specificity_and_ambiguity() {
        let t = |s: &str| MatchTemplate::parse(s).unwrap();
        let literal = t("GET /api/groups/x");
        let param = t("GET /api/groups/{g}");
        let rest = t("GET /api/{*rest}");
        let root = t("GET /{*path}");
        assert!(literal.specificity() < param.specificity());
        assert!(param.specificity() < rest.specificity());
        assert!(rest.specificity() < root.specificity());
        assert!(param.ambiguous_with(&t("GET /api/groups/{other}")));
        assert!(!param.ambiguous_with(&t("GET /api/items/{g}")));
        assert!(!param.ambiguous_with(&t("HEAD /api/groups/{g}")));
        assert!(!param.ambiguous_with(&literal));
        assert!(rest.ambiguous_with(&t("GET /api/{*other}")));
    }

    #[test]
    fn tag_template() {
        let t = Template::parse("user:{user_type}:{user_id}").unwrap();
        assert_eq!(t.fields().collect::<Vec<_>>(), vec!["user_type", "user_id"]);
        let out = t.render(|f| match f {
            "user_type" => Some("live"),
            "user_id" => Some("42"),
            _ => None,
        });
        assert_eq!(out.as_deref(), Some("user:live:42"));
        assert_eq!(t.render(|_| None), None);
        assert!(Template::parse("user:{").is_err());
        assert!(Template::parse("user:}").is_err());
        assert!(Template::parse("a:{b c}").is_err());
    }
}
