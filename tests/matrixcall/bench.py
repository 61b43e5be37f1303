#!/usr/bin/env python3
"""MatrixCall <-> MatrixCall baseline numbers (docs/BENCHMARKS.md, "Direct calls: MatrixCall
baseline (issue 15)"): call set-up times and what a Chromium party costs in CPU and memory.

    STACK_DIR=... python3 tests/matrixcall/bench.py [--calls 10] [--seconds 10] [--modes direct,relay]

For each mode (direct: host candidates; relay: forceTURN through the stack's coturn) it registers
two fresh users, starts bob's party (answers every call) and alice's (places --calls calls one
after another, each hung up --seconds after `connected`). Each browser first idles --idle
seconds (synced, no call). Reported, over the calls:
  * place -> connected and place -> first remote audio energy (alice's clock), p50 / p95;
    bob's Call.incoming -> first audio too;
  * per browser (the Chromium process tree, from /proc): CPU while idle and while in a call (in
    % of one core), and its memory idle and in a call: RSS (shared pages once per process),
    PSS (shared pages split among their users, so it moves when the other browser starts) and
    private (clean + dirty, the memory this browser alone holds).
Writes bench-out/matrixcall-bench-<mode>.json with every line both parties printed.
Benchmarks are not tests: nothing here asserts beyond "every call connected".
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matrixcall import REPO, Party, Stack  # noqa: E402


def pct(values, p):
    """Nearest-rank percentile."""
    v = sorted(values)
    if not v:
        return None
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]


def samples(party):
    return [x for x in party.lines if x.get("event") == "proc"]


def cpu_and_memory(party):
    """Idle and in-call CPU (% of one core) and memory (MiB) of this party's browser."""
    procs = samples(party)
    by = {}
    for x in procs:
        by.setdefault(x["label"], []).append(x)
    idle = None
    if by.get("idle_start") and by.get("idle_end"):
        a, b = by["idle_start"][0], by["idle_end"][0]
        idle = {"cpu_pct": 100 * (b["cpu_ms"] - a["cpu_ms"]) / max(1, b["wall_ms"] - a["wall_ms"]),
                "rss_mib": b["rss_kib"] / 1024, "pss_mib": b["pss_kib"] / 1024,
                "private_mib": b["private_kib"] / 1024}
    calls = []
    for c, h in zip(by.get("connected", []), by.get("hangup", [])):
        calls.append({"cpu_pct": 100 * (h["cpu_ms"] - c["cpu_ms"]) / max(1, h["wall_ms"] - c["wall_ms"]),
                      "rss_mib": h["rss_kib"] / 1024, "pss_mib": h["pss_kib"] / 1024,
                      "private_mib": h["private_kib"] / 1024})
    return idle, calls


def run_mode(stack, mode, n, seconds, idle, gap):
    options = ["--force-turn"] if mode == "relay" else []
    alice, bob = stack.new_user("bench_alice"), stack.new_user("bench_bob")
    timeout = str(int(idle + n * (seconds + gap + 15) + 60))
    callee = Party.answer(bob, "--calls", str(n), "--idle-seconds", str(idle), "--timeout", timeout,
                          *options, name=f"bob/{mode}")
    caller = None
    try:
        callee.wait_for("idle", timeout=90, phase="end")
        caller = Party.call(alice, bob.user_id, "--calls", str(n), "--hangup-after", str(seconds),
                            "--gap", str(gap), "--idle-seconds", str(idle), "--timeout", timeout,
                            *options, name=f"alice/{mode}")
        a = caller.result(timeout=int(timeout) + 30)
        b = callee.result(timeout=60)
    finally:
        for p in (caller, callee):
            if p:
                p.stop()
    return caller, callee, a, b


def summary(mode, caller, callee, a, b):
    connected = [r["connected_ms"] for r in a if r["connected_ms"] is not None]
    first = [r["first_audio_ms"] for r in a if r["first_audio_ms"] is not None]
    callee_first = [r["first_audio_ms"] for r in b if r["first_audio_ms"] is not None]
    pairs = sorted({f"{r['stats']['pair']['local']['type']}/{r['stats']['pair']['remote']['type']}"
                    for r in a if r.get("stats") and r["stats"].get("pair")})
    out = {"mode": mode, "calls": len(a), "connected": len(connected), "pairs": pairs,
           "srtp": sorted({r["stats"]["transport"]["srtp_cipher"] for r in a if r.get("stats")})}
    for name, v in (("place_to_connected_ms", connected), ("place_to_first_audio_ms", first),
                    ("callee_incoming_to_first_audio_ms", callee_first)):
        out[name] = {"p50": pct(v, 50), "p95": pct(v, 95), "min": min(v, default=None),
                     "max": max(v, default=None), "all": v}
    for who, party in (("caller", caller), ("callee", callee)):
        idle, calls = cpu_and_memory(party)
        out[f"{who}_browser"] = {
            "idle": idle,
            "in_call": {k: statistics.median(c[k] for c in calls) for k in ("cpu_pct", "rss_mib", "pss_mib", "private_mib")}
            if calls else None,
        }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10, help="each call lasts this long once connected")
    ap.add_argument("--idle", type=float, default=10, help="idle seconds measured before the calls")
    ap.add_argument("--gap", type=float, default=2, help="seconds between two calls")
    ap.add_argument("--modes", default="direct,relay")
    args = ap.parse_args()
    stack = Stack.from_scripts()
    outdir = REPO / "bench-out"
    outdir.mkdir(exist_ok=True)
    results = []
    for mode in args.modes.split(","):
        t = time.monotonic()
        caller, callee, a, b = run_mode(stack, mode, args.calls, args.seconds, args.idle, args.gap)
        s = summary(mode, caller, callee, a, b)
        s["wall_s"] = round(time.monotonic() - t, 1)
        results.append(s)
        (outdir / f"matrixcall-bench-{mode}.json").write_text(json.dumps(
            {"summary": s, "caller_lines": caller.lines, "callee_lines": callee.lines}, indent=1))
    print(json.dumps({"machine": f"{platform.node()} {platform.machine()}, "
                                 f"{len(__import__('os').sched_getaffinity(0))} cores",
                      "results": results}, indent=1))
    for s in results:
        c, f = s["place_to_connected_ms"], s["place_to_first_audio_ms"]
        print(f"{s['mode']}: {s['connected']}/{s['calls']} connected ({', '.join(s['pairs'])}); "
              f"place->connected p50 {c['p50']} ms p95 {c['p95']} ms; "
              f"place->first audio p50 {f['p50']} ms p95 {f['p95']} ms", file=sys.stderr)
        for who in ("caller", "callee"):
            br = s[f"{who}_browser"]
            print(f"  {who} browser: idle {br['idle']}, in call {br['in_call']}", file=sys.stderr)


if __name__ == "__main__":
    main()
