#!/usr/bin/env python3
"""Helpers of scripts/bench.sh.

  bench_report.py overhead BEFORE AFTER   the gateway's overhead histogram between two
                                          /metrics scrapes, as JSON fields (p50_ms, p99_ms)
  bench_report.py report OUT WRITE        medians of the runs in OUT; prints the section and,
                                          when WRITE is 1, puts it on top of docs/BENCHMARKS.md
  bench_report.py peers OUT WRITE         the same for scripts/bench-peers.sh
"""

import datetime
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys

DOC = "docs/BENCHMARKS.md"


def buckets(path):
    """Cumulative counts of bluesminds_gateway_overhead_seconds by upper bound, all endpoints."""
    out = {}
    pattern = re.compile(r'^bluesminds_gateway_overhead_seconds_bucket\{.*le="([^"]+)"\} (\d+)')
    with open(path) as f:
        for line in f:
            m = pattern.match(line)
            if m:
                le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
                out[le] = out.get(le, 0) + int(m.group(2))
    return out


def quantile(cumulative, q):
    """histogram_quantile as Prometheus computes it (linear within a bucket)."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0
    if total == 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0
    for b in bounds:
        if cumulative[b] >= rank:
            if b == float("inf"):
                return lower
            inside = cumulative[b] - below
            return lower + (b - lower) * ((rank - below) / inside if inside else 0)
        lower, below = b, cumulative[b]
    return lower


def overhead(before, after):
    a, b = buckets(before), buckets(after)
    delta = {le: b.get(le, 0) - a.get(le, 0) for le in b}
    p50, p99 = quantile(delta, 0.5) * 1000, quantile(delta, 0.99) * 1000
    count = delta.get(float("inf"), 0)
    print(f'"p50_ms":{p50:.4f},"p99_ms":{p99:.4f},"count":{count}')


def oha(out, name):
    with open(os.path.join(out, name + ".json")) as f:
        d = json.load(f)
    s, p = d["summary"], d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution", {})
    # A timed run (-z) cancels what is in flight at its end: not an error of the server.
    errors = sum(
        n for e, n in d.get("errorDistribution", {}).items() if "deadline" not in e
    ) + sum(
        n for c, n in codes.items() if c != "200"
    )
    return {
        "rps": s["requestsPerSec"],
        "p50": p["p50"] * 1000,
        "p99": p["p99"] * 1000,
        "p999": p["p99.9"] * 1000,
        "errors": errors,
    }


def median_of(out, pattern):
    runs = [oha(out, os.path.basename(f)[:-5]) for f in sorted(glob.glob(os.path.join(out, pattern + ".json")))]
    if not runs:
        return None
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {
        "errors": sum(r["errors"] for r in runs),
        "runs": len(runs),
    }


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "?"


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_kib / 1048576:.0f} GiB, Linux {platform.release()}; "
        f"{sh('oha', '--version')}; PostgreSQL {sh('psql', '-V').split()[2]}; "
        f"{sh('redis-server', '--version').split(' sha')[0]}; everything on the same machine"
    )


def fmt(v, digits=2):
    return f"{v:,.{digits}f}"


def report(out, write):
    results = []
    with open(os.path.join(out, "results.jsonl")) as f:
        results = [json.loads(line) for line in f if line.strip()]
    commit = sh("git", "rev-parse", "--short", "HEAD")
    dirty = ", with uncommitted changes" if sh("git", "status", "--porcelain") else ""
    today = datetime.date.today().isoformat()
    lines = [
        f"## {today} — `just bench` (commit `{commit}`{dirty})",
        "",
        f"Machine: {machine()}. Medians of the runs shown; release build; the gateway with",
        "Postgres, Redis limits on (an admin key whose limits are far above the load), usage",
        "written to Postgres, bcrypt-stored key; `bluesminds-mock` as the upstream.",
        "",
        "### Closed loop (fixed concurrency)",
        "",
        "| Path | Concurrency | Requests/s | p50 ms | p99 ms | p99.9 ms | Errors | Runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    closed = {}
    for label, pattern in [
        ("direct to mock", "closed-direct-c64-*"),
        ("gateway (full pipeline)", "closed-gateway-c64-*"),
        ("gateway, limits off", "closed-limits-off-c64-*"),
        ("gateway, usage off", "closed-usage-off-c64-*"),
        ("direct to mock", "closed-direct-c1-*"),
        ("gateway (full pipeline)", "closed-gateway-c1-*"),
    ]:
        m = median_of(out, pattern)
        if m is None:
            continue
        closed[pattern] = m
        c = "1" if "c1" in pattern else "64"
        lines.append(
            f"| {label} | {c} | {fmt(m['rps'], 0)} | {fmt(m['p50'], 3)} | {fmt(m['p99'], 3)} | {fmt(m['p999'], 3)} | {m['errors']} | {m['runs']} |"
        )
    d, g = closed.get("closed-direct-c64-*"), closed.get("closed-gateway-c64-*")
    lines.append("")
    if d and g:
        lines.append(
            f"Throughput through the full pipeline: **{100 * g['rps'] / d['rps']:.0f}%** of direct-to-mock (target at least 40%)."
        )
    for variant, key in [("limits", "closed-limits-off-c64-*"), ("usage", "closed-usage-off-c64-*")]:
        v = closed.get(key)
        if v and g:
            per_req = (1 / g["rps"] - 1 / v["rps"]) * 1e6
            lines.append(
                f"Cost of {variant} at peak: {fmt(v['rps'], 0)} requests/s without, {fmt(g['rps'], 0)} with ({per_req:.1f} µs of the two cores per request)."
            )
    overheads = [r for r in results if r["phase"] == "overhead"]
    c1 = [r for r in overheads if r["what"] == "c1"]
    d1, g1 = closed.get("closed-direct-c1-*"), closed.get("closed-gateway-c1-*")
    if c1:
        lines.append(
            f"Gateway overhead at concurrency 1 (its own histogram, `x-bluesminds-overhead-ms`): p50 {statistics.median(r['p50_ms'] for r in c1):.3f} ms, "
            f"p99 {statistics.median(r['p99_ms'] for r in c1):.3f} ms (targets 0.3 and 1 ms)"
            + (f"; difference of the client-side p50s: {g1['p50'] - d1['p50']:.3f} ms." if d1 and g1 else ".")
        )
    lines += [
        "",
        "### Open loop (fixed request rates, latency-corrected)",
        "",
        "| Rate/s | Direct p50 ms | Direct p99 ms | Gateway p50 ms | Gateway p99 ms | Overhead p50 ms | Overhead p99 ms | Errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rates = sorted({int(r["what"].split("-")[1]) for r in overheads if r["what"].startswith("open-")})
    for rate in rates:
        dm, gm = median_of(out, f"open-direct-{rate}-*"), median_of(out, f"open-gateway-{rate}-*")
        o = [r for r in overheads if r["what"] == f"open-{rate}"]
        lines.append(
            f"| {rate:,} | {fmt(dm['p50'], 3)} | {fmt(dm['p99'], 3)} | {fmt(gm['p50'], 3)} | {fmt(gm['p99'], 3)} | "
            f"{statistics.median(r['p50_ms'] for r in o):.3f} | {statistics.median(r['p99_ms'] for r in o):.3f} | {dm['errors'] + gm['errors']} |"
        )
    streams = [r for r in results if r["phase"] == "stream"]
    if streams:
        med = lambda side, k: statistics.median(r[side][k] for r in streams) / 1000  # noqa: E731
        lines += [
            "",
            "### Streaming (one stream at a time, 16 chunks 1 ms apart, 300 streams a run)",
            "",
            "| Path | TTFT p50 ms | TTFT p99 ms | Total p50 ms | Total p99 ms |",
            "|---|---:|---:|---:|---:|",
            f"| direct to mock | {med('direct', 'ttft_p50_us'):.3f} | {med('direct', 'ttft_p99_us'):.3f} | {med('direct', 'total_p50_us'):.3f} | {med('direct', 'total_p99_us'):.3f} |",
            f"| gateway | {med('gateway', 'ttft_p50_us'):.3f} | {med('gateway', 'ttft_p99_us'):.3f} | {med('gateway', 'total_p50_us'):.3f} | {med('gateway', 'total_p99_us'):.3f} |",
            "",
            f"Time-to-first-token overhead: p50 {med('gateway', 'ttft_p50_us') - med('direct', 'ttft_p50_us'):.3f} ms, "
            f"p99 {med('gateway', 'ttft_p99_us') - med('direct', 'ttft_p99_us'):.3f} ms (target p99 at most 1 ms).",
        ]
    rss = {r["what"]: r["kib"] / 1024 for r in results if r["phase"] == "rss"}
    usage = next((r for r in results if r["phase"] == "usage"), None)
    lines += [
        "",
        "### Memory and usage completeness",
        "",
        f"Resident set size: idle {rss.get('idle', 0):.1f} MiB, peak during the closed loop {rss.get('peak', 0):.1f} MiB "
        f"(target 64), holding 1,000 open streams {rss.get('streams', 0):.1f} MiB (target 128).",
    ]
    if usage:
        verdict = "none lost" if usage["rows"] == usage["served"] else "**MISMATCH**"
        lines.append(
            f"Usage rows written by the gateways that write usage (full pipeline, limits off): {usage['rows']:,} for {usage['served']:,} requests served ({verdict})."
        )
    lines += ["", "Reproduce: `just bench` (knobs at the top of `scripts/bench.sh`).", ""]
    write_section("\n".join(lines), write)


def write_section(section, write):
    print(section)
    if write == "1":
        with open(DOC) as f:
            doc = f.read()
        at = doc.index("\n## ") + 1
        with open(DOC, "w") as f:
            f.write(doc[:at] + section + "\n" + doc[at:])
        print(f"written to {DOC}")


def peers(out, write):
    with open(os.path.join(out, "results.jsonl")) as f:
        results = [json.loads(line) for line in f if line.strip()]
    versions = next((r["text"] for r in results if r["phase"] == "versions"), "?")
    commit = sh("git", "rev-parse", "--short", "HEAD")
    lines = [
        f"## {datetime.date.today().isoformat()} — `just bench-peers` (commit `{commit}`)",
        "",
        f"Machine: {machine()}; {versions}. One timed run per row, all against the same",
        "`bluesminds-mock`. Configurations: BluesMinds as in `just bench` (Postgres, Redis limits",
        "on, usage written, bcrypt-stored key); LiteLLM proxy with one worker, a config file and a",
        "master key, **no database** (no key lookup, no spend logs, no limits: this flatters it);",
        "Portkey's gateway headless with provider `openai` and a custom host (no keys, logs or",
        "limits of its own either).",
        "",
        "| Path | Concurrency | Requests/s | p50 ms | p99 ms | p99.9 ms | Errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in (64, 1):
        for name, label in [
            ("direct", "direct to mock"),
            ("bluesminds", "BluesMinds (full pipeline)"),
            ("litellm", "LiteLLM proxy (no database)"),
            ("portkey", "Portkey gateway"),
        ]:
            path = os.path.join(out, f"{name}-c{c}.json")
            if not os.path.exists(path):
                continue
            m = oha(out, f"{name}-c{c}")
            lines.append(
                f"| {label} | {c} | {fmt(m['rps'], 0)} | {fmt(m['p50'], 3)} | {fmt(m['p99'], 3)} | {fmt(m['p999'], 3)} | {m['errors']} |"
            )
    lines += ["", "Reproduce: `just bench-peers` (outside CI).", ""]
    write_section("\n".join(lines), write)


if __name__ == "__main__":
    if sys.argv[1] == "overhead":
        overhead(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "peers":
        peers(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
