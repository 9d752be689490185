//! Events from other services: a JSON payload on a configured channel becomes a set of tags,
//! when its conditions hold. Pure functions: the subscriber calls them, tests call them
//! directly.

use serde_json::Value;

use crate::config::{EventConfig, Subscription};

/// Does `rule` listen to a message that arrived on `channel` (through `pattern`, for a
/// PSUBSCRIBE)?
pub fn listens(rule: &EventConfig, channel: &str, pattern: Option<&str>) -> bool {
    match (&rule.subscription, pattern) {
        (Subscription::Channel(c), None) => c == channel,
        (Subscription::Pattern(p), Some(got)) => p == got,
        _ => false,
    }
}

/// Why an event payload was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    NotJson(String),
    /// A tag template needs a field the payload lacks (or that is not a string/number/bool).
    MissingField(String),
}

impl Rejection {
    /// A stable name per kind of rejection: what log lines are throttled by.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::NotJson(_) => "not_json",
            Rejection::MissingField(_) => "missing_field",
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::NotJson(e) => write!(f, "payload is not JSON: {e}"),
            Rejection::MissingField(p) => write!(f, "payload has no usable field `{p}`"),
        }
    }
}

/// The tags `payload` invalidates under `rule`: `Ok(None)` when a `when` condition does not
/// hold (the event is ignored, not rejected).
pub fn tags_for(rule: &EventConfig, payload: &[u8]) -> Result<Option<Vec<String>>, Rejection> {
    tags_for_on(rule, None, payload)
}

/// As [`tags_for`], for a message that arrived on `channel`: templates may name it as the
/// field `_channel` (seed 004's `executions:{account_id}` carries the account only in the
/// channel name, so a route tagged `"executions:{account_id}"` is invalidated by the event tag
/// `"{_channel}"`).
pub fn tags_for_on(
    rule: &EventConfig,
    channel: Option<&str>,
    payload: &[u8],
) -> Result<Option<Vec<String>>, Rejection> {
    let mut json: Value =
        serde_json::from_slice(payload).map_err(|e| Rejection::NotJson(e.to_string()))?;
    if let (Some(c), Value::Object(map)) = (channel, &mut json) {
        map.insert(CHANNEL_FIELD.to_string(), Value::String(c.to_string()));
    }
    if !rule
        .when
        .iter()
        .all(|(path, want)| field(&json, path) == Some(want))
    {
        return Ok(None);
    }
    let tags = rule
        .tags
        .iter()
        .map(|t| render(t, &json))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(tags))
}

/// The pseudo-field naming the channel a message arrived on (it replaces a payload field of
/// the same name).
pub const CHANNEL_FIELD: &str = "_channel";

/// Fills `t` from the payload: strings as they are, numbers and booleans as written.
fn render(t: &crate::config::Template, json: &Value) -> Result<String, Rejection> {
    let values = t
        .fields()
        .map(|name| {
            let v = match field(json, name) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                _ => return Err(Rejection::MissingField(name.to_string())),
            };
            Ok((name, v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(t.render(|name| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    })
    .expect("every field has a value"))
}

/// The value at a dotted path (`updated_fields.group`).
fn field<'a>(json: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(json, |v, part| v.get(part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn rules() -> Vec<EventConfig> {
        Config::parse(
            r#"
            [upstream]
            url = "http://127.0.0.1:1"
            [l2]
            url = "redis://127.0.0.1:1"
            [[event]]
            channel = "balance_updates"
            tags = ["user:{user_type}:{user_id}"]
            [[event]]
            channel = "admin_user_updates"
            when = { group_changed = true }
            tags = ["user:{user_type}:{user_id}", "group:{updated_fields.group}"]
            [[event]]
            pattern = "user_*"
            tags = ["user:{user_type}:{user_id}"]
            "#,
        )
        .unwrap()
        .events
    }

    #[test]
    fn seeds_payloads_become_tags() {
        let r = rules();
        let balance = br#"{"user_id":123,"user_type":"live","balance":1000.5}"#;
        assert_eq!(
            tags_for(&r[0], balance).unwrap(),
            Some(vec!["user:live:123".to_string()])
        );
        let admin = br#"{"user_id":"7","user_type":"demo","group_changed":true,"updated_fields":{"group":"VIP"}}"#;
        assert_eq!(
            tags_for(&r[1], admin).unwrap(),
            Some(vec!["user:demo:7".to_string(), "group:VIP".to_string()])
        );
        let unchanged = br#"{"user_id":"7","user_type":"demo","group_changed":false}"#;
        assert_eq!(tags_for(&r[1], unchanged).unwrap(), None);
    }

    #[test]
    fn bad_payloads_are_rejected_with_a_reason() {
        let r = rules();
        assert!(matches!(
            tags_for(&r[0], b"{oops"),
            Err(Rejection::NotJson(_))
        ));
        assert_eq!(
            tags_for(&r[0], br#"{"user_type":"live"}"#),
            Err(Rejection::MissingField("user_id".into()))
        );
        assert!(tags_for(&r[0], br#"{"user_type":"live","user_id":{"x":1}}"#).is_err());
        // The channel a message came on is the field `_channel`.
        let on = Config::parse(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[l2]\nurl = \"redis://127.0.0.1:1\"\n[[event]]\npattern = \"executions:*\"\ntags = [\"{_channel}\"]\n",
        )
        .unwrap()
        .events;
        assert_eq!(
            tags_for_on(
                &on[0],
                Some("executions:42"),
                br#"{"_channel":"x","order_id":1}"#
            )
            .unwrap(),
            Some(vec!["executions:42".to_string()])
        );
    }

    #[test]
    fn channels_and_patterns() {
        let r = rules();
        assert!(listens(&r[0], "balance_updates", None));
        assert!(!listens(&r[0], "user_updates", None));
        assert!(listens(&r[2], "user_updates", Some("user_*")));
        assert!(!listens(&r[2], "user_updates", None));
    }
}
