#!/usr/bin/env python3
"""CPU instructions per request in crossfade, counted by callgrind: a deterministic measure.

Throughput on a shared 2-core box moves by ±30% between runs; the instruction count of one
request does not, so this is the number to compare when changing the hot path. It runs
crossfade (release build) under valgrind's callgrind behind bench.py's origin, warms up, counts
only the measured requests (one keep-alive connection, one request at a time), and prints
instructions per request for: a 1 KiB hit, a 16 KiB hit and a 1 KiB pass-through.

    python3 loadtest/instructions.py [--requests 2000] [--binary target/release/crossfade]
                                     [--keep DIR]   # keep the profiles: callgrind_annotate DIR/…
                                     [--key-cookies currency]
                                     [--atomics]   # and atomic instructions per request

It counts user-space instructions in crossfade only (not the kernel, not the client). With
`--atomics`, it also counts the atomic read-modify-writes a request executes, by function
(`atomics.py`: what a projection to more cores starts from). Needs
valgrind (installed from Debian when missing) and nginx (the origin).
"""
import argparse
import glob
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import atomics  # noqa: E402
import bench  # noqa: E402

PATHS = {"hit-1k": "/c/1k", "hit-16k": "/c/16k", "pass-1k": "/p/1k"}


def requests(path, n):
    c = http.client.HTTPConnection("127.0.0.1", bench.PORTS["crossfade"], timeout=30)
    for _ in range(n):
        c.request("GET", path, headers={"Host": "bench.test"})
        c.getresponse().read()
    c.close()


def wait_closed(port, timeout=20):
    """Until nothing listens on `port` (the killed valgrind may outlive its shell briefly)."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            time.sleep(0.1)
        except OSError:
            return


def control(*args):
    subprocess.run(["callgrind_control", *args], capture_output=True, check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--binary", default=os.path.join(bench.ROOT, "target/release/crossfade"))
    ap.add_argument("--keep", help="copy the callgrind profiles here (for callgrind_annotate)")
    ap.add_argument("--key-cookies", default="",
                    help="key_cookies for crossfade's rules (bench.py's flag: the shipped store "
                         "rules key on currency)")
    ap.add_argument("--atomics", action="store_true",
                    help="also count atomic instructions per request, by function (atomics.py)")
    args = ap.parse_args()
    bench.KEY_COOKIES = [c for c in args.key_cookies.split(",") if c]
    if not shutil.which("valgrind"):
        bench.sh("apt-get install -y valgrind")
    bench.ensure_tools()
    if not os.path.exists(args.binary):
        bench.sh("cargo build --release --quiet --bin crossfade", cwd=bench.ROOT)
    work = tempfile.mkdtemp(prefix="crossfade-instr-")
    os.chmod(work, 0o755)
    try:
        bench.setup(work)
        for name, path in PATHS.items():
            out = os.path.join(work, f"callgrind.{name}")
            proc = bench.start(
                f"valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file={out}.%p "
                + ("--dump-instr=yes " if args.atomics else "") +
                f"{args.binary} run --config {work}/crossfade.toml > {work}/cg-{name}.log 2>&1"
            )
            bench.wait_port(bench.PORTS["crossfade"], timeout=60)
            requests(path, 500)  # warm: fills the cache, the upstream pool, the allocator
            control("-i", "on")
            requests(path, args.requests)
            control("-i", "off")
            control("-d")
            time.sleep(1)
            os.killpg(proc.pid, 9)
            proc.wait()
            wait_closed(bench.PORTS["crossfade"])
            dumps = sorted(glob.glob(f"{out}.*.1"), key=os.path.getsize)
            total = 0
            if dumps:
                with open(dumps[-1]) as f:
                    m = re.search(r"^totals:\s+(\d+)", f.read(), re.M)
                    total = int(m.group(1)) if m else 0
            print(f"  {name:<8} {total // args.requests:>8} instructions/request", flush=True)
            if args.atomics and dumps:
                counts = atomics.per_function(dumps[-1])
                for line in atomics.report(counts, args.requests):
                    print(f"           {line}", flush=True)
            if args.keep and dumps:
                os.makedirs(args.keep, exist_ok=True)
                shutil.copy(dumps[-1], os.path.join(args.keep, f"callgrind.{name}"))
    finally:
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
