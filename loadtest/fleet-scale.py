#!/usr/bin/env python3
"""How far one Redis carries a fleet (issue 20): N release crossfade nodes on this machine share
one redis-server; purges are sent round-robin through the nodes' admin APIs, one after another,
and the time until each report comes back (every node confirmed) is measured. Prints p50, p99
and the longest report time and how many reports were complete.

    loadtest/fleet-scale.py [--nodes 20] [--purges 300] [--no-build]

A benchmark, not a test: CI does not run it. Uses bench.py's origin and rules.
"""
import argparse, os, statistics, time

import bench

REDIS_PORT = 19100
PROXY_BASE, ADMIN_BASE = 19200, 19300


def admin(port, method, path, body=None):
    return bench.admin_call(port, method, path, body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--purges", type=int, default=300)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    binary = bench.release_binary(args.no_build)
    work = bench.workdir("crossfade-fleet-scale-")
    try:
        bench.setup(work)
        bench.start(f"redis-server --port {REDIS_PORT} --bind 127.0.0.1 --save '' --appendonly no > {work}/redis.log 2>&1")
        bench.wait_port(REDIS_PORT)
        with open(f"{work}/crossfade.toml") as f:
            template = f.read()
        for i in range(args.nodes):
            config = (template
                      .replace(str(bench.PORTS["crossfade"]), str(PROXY_BASE + i))
                      .replace(str(bench.PORTS["admin"]), str(ADMIN_BASE + i))
                      .replace("threads = 2", "threads = 1")
                      .replace('capacity = "2GiB"', 'capacity = "64MiB"')
                      .replace(f"{work}/crossfade.pid", f"{work}/n{i}.pid")
                      .replace(f"{work}/crossfade-upgrade.sock", f"{work}/n{i}.sock"))
            config += f'\n[fleet]\nnode = "n{i}"\nredis = "redis://127.0.0.1:{REDIS_PORT}"\nconfirm_timeout = "2s"\n'
            path = f"{work}/n{i}.toml"
            with open(path, "w") as f:
                f.write(config)
            bench.start(f"{binary} run --config {path} > {work}/n{i}.log 2>&1")
        for i in range(args.nodes):
            bench.wait_port(ADMIN_BASE + i)
        deadline = time.time() + 60
        while time.time() < deadline:
            peers = [len(admin(ADMIN_BASE + i, "GET", "/status")["fleet"]["peers"]) for i in range(args.nodes)]
            if all(p == args.nodes - 1 for p in peers):
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"the fleet did not form: peers seen {peers}")
        times, complete = [], 0
        for k in range(args.purges):
            node = ADMIN_BASE + k % args.nodes
            t = time.perf_counter()
            report = admin(node, "POST", "/purge", {"kind": "url", "url": f"bench.test/obj/scale-{k}"})
            times.append((time.perf_counter() - t) * 1000)
            complete += report["complete"] and len(report["nodes"]) == args.nodes
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"fleet scale: {args.nodes} nodes on one Redis, {args.purges} purges one after another")
        print(f"  report time p50 {statistics.median(times):.1f} ms, p99 {p99:.1f} ms, max {times[-1]:.1f} ms; "
              f"{complete}/{args.purges} complete with all {args.nodes} nodes")
    finally:
        bench.stop_all()


if __name__ == "__main__":
    main()
