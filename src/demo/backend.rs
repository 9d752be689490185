//! The demo's example backend: a small in-memory trading API in the shape of the seed systems
//! (groups, per-user balances and accounts, prices), answering after a few milliseconds as a
//! real backend would.
//!
//! It is no part of the proxy: `sidecache demo` starts it beside the proxy on `[upstream] url`,
//! and the proxy reaches it over TCP like any other backend. It must never be used for
//! anything but showing what sidecache does.
//!
//! Callers are `Authorization: Bearer alice` (user `live/42`) and `Bearer bob` (`live/43`); a
//! user's balance and account are theirs only (another caller gets 403), so a response shared
//! between callers would show at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The demo's callers: bearer token → (user type, user id, display name).
pub const USERS: [(&str, &str, &str, &str); 2] = [
    ("alice", "live", "42", "Alice"),
    ("bob", "live", "43", "Bob"),
];

/// Starting balances in cents, in the order of [`USERS`].
const OPENING_CENTS: [i64; 2] = [100_000, 25_000];

/// A symbol's terms in a group: (symbol, spread in pips, leverage, commission per lot).
type Terms = (&'static str, f64, u32, f64);

/// Group → its symbols' terms.
const GROUPS: [(&str, [Terms; 3]); 2] = [
    (
        "VIP",
        [
            ("EURUSD", 0.6, 500, 3.5),
            ("GBPUSD", 0.8, 500, 3.5),
            ("XAUUSD", 1.8, 200, 5.0),
        ],
    ),
    (
        "Standard",
        [
            ("EURUSD", 1.2, 100, 7.0),
            ("GBPUSD", 1.5, 100, 7.0),
            ("XAUUSD", 3.0, 50, 10.0),
        ],
    ),
];

/// Mid prices the demo's quotes move around.
const PRICES: [(&str, f64); 3] = [("EURUSD", 1.0842), ("GBPUSD", 1.2671), ("XAUUSD", 2381.4)];

/// Largest deposit body read.
const MAX_BODY: usize = 4096;

/// The backend's data: balances change with deposits, the rest is fixed.
#[derive(Debug)]
struct State {
    /// A std Mutex: nothing awaits while it is held.
    balances: Mutex<HashMap<&'static str, i64>>,
    started: Instant,
}

/// What the backend answers.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: StatusCode,
    etag: Option<String>,
    body: Value,
    /// How long a real backend would have taken.
    latency: Duration,
}

impl Answer {
    fn ok(body: Value, latency_ms: u64) -> Answer {
        Answer {
            status: StatusCode::OK,
            etag: None,
            body,
            latency: Duration::from_millis(latency_ms),
        }
    }

    fn error(status: StatusCode, message: &str) -> Answer {
        Answer {
            status,
            etag: None,
            body: json!({ "error": message }),
            latency: Duration::from_millis(1),
        }
    }
}

/// The running example backend; dropping it stops accepting.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Listens on `addr` (port 0 picks a free one) and serves until dropped.
    pub async fn start(addr: SocketAddr) -> io::Result<Backend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            balances: Mutex::new(
                USERS
                    .iter()
                    .zip(OPENING_CENTS)
                    .map(|(u, cents)| (u.2, cents))
                    .collect(),
            ),
            started: Instant::now(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors or the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| serve(state.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Backend { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn serve(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let caller = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let answer = state.answer(&parts.method, parts.uri.path(), caller, &body);
    tokio::time::sleep(answer.latency).await;
    // A trailing newline keeps `curl -si` output readable.
    let mut resp = Response::new(Full::new(Bytes::from(format!("{}\n", answer.body))));
    *resp.status_mut() = answer.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(etag) = answer.etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        h.insert(header::ETAG, etag);
    }
    Ok(resp)
}

impl State {
    fn answer(&self, method: &Method, path: &str, caller: Option<&str>, body: &[u8]) -> Answer {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::GET | &Method::HEAD, ["api", "groups", group, symbol]) => {
                group_record(group, symbol)
            }
            (&Method::GET | &Method::HEAD, ["api", "groups", group]) => group_symbols(group),
            (&Method::GET | &Method::HEAD, ["api", "prices", symbol]) => self.price(symbol),
            (&Method::GET | &Method::HEAD, ["api", "users", kind, id, "balance"]) => {
                match authorize(caller, kind, id) {
                    Ok(user) => self.balance(user),
                    Err(refusal) => refusal,
                }
            }
            (&Method::GET | &Method::HEAD, ["api", "users", kind, id]) => {
                match authorize(caller, kind, id) {
                    Ok(user) => account(user),
                    Err(refusal) => refusal,
                }
            }
            (&Method::POST, ["api", "users", kind, id, "deposit"]) => {
                match authorize(caller, kind, id) {
                    Ok(user) => self.deposit(user, body),
                    Err(refusal) => refusal,
                }
            }
            _ => Answer::error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }

    fn balance(&self, user: usize) -> Answer {
        let (_, kind, id, _) = USERS[user];
        let cents = self.balances.lock().unwrap()[id];
        Answer::ok(
            json!({
                "user_type": kind,
                "user_id": id,
                "balance": money(cents),
                "currency": "USD",
                // When the backend produced this answer: a cached copy keeps it.
                "backend_time_ms": self.started.elapsed().as_millis() as u64,
            }),
            3,
        )
    }

    fn deposit(&self, user: usize, body: &[u8]) -> Answer {
        let amount = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["amount"].as_f64())
            .filter(|a| a.is_finite() && *a > 0.0 && *a <= 1e9);
        let Some(amount) = amount else {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "send {\"amount\": <a positive number>}",
            );
        };
        let (_, kind, id, _) = USERS[user];
        let cents = {
            let mut balances = self.balances.lock().unwrap();
            let b = balances.get_mut(id).expect("every user has a balance");
            *b += (amount * 100.0).round() as i64;
            *b
        };
        Answer::ok(
            json!({
                "user_type": kind,
                "user_id": id,
                "deposited": money((amount * 100.0).round() as i64),
                "balance": money(cents),
                "currency": "USD",
            }),
            8,
        )
    }

    fn price(&self, symbol: &str) -> Answer {
        let Some(&(_, mid)) = PRICES.iter().find(|p| p.0 == symbol) else {
            return Answer::error(StatusCode::NOT_FOUND, "no such symbol");
        };
        let t = self.started.elapsed().as_secs_f64();
        // A quote that moves a little every second, so that a fresh one can be told apart.
        let mid = mid * (1.0 + 0.0004 * (t / 3.0).sin());
        let half_spread = mid * 0.00003;
        Answer::ok(
            json!({
                "symbol": symbol,
                "bid": round(mid - half_spread),
                "ask": round(mid + half_spread),
                "backend_time_ms": (t * 1000.0) as u64,
            }),
            2,
        )
    }
}

fn group_record(group: &str, symbol: &str) -> Answer {
    let Some((_, symbols)) = GROUPS.iter().find(|g| g.0 == group) else {
        return Answer::error(StatusCode::NOT_FOUND, "no such group");
    };
    let Some(&(symbol, spread, leverage, commission)) = symbols.iter().find(|s| s.0 == symbol)
    else {
        return Answer::error(StatusCode::NOT_FOUND, "no such symbol in this group");
    };
    let mut a = Answer::ok(
        json!({
            "group": group,
            "symbol": symbol,
            "spread_pips": spread,
            "leverage": leverage,
            "commission_per_lot": commission,
            "trading_hours": "Sun 22:00 - Fri 21:59 UTC",
            "version": 1,
        }),
        4,
    );
    a.etag = Some(group_etag(group, symbol));
    a
}

/// The strong validator of a group record (its content changes only with its version).
pub fn group_etag(group: &str, symbol: &str) -> String {
    format!("\"{group}-{symbol}-v1\"")
}

fn group_symbols(group: &str) -> Answer {
    let Some((_, symbols)) = GROUPS.iter().find(|g| g.0 == group) else {
        return Answer::error(StatusCode::NOT_FOUND, "no such group");
    };
    let symbols: Vec<&str> = symbols.iter().map(|s| s.0).collect();
    Answer::ok(json!({ "group": group, "symbols": symbols }), 6)
}

fn account(user: usize) -> Answer {
    let (_, kind, id, name) = USERS[user];
    Answer::ok(
        json!({ "user_type": kind, "user_id": id, "name": name, "group": "VIP", "currency": "USD" }),
        3,
    )
}

/// The caller's index in [`USERS`] when it is the owner of `kind/id`; else the refusal.
fn authorize(caller: Option<&str>, kind: &str, id: &str) -> Result<usize, Answer> {
    let Some(token) = caller else {
        return Err(Answer::error(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer alice (or bob)",
        ));
    };
    let Some(owner) = USERS.iter().position(|u| u.1 == kind && u.2 == id) else {
        return Err(Answer::error(StatusCode::NOT_FOUND, "no such user"));
    };
    if USERS[owner].0 == token {
        Ok(owner)
    } else {
        Err(Answer::error(
            StatusCode::FORBIDDEN,
            "this balance belongs to another user",
        ))
    }
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn round(x: f64) -> f64 {
    (x * 100_000.0).round() / 100_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            balances: Mutex::new(
                USERS
                    .iter()
                    .zip(OPENING_CENTS)
                    .map(|(u, c)| (u.2, c))
                    .collect(),
            ),
            started: Instant::now(),
        }
    }

    #[test]
    fn owners_only_and_deposits_change_the_balance() {
        let s = state();
        let get = |caller, path| s.answer(&Method::GET, path, caller, b"");
        let balance = "/api/users/live/42/balance";
        assert_eq!(get(Some("alice"), balance).body["balance"], "1000.00");
        assert_eq!(get(Some("bob"), balance).status, StatusCode::FORBIDDEN);
        assert_eq!(get(None, balance).status, StatusCode::UNAUTHORIZED);
        let dep = s.answer(
            &Method::POST,
            "/api/users/live/42/deposit",
            Some("alice"),
            br#"{"amount": 100}"#,
        );
        assert_eq!(dep.body["balance"], "1100.00");
        assert_eq!(get(Some("alice"), balance).body["balance"], "1100.00");
        let bad = s.answer(
            &Method::POST,
            "/api/users/live/42/deposit",
            Some("alice"),
            br#"{"amount": -5}"#,
        );
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn groups_and_prices() {
        let s = state();
        let a = s.answer(&Method::GET, "/api/groups/VIP/EURUSD", None, b"");
        assert_eq!(a.etag.as_deref(), Some("\"VIP-EURUSD-v1\""));
        assert_eq!(a.body["leverage"], 500);
        let list = s.answer(&Method::GET, "/api/groups/Standard", None, b"");
        assert_eq!(list.body["symbols"][2], "XAUUSD");
        assert_eq!(
            s.answer(&Method::GET, "/api/groups/Nope/EURUSD", None, b"")
                .status,
            StatusCode::NOT_FOUND
        );
        assert!(s.answer(&Method::GET, "/api/prices/EURUSD", None, b"").body["bid"].is_number());
        assert_eq!(
            s.answer(&Method::DELETE, "/api/prices/EURUSD", None, b"")
                .status,
            StatusCode::NOT_FOUND
        );
    }
}
