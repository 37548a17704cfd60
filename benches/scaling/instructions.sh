#!/usr/bin/env bash
# User-space instructions per request of one or more ferry-server builds, counted by valgrind's
# callgrind while the first build's ferry-load drives each with the same requests. Unlike a
# rate or CPU time, the count does not move with other load on the machine, so an A/B of a
# server change is exact even on a busy shared machine. The kernel's share (system calls,
# TCP, wake-ups) is not counted: pair it with `strace -c -f -p PID` for system calls per
# request, and with a pinned timed run (benches/compare/run.sh PIN=1) on a quiet machine.
#
#   benches/scaling/instructions.sh OLD_DIR NEW_DIR        # each holds ferry-server (+ ferry-load)
#   MIX=list=1 URLPATH=dir100 REQUESTS=3000 benches/scaling/instructions.sh OLD_DIR NEW_DIR
#
# Per build and round: the server starts under callgrind, WARMUP requests fill its caches (kept
# files, listings), the counters are zeroed, REQUESTS requests run (64 connections, one in
# flight each, encrypted), the counters are dumped. Rounds interleave the builds.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] || { sed -n 2,10p "$0" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
MIX=${MIX:-fetch-small=1}
URLPATH=${URLPATH:-}
REQUESTS=${REQUESTS:-10000}
WARMUP=${WARMUP:-2000}
ROUNDS=${ROUNDS:-2}
LOAD=$1/ferry-load

work=$(mktemp -d /dev/shm/ferry-instructions.XXXXXX)
vg_pid=
cleanup() {
  if [ -n "$vg_pid" ]; then kill "$vg_pid" 2>/dev/null || true; wait "$vg_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
data=$work/data
mkdir -p "$data/dir100"
head -c 1024 /dev/urandom > "$data/small.bin"
for i in $(seq -w 1 100); do head -c 2048 /dev/urandom > "$data/dir100/file-$i.bin"; done
key=$work/key
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$key"; chmod 600 "$key"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

load() { # port requests
  "$LOAD" server "ferry://127.0.0.1:$1/$URLPATH" --key-file "$key" -c 64 --in-flight 1 \
    --mix "$MIX" --small small.bin --requests "$2" --threads 1 --json 2>>"$work/errors.log" \
    | python3 -c "import json,sys; r=json.load(sys.stdin); e=sum(r['errors'].values()); assert e==0, r['errors']"
}

count() { # dir: prints instructions per request
  local port out pid
  port=$(free_port); out=$work/callgrind
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" -q "$1/ferry-server" "$data" \
    --listen 127.0.0.1:"$port" --key-file "$key" -q >/dev/null 2>>"$work/valgrind.log" &
  vg_pid=$!; pid=$!
  for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.2; done
  load "$port" "$WARMUP"
  callgrind_control -z "$vg_pid" >/dev/null 2>&1
  load "$port" "$REQUESTS"
  callgrind_control -d "$vg_pid" >/dev/null 2>&1
  kill "$vg_pid"; wait "$vg_pid" 2>/dev/null || true; vg_pid=
  # The dump after the zeroing is the newest part file.
  local part; part=$(ls -t "$out.$pid".* 2>/dev/null | head -1)
  awk -v n="$REQUESTS" '/^summary:/ { printf "%.0f\n", $2 / n; exit }' "$part"
  rm -f "$out".*
}

for round in $(seq 1 "$ROUNDS"); do
  for dir in "$@"; do
    echo "$dir $(count "$dir")"
  done
done > "$work/results.txt"

python3 - "$work/results.txt" "$MIX" "$REQUESTS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for d, v in rows:
    by.setdefault(d, []).append(float(v))
first = statistics.median(next(iter(by.values())))
print(f"\nferry-server user-space instructions per request ({sys.argv[2]}, {sys.argv[3]} requests, callgrind)\n")
print(f"{'build':<40} {'median':>10} {'rounds':>24} {'vs first':>9}")
for d, v in by.items():
    m = statistics.median(v)
    print(f"{d:<40} {m:>10.0f} {' '.join('%.0f' % x for x in v):>24} {m / first:>9.3f}")
PY
