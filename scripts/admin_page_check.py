#!/usr/bin/env python3
"""The admin status page, checked in a real browser.

Starts `sidecache demo` (the built debug binary) on free ports, sends the demo's kind of
traffic (misses, hits, a 304, a deposit that invalidates, a 403, a burst that is rate
limited, an unrouted request), opens http://ADMIN/ in headless Chromium (`--dump-dom`, with
virtual time so the page's script has fetched status.json and rendered), and checks that every
number the page rendered equals the same number computed from `/metrics` (request counts, hit
ratios, p50/p99 as PromQL's histogram_quantile, L1 entries and bytes, rate-limit decisions,
invalidations, config state). Then it saves a screenshot to target/admin-page.png.

    python3 scripts/admin_page_check.py          # run by .ci/run after `cargo test`

Needs Chromium (Debian: apt-get install chromium fonts-liberation): without it the check
fails, it never skips. Python standard library only.
"""

import html.parser
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "admin-page-check"
SCREENSHOT = ROOT / "target" / "admin-page.png"
ROUTES = ["group", "group_symbols", "balance", "account", "price", "none"]

problems = []


def fail(msg):
    problems.append(msg)
    print(f"FAIL {msg}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, path, method="GET", headers=None, body=None):
    """(status, headers, body) of one request; 4xx/5xx are answers, not errors."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, headers=headers or {}, data=body
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        print(
            "admin-page-check: chromium is not installed; the status page must be checked in a real "
            "browser: apt-get install --no-install-recommends chromium fonts-liberation",
            file=sys.stderr,
        )
        sys.exit(1)
    return exe


def browse(exe, url, *what):
    """Runs headless Chromium on `url`; the page's script gets 3s of virtual time (one poll of
    status.json rendered, then a second one) before the DOM is dumped or the shot taken."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                exe, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                "--virtual-time-budget=3000", "--window-size=1280,1000", *what, url,
            ],
            capture_output=True, text=True, timeout=120,
        )
    if proc.returncode != 0:
        fail(f"chromium {' '.join(what)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc.stdout


# === /metrics ===============================================================================


def parse_metrics(text):
    """[(name, {label: value}, value)] of every sample."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        labels = {}
        if "{" in head:
            name, rest = head.split("{", 1)
            for part in rest.rstrip("}").split('",'):
                if part:
                    k, v = part.split('="', 1)
                    labels[k.strip(",")] = v.rstrip('"')
        else:
            name = head
        out.append((name, labels, float(value)))
    return out


def total(samples, name, **want):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in want.items()))


def quantile(samples, name, q, **want):
    """PromQL's histogram_quantile(q, sum by (le) (name_bucket{want}))."""
    buckets = {}
    for n, l, v in samples:
        if n == name + "_bucket" and all(l.get(k) == w for k, w in want.items()):
            le = float("inf") if l["le"] == "+Inf" else float(l["le"])
            buckets[le] = buckets.get(le, 0) + v
    bounds = sorted(buckets.items())
    if not bounds or bounds[-1][1] == 0:
        return None
    count = bounds[-1][1]
    rank = q * count
    lower, below = 0.0, 0.0
    for upper, cumulative in bounds:
        if math.isinf(upper):
            return lower
        if cumulative >= rank:
            inside = cumulative - below
            return upper if inside == 0 else lower + (upper - lower) * (rank - below) / inside
        lower, below = upper, cumulative
    return lower


# === the page ===============================================================================


class Numbers(html.parser.HTMLParser):
    """Every element's data-k → data-v, and the page's text."""

    def __init__(self):
        super().__init__()
        self.values = {}
        self.text = []
        self.external = []
        self.in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.in_script = tag in ("script", "style")
        if "data-k" in a and "data-v" in a:
            self.values[a["data-k"]] = a["data-v"]
        for attr in ("src", "href"):
            if a.get(attr, "").startswith(("http:", "https:", "//")):
                self.external.append(f"<{tag} {attr}={a[attr]}>")
        if tag == "link":
            self.external.append(f"<link {a}>")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.in_script = False

    def handle_data(self, data):
        if not self.in_script:
            self.text.append(data)


def compare(page, key, expected, label):
    raw = page.values.get(key)
    if raw is None:
        fail(f"{label}: the page shows no {key}")
        return
    if expected is None:
        if raw != "":
            fail(f"{label}: page {key}={raw}, /metrics has no value")
        return
    if raw == "":
        fail(f"{label}: page {key} is empty, /metrics says {expected}")
        return
    got = float(raw)
    if not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
        fail(f"{label}: page {key}={got}, /metrics {expected}")


def main():
    exe = chromium()
    OUT.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cargo", "build", "--quiet", "--bin", "sidecache"], cwd=ROOT, check=True)
    binary = ROOT / "target" / "debug" / "sidecache"
    proxy, admin, backend = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECACHE_")}
    env.update(
        SIDECACHE_LISTEN_PROXY=f"127.0.0.1:{proxy}",
        SIDECACHE_LISTEN_ADMIN=f"127.0.0.1:{admin}",
        SIDECACHE_UPSTREAM_URL=f"http://127.0.0.1:{backend}",
    )
    log = open(OUT / "demo.log", "w")
    demo = subprocess.Popen([binary, "demo"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if request(admin, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or demo.poll() is not None:
                sys.exit(f"admin-page-check: the demo never became ready; see {OUT / 'demo.log'}")
            time.sleep(0.05)

        # The demo's kind of traffic.
        alice = {"Authorization": "Bearer alice"}
        for _ in range(5):
            request(proxy, "/api/groups/VIP/EURUSD")
        request(proxy, "/api/groups/VIP/EURUSD", headers={"If-None-Match": '"VIP-EURUSD-v1"'})
        request(proxy, "/api/groups/Standard")
        for _ in range(3):
            request(proxy, "/api/users/live/42/balance", headers=alice)
        status, _, _ = request(
            proxy, "/api/users/live/42/deposit", "POST",
            {**alice, "Content-Type": "application/json"}, b'{"amount": 100}',
        )
        if status != 200:
            fail(f"deposit: {status}")
        request(proxy, "/api/users/live/42/balance", headers=alice)
        request(proxy, "/api/users/live/42/balance", headers={"Authorization": "Bearer bob"})
        codes = [request(proxy, "/api/prices/EURUSD")[0] for _ in range(15)]
        if 429 not in codes:
            fail(f"the burst was never limited: {codes}")
        request(proxy, "/api/nothing/here")

        before = parse_metrics(request(admin, "/metrics")[2].decode())
        dom = browse(exe, f"http://127.0.0.1:{admin}/", "--dump-dom")
        after = parse_metrics(request(admin, "/metrics")[2].decode())
        (OUT / "admin-page.html").write_text(dom)
        page = Numbers()
        page.feed(dom)
        text = " ".join(page.text)
        if "Cannot read status.json" in text:
            fail("the page could not read status.json")
        if page.external:
            fail(f"the page loads external resources: {page.external}")

        m = after
        checked = 0
        for route in ROUTES:
            requests = total(m, "sidecache_requests_total", route=route)
            compare(page, f"route.{route}.requests", requests, route)
            compare(page, f"route.{route}.errors_5xx",
                    total(m, "sidecache_requests_total", route=route, status_class="5xx"), route)
            cacheable = requests - total(m, "sidecache_requests_total", route=route, cache="limited")
            for tier, cache in (("l1", "hit"), ("l2", "hit_l2")):
                hits = total(m, "sidecache_requests_total", route=route, cache=cache)
                ratio = hits / cacheable if cacheable > 0 and route != "none" else None
                compare(page, f"route.{route}.hit_ratio_{tier}", ratio, route)
            for q, name in ((0.5, "p50"), (0.99, "p99")):
                compare(page, f"route.{route}.{name}",
                        quantile(m, "sidecache_request_duration_seconds", q, route=route), route)
            checked += 7
        for key, name in (("l1.entries", "sidecache_l1_entries"), ("l1.bytes", "sidecache_l1_bytes")):
            # Gauges read at each request: the page's value is the one before or after it.
            candidates = {total(before, name), total(after, name)}
            if float(page.values.get(key) or "nan") not in candidates:
                fail(f"{key}: page {page.values.get(key)}, /metrics {sorted(candidates)}")
            checked += 1
        for outcome in ("allowed", "denied", "shadow_denied"):
            compare(page, f"ratelimit.prices.{outcome}",
                    total(m, "sidecache_ratelimit_decisions_total", rule="prices", outcome=outcome), "ratelimit")
            checked += 1
        for source in ("write", "event", "admin", "peer", "gap"):
            compare(page, f"invalidations.{source}",
                    total(m, "sidecache_invalidations_total", source=source), "invalidations")
            checked += 1
        compare(page, "invalidated.l1", total(m, "sidecache_invalidated_entries_total", tier="l1"), "invalidations")
        compare(page, "config.valid", total(m, "sidecache_config_valid"), "config")
        checked += 2
        # Process figures move between reads; the page must show them at all.
        for key in ("process.rss", "process.open_fds"):
            if not float(page.values.get(key) or 0) > 0:
                fail(f"{key}: page shows {page.values.get(key)!r}")
        # Sanity: the traffic above is what the page shows, not zeros matching zeros.
        for key, least in (("route.group.requests", 6), ("route.balance.requests", 5),
                           ("ratelimit.prices.denied", 1), ("invalidations.write", 1),
                           ("route.none.requests", 1), ("l1.entries", 1)):
            if float(page.values.get(key) or 0) < least:
                fail(f"{key} = {page.values.get(key)}, expected at least {least} after the traffic")

        browse(exe, f"http://127.0.0.1:{admin}/", f"--screenshot={SCREENSHOT}")
        if not SCREENSHOT.exists() or SCREENSHOT.stat().st_size < 10_000:
            fail(f"no screenshot at {SCREENSHOT}")
    finally:
        demo.terminate()
        try:
            demo.wait(timeout=10)
        except subprocess.TimeoutExpired:
            demo.kill()
        log.close()

    if problems:
        print(f"admin-page-check: FAILED, {len(problems)} problem(s); the page's DOM is in {OUT}")
        return 1
    print(f"admin-page-check: {checked} numbers on the page match /metrics; screenshot {SCREENSHOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
