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
import argparse, os, re, subprocess, threading, time

import bench
from bench import PORTS


def admin(method, path, body=None):
    return bench.admin_call(PORTS["admin"], method, path, body)


def lua(work, name, prefix, stop_after=None):
    return bench.unique_urls_lua(work, name, prefix, stop_after)


def wrk(script, connections, duration, latency=False):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "-s", script, "-H", "Host: bench.test"]
    if latency:
        cmd.insert(1, "--latency")
    out = subprocess.run(cmd + [f"http://127.0.0.1:{PORTS['crossfade']}/"],
                         capture_output=True, text=True).stdout
    return out


def ms(text):
    """A wrk duration (`512.00us`, `3.20ms`, `1.05s`) in ms."""
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def misses(out):
    """p99 and longest latency (ms) and rate of a wrk --latency run."""
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return {"p99": ms(p99.group(1)), "max": ms(latency.group(3)),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    binary = bench.release_binary(args.no_build)
    work = bench.workdir("crossfade-purge-live-")
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
