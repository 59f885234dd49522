#!/usr/bin/env python3
"""Side-by-side benchmark: crossfade vs nginx proxy_cache vs Varnish, in front of one origin.

Runs each workload against each proxy, interleaved in rounds (A B C, B C A, C A B …), and prints the
median requests/s, p50/p99 latency and the ratio to the best peer. Also reports peak RSS,
memory per cached 1 KiB object, crossfade's hit rate after mixed traffic, and a store-traffic
model (Zipf pages, 20% logged in, static assets) with hit ratio and origin offload. Over TLS
(part `tls`, crossfade against nginx only): HTTP/1.1 and HTTP/2 hits and new connections.

Everything listens on 127.0.0.1 only; everything started is stopped at the end. A benchmark,
not a test: CI does not run it. Needs root to install missing peers from Debian.

    loadtest/bench.py [--rounds 3] [--duration 5] [--connections 64] [--no-build]
                      [--parts hits,tls,memory,mixed,store] [--key-cookies currency] [--threads 2]
                      [--nginx-edge]
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

# crossfade's key_cookies in the bench rules (`--key-cookies`).
KEY_COOKIES = []
# crossfade's `server.threads` (`--threads`); nginx runs as many workers.
THREADS = 2
# `--nginx-edge`: nginx also does the per-request work crossfade does (see `nginx_edge`).
NGINX_EDGE = False

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTS = {"origin": 19000, "nginx": 19001, "varnish": 19002, "crossfade": 19003, "admin": 19004,
         "nginx-tls": 19005, "crossfade-tls": 19006}
SIZES = {"1k": 1024, "16k": 16384, "256k": 262144, "1m": 1048576}
TOKEN = "bench-admin-token-0123456789"
procs = []


def _terminated(signum, _frame):
    # `timeout` and Ctrl-\ send signals Python does not turn into exceptions by default; without
    # this the proxies (each in its own session) outlived the script and held the ports.
    sys.exit(128 + signum)


for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _terminated)


def ports_free():
    """Refuses to start when something already listens on one of the bench's ports (a run
    killed before its cleanup): its answers would be measured instead of this run's proxies."""
    second = [("second crossfade", PORTS["crossfade"] + 10), ("its admin", PORTS["admin"] + 10)]
    for name, port in list(PORTS.items()) + second:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                sys.exit(f"port {port} ({name}) is already in use: another benchmark still "
                         f"running, or one that was killed? (ss -ltnp 'sport = :{port}')")


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, **kw)


def ensure_tools():
    missing = [p for b, p in [("nginx", "nginx-light"), ("varnishd", "varnish"), ("wrk", "wrk")] if not shutil.which(b)]
    if missing:
        print("installing", missing, flush=True)
        sh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq " + " ".join(missing))
    # The Debian packages start system services; stop them so they do not compete.
    for svc in ["nginx", "varnish"]:
        subprocess.run(f"service {svc} stop", shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def start(cmd, **kw):
    p = subprocess.Popen(cmd, shell=True, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    procs.append(p)
    return p


def stop_all():
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def nginx_edge():
    """With `--nginx-edge`, the directives that make nginx do per request what crossfade does:
    the client's host, forwarding headers and a request id to the origin, the id and a cache
    status to the client, and the rules' key cookies in the cache key. Without it (the default,
    and every run the README quotes unless it says otherwise), nginx's own defaults."""
    if not NGINX_EDGE:
        return ""
    cookies = "".join(f"$cookie_{c}" for c in KEY_COOKIES)
    return ("proxy_set_header Host $host; "
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; "
            "proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host; "
            "proxy_set_header X-Request-Id $request_id; add_header X-Request-Id $request_id always; "
            'add_header Cache-Status "nginx; $upstream_cache_status" always; '
            f"proxy_cache_key $scheme$host$request_uri{cookies};")


def setup(work):
    ports_free()
    files = os.path.join(work, "files")
    os.makedirs(files)
    # One certificate for both TLS listeners (the dev CA's ECDSA P-256 leaf for bench.test).
    sh(f"{os.path.join(ROOT, 'target/release/crossfade')} certs dev --out {work}/certs bench.test",
       stdout=subprocess.DEVNULL)
    for name, size in SIZES.items():
        with open(os.path.join(files, name), "wb") as f:
            f.write(b"x" * size)
    # Origin: nginx serving static files; cacheable under /c/, uncacheable under /p/.
    origin = f"""
worker_processes 1; pid {work}/origin.pid; error_log {work}/origin-error.log; daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log {work}/origin-access.log; keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{PORTS['origin']};
    location /c/ {{ alias {files}/; add_header Cache-Control "public, max-age=3600"; }}
    location /p/ {{ alias {files}/; add_header Cache-Control "private"; }}
    location /obj/ {{ default_type text/plain; add_header Cache-Control "public, max-age=3600"; add_header Surrogate-Key "bench-all"; try_files /1k =404; root {files}; }}
    location /obj16k/ {{ default_type text/plain; add_header Cache-Control "public, max-age=3600"; add_header Surrogate-Key "bench-all"; try_files /16k =404; root {files}; }}
    location /obj256k/ {{ default_type text/plain; add_header Cache-Control "public, max-age=3600"; add_header Surrogate-Key "bench-all"; try_files /256k =404; root {files}; }}
    location /page/ {{ default_type text/html; add_header Cache-Control "public, max-age=3600"; try_files /16k =404; root {files}; }}
    location /static/ {{ default_type text/css; add_header Cache-Control "public, max-age=31536000"; try_files /16k =404; root {files}; }}
  }}
}}"""
    nginx = f"""
worker_processes {THREADS}; pid {work}/nginx.pid; error_log {work}/nginx-error.log; daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 100000;
  proxy_cache_path {work}/nginx-cache levels=1:2 keys_zone=z:256m max_size=2g inactive=1h use_temp_path=off;
  upstream origin {{ server 127.0.0.1:{PORTS['origin']}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']};
    location / {{
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache z; proxy_cache_lock off; proxy_cache_bypass $cookie_session; proxy_no_cache $cookie_session;
      {nginx_edge()}
    }}
  }}
  server {{
    listen 127.0.0.1:{PORTS['nginx-tls']} ssl http2;
    ssl_certificate {work}/certs/bench.test.pem; ssl_certificate_key {work}/certs/bench.test-key.pem;
    # As crossfade: TLS 1.3 where the client has it (nginx 1.22 offers only up to 1.2 by default).
    # No resumption here; crossfade issues tickets, but wrk resumes no session (tls-new gave
    # crossfade the same rate before and after its tickets), so `tls-new` measures full
    # handshakes on both.
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets off; ssl_session_cache off;
    location / {{
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache z; proxy_cache_lock off; proxy_cache_bypass $cookie_session; proxy_no_cache $cookie_session;
      {nginx_edge()}
    }}
  }}
}}"""
    vcl = f"""vcl 4.1;
backend origin {{ .host = "127.0.0.1"; .port = "{PORTS['origin']}"; }}
sub vcl_recv {{ if (req.http.Cookie ~ "session=") {{ return (pass); }} unset req.http.Cookie; }}
"""
    rules = """
[defaults]
bypass_cookies = ["session"]
""" + (f"key_cookies = {KEY_COOKIES!r}\n".replace("'", '"') if KEY_COOKIES else "")
    config = f"""
[server]
threads = {THREADS}
pid_file = "{work}/crossfade.pid"
upgrade_sock = "{work}/crossfade-upgrade.sock"
[proxy]
listen = ["127.0.0.1:{PORTS['crossfade']}"]
[tls]
listen = ["127.0.0.1:{PORTS['crossfade-tls']}"]
[[tls.certs]]
cert = "{work}/certs/bench.test.pem"
key = "{work}/certs/bench.test-key.pem"
hosts = ["bench.test"]
[cache]
capacity = "2GiB"
max_object_size = "4MiB"
[log]
level = "warn"
access_log = false
[admin]
listen = "127.0.0.1:{PORTS['admin']}"
[[admin.tokens]]
name = "bench"
token = "{TOKEN}"
scopes = ["admin"]
[release]
state_file = ""
[[sites]]
name = "bench"
hosts = ["bench.test"]
default = true
rules = "rules.toml"
[sites.pools.blue]
servers = ["127.0.0.1:{PORTS['origin']}"]
"""
    for name, text in [("origin.conf", origin), ("nginx.conf", nginx), ("default.vcl", vcl), ("rules.toml", rules), ("crossfade.toml", config)]:
        with open(os.path.join(work, name), "w") as f:
            f.write(text)
    start(f"nginx -c {work}/origin.conf")
    wait_port(PORTS["origin"])


def start_proxies(work, binary):
    pids = {}
    pids["nginx"] = start(f"nginx -c {work}/nginx.conf").pid
    pids["varnish"] = start(f"varnishd -F -a 127.0.0.1:{PORTS['varnish']} -f {work}/default.vcl -s malloc,2G -n {work}/varnish -p thread_pool_min=50 > {work}/varnish.log 2>&1").pid
    pids["crossfade"] = start(f"{binary} run --config {work}/crossfade.toml").pid
    for name in ["nginx", "varnish", "crossfade"]:
        wait_port(PORTS[name])
    return pids


def group_procs(pgid):
    """The /proc directories of every process in the process group (gone ones skipped)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) == pgid:
                yield f"/proc/{pid}"
        except (OSError, ProcessLookupError):
            pass


def rss_kib(pgid, field="VmRSS"):
    """Sum of a /proc status field over every process in the group."""
    total = 0
    for proc in group_procs(pgid):
        try:
            with open(f"{proc}/status") as f:
                m = re.search(rf"^{field}:\s+(\d+)", f.read(), re.M)
                total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total


def wrk(port, path, args, script=None, scheme="http", headers=()):
    cmd = ["wrk", f"-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency", "-H", "Host: bench.test"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [f"{scheme}://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": pct(50), "p99": pct(99), "errors": int(errors.group(1)) if errors else 0, "sock": sock.group(1) if sock else ""}


def h2load(port, path, args):
    """HTTP/2 over TLS: h2load with 2 threads, `--connections` connections, 10 streams each
    (`-m 10`, as a browser multiplexes a page's requests); p50/p99 from its per-request log."""
    with tempfile.NamedTemporaryFile(prefix="h2load-", suffix=".log") as log:
        out = subprocess.run(["h2load", "-t2", f"-c{args.connections}", "-m10", f"-D{args.duration}",
                              "--warm-up-time=1", "-H", ":authority: bench.test", f"--log-file={log.name}",
                              f"https://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
        # Each line: start (µs since the epoch), status, duration (µs).
        times = sorted(int(line.split()[2]) for line in open(log.name) if line.strip())
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    codes = re.search(r"status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", out)
    pct = lambda p: times[min(len(times) - 1, int(len(times) * p / 100))] / 1000 if times else 0
    failed = int(done.group(3)) + int(done.group(4)) if done else -1
    bad = int(codes.group(1)) + int(codes.group(2)) if codes else -1
    return {"rps": rps, "p50": pct(50), "p99": pct(99), "errors": bad + failed, "sock": ""}


def tls_run(workload, port, path, args):
    """One TLS workload (part 'tls') against a proxy's TLS port."""
    if workload.startswith("h2-"):
        return h2load(port, path, args)
    # A new connection, so a full handshake (wrk resumes no session), for every request.
    close = ["Connection: close"] if workload == "tls-new" else []
    return wrk(port, path, args, scheme="https", headers=close)


def rotated(order, r):
    """The proxies in round r's order (A B C, then B C A, …): no proxy always runs first, or
    always right after the same peer (a workload's rate depends on what the box did just before)."""
    r %= len(order)
    return order[r:] + order[:r]


def warm(port, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": "bench.test"})
    for _ in range(3):
        urllib.request.urlopen(req).read()


def paired(by_proxy, p):
    """The median over rounds of `p`'s rate divided by the best peer's rate in the same round,
    and the lowest and highest of those ratios. On a shared box the rate of every proxy moves
    by ±20% from one minute to the next; within one round the proxies ran seconds apart, so
    the ratio of a round is steadier than the ratio of the two medians."""
    peers = [q for q in by_proxy if q != "crossfade"]
    ratios = []
    for r, run in enumerate(by_proxy[p]):
        best = max(by_proxy[q][r]["rps"] for q in peers)
        if best:
            ratios.append(run["rps"] / best)
    if not ratios:
        return 0, 0, 0
    return statistics.median(ratios), min(ratios), max(ratios)


def report(title, results):
    print(f"\n{title}")
    print(f"  {'workload':<10} {'proxy':<10} {'req/s (median)':>15} {'p50 ms':>8} {'p99 ms':>8} {'vs best peer':>13}"
          f"  {'per round (median, range)':>26}")
    for workload, by_proxy in results.items():
        med = {p: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")} for p, runs in by_proxy.items()}
        best_peer = max(med[p]["rps"] for p in med if p != "crossfade")
        for p, m in med.items():
            ratio = m["rps"] / best_peer if best_peer else 0
            rounds = ""
            if p == "crossfade":
                mid, low, high = paired(by_proxy, p)
                rounds = f"  {mid:>11.2f}x ({low:.2f}-{high:.2f})"
            print(f"  {workload:<10} {p:<10} {m['rps']:>15.0f} {m['p50']:>8.2f} {m['p99']:>8.2f} {ratio:>12.2f}x{rounds}")
        bad = [(p, r["errors"], r["sock"]) for p, runs in by_proxy.items() for r in runs if r["errors"] or r["sock"]]
        if bad:
            print(f"  {workload}: errors {bad}")


def release_binary(no_build):
    """The release crossfade, built first unless `no_build`."""
    if not no_build:
        sh("cargo build --release --quiet --bin crossfade", cwd=ROOT)
    return os.path.join(ROOT, "target/release/crossfade")


def workdir(prefix):
    """A fresh directory for a run's files, readable by the peers' own users (nginx and varnishd
    drop privileges: the origin's files and the VCL must be readable to them)."""
    work = tempfile.mkdtemp(prefix=prefix)
    os.chmod(work, 0o755)
    return work


def admin_call(port, method, path, body=None):
    """A call to a crossfade admin API on `port` with the bench token; the parsed answer."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def unique_urls_lua(work, name, prefix, stop_after=None, under="/obj/"):
    """A wrk script asking for a new `<under><prefix>-…` URL on every request (each a miss;
    the origin's `/obj/` answers 1 KiB, `/obj16k/` 16 KiB, `/obj256k/` 256 KiB); with
    `stop_after`, each of wrk's two threads stops after that many."""
    path = os.path.join(work, f"{name}.lua")
    stop = (f"response = function() if counter >= {stop_after} then wrk.thread:stop() end end"
            if stop_after else "")
    with open(path, "w") as f:
        # Each wrk thread has its own Lua state with the same random seed, so the thread id
        # (not math.random) keeps the two threads' URLs apart.
        f.write(f"""
local n = 0
function setup(thread) n = n + 1; thread:set("tid", n) end
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "{under}{prefix}-" .. tid .. "-" .. counter)
end
{stop}
""")
    return path


def admin_purge_all():
    req = urllib.request.Request(f"http://127.0.0.1:{PORTS['admin']}/purge", data=b'{"kind":"all"}',
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--parts", default="hits,tls,memory,mixed,store",
                    help="comma-separated subset of: hits, tls, memory, mixed, store")
    ap.add_argument("--workloads", default="hit-1k,hit-16k,hit-256k,hit-1m,pass-1k",
                    help="comma-separated subset of the hit/pass workloads (part 'hits')")
    ap.add_argument("--tls-workloads", default=",".join(TLS_WORKLOADS),
                    help="comma-separated subset of the TLS workloads (part 'tls')")
    ap.add_argument("--key-cookies", default="",
                    help="comma-separated key_cookies for crossfade's rules (the shipped store "
                         "rules key on currency); requests carry none of them, as most do")
    ap.add_argument("--threads", type=int, default=2,
                    help="crossfade's server.threads and nginx's worker_processes (scaling runs)")
    ap.add_argument("--nginx-edge", action="store_true",
                    help="nginx also forwards X-Forwarded-*, a request id and the client's host, "
                         "answers with the id and a cache status, and keys on the key cookies")
    args = ap.parse_args()
    global KEY_COOKIES, THREADS, NGINX_EDGE
    NGINX_EDGE = args.nginx_edge
    KEY_COOKIES = [c for c in args.key_cookies.split(",") if c]
    THREADS = args.threads
    ensure_tools()
    if not args.no_build:
        sh("cargo build --release --quiet --bin crossfade", cwd=ROOT)
    binary = os.path.join(ROOT, "target/release/crossfade")
    work = workdir("crossfade-bench-")
    try:
        setup(work)
        pids = start_proxies(work, binary)
        parts = set(args.parts.split(","))
        workloads = {f"hit-{k}": f"/c/{k}" for k in SIZES} | {"pass-1k": "/p/1k"}
        workloads = {w: path for w, path in workloads.items() if w in args.workloads.split(",")}
        if "hits" not in parts:
            workloads = {}
        results = {w: {p: [] for p in ("crossfade", "nginx", "varnish")} for w in workloads}
        for w, path in workloads.items():
            for p in ("crossfade", "nginx", "varnish"):
                warm(PORTS[p], path)
        for r in range(args.rounds):
            for w, path in workloads.items():
                for p in rotated(("crossfade", "nginx", "varnish"), r):
                    results[w][p].append(wrk(PORTS[p], path, args))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        if workloads:
            report(f"Hits and pass-through ({args.rounds} rounds, {args.duration}s each, {args.connections} connections, wrk -t2)", results)
        if "tls" in parts:
            tls_part(args)

        print("\nPeak RSS (VmHWM) after the runs, KiB:")
        for p in ("crossfade", "nginx", "varnish"):
            print(f"  {p:<10} {rss_kib(pids[p], 'VmHWM'):>10}")

        if "memory" in parts:
            memory_per_object(work, pids)
        if "mixed" in parts:
            after_mixed(work, binary, args)
        if "store" in parts:
            store_model(work, args)
    finally:
        stop_all()
        if os.environ.get("KEEP"):
            print("work dir kept:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


# h2-pass-1k: a logged-in visitor's browser — every page a pass, over HTTP/2.
TLS_WORKLOADS = {"h1tls-1k": "/c/1k", "h2-1k": "/c/1k", "h2-16k": "/c/16k", "h2-pass-1k": "/p/1k",
                 "tls-new": "/c/1k"}


def tls_part(args):
    """crossfade against nginx (`ssl http2` + proxy_cache, same certificate) over TLS: HTTP/1.1
    keep-alive hits (wrk), HTTP/2 hits and passes (h2load -m 10), and a full handshake per request (wrk,
    `Connection: close`). Varnish has no TLS and is left out."""
    names = [w for w in args.tls_workloads.split(",") if w]
    ports = {"crossfade": PORTS["crossfade-tls"], "nginx": PORTS["nginx-tls"]}
    results = {w: {p: [] for p in ports} for w in names}
    for w in names:
        for p in ports:
            tls_run(w, ports[p], TLS_WORKLOADS[w], argparse.Namespace(connections=4, duration=1))
    for r in range(args.rounds):
        for w in names:
            for p in rotated(tuple(ports), r):
                results[w][p].append(tls_run(w, ports[p], TLS_WORKLOADS[w], args))
        print(f"tls round {r + 1}/{args.rounds} done", flush=True)
    report(f"Over TLS ({args.rounds} rounds, {args.duration}s each, {args.connections} connections; "
           f"h2-*: h2load -t2 -m10, the rest wrk -t2)", results)


def memory_per_object(work, pids, objects=100_000):
    """RSS growth per object while storing exactly `objects` cached 1 KiB objects, after a
    first fill of 20,000 so that each process's allocator and tables are past their start-up."""
    def fill(p, prefix, count):
        script = unique_urls_lua(work, f"fill-{prefix}", prefix, count // 2)
        out = subprocess.run(["wrk", "-t2", "-c2", "-d120s", "-s", script, "-H", "Host: bench.test",
                              f"http://127.0.0.1:{PORTS[p]}/"], capture_output=True, text=True).stdout
        return int(re.search(r"(\d+) requests in", out).group(1))
    print(f"\nMemory per cached 1 KiB object (RSS growth while storing {objects:,} objects):")
    for p in ("crossfade", "nginx", "varnish"):
        fill(p, "warm", 20_000)
        time.sleep(1)
        before = rss_kib(pids[p])
        n = fill(p, "fill", objects)
        time.sleep(1)
        grown = rss_kib(pids[p]) - before
        print(f"  {p:<10} {n:>8} requests  {grown * 1024 / objects:>8.0f} bytes/object")


def second_crossfade(work, binary, env=None, settings=None):
    """Another crossfade beside the main one (ports +10, its own pid file and socket), same
    origin and rules; returns (process, port). `settings` maps "section.key" to a TOML value
    written into that section (e.g. {"server.work_stealing": "false"}). The caller stops it
    (or stop_all does)."""
    with open(f"{work}/crossfade.toml") as f:
        config = f.read()
    port = PORTS["crossfade"] + 10
    for a, b in [(str(PORTS["crossfade"]), str(port)), (str(PORTS["admin"]), str(PORTS["admin"] + 10)),
                 (str(PORTS["crossfade-tls"]), str(PORTS["crossfade-tls"] + 10)),
                 ("crossfade.pid", "second.pid"), ("crossfade-upgrade.sock", "second-upgrade.sock")]:
        config = config.replace(a, b)
    for name, value in (settings or {}).items():
        section, key = name.rsplit(".", 1)
        head = f"\n[{section}]\n"
        if head not in config:
            config += head
        begin = config.index(head) + len(head)
        end = config.find("\n[", begin)
        end = len(config) if end < 0 else end + 1
        lines = [line for line in config[begin:end].splitlines(keepends=True)
                 if line.split("=")[0].strip() != key]
        config = config[:begin] + f"{key} = {value}\n" + "".join(lines) + config[end:]
    with open(f"{work}/crossfade-second.toml", "w") as f:
        f.write(config)
    proc = start(f"{binary} run --config {work}/crossfade-second.toml", env=dict(os.environ, **(env or {})))
    wait_port(port)
    return proc, port


def after_mixed(work, binary, args):
    """crossfade's 1 KiB hit rate after mixed traffic (misses, passes, purges), against a fresh
    crossfade measured in the same rounds, so that the box's drift (±30% over minutes here)
    falls on both alike."""
    fresh, fresh_port = second_crossfade(work, binary)
    try:
        warm(fresh_port, "/c/1k")
        runs = {"mixed": [], "fresh": []}
        for _ in range(args.rounds):
            wrk(PORTS["crossfade"], "/p/1k", args)
            admin_purge_all()
            warm(PORTS["crossfade"], "/c/1k")
            runs["mixed"].append(wrk(PORTS["crossfade"], "/c/1k", args)["rps"])
            runs["fresh"].append(wrk(fresh_port, "/c/1k", args)["rps"])
    finally:
        os.killpg(fresh.pid, signal.SIGTERM)
        fresh.wait()
    after, new = statistics.median(runs["mixed"]), statistics.median(runs["fresh"])
    print(f"\ncrossfade hit-1k after mixed traffic (this process: every workload above, then passes"
          f" and a purge before each round): {after:.0f} req/s; a fresh crossfade in the same rounds:"
          f" {new:.0f} req/s ({after / new:.2f}x)")


def store_model(work, args):
    """Zipf pages, 20% of requests logged in, a static asset per page: hit ratio, offload."""
    script = os.path.join(work, "store.lua")
    with open(script, "w") as f:
        f.write("""
math.randomseed(os.time())
local n, s = 5000, 1.1
local cdf, total = {}, 0
for i = 1, n do total = total + 1 / (i ^ s); cdf[i] = total end
local function zipf()
  local r = math.random() * total
  local lo, hi = 1, n
  while lo < hi do local mid = math.floor((lo + hi) / 2); if cdf[mid] < r then lo = mid + 1 else hi = mid end end
  return lo
end
request = function()
  local r = math.random()
  if r < 0.3 then return wrk.format("GET", "/static/app-" .. math.random(1, 20) .. ".css") end
  local headers = {}
  if math.random() < 0.2 then headers["Cookie"] = "session=user" .. math.random(1, 10000) end
  return wrk.format("GET", "/page/" .. zipf(), headers)
end
""")
    print(f"\nStore model (Zipf pages, 20% logged in, static assets; {args.rounds} rotated rounds, medians):")
    log = os.path.join(work, "origin-access.log")
    runs = {p: [] for p in ("crossfade", "nginx", "varnish")}
    for r in range(args.rounds):
        for p in rotated(tuple(runs), r):
            before = sum(1 for _ in open(log))
            run = subprocess.run(["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration * 2}s", "-s", script, "-H", "Host: bench.test", f"http://127.0.0.1:{PORTS[p]}/"], capture_output=True, text=True).stdout
            n = int(re.search(r"(\d+) requests in", run).group(1))
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", run).group(1))
            time.sleep(0.5)
            origin = sum(1 for _ in open(log)) - before
            runs[p].append((rps, 1 - origin / max(n, 1)))
    best_peer = max(statistics.median(x[0] for x in runs[p]) for p in ("nginx", "varnish"))
    for p, rs in runs.items():
        rps, offload = statistics.median(x[0] for x in rs), statistics.median(x[1] for x in rs)
        print(f"  {p:<10} {rps:>10.0f} req/s  origin offload {offload * 100:5.1f}%  ({rps / best_peer:.2f}x best peer)")

if __name__ == "__main__":
    main()
