# BluesMinds tasks. Every cargo call is --locked so CI builds what was reviewed.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Run every test of the workspace, bringing Postgres and Redis up first (scripts/test.sh).
test:
    bash scripts/test.sh

# Run the tests of one crate, e.g. `just test-crate gateway-auth`.
test-crate NAME:
    cargo test -p {{NAME}} --locked

# Formatting check and clippy with warnings denied.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# The supply-chain policy of deny.toml (installs cargo-deny once); advisories need GitHub.
deny:
    cargo deny --version >/dev/null 2>&1 || cargo install cargo-deny --locked --version 0.20.2
    cargo deny check bans licenses sources

# Serve the gateway (embedded SQLite unless DATABASE_URL says otherwise).
run *ARGS:
    cargo run --release --locked -p bluesminds -- serve {{ARGS}}

# Gateway + in-process mock upstream + demo user and key.
demo:
    cargo run --release --locked -p bluesminds -- demo

# Apply database migrations.
migrate:
    cargo run --release --locked -p bluesminds -- migrate

# A real LiteLLM proxy (PyPI) as the upstream, in front of the mock (outside CI).
litellm-check:
    bash scripts/litellm-check.sh

# The benchmark harness: gateway (Postgres, Redis limits, usage) against bluesminds-mock, with
# the bare proxy (bluesminds-bare-proxy) as the limit line: wrk closed loop at c=32 and c=1,
# oha open loop, streaming, memory, attribution, usage completeness, the ratios to the bare
# proxy; writes a dated section into docs/BENCHMARKS.md. Starts Postgres and Redis as .ci/run
# does.
bench:
    bash scripts/bench.sh

# The same closed-loop (c=32) and c=1 runs against the bare proxy, LiteLLM's proxy and
# Portkey's gateway, side by side (outside CI: installs them from PyPI and npm on first use).
bench-peers:
    bash scripts/bench-peers.sh

# Where the time of 10,000 distinct keys goes: one key against many in interleaved rounds, the
# CPU each process spends per request and the limiter's Redis claims per request.
bench-keys-cpu:
    bash scripts/bench-keys-cpu.sh

# Syscalls and allocations per request, the gateway against the bare proxy (perf stat on
# syscall tracepoints and uprobes at malloc; needs root). GW_BIN= counts another build.
bench-counts:
    bash scripts/bench-counts.sh

# User-space instructions per request, the gateway against the bare proxy, counted by callgrind:
# the before-and-after measure that does not drift with the machine. GW_BIN= counts another build.
bench-instructions:
    bash scripts/bench-instructions.sh

# Where the CPU of a request goes, process by process (gateway, Postgres, Redis, mock, the
# machine), for the gateway, the gateway with usage off and the bare proxy at c=32.
bench-cpu:
    bash scripts/bench-cpu.sh

# What a stalled database costs the traffic: c=32 through the gateway while its Postgres
# backends are stopped for 2 s, requests a second, p99 and records spilled, then usage rows
# against requests. GW_BIN= measures another build.
bench-stall:
    bash scripts/bench-stall.sh

# Two settings of one gateway side by side in interleaved rounds, e.g.
# `AB_A="BLUESMINDS_USAGE__JOURNAL=true" AB_B="BLUESMINDS_USAGE__JOURNAL=false" just bench-ab`.
bench-ab:
    bash scripts/bench-ab.sh

# How fast the dashboard's pages answer with a million usage rows (outside CI; ROWS=, RUNS=).
page-timings:
    bash scripts/page-timings.sh

# Check deploy/ without a cluster or container engine: promtool on the alert rules, the rendered
# Kubernetes manifests and the compose file against their schemas, the promised properties
# (also part of `test`).
check-deploy:
    bash scripts/check-deploy.sh

# The dashboard's end-to-end suite in headless Chromium (also part of `test`).
browser:
    bash scripts/browser-suite.sh

# The focused benchmarks of single pieces: key verification, a flood of wrong keys, the usage
# writer (Postgres rows need TEST_DATABASE_URL), the limiter against Redis (TEST_REDIS_URL),
# request field extraction and the SSE relay (criterion).
bench-micro:
    cargo bench --locked -p gateway-auth --bench verify
    cargo bench --locked -p bluesminds --bench key_flood
    cargo bench --locked -p gateway-store --bench usage_writer
    cargo bench --locked -p gateway-redis --bench limiter
    cargo bench --locked -p gateway-proxy --bench hot_path
