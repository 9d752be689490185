//! Validation of whole config texts: every problem listed, defaults, env overrides.

use super::*;
use std::time::Duration;

#[test]
fn embedded_default_is_valid() {
    let c = Config::parse(EMBEDDED).unwrap();
    assert!(!c.routes.is_empty());
}

#[test]
fn every_problem_is_listed() {
    let bad = r#"
        [listen]
        proxy = "nowhere"
        [upstream]
        url = "ftp://x"
        timeout = "5 parsecs"
        [l1]
        max_bytes = "lots"
        [[route]]
        name = "a"
        match = "GET /a/{id}"
        ttl = "60"
        tags = ["a:{nope}"]
        scope = "everyone"
        [[route]]
        match = "POST /b"
        bogus = 1
    "#;
    let errs = Config::parse(bad).unwrap_err().0;
    let all = errs.join("\n");
    for needle in [
        "listen.proxy",
        "upstream.url",
        "upstream.timeout",
        "l1.max_bytes",
        "route[0] (a).ttl",
        "route[0] (a).tags[0]",
        "route[0] (a).scope",
        "route[1].bogus: unknown field `bogus`",
    ] {
        assert!(all.contains(needle), "missing {needle} in:\n{all}");
    }
}

#[test]
fn l2_targets() {
    let base = "[upstream]\nurl = \"http://127.0.0.1:1\"\n";
    let c = Config::parse(&format!("{base}[l2]\nurl = \"redis://127.0.0.1:6379\"")).unwrap();
    assert_eq!(
        c.l2.unwrap().target,
        RedisTarget::Standalone("redis://127.0.0.1:6379".into())
    );
    let c = Config::parse(&format!(
        "{base}[l2]\nurl = \"redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster\""
    ))
    .unwrap();
    assert_eq!(
        c.l2.unwrap().target,
        RedisTarget::Sentinel {
            nodes: vec![
                "redis://10.0.0.1:26379".into(),
                "redis://10.0.0.2:26379".into()
            ],
            master_name: "mymaster".into(),
            db: 0
        }
    );
    let errs = Config::parse(&format!(
        "{base}[l2]\nurl = \"redis://x\"\ncluster = [\"redis://y\"]\nlease = \"1s\"\nlease_wait = \"2s\""
    ))
    .unwrap_err()
    .0
    .join("\n");
    assert!(errs.contains("exactly one of"), "{errs}");
    assert!(errs.contains("l2.lease_wait"), "{errs}");
    let c = Config::parse_with_env(
        &format!("{base}[l2]\ncluster = [\"redis://127.0.0.1:7000\"]"),
        |k| (k == "SIDECACHE_REDIS_PASSWORD").then(|| "s3cret".to_string()),
    )
    .unwrap();
    assert_eq!(c.l2.unwrap().password.as_deref(), Some("s3cret"));
    assert!(Config::parse(base).unwrap().l2.is_none());
}

#[test]
fn rates_and_limits() {
    assert_eq!(parse_rate("10/s").unwrap(), (10, Duration::from_secs(1)));
    assert_eq!(
        parse_rate("100/min").unwrap(),
        (100, Duration::from_secs(60))
    );
    assert!(parse_rate("ten").unwrap_err().contains("not a rate"));
    assert!(parse_rate("ten/s").is_err());
    assert!(parse_rate("0/s").is_err());
    assert!(parse_rate("5/fortnight").is_err());
    let errs = Config::parse(
        r#"
        [upstream]
        url = "http://127.0.0.1:1"
        [[limit]]
        match = "POST /api/orders/{account}"
        key = ["header:x-user-id", "param:{nope}"]
        rate = "ten"
        mode = "maybe"
        [[limit]]
        route = "missing"
        key = "ip"
        rate = "1/s"
        "#,
    )
    .unwrap_err()
    .0
    .join("\n");
    for needle in [
        "limit[0] (limit0).rate",
        "limit[0] (limit0).key",
        "limit[0] (limit0).mode",
        "limit[1] (limit1).route",
    ] {
        assert!(errs.contains(needle), "{needle} missing in {errs}");
    }
}

#[test]
fn env_overrides_file() {
    let c = Config::parse_with_env(EMBEDDED, |k| match k {
        ENV_UPSTREAM_URL => Some("http://10.1.2.3:81".into()),
        ENV_LISTEN_PROXY => Some("127.0.0.1:18080".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.upstream.url.authority().unwrap().as_str(), "10.1.2.3:81");
    assert_eq!(c.listen.proxy.port(), 18080);
}

#[test]
fn max_connections_is_a_positive_count_with_a_derived_default() {
    let base = "[upstream]\nurl = \"http://127.0.0.1:1\"\n";
    let c = Config::parse(base).unwrap();
    assert!(
        c.listen.max_connections >= 16,
        "{}",
        c.listen.max_connections
    );
    let c = Config::parse(&format!("[listen]\nmax_connections = 2\n{base}")).unwrap();
    assert_eq!(c.listen.max_connections, 2);
    let errs = Config::parse(&format!("[listen]\nmax_connections = 0\n{base}"))
        .unwrap_err()
        .0
        .join("\n");
    assert!(
        errs.contains("listen.max_connections: must be at least 1"),
        "{errs}"
    );
}

#[test]
fn a_type_error_hides_nothing_else() {
    let errs = Config::parse(
        r#"
        [upstream]
        url = "http://127.0.0.1:1"
        timeout = 5
        pool_max_idle = "many"
        connect_timeout = "soon"
        [l2]
        url = 6379
        prefix = "has space"
        [[route]]
        name = "a"
        match = "GET /a/{id}"
        ttl = 5
        scope = "everyone"
        [[route]]
        name = "b"
        ttl = "60s"
        [[event]]
        channel = ["x"]
        tags = ["user:{id}"]
        "#,
    )
    .unwrap_err()
    .0;
    let all = errs.join("\n");
    for needle in [
        // Each bad key on its own line, named by its key...
        "upstream.timeout: invalid type: integer `5`, expected a string",
        "upstream.pool_max_idle: invalid type: string",
        "route[0].ttl: invalid type: integer `5`, expected a string",
        "l2.url: invalid type: integer",
        "event[0].channel: invalid type: sequence",
        // ...and the rest of the same tables is still checked.
        "upstream.connect_timeout",
        "l2.prefix",
        "route[0] (a).scope",
        "route[1] (b).match: required",
    ] {
        assert!(all.contains(needle), "missing {needle} in:\n{all}");
    }
    // A key that is there but wrong is not also "required" (or "give exactly one of").
    for false_claim in [
        "ttl: required",
        "upstream.timeout: must be",
        "l2: give exactly one",
        "event[0]: give exactly one",
    ] {
        assert!(
            !all.contains(false_claim),
            "false {false_claim:?} in:\n{all}"
        );
    }
    assert_eq!(errs.len(), 9, "{all}");
}

#[test]
fn hop_by_hop_fields_key_nothing() {
    let bad = r#"
        [upstream]
        url = "http://origin:80"
        [[route]]
        name = "a"
        match = "GET /a"
        ttl = "1s"
        scope = "identity"
        identity_header = "Proxy-Authorization"
        vary = ["te"]
        [[limit]]
        match = "GET /a"
        key = "header:connection"
        rate = "1/s"
    "#;
    let all = Config::parse(bad).unwrap_err().0.join("\n");
    for needle in ["identity_header", "vary", "key"] {
        assert!(
            all.lines()
                .any(|l| l.contains(needle) && l.contains("hop-by-hop")),
            "{needle} in:\n{all}"
        );
    }
}

#[test]
fn routes_that_match_the_same_requests_are_a_warning_not_an_error() {
    let c = Config::parse(
        r#"
        [upstream]
        url = "http://origin:80"
        [[route]]
        name = "a"
        match = "GET /api/{*rest}"
        ttl = "1s"
        [[route]]
        name = "b"
        match = "GET /api/{*path}"
        ttl = "1s"
        [[route]]
        name = "c"
        match = "GET /api/x/{id}"
        ttl = "1s"
        "#,
    )
    .unwrap();
    let same: Vec<&String> = c
        .warnings
        .iter()
        .filter(|w| w.contains("match the same"))
        .collect();
    assert_eq!(same.len(), 1, "{:?}", c.warnings);
    assert!(same[0].contains("`a`") && same[0].contains("`b`"));
    let err = Config::parse(
        r#"
        [upstream]
        url = "http://origin:80"
        [[route]]
        name = "a"
        match = "GET /{*rest}/x"
        ttl = "1s"
        "#,
    )
    .unwrap_err();
    assert!(err.0[0].contains("last segment"), "{err}");
}

#[test]
fn routes_without_an_explicit_scope_are_a_warning() {
    let c = Config::parse(
        r#"
        [upstream]
        url = "http://127.0.0.1:1"
        [[route]]
        name = "implicit"
        match = "GET /a/{*rest}"
        [[route]]
        name = "explicit"
        match = "GET /b"
        ttl = "1s"
        scope = "shared"
        "#,
    )
    .unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("route `implicit`: `scope` is not set"));
    let r = &c.routes[0];
    assert!(r.ttl.is_none() && r.honor_request && !r.scope_explicit);
    assert!(r.statuses.contains(&404) && r.statuses.contains(&500));
    assert!(!r.statuses.contains(&206) && !r.statuses.contains(&304));
    assert!(!c.routes[1].honor_request && c.routes[1].scope_explicit);
    assert_eq!(c.routes[1].statuses, [200, 203, 204, 300, 301, 308]);
    let err = Config::parse(
        r#"
        [upstream]
        url = "http://127.0.0.1:1"
        [[route]]
        name = "r"
        match = "GET /r"
        statuses = [206, 199, 404]
        heuristic = 2.0
        heuristic_max = "soon"
        max_variants = 0
        "#,
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in [
        "206 cannot be stored",
        "199 cannot be stored",
        "heuristic: 2",
        "heuristic_max",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    assert!(!text.contains("404"), "{text}");
}

#[test]
fn limits_and_pubsub_take_redis_targets_of_their_own() {
    let base = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[l2]\nurl = \"redis://cache:6379/0\"\n[[limit]]\nmatch = \"POST /api/orders\"\nkey = \"ip\"\nrate = \"10/s\"\n";
    let shared = Config::parse(base).unwrap();
    assert!(shared.limits.redis.is_none() && shared.pubsub.redis.is_none());
    assert!(
        shared.warnings.iter().any(|w| w.contains("[limits.redis]")),
        "{:?}",
        shared.warnings
    );
    let own = Config::parse(&format!(
        "{base}[limits.redis]\nurl = \"redis://cache:6379/2\"\n[pubsub.redis]\ncluster = [\"redis://a:7000\"]\ntimeout = \"100ms\"\n"
    ))
    .unwrap();
    let limits = own.limits.redis.as_ref().unwrap();
    assert_eq!(limits.role, "limits");
    assert_eq!(limits.timeout, std::time::Duration::from_millis(50));
    let pubsub = own.pubsub.redis.as_ref().unwrap();
    assert_eq!(pubsub.role, "pubsub");
    assert_eq!(pubsub.timeout, std::time::Duration::from_millis(100));
    assert!(
        !own.warnings.iter().any(|w| w.contains("[limits.redis]")),
        "a database of its own is a target of its own: {:?}",
        own.warnings
    );
    // The same mistakes as in [l2] are named under the section's own key, all at once.
    let errs = Config::parse(&format!(
        "{base}[limits.redis]\nurl = \"redis://a\"\ncluster = [\"redis://b\"]\nbreaker_failures = 0\n[pubsub.redis]\ntimeout = \"soon\"\n"
    ))
    .unwrap_err()
    .to_string();
    for needle in [
        "limits.redis: give exactly one of",
        "limits.redis.breaker_failures",
        "pubsub.redis: give exactly one of",
        "pubsub.redis.timeout",
    ] {
        assert!(errs.contains(needle), "{needle} missing in {errs}");
    }
    // Events may arrive on a pub/sub Redis without any [l2].
    let l1_only = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[pubsub.redis]\nurl = \"redis://bus:6379/1\"\n[[event]]\nchannel = \"price_updates\"\ntags = [\"price:{symbol}\"]\n";
    assert!(Config::parse(l1_only).is_ok());
}

#[test]
fn grace_settings_are_checked_and_a_grace_past_l1_max_age_is_a_warning() {
    let err = Config::parse(
        r#"
        [upstream]
        url = "http://origin:80"
        [[route]]
        name = "a"
        match = "GET /a"
        ttl = "1s"
        grace = "soon"
        max_grace = "-1s"
        surrogate_key = "bad name"
        "#,
    )
    .unwrap_err();
    let all = err.0.join("\n");
    for key in ["grace", "max_grace", "surrogate_key"] {
        assert!(all.contains(&format!("(a).{key}")), "{key} in:\n{all}");
    }
    let c = Config::parse(
        r#"
        [upstream]
        url = "http://origin:80"
        [l1]
        max_age = "1m"
        [[route]]
        name = "a"
        match = "GET /a"
        ttl = "1s"
        scope = "shared"
        grace = "10m"
        targeted_cache_control = ""
        "#,
    )
    .unwrap();
    let r = &c.routes[0];
    assert_eq!(r.grace, std::time::Duration::from_secs(600));
    assert_eq!(r.max_grace, std::time::Duration::from_secs(300));
    assert!(r.targeted_cache_control.is_none());
    assert_eq!(r.surrogate_key.as_ref().unwrap(), "surrogate-key");
    assert!(r.strip_surrogate_key && !r.strip_targeted);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("l1.max_age"));
}
