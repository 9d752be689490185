//! The demo's script: the requests a new user is told to try, as data, so that the printed
//! `curl` lines and the integration test that checks their outcomes (`tests/demo.rs`) are the
//! same requests.

use std::fmt::Write;
use std::net::SocketAddr;

use super::backend::group_etag;

/// One request of a step.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: &'static str,
    pub path: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<&'static str>,
    /// Sent this many times in a row, printing only the status codes (a burst); 1 prints the
    /// whole response head and body.
    pub repeat: u32,
}

/// One thing to see, with the requests that show it.
#[derive(Debug, Clone)]
pub struct Step {
    /// What the test calls it.
    pub name: &'static str,
    /// What to look at, printed above the commands.
    pub says: &'static str,
    pub calls: Vec<Call>,
}

pub const GROUP: &str = "/api/groups/VIP/EURUSD";
pub const ALICE_BALANCE: &str = "/api/users/live/42/balance";
pub const ALICE_DEPOSIT: &str = "/api/users/live/42/deposit";
pub const BOB_BALANCE: &str = "/api/users/live/43/balance";
pub const PRICE: &str = "/api/prices/EURUSD";
/// Requests of the burst: more than the `prices` limit's burst of 10.
pub const BURST: u32 = 15;

fn get(path: &'static str) -> Call {
    Call {
        method: "GET",
        path,
        headers: Vec::new(),
        body: None,
        repeat: 1,
    }
}

fn as_user(mut call: Call, token: &str) -> Call {
    call.headers
        .push(("Authorization", format!("Bearer {token}")));
    call
}

/// The steps, in the order they are printed and tested.
pub fn steps() -> Vec<Step> {
    let mut conditional = get(GROUP);
    conditional
        .headers
        .push(("If-None-Match", group_etag("VIP", "EURUSD")));
    let deposit = Call {
        method: "POST",
        headers: vec![("Content-Type", "application/json".into())],
        body: Some(r#"{"amount": 100}"#),
        ..get(ALICE_DEPOSIT)
    };
    vec![
        Step {
            name: "miss_then_hit",
            says: "A group record. The first read goes to the backend (Cache-Status: fwd=miss; stored), \
                   the second is served from memory (Cache-Status: hit, and an Age).",
            calls: vec![get(GROUP), get(GROUP)],
        },
        Step {
            name: "not_modified",
            says: "The app already has this version (its ETag): 304 Not Modified, no body, and the \
                   backend is not asked.",
            calls: vec![conditional],
        },
        Step {
            name: "read_your_write",
            says: "Alice's balance: a miss, then a hit. Her deposit goes through sidecache, which drops \
                   her cached reads once the backend accepts it: the next read is a miss with the new \
                   balance, never the old one.",
            calls: vec![
                as_user(get(ALICE_BALANCE), "alice"),
                as_user(get(ALICE_BALANCE), "alice"),
                as_user(deposit, "alice"),
                as_user(get(ALICE_BALANCE), "alice"),
            ],
        },
        Step {
            name: "identity",
            says: "Balances are cached per caller (scope = \"identity\"). Bob asking for Alice's \
                   balance gets the backend's 403, not Alice's cached copy; his own balance is his; \
                   without Authorization the read is not cached at all (fwd=bypass).",
            calls: vec![
                as_user(get(ALICE_BALANCE), "bob"),
                as_user(get(BOB_BALANCE), "bob"),
                get(BOB_BALANCE),
            ],
        },
        Step {
            name: "rate_limit",
            says: "Prices are limited to 10/s per client (burst 10): a burst gets 429s, each with \
                   Retry-After and the RateLimit / RateLimit-Policy fields.",
            calls: vec![
                Call {
                    repeat: BURST,
                    ..get(PRICE)
                },
                get(PRICE),
            ],
        },
    ]
}

impl Call {
    /// The shell command that sends this call to the proxy at `proxy`.
    pub fn curl(&self, proxy: SocketAddr) -> String {
        let mut cmd = String::from("curl -s");
        if self.repeat <= 1 {
            cmd.push('i');
        } else {
            cmd.push_str(" -o /dev/null -w '%{http_code} '");
        }
        if self.method != "GET" {
            let _ = write!(cmd, " -X {}", self.method);
        }
        for (name, value) in &self.headers {
            let _ = write!(cmd, " -H '{name}: {value}'");
        }
        if let Some(body) = self.body {
            let _ = write!(cmd, " -d '{body}'");
        }
        let _ = write!(cmd, " http://{proxy}{}", self.path);
        if self.repeat > 1 {
            cmd = format!("for i in $(seq {}); do {cmd}; done; echo", self.repeat);
        }
        cmd
    }
}

/// What `sidecache demo` prints once it listens.
pub fn render(proxy: SocketAddr, admin: SocketAddr, backend: SocketAddr) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sidecache demo: the proxy listens on http://{proxy}, in front of an example backend on \
         http://{backend} (a few ms per answer).\n\
         Status page: http://{admin}/   Metrics: http://{admin}/metrics\n\n\
         Try these in another terminal:\n"
    );
    for (i, step) in steps().iter().enumerate() {
        let _ = writeln!(out, "# {}. {}", i + 1, wrap(step.says, 92, "#    "));
        for call in &step.calls {
            let _ = writeln!(out, "{}", call.curl(proxy));
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "# Why is (or isn't) something cached?\n\
         curl -s 'http://{admin}/admin/cache/explain?url={GROUP}'\n\n\
         Ctrl-C stops the demo."
    );
    out
}

/// `text` wrapped at `width`, continuation lines starting with `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        if line > 0 && line + 1 + word.len() > width {
            out.push('\n');
            out.push_str(indent);
            line = indent.len();
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_lines() {
        let proxy: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let steps = steps();
        assert_eq!(
            steps[0].calls[0].curl(proxy),
            "curl -si http://127.0.0.1:8080/api/groups/VIP/EURUSD"
        );
        assert_eq!(
            steps[2].calls[2].curl(proxy),
            "curl -si -X POST -H 'Content-Type: application/json' -H 'Authorization: Bearer alice' \
             -d '{\"amount\": 100}' http://127.0.0.1:8080/api/users/live/42/deposit"
        );
        assert_eq!(
            steps[4].calls[0].curl(proxy),
            "for i in $(seq 15); do curl -s -o /dev/null -w '%{http_code} ' \
             http://127.0.0.1:8080/api/prices/EURUSD; done; echo"
        );
        let text = render(proxy, "127.0.0.1:9901".parse().unwrap(), proxy);
        assert!(text.contains("# 5. Prices"));
        assert!(text.lines().all(|l| l.len() <= 160), "{text}");
    }
}
