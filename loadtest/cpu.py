#!/usr/bin/env python3
"""CPU time per request, split between the proxy and the load generator, for each proxy.

On a 2-core box the proxy and wrk share the CPU, so a proxy can lose on requests/s while using
less CPU itself: the way it writes (one large burst, or paced by a small socket buffer) changes
what the *client* pays to receive. This prints, per proxy, the median requests/s, the proxy's
CPU µs per request (user + system, all threads, from /proc; both shown) and wrk's (from its
rusage).

    loadtest/cpu.py /c/1m                       # crossfade, nginx, Varnish; 3 rounds × 4 s
    loadtest/cpu.py /c/1m --rounds 5 --variant CROSSFADE_EXPERIMENT=1
                                                # also crossfade started with that environment
    loadtest/cpu.py /p/1k --variant server.work_stealing=false
                                                # also crossfade with that config setting
    loadtest/cpu.py /c/1k --h2                  # HTTP/2 over TLS (h2load), crossfade and nginx
    loadtest/cpu.py /p/1k --sched               # also wake-ups and inter-processor interrupts
                                                # per request (whole box, perf), and idle CPU
    loadtest/cpu.py /p/1k --syscalls            # also the proxy's system calls per request,
                                                # by call (perf on the proxy's processes)

Uses bench.py's origin and peer configurations; stops everything it started. A benchmark, not
a test.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pgid):
    """(user, system) CPU seconds of every thread of every process in the group."""
    user = system = 0
    for proc in bench.group_procs(pgid):
        try:
            for tid in os.listdir(f"{proc}/task"):
                with open(f"{proc}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                user += int(fields[11])
                system += int(fields[12])
        except OSError:
            pass
    return user / TICKS, system / TICKS


SCHED_EVENTS = {"wakeups": "sched:sched_wakeup", "ipi_call": "irq_vectors:call_function_single_entry",
                "ipi_resched": "irq_vectors:reschedule_entry"}


# The calls a proxy serves requests with; `total` counts every call, these the ones named.
SYSCALLS = ["read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
            "epoll_wait", "epoll_pwait", "epoll_ctl", "getsockopt", "setsockopt", "futex"]
SYSCALL_EVENTS = {"total": "raw_syscalls:sys_enter",
                  **{c: f"syscalls:sys_enter_{c}" for c in SYSCALLS}}


def start_perf(events, target, duration):
    """`perf stat` of `events` on `target` (["-a"] or ["-p", pids]) for `duration` seconds."""
    out = tempfile.NamedTemporaryFile(prefix="perf-", suffix=".csv", delete=False).name
    proc = subprocess.Popen(["perf", "stat", "-x,", "-o", out, "-e", ",".join(events.values())]
                            + target + ["--", "sleep", str(duration)])
    return proc, out


def perf_counts(started, events, n):
    """Each event's count per request (`n` requests) once `start_perf`'s run has ended."""
    proc, out = started
    proc.wait()
    counts = {}
    with open(out) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[0].isdigit():
                counts[parts[2]] = int(parts[0])
    os.unlink(out)
    return {name: counts.get(event, 0) / n for name, event in events.items()}


def idle_ticks():
    """(idle, total) jiffies of the whole box, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)


def measure(port, pgid, path, duration, h2=False, origin=None, sched=False, syscalls=False):
    before = cpu_seconds(pgid)
    idle_before = idle_ticks()
    # The whole box: a proxy's wake-ups land on the client's and the origin's threads.
    box = start_perf(SCHED_EVENTS, ["-a"], duration) if sched else None
    calls = None
    if syscalls:
        pids = ",".join(proc.rsplit("/", 1)[1] for proc in bench.group_procs(pgid))
        calls = start_perf(SYSCALL_EVENTS, ["-p", pids], duration)
    origin_before = cpu_seconds(origin) if origin else (0, 0)
    if h2:
        # HTTP/2 over TLS, 10 streams per connection (the TLS port is passed as `port`).
        cmd = ["h2load", "-t2", "-c64", "-m10", f"-D{duration}", "-H", ":authority: bench.test",
               f"https://127.0.0.1:{port}{path}"]
    else:
        cmd = ["wrk", "-t2", "-c64", f"-d{duration}s", "-H", "Host: bench.test",
               f"http://127.0.0.1:{port}{path}"]
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    _, _, usage = os.wait4(client.pid, 0)
    out = client.stdout.read()
    n = int(re.search(r"(\d+) requests in" if not h2 else r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    after = cpu_seconds(pgid)
    origin_after = cpu_seconds(origin) if origin else (0, 0)
    idle_after = idle_ticks()
    user, system = ((a - b) / n * 1e6 for a, b in zip(after, before))
    result = {"rps": n / duration, "proxy": user + system, "user": user, "system": system,
              "client": (usage.ru_utime + usage.ru_stime) / n * 1e6,
              "origin": sum(a - b for a, b in zip(origin_after, origin_before)) / n * 1e6,
              "idle": (idle_after[0] - idle_before[0]) / max(1, idle_after[1] - idle_before[1]) * 100}
    if box:
        result.update(perf_counts(box, SCHED_EVENTS, n))
    if calls:
        result["syscalls"] = perf_counts(calls, SYSCALL_EVENTS, n)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path", help="e.g. /c/1m (cached 1 MiB), /p/1k (pass-through)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=VALUE: also run crossfade with this in its environment; "
                         "section.key=VALUE[,section.key=VALUE…]: with these config settings (TOML values)")
    ap.add_argument("--binary", default=os.path.join(bench.ROOT, "target/release/crossfade"))
    ap.add_argument("--h2", action="store_true",
                    help="HTTP/2 over TLS with h2load -m 10 (crossfade and nginx: Varnish has no TLS)")
    ap.add_argument("--sched", action="store_true",
                    help="also count wake-ups and inter-processor interrupts per request over the "
                         "whole box (perf stat -a), and the box's idle CPU")
    ap.add_argument("--syscalls", action="store_true",
                    help="also count the proxy's system calls per request, by call (perf stat -p "
                         "on the proxy's processes)")
    ap.add_argument("--key-cookies", default="",
                    help="comma-separated key_cookies for crossfade's rules, as bench.py's")
    args = ap.parse_args()
    bench.KEY_COOKIES = [c for c in args.key_cookies.split(",") if c]
    bench.ensure_tools()
    proxies = ("crossfade", "nginx") if args.h2 else ("crossfade", "nginx", "varnish")
    port = (lambda p: bench.PORTS[f"{p}-tls"]) if args.h2 else (lambda p: bench.PORTS[p])
    work = tempfile.mkdtemp(prefix="crossfade-cpu-")
    os.chmod(work, 0o755)
    results = {}
    try:
        bench.setup(work)
        origin = bench.procs[0].pid  # setup starts the origin first
        pids = bench.start_proxies(work, args.binary)
        for p in proxies:
            bench.warm(bench.PORTS[p], args.path)
            if args.h2:
                # nginx keys its cache on the scheme too.
                subprocess.run(["h2load", "-n20", "-c1", "-H", ":authority: bench.test",
                                f"https://127.0.0.1:{port(p)}{args.path}"], capture_output=True)
        for _ in range(args.rounds):
            for p in proxies:
                results.setdefault(p, []).append(measure(port(p), pids[p], args.path, args.duration, args.h2, origin,
                                                           args.sched, args.syscalls))
            for v in args.variant:
                # section.key=value is a config setting (several joined by commas); NAME=value an
                # environment variable.
                pairs = dict(p.split("=", 1) for p in v.split(",")) if "." in v.split("=")[0] \
                    else dict([v.split("=", 1)])
                setting = "." in v.split("=")[0]
                proc, second = bench.second_crossfade(work, args.binary, None if setting else pairs,
                                                    pairs if setting else None)
                try:
                    bench.warm(second, args.path)
                    # The second crossfade's TLS listener is the first's plus 10, as its others.
                    at = bench.PORTS["crossfade-tls"] + 10 if args.h2 else second
                    if args.h2:
                        subprocess.run(["h2load", "-n20", "-c1", "-H", ":authority: bench.test",
                                        f"https://127.0.0.1:{at}{args.path}"], capture_output=True)
                    results.setdefault(f"crossfade {v}", []).append(
                        measure(at, proc.pid, args.path, args.duration, args.h2, origin, args.sched,
                                args.syscalls))
                finally:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait()
        client = "h2load -t2 -c64 -m10 over TLS" if args.h2 else "wrk -t2 -c64"
        print(f"\n{args.path}: medians of {args.rounds} rounds, {args.duration} s each, {client}")
        print(f"  {'proxy':<28} {'req/s':>8} {'proxy µs/req':>13} {'(user':>7} {'system)':>8} {'client µs/req':>14} {'origin':>7} {'sum':>7}")
        for p, runs in results.items():
            m = {k: statistics.median(r[k] for r in runs) for k in ("rps", "proxy", "user", "system", "client", "origin")}
            print(f"  {p:<28} {m['rps']:>8.0f} {m['proxy']:>13.1f} {m['user']:>7.1f} {m['system']:>8.1f} "
                  f"{m['client']:>14.1f} {m['origin']:>7.1f} {m['proxy'] + m['client'] + m['origin']:>7.1f}")
        print(f"\n  {'proxy':<28} {'idle CPU %':>10}" + ("".join(f" {k + '/req':>16}" for k in SCHED_EVENTS) if args.sched else ""))
        for p, runs in results.items():
            line = f"  {p:<28} {statistics.median(r['idle'] for r in runs):>10.1f}"
            if args.sched:
                line += "".join(f" {statistics.median(r[k] for r in runs):>16.3f}" for k in SCHED_EVENTS)
            print(line)
        if args.syscalls:
            per = {p: {c: statistics.median(r["syscalls"][c] for r in runs) for c in SYSCALL_EVENTS}
                   for p, runs in results.items()}
            shown = [c for c in SYSCALL_EVENTS if any(v[c] >= 0.005 for v in per.values())]
            print(f"\n  system calls per request\n  {'proxy':<28}" + "".join(f" {c:>11}" for c in shown))
            for p, v in per.items():
                print(f"  {p:<28}" + "".join(f" {v[c]:>11.3f}" for c in shown))
    finally:
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
