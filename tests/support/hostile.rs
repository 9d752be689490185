//! A hostile or broken origin on raw sockets, for the adversarial suite: each [`Mode`] is one
//! way an upstream can make a proxy hand one caller's answer to another. Every answer echoes
//! the request's `x-request-id`, its `authorization` and its path, so a test can check each
//! response against its own request.
//!
//! It speaks just enough HTTP/1.1 to be exact about what goes on the wire: heads end at an
//! empty line, bodies are framed by `Content-Length` or chunked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// How the origin misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Well-framed answers, nothing else.
    Honest,
    /// Every `every`-th answer is sent a second time, `late` after the first (with
    /// `spread`, the lateness of the n-th duplicate is `late * (n % 10 + 1) / 10`).
    LateDuplicate {
        every: usize,
        late: Duration,
        spread: bool,
    },
    /// Every answer is followed, in the same write, by a second copy.
    SurplusSameSegment,
    /// A request with a body is answered with this status as soon as its head is read; its
    /// body is then read as the next request (a server that never reads the content of what
    /// it refuses, redirects or ignores).
    EarlyAnswer(u16),
    /// `HEAD`, `/status/204` and `/status/304` get a body the framing has no place for: in the
    /// same write, or `late` after it.
    StrayBody { late: Option<Duration> },
    /// Once a connection has been idle for this long, an unsolicited `408` and the close.
    Unsolicited408(Duration),
    /// Two `Content-Length` fields that disagree.
    ConflictingLength,
    /// `Content-Length` and `Transfer-Encoding: chunked` together (the body chunked).
    ClTe,
    /// A chunk size that is not hexadecimal, in the middle of the body.
    BadChunk,
    /// No framing field: the body runs to the close.
    CloseDelimited,
    /// `100 Continue` and `103 Early Hints` before the final answer.
    Interim,
    /// Three interim answers before the final one, carrying framing fields that frame nothing
    /// (`Content-Length: 5`, `Transfer-Encoding: chunked`) and a `Link` that must not reach the
    /// caller, the second split over two writes `1 ms` apart; the connection stays open.
    InterimFramed,
    /// The answer with `Transfer-Encoding: <these codings>`, its body chunked when the last is
    /// `chunked` and sent as it is otherwise; the connection stays open either way (a proxy
    /// that reads such a body to the close waits for its timeout).
    Coded(&'static str),
    /// A `Content-Length` longer than what is sent before the close.
    MidBodyClose,
    /// The answer one byte at a time, `1 ms` apart.
    SlowDrip,
}

/// A request as the origin parsed it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub id: String,
    pub user: String,
}

impl Seen {
    /// The body every answer carries: what identifies the request it answers.
    pub fn body(&self) -> String {
        format!(
            r#"{{"id":"{}","user":"{}","path":"{}"}}"#,
            self.id, self.user, self.path
        )
    }
}

/// Counters a test waits on (no sleeps: it polls these with a deadline).
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
    /// Stray bytes written (late duplicates, stray bodies, unsolicited 408s, answers to
    /// requests smuggled in a body).
    pub strays: AtomicUsize,
}

pub struct Hostile {
    pub port: u16,
    pub stats: Arc<Stats>,
}

impl Hostile {
    /// With `TCP_NODELAY`: a write has arrived when the origin counts it.
    pub async fn start(mode: Mode) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, mode, true)
    }

    /// With Nagle's algorithm, as many servers run: a small late write waits for the peer's
    /// (delayed, ~40 ms on Linux) ACK of the answer before it leaves, and so arrives later
    /// than it was written, as soon as the proxy sends anything (the next request).
    pub async fn start_with_nagle(mode: Mode) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, mode, false)
    }

    pub fn serve(listener: TcpListener, mode: Mode, nodelay: bool) -> Hostile {
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::SeqCst);
                sock.set_nodelay(nodelay).unwrap();
                tokio::spawn(connection(sock, mode, s.clone()));
            }
        });
        Hostile { port, stats }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    pub fn strays(&self) -> usize {
        self.stats.strays.load(Ordering::SeqCst)
    }
}

async fn connection(sock: TcpStream, mode: Mode, stats: Arc<Stats>) {
    let (mut rd, wr) = sock.into_split();
    let wr = Arc::new(Mutex::new(wr));
    let mut buf = Vec::new();
    loop {
        let head = match mode {
            Mode::Unsolicited408(after) => {
                match tokio::time::timeout(after, read_head(&mut rd, &mut buf)).await {
                    Ok(head) => head,
                    Err(_) => {
                        let mut w = wr.lock().await;
                        let _ = w
                            .write_all(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                        stats.strays.fetch_add(1, Ordering::SeqCst);
                        let _ = w.shutdown().await;
                        return;
                    }
                }
            }
            _ => read_head(&mut rd, &mut buf).await,
        };
        let Some((seen, length)) = head else { return };
        let n = stats.requests.fetch_add(1, Ordering::SeqCst);
        if let (Mode::EarlyAnswer(status), true) = (mode, length > 0) {
            // Answered without reading the content: whatever it holds is read as requests.
            let refusal = answer(status, &[], &seen.body());
            if wr.lock().await.write_all(&refusal).await.is_err() {
                return;
            }
            continue;
        }
        if !read_body(&mut rd, &mut buf, length).await {
            return;
        }
        if !respond(&wr, &seen, mode, n, &stats).await {
            return;
        }
        if seen.id == "smuggled" {
            // Its answer is on the wire: a stray nobody asked for.
            stats.strays.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Writes the answer `mode` gives to request `n`; false once the connection is to end.
async fn respond(
    wr: &Arc<Mutex<OwnedWriteHalf>>,
    seen: &Seen,
    mode: Mode,
    n: usize,
    stats: &Arc<Stats>,
) -> bool {
    let body = seen.body();
    let status = match seen.path.strip_prefix("/status/") {
        Some(code) => code.parse().unwrap_or(200),
        None => 200,
    };
    let empty = seen.method == "HEAD" || status == 204 || status == 304;
    let plain = if empty {
        answer_head(status, body.len(), &[])
    } else {
        answer(status, &[], &body)
    };
    let mut w = wr.lock().await;
    let written = match mode {
        Mode::Honest | Mode::EarlyAnswer(_) | Mode::Unsolicited408(_) => w.write_all(&plain).await,
        Mode::LateDuplicate {
            every,
            late,
            spread,
        } => {
            let r = w.write_all(&plain).await;
            if n % every == 0 {
                let late = if spread {
                    late * (n as u32 % 10 + 1) / 10
                } else {
                    late
                };
                later(wr.clone(), plain, late, stats.clone());
            }
            r
        }
        Mode::SurplusSameSegment => {
            stats.strays.fetch_add(1, Ordering::SeqCst);
            w.write_all(&[plain.clone(), plain].concat()).await
        }
        Mode::StrayBody { late } if empty => match late {
            None => {
                stats.strays.fetch_add(1, Ordering::SeqCst);
                w.write_all(&[plain, body.into_bytes()].concat()).await
            }
            Some(late) => {
                let r = w.write_all(&plain).await;
                later(wr.clone(), body.into_bytes(), late, stats.clone());
                r
            }
        },
        Mode::StrayBody { .. } => w.write_all(&plain).await,
        Mode::ConflictingLength => {
            let extra = format!("Content-Length: {}", body.len() + 1);
            w.write_all(&answer(status, &[&extra], &body)).await
        }
        Mode::ClTe => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            );
            w.write_all(head.as_bytes()).await
        }
        Mode::BadChunk => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\nzz\r\nrest\r\n0\r\n\r\n",
                body.len()
            );
            let _ = w.write_all(head.as_bytes()).await;
            return false;
        }
        Mode::CloseDelimited => {
            let _ = w
                .write_all(format!("HTTP/1.1 200 OK\r\n\r\n{body}").as_bytes())
                .await;
            let _ = w.shutdown().await;
            return false;
        }
        Mode::Interim => {
            let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n";
            w.write_all(&[&interim[..], &plain].concat()).await
        }
        Mode::InterimFramed => {
            let parts: [&[u8]; 4] = [
                b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n",
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nTransfer-Enc",
                b"oding: chunked\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </b.js>; rel=preload\r\n\r\n",
                &plain,
            ];
            for part in parts {
                if w.write_all(part).await.is_err() {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(())
        }
        Mode::Coded(codings) => {
            let chunked = codings
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            let body = if chunked {
                format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
            } else {
                body
            };
            let text = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {codings}\r\n\r\n{body}");
            w.write_all(text.as_bytes()).await
        }
        Mode::MidBodyClose => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                body.len() + 100,
                body
            );
            let _ = w.write_all(head.as_bytes()).await;
            let _ = w.shutdown().await;
            return false;
        }
        Mode::SlowDrip => {
            for byte in plain {
                if w.write_all(&[byte]).await.is_err() {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(())
        }
    };
    written.is_ok()
}

/// Writes `bytes` on the connection `late` from now, whatever it carries by then.
fn later(wr: Arc<Mutex<OwnedWriteHalf>>, bytes: Vec<u8>, late: Duration, stats: Arc<Stats>) {
    tokio::spawn(async move {
        tokio::time::sleep(late).await;
        let _ = wr.lock().await.write_all(&bytes).await;
        stats.strays.fetch_add(1, Ordering::SeqCst);
    });
}

fn answer(status: u16, extra: &[&str], body: &str) -> Vec<u8> {
    let mut out = answer_head(status, body.len(), extra);
    out.extend_from_slice(body.as_bytes());
    out
}

fn answer_head(status: u16, length: usize, extra: &[&str]) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
    );
    for field in extra {
        head.push_str(field);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Reads one request head from `buf` (refilled from `rd`), consuming it; the request and
/// its `Content-Length` (a chunked body is reported as `usize::MAX`). `None` at the close.
async fn read_head(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
) -> Option<(Seen, usize)> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let text = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end + 4);
    let mut lines = text.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let mut seen = Seen {
        method: start.next()?.to_string(),
        path: start.next()?.to_string(),
        ..Seen::default()
    };
    let mut length = 0;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "x-request-id" => seen.id = value.to_string(),
            "authorization" => seen.user = value.to_string(),
            "content-length" => length = value.parse().ok()?,
            "transfer-encoding" => length = usize::MAX,
            _ => {}
        }
    }
    Some((seen, length))
}

/// Reads and drops a body of `length` bytes (`usize::MAX`: chunked); false at the close.
async fn read_body(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
    length: usize,
) -> bool {
    let complete = |b: &[u8]| -> Option<usize> {
        if length == usize::MAX {
            b.windows(5).position(|w| w == b"0\r\n\r\n").map(|i| i + 5)
        } else {
            (b.len() >= length).then_some(length)
        }
    };
    loop {
        if let Some(n) = complete(buf) {
            buf.drain(..n);
            return true;
        }
        let mut chunk = [0u8; 4096];
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
