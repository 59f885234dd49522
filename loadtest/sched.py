#!/usr/bin/env python3
"""How the kernel shares the two cores between each proxy and the load generator.

On a 2-core box wrk runs beside the proxy, so the latency wrk reports includes the time its own
threads wait for a CPU. This records `perf sched` for two seconds in the middle of a wrk run
against each proxy and prints, per proxy, its threads' context switches per second and the
average and largest run-queue delays (runnable, not running) of its threads and of wrk's.

    loadtest/sched.py /c/16k [--rounds 3]

Uses bench.py's origin and peer configurations; stops everything it started. Needs perf (Debian
`linux-perf`) and root. A benchmark, not a test.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

# `perf sched latency` rows: "  name:(n) | runtime ms | switches | avg: x ms | max: y ms | …"
ROW = re.compile(r"^\s*(\S.*?)\s*\|\s*([\d.]+) ms\s*\|\s*(\d+)\s*\|\s*avg:\s*([\d.]+) ms\s*\|\s*max:\s*([\d.]+) ms")
RECORD_S = 2


def record(port, path, data):
    """perf sched over RECORD_S seconds in the middle of a 6 s wrk run: {task: (switches, avg, max)}."""
    wrk = subprocess.Popen(["wrk", "-t2", "-c64", "-d6s", "-H", "Host: bench.test",
                            f"http://127.0.0.1:{port}{path}"], stdout=subprocess.DEVNULL)
    time.sleep(1.5)
    subprocess.run(["perf", "sched", "record", "-o", data, "--", "sleep", str(RECORD_S)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wrk.wait()
    out = subprocess.run(["perf", "sched", "latency", "-i", data], capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        m = ROW.match(line)
        if m:
            name = m.group(1).split(":(")[0].split(":")[0]
            rows[name] = (int(m.group(3)), float(m.group(4)), float(m.group(5)))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path", help="e.g. /c/16k (cached 16 KiB), /p/1k (pass-through)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--binary", default=os.path.join(bench.ROOT, "target/release/crossfade"))
    args = ap.parse_args()
    bench.ensure_tools()
    if not shutil.which("perf"):
        bench.sh("apt-get install -y -qq linux-perf")
    work = tempfile.mkdtemp(prefix="crossfade-sched-")
    os.chmod(work, 0o755)
    names = {"crossfade": "crossfade proxy", "nginx": "nginx", "varnish": "cache-worker"}
    results = {}
    try:
        bench.setup(work)
        bench.start_proxies(work, args.binary)
        for p in names:
            bench.warm(bench.PORTS[p], args.path)
        for r in range(args.rounds):
            for p in bench.rotated(tuple(names), r):
                rows = record(bench.PORTS[p], args.path, os.path.join(work, f"{p}.data"))
                proxy = rows.get(names[p], (0, 0.0, 0.0))
                results.setdefault(p, []).append((proxy, rows.get("wrk", (0, 0.0, 0.0))))
        print(f"\n{args.path}: medians of {args.rounds} rounds ({RECORD_S} s of perf sched in a wrk -t2 -c64 run)")
        print(f"  {'proxy':<10} {'proxy switches/s':>17} {'proxy wait avg/max ms':>22} {'wrk wait avg/max ms':>20}")
        for p, runs in results.items():
            med = lambda f: statistics.median(f(x) for x in runs)  # noqa: E731
            print(f"  {p:<10} {med(lambda x: x[0][0]) / RECORD_S:>17.0f} "
                  f"{med(lambda x: x[0][1]):>12.3f} / {med(lambda x: x[0][2]):<7.2f} "
                  f"{med(lambda x: x[1][1]):>10.3f} / {med(lambda x: x[1][2]):<7.2f}")
    finally:
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
