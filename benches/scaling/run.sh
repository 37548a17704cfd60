#!/usr/bin/env bash
# How Ferry scales with cores: the server pinned (taskset) to 1, 2, 4 and 8 cores, the load
# generator pinned to the cores left over, and for each point the rate of
#   - 1 KiB fetches (64 connections, one request in flight each),
#   - 100-entry listings (same),
#   - encrypted bulk: one fetch stream of a 32 MiB file per server core, fetched over and over, all at once,
# with the efficiency against the 1-core point: rate(n) / (n × rate(1)).
# Points that need more cores than this machine has are skipped and said so; a point that
# leaves no core for the load generator shares the server's cores (marked "shared").
# Everything runs on 127.0.0.1, data in a tmpfs (/dev/shm).
#
#   benches/scaling/run.sh                       # POINTS="1 2 4 8" SECONDS_PER_RUN=5 CONNS=64
#   POINTS="1 2" SECONDS_PER_RUN=3 benches/scaling/run.sh
#   BIN=/path/to/release benches/scaling/run.sh  # prebuilt ferry-server and ferry-load
set -euo pipefail
cd "$(dirname "$0")/../.."
POINTS=${POINTS:-"1 2 4 8"}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
CONNS=${CONNS:-64}
BULK_MB=${BULK_MB:-32}

log() { echo "[scaling] $*" >&2; }
command -v taskset >/dev/null || { echo "taskset is missing (util-linux)" >&2; exit 1; }
source benches/scaling/pin.sh

if [ -z "${BIN:-}" ]; then
  log "building release binaries"
  cargo build --release -q -p ferry-server -p ferry-bench
  BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
fi

cores=$(nproc)
work=$(mktemp -d /dev/shm/ferry-scaling.XXXXXX)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

data=$work/data
mkdir -p "$data/dir100"
head -c 1024 /dev/urandom > "$data/small.bin"
for i in $(seq -w 1 100); do head -c 2048 /dev/urandom > "$data/dir100/file-$i.bin"; done
head -c $(( BULK_MB * 1024 * 1024 )) /dev/urandom > "$data/big.bin"
key=$work/key
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$key"; chmod 600 "$key"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# load CPUS THREADS PORT URLPATH FIELD ARGS...: one ferry-load run, prints FIELD of its report.
load() {
  local cpus=$1 threads=$2 port=$3 path=$4 field=$5; shift 5
  env TOKIO_WORKER_THREADS="$threads" taskset -c "$cpus" "$BIN/ferry-load" server "ferry://127.0.0.1:$port/$path" --key-file "$key" \
    --duration "${SECONDS_PER_RUN}s" --threads "$threads" --json "$@" 2>>"$work/errors.log" \
    | python3 -c "import json,sys; r=json.load(sys.stdin); e=sum(r['errors'].values()); assert e==0, r['errors']; print('%.1f' % r['$field'])"
}

results=()
for n in $POINTS; do
  if [ "$n" -gt "$cores" ]; then
    log "skipping $n cores: this machine has $cores"
    continue
  fi
  pin_plan "$n"
  server_cpus=$PIN_SERVER_CPUS load_cpus=$PIN_LOAD_CPUS load_threads=$PIN_LOAD_THREADS note=$PIN_NOTE
  port=$(free_port)
  "${PIN_SERVER[@]}" "$BIN/ferry-server" "$data" --listen 127.0.0.1:"$port" --key-file "$key" -q \
    >/dev/null 2>>"$work/server.log" &
  server_pid=$!
  wait_port "$port"
  log "$n server core(s) on cpu $server_cpus, load on cpu $load_cpus ${note:+($note)}"
  fetch=$(load "$load_cpus" "$load_threads" "$port" "" requests_per_s -c "$CONNS" --in-flight 1 --mix fetch-small=1 --small small.bin)
  list=$(load "$load_cpus" "$load_threads" "$port" dir100 requests_per_s -c "$CONNS" --in-flight 1 --mix list=1)
  bulk=$(load "$load_cpus" "$load_threads" "$port" "" mb_per_s -c "$n" --in-flight 1 --mix fetch-large=1 --large big.bin)
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
  results+=("$n $fetch $list $bulk $note")
done

printf '%s\n' "${results[@]}" > "$work/results.txt"
python3 - "$work/results.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
if not rows:
    sys.exit("no point ran")
n0 = int(rows[0][0])
base = [float(x) for x in rows[0][1:4]]
print("\nFerry scaling: server pinned to n cores, load generator on the others (encrypted sessions)")
print("efficiency = rate(n) / (rate(%d) * n / %d)\n" % (n0, n0))
print("%5s %18s %5s %21s %5s %22s %5s  %s" % ("cores", "1 KiB fetch req/s", "eff", "100-entry list req/s", "eff", "bulk MB/s (n streams)", "eff", "note"))
for r in rows:
    n = int(r[0]); v = [float(x) for x in r[1:4]]; note = " ".join(r[4:])
    eff = [x / (b * n / n0) for x, b in zip(v, base)]
    print("%5d %18.0f %5.2f %21.0f %5.2f %22.1f %5.2f  %s" % (n, v[0], eff[0], v[1], eff[1], v[2], eff[2], note))
PY
