//! Write-through rules: which passing writes invalidate which tags.

use std::sync::Arc;

use http::Method;

use crate::config::{Action, InvalidateConfig};
use crate::route::{match_segments, render_tags};

#[derive(Debug, Default)]
pub struct WriteRules {
    rules: Vec<Arc<InvalidateConfig>>,
}

/// A write that matched a rule: the tags to invalidate once the upstream says it succeeded.
/// It owns its rule, so that it can go with the request into the forwarding future.
#[derive(Debug, Clone)]
pub struct Matched {
    pub rule: Arc<InvalidateConfig>,
    pub tags: Vec<String>,
}

impl Matched {
    /// Did the upstream's `status` report success for this rule?
    pub fn succeeded(&self, status: u16) -> bool {
        if self.rule.statuses.is_empty() {
            (200..300).contains(&status)
        } else {
            self.rule.statuses.contains(&status)
        }
    }

    pub fn refresh(&self) -> bool {
        self.rule.action == Action::Refresh
    }
}

impl WriteRules {
    pub fn new(rules: &[InvalidateConfig]) -> WriteRules {
        WriteRules {
            rules: rules.iter().cloned().map(Arc::new).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule matching `method` and `path`, with its tags rendered.
    pub fn find(&self, method: &Method, path: &str) -> Option<Matched> {
        let path = path.strip_prefix('/')?;
        self.rules.iter().find_map(|rule| {
            if rule.matcher.method != method {
                return None;
            }
            let params = match_segments(&rule.matcher.segments, path)?;
            Some(Matched {
                rule: rule.clone(),
                tags: render_tags(&rule.tags, &rule.matcher.params, &params),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn matches_writes_and_renders_tags() {
        let c = Config::parse(
            r#"
            [upstream]
            url = "http://127.0.0.1:1"
            [[invalidate]]
            match = "PUT /api/superadmin/groups/{group}/{symbol}"
            tags = ["group:{group}:{symbol}", "group:{group}"]
            [[invalidate]]
            match = "POST /api/users/{user_type}/{user_id}/deposit"
            tags = ["user:{user_type}:{user_id}"]
            statuses = [200, 202]
            action = "refresh"
            "#,
        )
        .unwrap();
        let rules = WriteRules::new(&c.invalidations);
        let m = rules
            .find(&Method::PUT, "/api/superadmin/groups/VIP/EURUSD")
            .unwrap();
        assert_eq!(m.tags, vec!["group:VIP:EURUSD", "group:VIP"]);
        assert!(m.succeeded(204));
        assert!(!m.succeeded(500));
        assert!(!m.refresh());
        assert!(rules
            .find(&Method::GET, "/api/superadmin/groups/VIP/EURUSD")
            .is_none());
        let m = rules
            .find(&Method::POST, "/api/users/live/42/deposit")
            .unwrap();
        assert!(m.refresh());
        assert!(!m.succeeded(201));
    }
}
