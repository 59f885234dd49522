#!/usr/bin/env python3
"""Atomic read-modify-writes per request, by function: the input of a projection to more cores.

On a machine with many cores, what stops a request path from scaling is the memory every thread
writes: a lock word, a shared reference count, a shared counter. Each such write is an atomic
instruction (`lock`-prefixed, or `xchg` with memory) whose cache line must be moved to the writing
core; when other cores write the same line, it moves back and forth. This box has two cores and
no hardware counters, so contention cannot be measured here; what can be counted exactly is
which atomic instructions a request executes, and where. `instructions.py --atomics` records
callgrind's per-instruction counts (`--dump-instr=yes`), and this
module finds the atomic instructions among them (objdump) and sums them per function.

Whether a counted line is written by other threads too is a property of the data, not of the
instruction (a task's own state word is atomic but written by one thread only): the README's
"what a request writes that other threads also write" classifies the functions this prints.

    python3 loadtest/instructions.py --atomics [--key-cookies currency]
"""
import collections
import os
import re
import subprocess

LOCKED = re.compile(r"^\s*([0-9a-f]+):\t(lock |xchg[bwlq]? [^,]*\(|xchg[bwlq]? .*,.*\()")


def locked_addresses(path):
    """The addresses (the file's virtual addresses) of the atomic instructions in `path`."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path],
                         capture_output=True, text=True, check=False).stdout
    return {int(m.group(1), 16) for m in map(LOCKED.match, out.splitlines()) if m}


def position(token, last):
    if token == "*":
        return last
    if token[0] in "+-":
        return last + int(token, 16 if token[1:].startswith("0x") else 10)
    return int(token, 16)


def per_function(dump):
    """{function: atomic instructions executed} from a callgrind dump made with
    `--dump-instr=yes` (whose addresses are the objects' own, as objdump prints them). The
    objects must be the ones profiled: a binary rebuilt since has other addresses."""
    atomics = {}  # object path -> the addresses of its atomic instructions
    names = {"ob": {}, "fn": {}}
    counts = collections.Counter()
    ob = fn = None
    last = 0
    after_call = False
    with open(dump) as f:
        for line in f:
            if line[0].isdigit() or line[0] in "+-*":
                if after_call:  # a call's inclusive cost, at the call instruction
                    after_call = False
                    last = position(line.split()[0], last)
                    continue
                parts = line.split()
                last = position(parts[0], last)
                if ob in atomics and last in atomics[ob] and len(parts) > 2:
                    counts[fn] += int(parts[2])
                continue
            key, _, rest = line.rstrip("\n").partition("=")
            if key in ("ob", "fn"):
                m = re.match(r"\((\d+)\)(?: (.*))?", rest)
                if m:
                    if m.group(2) is not None:
                        names[key][m.group(1)] = m.group(2)
                    value = names[key].get(m.group(1), "?")
                else:
                    value = rest
                if key == "ob":
                    ob = value
                    if ob not in atomics and not os.path.isfile(ob):
                        atomics[ob] = set()  # callgrind's "???" (code of no file)
                    elif ob not in atomics:
                        if os.path.getmtime(ob) > os.path.getmtime(dump):
                            raise SystemExit(f"{ob} changed after {dump} was recorded")
                        atomics[ob] = locked_addresses(ob)
                else:
                    fn = value
            elif key in ("cob", "cfn"):
                m = re.match(r"\((\d+)\) (.*)", rest)
                if m:  # a first mention defines the id for later ob=/fn= lines too
                    names[key[1:]][m.group(1)] = m.group(2)
            elif key == "calls":
                after_call = True
    return counts


def report(counts, requests, top=14):
    """Lines: the total per request, then the functions with the most, per request."""
    total = sum(counts.values())
    lines = [f"{total / requests:.1f} atomic read-modify-writes per request"]
    for name, n in counts.most_common(top):
        if n / requests >= 0.05:
            lines.append(f"      {n / requests:5.1f}  {short(name)}")
    return lines


def short(name):
    """A function's name without the usual crate prefixes, cut to fit 100 columns."""
    name = re.sub(r"\b(crossfade|pingora_core|pingora_cache|pingora_proxy|tokio|core|alloc|std)::",
                  "", name)
    return name if len(name) <= 96 else name[:93] + "..."
