//! Range requests against a cached route (RFC 9110 §14): one byte range from a stored full
//! 200 is a 206 with `Content-Range` (the fill asked the origin for the whole), an
//! unsatisfiable one a 416, several ranges or a malformed field the whole 200; `If-Range`
//! decides by strong ETag or exact date; a 206 from the origin is never stored.

mod support;

use http::Method;
use support::*;

const BODY: &str = "0123456789";
const LAST_MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

const ROUTES: &str = r#"
[[route]]
name = "files"
match = "GET /files/{*path}"
ttl = "1h"
statuses = [200, 206]
"#;

async fn start() -> (Origin, Sidecache) {
    let origin = Origin::start(|req| {
        let reply = Reply::json(BODY)
            .header("etag", "\"e1\"")
            .header("last-modified", LAST_MODIFIED);
        if req.uri.starts_with("/files/partial") {
            // An origin that answers a part although no Range reached it.
            return Reply::json("234")
                .status(206)
                .header("content-range", "bytes 2-4/10");
        }
        reply
    })
    .await;
    let sc = Sidecache::start(&origin, ROUTES).await;
    (origin, sc)
}

fn range(r: &Resp) -> (u16, &str, &str) {
    (r.status, r.header("content-range"), r.text())
}

#[tokio::test]
async fn a_single_range_is_a_206_from_the_whole_stored_entry() {
    let (origin, sc) = start().await;
    // A miss: the origin is asked for the whole (no Range), the entry stored, the range cut.
    let r = sc.get_with("/files/a", &[("range", "bytes=2-4")]).await;
    assert_eq!(range(&r), (206, "bytes 2-4/10", "234"));
    assert_eq!(r.header("content-length"), "3");
    assert!(r.header("cache-status").contains("stored"), "{r:?}");
    assert_eq!(origin.hits(), 1);
    assert!(origin.requests()[0].headers.get("range").is_none());
    // Hits, every form.
    for (asked, want) in [
        ("bytes=-3", ("bytes 7-9/10", "789")),
        ("bytes=5-", ("bytes 5-9/10", "56789")),
        ("bytes=0-0", ("bytes 0-0/10", "0")),
        ("bytes=8-100", ("bytes 8-9/10", "89")),
        ("bytes=-100", ("bytes 0-9/10", BODY)),
    ] {
        let r = sc.get_with("/files/a", &[("range", asked)]).await;
        assert_eq!(range(&r), (206, want.0, want.1), "{asked}");
        assert!(r.header("cache-status").contains("hit"), "{asked}");
        assert_eq!(r.header("etag"), "\"e1\"");
    }
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn unsatisfiable_ranges_are_416_and_the_rest_is_the_whole_200() {
    let (origin, sc) = start().await;
    assert_eq!(sc.get("/files/b").await.status, 200);
    for asked in ["bytes=10-", "bytes=20-30", "bytes=-0"] {
        let r = sc.get_with("/files/b", &[("range", asked)]).await;
        assert_eq!(range(&r), (416, "bytes */10", ""), "{asked}");
    }
    for asked in [
        "bytes=0-1,4-5",
        "bytes=5-2",
        "bytes=x-",
        "lines=1-2",
        "bytes 1-2",
    ] {
        let r = sc.get_with("/files/b", &[("range", asked)]).await;
        assert_eq!(range(&r), (200, "", BODY), "{asked}");
    }
    // HEAD ignores Range; If-None-Match that matches wins over it (RFC 9110 §13.2.2).
    let r = sc
        .request(Method::HEAD, "/files/b", &[("range", "bytes=0-1")], "")
        .await;
    assert_eq!((r.status, r.text()), (200, ""));
    let r = sc
        .get_with(
            "/files/b",
            &[("range", "bytes=0-1"), ("if-none-match", "\"e1\"")],
        )
        .await;
    assert_eq!(r.status, 304);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn if_range_lets_the_range_through_only_on_a_strong_match() {
    let (_origin, sc) = start().await;
    assert_eq!(sc.get("/files/c").await.status, 200);
    let ask = |if_range: &'static str| {
        let sc = &sc;
        async move {
            let r = sc
                .get_with(
                    "/files/c",
                    &[("range", "bytes=0-1"), ("if-range", if_range)],
                )
                .await;
            (r.status, r.text().to_string())
        }
    };
    assert_eq!(ask("\"e1\"").await, (206, "01".into()));
    assert_eq!(ask(LAST_MODIFIED).await, (206, "01".into()));
    for stale in [
        "\"e0\"",
        "W/\"e1\"",
        "Sun, 06 Nov 1994 08:49:38 GMT",
        "junk",
    ] {
        assert_eq!(ask(stale).await, (200, BODY.into()), "{stale}");
    }
}

#[tokio::test]
async fn a_206_from_the_origin_is_never_stored() {
    let (origin, sc) = start().await;
    for n in 1..=2 {
        let r = sc.get("/files/partial").await;
        assert_eq!(r.status, 206);
        assert!(r.header("cache-status").contains("detail=status"), "{r:?}");
        assert_eq!(origin.hits(), n);
    }
}
