//! Route matching: method + path → the route's policy and its path parameters.
//!
//! Routes are compiled once from the config. Matching walks the path segments against each
//! template, most specific first (literal > `{param}` > `{*rest}` at the first position where
//! two differ; config order between equally specific ones, which `check` reports), and records
//! parameters as slices of the request path: no allocation on the hot path.

use std::sync::Arc;

use http::Method;

use crate::config::{RouteConfig, Segment, Template, MAX_PARAMS};

/// A compiled route: its index (stable for the life of the router) and its policy.
#[derive(Debug)]
pub struct Route {
    pub id: usize,
    pub config: RouteConfig,
}

/// Path parameters of one match, borrowed from the request path.
#[derive(Debug, Clone, Copy)]
pub struct Params<'p> {
    values: [&'p str; MAX_PARAMS],
    len: usize,
}

impl<'p> Params<'p> {
    pub fn as_slice(&self) -> &[&'p str] {
        &self.values[..self.len]
    }

    /// The value of the parameter named `name` in `route`.
    pub fn get(&self, route: &Route, name: &str) -> Option<&'p str> {
        route
            .config
            .matcher
            .params
            .iter()
            .position(|p| p == name)
            .map(|i| self.values[i])
    }
}

/// A request matched to a cached route.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'r, 'p> {
    pub route: &'r Arc<Route>,
    pub params: Params<'p>,
}

/// Renders tag templates from the params of one match (`names` in template order).
pub fn render_tags(tags: &[Template], names: &[String], params: &Params<'_>) -> Vec<String> {
    tags.iter()
        .filter_map(|t| {
            t.render(|field| {
                names
                    .iter()
                    .position(|n| n == field)
                    .map(|i| params.values[i])
            })
        })
        .collect()
}

#[derive(Debug, Default)]
pub struct Router {
    /// In config order: `id` is the position here.
    routes: Vec<Arc<Route>>,
    /// The same routes, most specific first: the order `find` tries them in.
    by_specificity: Vec<Arc<Route>>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Router {
        let routes: Vec<Arc<Route>> = routes
            .iter()
            .enumerate()
            .map(|(id, config)| {
                Arc::new(Route {
                    id,
                    config: config.clone(),
                })
            })
            .collect();
        let mut by_specificity = routes.clone();
        // Stable: equally specific routes keep their config order.
        by_specificity.sort_by(|a, b| {
            a.config
                .matcher
                .specificity()
                .cmp(&b.config.matcher.specificity())
        });
        Router {
            routes,
            by_specificity,
        }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Finds the cached route for a GET or HEAD request; other methods never match.
    pub fn find<'r, 'p>(&'r self, method: &Method, path: &'p str) -> Option<RouteMatch<'r, 'p>> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        let path = path.strip_prefix('/')?;
        self.by_specificity.iter().find_map(|route| {
            match_segments(&route.config.matcher.segments, path)
                .map(|params| RouteMatch { route, params })
        })
    }
}

/// Matches a path (without its leading `/`) against template segments.
pub fn match_segments<'p>(template: &[Segment], path: &'p str) -> Option<Params<'p>> {
    let mut params = Params {
        values: [""; MAX_PARAMS],
        len: 0,
    };
    // `None` once the path is used up; `Some("")` after a trailing `/`.
    let mut rest = Some(path);
    for seg in template {
        let remaining = rest?;
        if let Segment::Rest(i) = seg {
            // Everything after the `/` that ended the previous segment: distinct paths keep
            // distinct values (`/api/` → "", `/api//x` → "/x"), so keys never collide.
            params.values[*i] = remaining;
            params.len = params.len.max(i + 1);
            return Some(params);
        }
        // Split on the byte: `str::split(char)` pays for UTF-8 searching on every request,
        // and '/' can never be part of a multi-byte character.
        let (part, next) = match remaining.as_bytes().iter().position(|&b| b == b'/') {
            Some(at) => (&remaining[..at], Some(&remaining[at + 1..])),
            None => (remaining, None),
        };
        rest = next;
        match seg {
            Segment::Literal(lit) => {
                if lit != part {
                    return None;
                }
            }
            Segment::Param(i) => {
                if part.is_empty() {
                    return None;
                }
                params.values[*i] = part;
                params.len = params.len.max(i + 1);
            }
            Segment::Rest(_) => unreachable!("handled above"),
        }
    }
    if rest.is_some() {
        return None;
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn router() -> Router {
        let c = Config::parse(
            r#"
            [upstream]
            url = "http://127.0.0.1:1"
            [[route]]
            name = "group"
            match = "GET /api/groups/{group}/{symbol}"
            ttl = "1h"
            [[route]]
            name = "balance"
            match = "GET /api/users/{user_type}/{user_id}/balance"
            ttl = "60s"
            "#,
        )
        .unwrap();
        Router::new(&c.routes)
    }

    #[test]
    fn matches_and_extracts_params() {
        let r = router();
        let m = r.find(&Method::GET, "/api/groups/VIP/EURUSD").unwrap();
        assert_eq!(m.route.config.name, "group");
        assert_eq!(m.params.as_slice(), &["VIP", "EURUSD"]);
        assert_eq!(m.params.get(m.route, "symbol"), Some("EURUSD"));
        let m = r.find(&Method::HEAD, "/api/users/live/42/balance").unwrap();
        assert_eq!(m.route.config.name, "balance");
        assert_eq!(m.params.as_slice(), &["live", "42"]);
    }

    #[test]
    fn rejects_other_methods_and_shapes() {
        let r = router();
        assert!(r.find(&Method::PUT, "/api/groups/VIP/EURUSD").is_none());
        assert!(r.find(&Method::GET, "/api/groups/VIP").is_none());
        assert!(r.find(&Method::GET, "/api/groups/VIP/EURUSD/x").is_none());
        assert!(r.find(&Method::GET, "/api/groups//EURUSD").is_none());
        assert!(r.find(&Method::GET, "/api/groups/VIP/").is_none());
        assert!(r.find(&Method::GET, "api/groups/VIP/EURUSD").is_none());
    }

    fn catch_all_router() -> Router {
        let c = Config::parse(
            r#"
            [upstream]
            url = "http://127.0.0.1:1"
            [[route]]
            name = "all"
            match = "GET /{*path}"
            ttl = "1s"
            [[route]]
            name = "api"
            match = "GET /api/{*rest}"
            ttl = "1s"
            [[route]]
            name = "group"
            match = "GET /api/groups/{group}"
            ttl = "1s"
            [[route]]
            name = "vip"
            match = "GET /api/groups/VIP"
            ttl = "1s"
            "#,
        )
        .unwrap();
        Router::new(&c.routes)
    }

    #[test]
    fn the_most_specific_route_wins_whatever_the_config_order() {
        let r = catch_all_router();
        let name = |path: &str| {
            r.find(&Method::GET, path)
                .map(|m| m.route.config.name.clone())
        };
        let rest = |path: &str| {
            r.find(&Method::GET, path)
                .map(|m| m.params.as_slice().to_vec().join("|"))
        };
        assert_eq!(name("/api/groups/VIP").as_deref(), Some("vip"));
        assert_eq!(name("/api/groups/STD").as_deref(), Some("group"));
        assert_eq!(name("/api/groups/STD/x").as_deref(), Some("api"));
        assert_eq!(rest("/api/groups/STD/x").as_deref(), Some("groups/STD/x"));
        assert_eq!(name("/api/").as_deref(), Some("api"));
        assert_eq!(rest("/api/").as_deref(), Some(""));
        assert_eq!(rest("/api//x").as_deref(), Some("/x"));
        // `/api` is not under `/api/`: the root catch-all takes it.
        assert_eq!(name("/api").as_deref(), Some("all"));
        assert_eq!(rest("/api").as_deref(), Some("api"));
        assert_eq!(rest("/").as_deref(), Some(""));
        assert_eq!(rest("/a/b/c").as_deref(), Some("a/b/c"));
        // Routes keep their config positions as ids.
        assert_eq!(r.routes()[3].config.name, "vip");
        assert_eq!(r.routes()[3].id, 3);
    }
}
