#!/usr/bin/env bash
# `just bench-counts`: what the gateway does per request that the bare proxy does not, counted
# rather than timed (counts do not drift with the machine's speed). The gateway as in
# `just bench` and the bare proxy in front of the same mock, each under wrk at c=32 for
# BENCH_CLOSED_SECONDS (5), with `perf stat` on the syscall tracepoints and on uprobes at
# glibc's `malloc` and `realloc`; prints each count divided by the requests wrk completed.
# Needs root (uprobes) and perf (installed from Debian's `linux-perf` when missing). GW_BIN
# counts another gateway build (a before, say). Writes nothing to docs/.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench-counts
SECS=${BENCH_CLOSED_SECONDS:-5}
. scripts/bench-lib.sh

command -v perf >/dev/null 2>&1 || apt_install linux-perf
setup_mock_and_database
start_bare_proxy
start_gateway full
KEY=$(provision_key)

# Uprobes on the allocator the binaries use (removed again at exit when this script added them).
LIBC=$(ldd "$BIN/bluesminds" | awk '/libc\.so\.6/ {print $3}')
ADDED=()
for fn in malloc realloc; do
  if ! perf probe -l 2>/dev/null | grep -q "probe_libc:$fn "; then
    perf probe -q -x "$LIBC" --add "$fn" && ADDED+=("probe_libc:$fn")
  fi
done
remove_probes() { for p in "${ADDED[@]}"; do perf probe -q -d "$p" || true; done; }
trap 'remove_probes; cleanup' EXIT

SYSCALLS=$(perf list 2>/dev/null | awk '/syscalls:sys_enter_/ {print $1}' \
  | grep -E 'sys_enter_(read|write|writev|readv|recvfrom|sendto|sendmsg|recvmsg|epoll_wait|epoll_ctl|futex|sched_yield|mmap|munmap|madvise|brk|mprotect|accept4|close|getrandom|ioctl|statx|openat)$' \
  | paste -sd, -)
EVENTS="probe_libc:malloc,probe_libc:realloc,raw_syscalls:sys_enter,$SYSCALLS"

wrk_load warmup "http://$GW_ADDR/v1/chat/completions" "$KEY" -c32 -d3s
for which in bare gateway; do
  if [ "$which" = bare ]; then
    pid=$BARE_PID url="http://$BARE_ADDR/v1/chat/completions" key=""
  else
    pid=$GW_PID url="http://$GW_ADDR/v1/chat/completions" key=$KEY
  fi
  perf stat -x, -e "$EVENTS" -p "$pid" -o "$OUT/$which.perf" -- sleep $((SECS + 1)) &
  counting=$!
  wrk_load "$which" "$url" "$key" -c32 "-d${SECS}s"
  wait "$counting"
  python3 - "$OUT/$which.wrk.json" "$OUT/$which.perf" "$which" <<'PY'
import json, sys
n = json.load(open(sys.argv[1]))["requests"]
print(f"== {sys.argv[3]}: {n} requests at c=32; per request:")
for line in open(sys.argv[2]):
    f = line.strip().split(",")
    if len(f) < 3 or not f[0].replace(".", "").isdigit():
        continue
    count, event = float(f[0]), f[2]
    if count > 0:
        name = event.replace("syscalls:sys_enter_", "syscall ").replace("raw_syscalls:sys_enter", "syscalls (all)")
        print(f"  {name:28} {count / n:8.3f}")
PY
done
