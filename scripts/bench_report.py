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


def wrk(out, name):
    with open(os.path.join(out, name + ".wrk.json")) as f:
        d = json.loads(f.read().strip().splitlines()[-1])
    return {
        "rps": d["requests"] / (d["duration_us"] / 1e6),
        "p50": d["p50_us"] / 1000,
        "p99": d["p99_us"] / 1000,
        "p999": d["p999_us"] / 1000,
        "errors": d["socket_errors"] + d["status_errors"],
    }


def wrk_runs(out, pattern):
    files = sorted(glob.glob(os.path.join(out, pattern + ".wrk.json")))
    return [wrk(out, os.path.basename(f)[: -len(".wrk.json")]) for f in files]


def wrk_median(out, pattern):
    runs = wrk_runs(out, pattern)
    if not runs:
        return None
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {
        "errors": sum(r["errors"] for r in runs),
        "runs": len(runs),
    }


def verdict(ok):
    return "yes" if ok else "**no**"


def report(out, write):
    with open(os.path.join(out, "results.jsonl")) as f:
        results = [json.loads(line) for line in f if line.strip()]
    commit = sh("git", "rev-parse", "--short", "HEAD")
    dirty = ", with uncommitted changes" if sh("git", "status", "--porcelain") else ""
    today = datetime.date.today().isoformat()
    lines = [
        f"## {today} — `just bench` (commit `{commit}`{dirty})",
        "",
        f"Machine: {machine()}; {sh('wrk', '--version').splitlines()[0] if sh('wrk', '--version') else 'wrk'}. Release build; the gateway with",
        "Postgres, Redis limits on (an admin key whose limits are far above the load), usage",
        "written to Postgres, keys stored with bcrypt cost 4 (only a key's first use runs it);",
        "`bluesminds-mock` as the upstream; the bare proxy",
        "(`bluesminds-bare-proxy`: hyper server and pooled client, nothing else) in front of the",
        "same mock. Latencies are measured at the client.",
        "",
        "### Closed loop (wrk, one thread; medians of the interleaved rounds)",
        "",
        "| Path | Concurrency | Requests/s | p50 ms | p99 ms | p99.9 ms | Errors | Runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    closed = {}
    for label, name, c in [
        ("direct to mock", "direct", 32),
        ("bare proxy", "bare", 32),
        ("gateway (full pipeline)", "gateway", 32),
        ("gateway, limits off", "limits-off", 32),
        ("gateway, usage off", "usage-off", 32),
        ("direct to mock", "direct", 1),
        ("bare proxy", "bare", 1),
        ("gateway (full pipeline)", "gateway", 1),
    ]:
        m = wrk_median(out, f"closed-{name}-c{c}-*")
        if m is None:
            continue
        closed[(name, c)] = m
        lines.append(
            f"| {label} | {c} | {fmt(m['rps'], 0)} | {fmt(m['p50'], 3)} | {fmt(m['p99'], 3)} | {fmt(m['p999'], 3)} | {m['errors']} | {m['runs']} |"
        )
    for label, name in [("bare proxy, database on its own core", "bare"), ("gateway, database on its own core", "gateway")]:
        m = wrk_median(out, f"pinned-{name}-c1-*")
        if m:
            lines.append(
                f"| {label} | 1 | {fmt(m['rps'], 0)} | {fmt(m['p50'], 3)} | {fmt(m['p99'], 3)} | {fmt(m['p999'], 3)} | {m['errors']} | {m['runs']} |"
            )
    bare, gw = closed.get(("bare", 32)), closed.get(("gateway", 32))
    bare1, gw1 = closed.get(("bare", 1)), closed.get(("gateway", 1))
    direct = closed.get(("direct", 32))
    streams = [r for r in results if r["phase"] == "stream"]
    med = lambda side, k: statistics.median(r[side][k] for r in streams) / 1000  # noqa: E731
    rss = {r["what"]: r["kib"] / 1024 for r in results if r["phase"] == "rss"}
    usage = next((r for r in results if r["phase"] == "usage"), None)
    errors = sum(m["errors"] for m in closed.values())
    lines += ["", "### Against the bare proxy (the targets)", "", "| Target | Measured | Met |", "|---|---|---|"]
    if bare and gw:
        per_round = [
            g["rps"] / b["rps"]
            for g, b in zip(wrk_runs(out, "closed-gateway-c32-*"), wrk_runs(out, "closed-bare-c32-*"))
        ]
        ratio = gw["rps"] / bare["rps"]
        rounds = ", ".join(f"{r:.2f}" for r in per_round)
        lines.append(
            f"| Full pipeline throughput at c=32, at least 0.80 of the bare proxy's | {ratio:.2f} ({fmt(gw['rps'], 0)} against {fmt(bare['rps'], 0)}/s; rounds {rounds}) | {verdict(ratio >= 0.80)} |"
        )
    if bare1 and gw1:
        d50, d99 = gw1["p50"] - bare1["p50"], gw1["p99"] - bare1["p99"]
        lines.append(f"| Added latency at c=1, p50 at most 0.05 ms | {d50:.3f} ms ({gw1['p50']:.3f} against {bare1['p50']:.3f}) | {verdict(d50 <= 0.05)} |")
        lines.append(f"| Added latency at c=1, p99 at most 0.3 ms | {d99:.3f} ms ({gw1['p99']:.3f} against {bare1['p99']:.3f}) | {verdict(d99 <= 0.3)} |")
    pb, pg = wrk_median(out, "pinned-bare-c1-*"), wrk_median(out, "pinned-gateway-c1-*")
    if pb and pg:
        errors += pb["errors"] + pg["errors"]
        lines.append(
            f"| The same at c=1 with Postgres and Redis on a core of their own: p50 / p99 added | {pg['p50'] - pb['p50']:.3f} / {pg['p99'] - pb['p99']:.3f} ms ({pg['p50']:.3f} / {pg['p99']:.3f} against {pb['p50']:.3f} / {pb['p99']:.3f}) | {verdict(pg['p50'] - pb['p50'] <= 0.05 and pg['p99'] - pb['p99'] <= 0.3)} |"
        )
    if streams and "bare" in streams[0]:
        t99 = med("gateway", "ttft_p99_us") - med("bare", "ttft_p99_us")
        lines.append(f"| Streaming time to first token, added p99 at most 0.5 ms | {t99:.3f} ms | {verdict(t99 <= 0.5)} |")
    one, many = wrk_runs(out, "keys-one-c32-*"), wrk_runs(out, "keys-many-c32-*")
    if one and many:
        ratios = [m["rps"] / o["rps"] for m, o in zip(many, one)]
        r = statistics.median(ratios)
        mm, om = wrk_median(out, "keys-many-c32-*"), wrk_median(out, "keys-one-c32-*")
        errors += mm["errors"] + om["errors"]
        lines.append(
            f"| Throughput with 10,000 distinct keys within 10% of one key | {r:.2f} ({fmt(mm['rps'], 0)} against {fmt(om['rps'], 0)}/s; rounds {', '.join(f'{x:.2f}' for x in ratios)}) | {verdict(r >= 0.90)} |"
        )
    if rss:
        lines.append(f"| Peak RSS at most 32 MiB under c=32 | {rss.get('peak', 0):.1f} MiB | {verdict(rss.get('peak', 0) <= 32)} |")
        lines.append(f"| RSS at most 128 MiB with 1,000 open streams | {rss.get('streams', 0):.1f} MiB | {verdict(rss.get('streams', 0) <= 128)} |")
    if usage:
        ok = usage["rows"] == usage["served"]
        lines.append(
            f"| Zero errors; usage rows equal to requests | {errors} errors; {usage['rows']:,} rows for {usage['served']:,} requests the gateways concluded | {verdict(ok and errors == 0)} |"
        )
    lines.append("")
    if direct and bare:
        lines.append(f"The bare proxy itself runs at {bare['rps'] / direct['rps']:.2f} of direct-to-mock at c=32.")
    for variant, key in [("limits", ("limits-off", 32)), ("usage", ("usage-off", 32))]:
        v = closed.get(key)
        if v and gw:
            per_req = (1 / gw["rps"] - 1 / v["rps"]) * 1e6
            lines.append(
                f"Cost of {variant} at c=32: {fmt(v['rps'], 0)} requests/s without, {fmt(gw['rps'], 0)} with ({per_req:.1f} µs of the two cores per request)."
            )
    overheads = [r for r in results if r["phase"] == "overhead"]
    c1 = [r for r in overheads if r["what"] == "c1"]
    if c1:
        lines.append(
            f"The gateway's own overhead histogram at c=1 (`x-bluesminds-overhead-ms`): p50 {statistics.median(r['p50_ms'] for r in c1):.3f} ms, "
            f"p99 {statistics.median(r['p99_ms'] for r in c1):.3f} ms."
        )
    lines += [
        "",
        "### Open loop (oha, fixed request rates, latency-corrected)",
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
    if streams:
        lines += [
            "",
            "### Streaming (one stream at a time, 16 chunks 1 ms apart, 300 streams a run)",
            "",
            "| Path | TTFT p50 ms | TTFT p99 ms | Total p50 ms | Total p99 ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for side, label in [("direct", "direct to mock"), ("bare", "bare proxy"), ("gateway", "gateway")]:
            if side in streams[0]:
                lines.append(
                    f"| {label} | {med(side, 'ttft_p50_us'):.3f} | {med(side, 'ttft_p99_us'):.3f} | {med(side, 'total_p50_us'):.3f} | {med(side, 'total_p99_us'):.3f} |"
                )
    lines += [
        "",
        "### Memory and usage completeness",
        "",
        f"Resident set size: idle {rss.get('idle', 0):.1f} MiB, peak during the closed loop {rss.get('peak', 0):.1f} MiB, "
        f"holding 1,000 open streams {rss.get('streams', 0):.1f} MiB"
        + (f"; after the 10,000-key rounds {rss['keys']:.1f} MiB (cached keys and leases: the key cache holds at most `max_entries`, idle leases go after a minute)." if "keys" in rss else "."),
    ]
    if usage:
        verdict_rows = "none lost" if usage["rows"] == usage["served"] else "**MISMATCH**"
        lines.append(
            f"Usage rows written by the gateways that write usage (full pipeline, limits off): {usage['rows']:,} for the {usage['served']:,} requests they concluded ({verdict_rows})."
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
    got = {}
    for c in (32, 1):
        for name, label in [
            ("direct", "direct to mock"),
            ("bare", "bare proxy (the limit line)"),
            ("bluesminds", "BluesMinds (full pipeline)"),
            ("litellm", "LiteLLM proxy (no database)"),
            ("portkey", "Portkey gateway"),
        ]:
            if not os.path.exists(os.path.join(out, f"{name}-c{c}.wrk.json")):
                continue
            m = got[(name, c)] = wrk(out, f"{name}-c{c}")
            lines.append(
                f"| {label} | {c} | {fmt(m['rps'], 0)} | {fmt(m['p50'], 3)} | {fmt(m['p99'], 3)} | {fmt(m['p999'], 3)} | {m['errors']} |"
            )
    bare, bm = got.get(("bare", 32)), got.get(("bluesminds", 32))
    bare1, bm1 = got.get(("bare", 1)), got.get(("bluesminds", 1))
    lines.append("")
    if bare and bm:
        lines.append(f"BluesMinds at c=32: {bm['rps'] / bare['rps']:.2f} of the bare proxy's throughput.")
    if bare1 and bm1:
        lines.append(
            f"Added latency at c=1 against the bare proxy: p50 {bm1['p50'] - bare1['p50']:.3f} ms, p99 {bm1['p99'] - bare1['p99']:.3f} ms."
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
