#!/usr/bin/env python3
"""The big purge on a live node (issue 20): a release crossfade in front of the bench origin
stores 100,000 objects tagged with one surrogate key; then, while wrk keeps asking for new
URLs (every request a miss that fills the cache), the key is purged hard through the admin
API. Prints the purge's round trip and what it reports, and the misses' p99 and longest
latency in the window with the purge beside a window without (the longest miss is what a
fill waited behind the purge, if it waited). Rounds refill the cache first.

    loadtest/purge-live.py [--rounds 2] [--objects 100000] [--no-build]

A benchmark, not a test: CI does not run it. Uses bench.py's origin, ports and config.
"""
import argparse, json, os, re, subprocess, tempfile, threading, time, urllib.request

import bench
from bench import PORTS, TOKEN


def admin(method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{PORTS['admin']}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())


def lua(work, name, prefix, stop_after=None):
    path = os.path.join(work, f"{name}.lua")
    stop = f"response = function() if counter >= {stop_after} then wrk.thread:stop() end end" if stop_after else ""
    with open(path, "w") as f:
        # Each wrk thread has its own Lua state: the thread id keeps their URLs apart.
        f.write(f"""
local n = 0
function setup(thread) n = n + 1; thread:set("tid", n) end
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/obj/{prefix}-" .. tid .. "-" .. counter)
end
{stop}
""")
    return path


def wrk(script, connections, duration, latency=False):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "-s", script, "-H", "Host: bench.test"]
    if latency:
        cmd.insert(1, "--latency")
    out = subprocess.run(cmd + [f"http://127.0.0.1:{PORTS['crossfade']}/"],
                         capture_output=True, text=True).stdout
    return out


def ms(out, label):
    m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def misses(out):
    return {"p99": ms(out, r"^\s+99%"), "max": float(re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out).group(1)) *
            {"us": 0.001, "ms": 1, "s": 1000}[re.search(r"Latency\s+\S+\s+\S+\s+[\d.]+(us|ms|s)", out).group(1)],
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    os.chdir(bench.ROOT)
    if not args.no_build:
        bench.sh("cargo build --release --quiet")
    binary = os.path.join(bench.ROOT, "target/release/crossfade")
    work = tempfile.mkdtemp(prefix="crossfade-purge-live-")
    try:
        bench.setup(work)
        bench.start(f"{binary} run --config {work}/crossfade.toml")
        bench.wait_port(PORTS["crossfade"])
        bench.wait_port(PORTS["admin"])
        print(f"live purge: {args.objects:,} objects under one key, misses at 4 connections beside it")
        for r in range(args.rounds):
            admin("POST", "/purge", {"kind": "all"})
            wrk(lua(work, f"fill{r}", f"fill{r}", args.objects // 2), 8, 300)
            stored = admin("GET", "/status")["cache"]["objects"]
            base = misses(wrk(lua(work, f"base{r}", f"base{r}"), 4, 3, latency=True))
            result = {}

            def purge():
                time.sleep(1.0)
                t = time.perf_counter()
                report = admin("POST", "/purge", {"kind": "key", "key": "bench-all"})
                result["ms"] = (time.perf_counter() - t) * 1000
                result["report"] = report

            th = threading.Thread(target=purge)
            th.start()
            during = misses(wrk(lua(work, f"during{r}", f"during{r}"), 4, 3, latency=True))
            th.join()
            removed = result["report"]["nodes"][0]["removed"]
            print(f"  round {r + 1}: {stored:,} stored; purge round trip {result['ms']:.1f} ms, removed {removed:,}; "
                  f"misses p99/max {base['p99']:.2f}/{base['max']:.2f} ms without, "
                  f"{during['p99']:.2f}/{during['max']:.2f} ms with the purge ({during['rps']:.0f} misses/s)")
    finally:
        bench.stop_all()


if __name__ == "__main__":
    main()
