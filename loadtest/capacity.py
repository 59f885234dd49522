#!/usr/bin/env python3
"""What a cached object really costs in memory, against what crossfade counts for `cache.capacity`
(issue 24): an operator sizes the cache from the machine's RAM, so the two must agree.

For each body size (1 KiB, 16 KiB, 256 KiB) a fresh release crossfade in front of the bench
origin stores a warm-up batch, then N more objects (each a new URL, each a miss that fills).
Printed per size: the growth of what the process holds (anonymous resident memory, plus the
memory files that hold bodies of 64 KiB and more, whose pages live in the page cache and are
counted in full), the growth of `crossfade_cache_bytes` (what is charged against the
capacity), both per object, and their ratio (the goal: 0.9–1.1). Rounds restart crossfade;
medians are printed.

    loadtest/capacity.py [--rounds 2] [--no-build]

A benchmark, not a test: CI does not run it. Uses bench.py's origin, ports and config.
"""
import argparse, functools, os, re, statistics, subprocess, time, urllib.request

print = functools.partial(print, flush=True)

import bench
from bench import PORTS

# (label, origin path, objects to store after the warm-up)
SIZES = [("1 KiB", "/obj/", 100_000), ("16 KiB", "/obj16k/", 20_000), ("256 KiB", "/obj256k/", 2_000)]
WARM = 0.1  # the warm-up batch, as a share of N


def held_bytes(pid):
    """Anonymous resident memory plus the size of every body memory file, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        anon = int(re.search(r"^RssAnon:\s+(\d+)", f.read(), re.M).group(1)) * 1024
    files = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "crossfade-body" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                files += (os.stat(f"/proc/{pid}/fd/{fd}").st_size + 4095) // 4096 * 4096
        except OSError:
            pass
    return anon + files


def metric(name):
    req = urllib.request.Request(f"http://127.0.0.1:{PORTS['admin']}/metrics",
                                 headers={"Authorization": f"Bearer {bench.TOKEN}"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    return int(float(re.search(rf"^{name} (\S+)", text, re.M).group(1)))


def fill(work, name, under, count):
    """Stores `count` new objects: wrk asks for new URLs until the cache holds that many more
    (wrk itself would wait out its whole duration after its threads stop)."""
    script = bench.unique_urls_lua(work, name, name, count // 2 + 100, under=under)
    target = metric("crossfade_cache_objects") + count
    wrk = subprocess.Popen(["wrk", "-t2", "-c2", "-d600s", "-s", script, "-H", "Host: bench.test",
                            f"http://127.0.0.1:{PORTS['crossfade']}/"], stdout=subprocess.DEVNULL)
    try:
        while metric("crossfade_cache_objects") < target and wrk.poll() is None:
            time.sleep(0.05)
    finally:
        wrk.kill()
        wrk.wait()
    # What was in flight when wrk stopped lands now.
    time.sleep(1)


def one(work, binary, under, n):
    proc = bench.start(f"exec {binary} run --config {work}/crossfade.toml")
    bench.wait_port(PORTS["crossfade"])
    bench.wait_port(PORTS["admin"])
    try:
        fill(work, "warm", under, int(n * WARM))
        held, counted, objects = held_bytes(proc.pid), metric("crossfade_cache_bytes"), metric("crossfade_cache_objects")
        fill(work, "fill", under, n)
        objects = metric("crossfade_cache_objects") - objects
        held, counted = held_bytes(proc.pid) - held, metric("crossfade_cache_bytes") - counted
        return {"held": held / objects, "counted": counted / objects}
    finally:
        proc.kill()
        proc.wait()
        bench.procs.remove(proc)
        time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    binary = bench.release_binary(args.no_build)
    work = bench.workdir("crossfade-capacity-")
    try:
        bench.setup(work)
        print(f"{'body':<8} {'objects':>8} {'held B/object':>14} {'counted B/object':>17} {'counted/held':>13}")
        for label, under, n in SIZES:
            runs = [one(work, binary, under, n) for _ in range(args.rounds)]
            held = statistics.median(r["held"] for r in runs)
            counted = statistics.median(r["counted"] for r in runs)
            each = ", ".join(f"{r['counted'] / r['held']:.2f}" for r in runs)
            print(f"{label:<8} {n:>8} {held:>14.0f} {counted:>17.0f} {counted / held:>13.2f}   (rounds: {each})")
    finally:
        bench.stop_all()


if __name__ == "__main__":
    main()
