#!/usr/bin/env bash
# Ferry beside the tools users would pick instead, measured side by side in one run on this
# machine (everything on 127.0.0.1; outputs written into a tmpfs):
#   - a 1 GiB fetch: ferry get (encrypted with the default suite, AES-256-GCM; with CBC+HMAC;
#     plaintext) vs scp (default cipher, aes128-gcm), sftp, rsync over ssh, curl from nginx;
#     and the same file uploaded: ferry put (encrypted) vs scp (default cipher);
#   - many small requests: ferry-load vs wrk on nginx, a 1 KiB file and a 100-entry listing,
#     same connection count and duration, one request in flight per connection (ferry-load
#     opens every record and checks every list entry but builds no entry values, as wrk
#     counts nginx's HTML without parsing it), with each tool's p99 latency beside its rate;
#     each rate row also gets the server process's CPU time per request (user + system), which
#     separates the server's cost from the load generator's on the same cores, and the load
#     generator's own (ferry-load or wrk, from /usr/bin/time);
#   - ceilings: iperf3 over loopback, and a tmpfs-to-tmpfs copy.
# Every case gets a warm-up run; runs are interleaved across tools (memory and loopback figures
# move ±15% between separate runs); medians of RUNS runs are printed with min–max.
#
#   benches/compare/run.sh                    # RUNS=3 SIZE_MB=1024 CONNS=64 SECONDS_PER_RUN=10
#   RUNS=5 SIZE_MB=256 benches/compare/run.sh
#   CASES=rates benches/compare/run.sh        # only the request-rate rows (no 1 GiB fetches)
#   BASE_BIN=/saved/release benches/compare/run.sh   # also a baseline ferry-server/ferry-load
#                                             # (e.g. a build from before a change), interleaved
#   BIN=/prebuilt/release benches/compare/run.sh     # use these binaries instead of building
#   PIN=1 CASES=rates benches/compare/run.sh  # pinned: every server on cpu 0 (nginx with one
#                                             # worker, ferry-server with a one-thread runtime),
#                                             # every client and load generator on the cores after
#                                             # it (the scaling script's 1-core point)
#
# Unpinned (the default), server and load generator share every core, so on a 2-core machine
# a rate row measures the scheduler's placement as much as either program (runs spread 3x);
# pinned, each row measures one server core against a load generator that has its own.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
SIZE_MB=${SIZE_MB:-1024}
CONNS=${CONNS:-64}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CASES=${CASES:-all}
BASE_BIN=${BASE_BIN:-}
PIN=${PIN:-0}

log() { echo "[compare] $*" >&2; }

need=()
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v rsync >/dev/null || need+=(rsync)
command -v curl >/dev/null || need+=(curl)
command -v wrk >/dev/null || need+=(wrk)
command -v iperf3 >/dev/null || need+=(iperf3)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  if [ "$(id -u)" != 0 ]; then echo "run as root to install: ${need[*]}" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts the packaged daemons; this script runs its own on private ports.
  service nginx stop >/dev/null 2>&1 || true
fi

if [ -z "${BIN:-}" ]; then
  log "building release binaries"
  cargo build --release -q -p ferry-server -p ferry-cli -p ferry-bench
  BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
fi

# SERVE and LOAD prefix every server and every client command: empty unpinned.
SERVE=() LOAD=() LOAD_THREADS=2 NGINX_WORKERS=auto
if [ "$PIN" = 1 ]; then
  command -v taskset >/dev/null || { echo "taskset is missing (util-linux)" >&2; exit 1; }
  source benches/scaling/pin.sh
  pin_plan 1
  [ -z "$PIN_NOTE" ] || { echo "PIN=1 needs at least 2 cores" >&2; exit 1; }
  SERVE=("${PIN_SERVER[@]}") LOAD=("${PIN_LOAD[@]}")
  LOAD_THREADS=$PIN_LOAD_THREADS NGINX_WORKERS=$PIN_SERVER_THREADS
  log "pinned: servers on cpu $PIN_SERVER_CPUS, clients on cpu $PIN_LOAD_CPUS ($LOAD_THREADS threads)"
fi

work=$(mktemp -d /tmp/ferry-compare.XXXXXX)
base=$work/tmpfs
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  umount "$work/tmpfs" 2>/dev/null || true
  rm -rf "$work" "$base"
}
trap cleanup EXIT INT TERM

mkdir -p "$base"
if [ "$(id -u)" = 0 ]; then
  mount -t tmpfs -o size=$(( SIZE_MB * 3 + 512 ))m tmpfs "$base"
else
  # Without root, /dev/shm is the tmpfs at hand.
  base=$(mktemp -d /dev/shm/ferry-compare.XXXXXX)
fi
data=$base/data; out=$base/out
mkdir -p "$data/dir100" "$data/up" "$out"
# nginx's workers run as an unprivileged user and must reach the data.
chmod 755 "$work" "$base" "$data" "$data/dir100"
log "making test data: $([ "$CASES" = all ] && echo "${SIZE_MB} MiB file, ")1 KiB file, 100-entry directory"
if [ "$CASES" = all ]; then head -c $(( SIZE_MB * 1024 * 1024 )) /dev/urandom > "$data/big.bin"; fi
head -c 1024 /dev/urandom > "$data/small.bin"
for i in $(seq -w 1 100); do head -c 2048 /dev/urandom > "$data/dir100/file-$i.bin"; done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# --- ferry-server
FERRY_PORT=$(free_port)
key=$work/ferry.key
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$key"; chmod 600 "$key"
"${SERVE[@]}" "$BIN/ferry-server" "$data" --listen 127.0.0.1:"$FERRY_PORT" --key-file "$key" --plaintext --allow-upload -q >/dev/null 2>"$work/ferry-server.log" &
pids+=($!)
FERRY_PID=$!
if [ -n "$BASE_BIN" ]; then
  BASE_PORT=$(free_port)
  "${SERVE[@]}" "$BASE_BIN/ferry-server" "$data" --listen 127.0.0.1:"$BASE_PORT" --key-file "$key" --plaintext -q >/dev/null 2>"$work/ferry-base.log" &
  pids+=($!)
  BASE_PID=$!
fi

# --- sshd for scp, sftp and rsync
SSH_PORT=$(free_port)
mkdir -p "$work/ssh" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/id"
cp "$work/ssh/id.pub" "$work/ssh/authorized_keys"
cat > "$work/ssh/sshd_config" <<CONF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $work/ssh/host_key
PidFile $work/ssh/sshd.pid
AuthorizedKeysFile $work/ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
CONF
"${SERVE[@]}" /usr/sbin/sshd -D -e -f "$work/ssh/sshd_config" 2>"$work/sshd.log" &
pids+=($!)
SSHD_PID=$!
SSH_OPTS=(-i "$work/ssh/id" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes)
user=$(id -un)

# --- nginx
HTTP_PORT=$(free_port)
mkdir -p "$work/nginx/tmp"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes $NGINX_WORKERS;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000000;
  default_type application/octet-stream;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  server { listen 127.0.0.1:$HTTP_PORT; root $data; autoindex on; }
}
CONF
"${SERVE[@]}" /usr/sbin/nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!)
NGINX_PID=$!

# --- iperf3
IPERF_PORT=$(free_port)
"${SERVE[@]}" iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >/dev/null 2>&1 &
pids+=($!)

for p in "$FERRY_PORT" "$SSH_PORT" "$HTTP_PORT" "$IPERF_PORT" ${BASE_PORT:-}; do wait_port "$p"; done
log "servers up: ferry :$FERRY_PORT, sshd :$SSH_PORT, nginx :$HTTP_PORT, iperf3 :$IPERF_PORT"

results=$work/results.csv
: > "$results"
now() { date +%s.%N; }

# One timed fetch: name, output file, command... Records MB/s (10^6 bytes per second).
# Server CPU time (user + system, in clock ticks, with reaped children's) of a process and its
# direct children:
# the request rate alone mixes the server's cost with the load generator's on the same cores
# (ferry-load opens and checks every record; wrk parses no body), so each rate row also gets
# the server's CPU microseconds per request.
server_ticks() { # pid...: the sum over these processes and their direct children
  local total=0 p
  for p in "$@" $(pgrep -P "$1" 2>/dev/null || true); do
    [ -r "/proc/$p/stat" ] || continue
    total=$(( total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat") ))
  done
  echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)
cpu_per_request() { # name, ticks before, ticks after, req/s
  python3 -c "print('$1 server CPU,us/req,%.2f' % (($3 - $2) / $CLK_TCK * 1e6 / ($4 * $SECONDS_PER_RUN)))" >> "$results"
}
# The load generator's CPU per request (user + system from /usr/bin/time): on 2 shared cores
# every microsecond it spends is one the server does not get, so this row says how much of the
# rate gap is the generator's (ferry-load opens, authenticates and digests every answer).
client_cpu_per_request() { # name, req/s
  python3 -c "
u, s = map(float, open('$work/load-time.txt').read().split()[-2:])
print('$1 client CPU,us/req,%.2f' % ((u + s) * 1e6 / ($2 * $SECONDS_PER_RUN)))" >> "$results"
}

# Besides MB/s, a fetch from a server records the CPU both ends spent per GB (the client's from
# /usr/bin/time, the server's from /proc, with the children it has reaped: sshd forks per
# session): on 2 shared cores a loopback fetch is CPU-bound, so this says where the rate goes.
fetch() { # name, output file, server pid ("" for none), command...
  local name=$1 dest=$2 server=$3; shift 3
  rm -f "$dest" "$dest.part"
  local t0 t1 before=0
  [ -n "$server" ] && before=$(server_ticks "$server")
  t0=$(now)
  "${LOAD[@]}" /usr/bin/time -f "%U %S" -o "$work/time.txt" "$@" >/dev/null 2>>"$work/errors.log" \
    || { echo "$name failed, see $work/errors.log" >&2; tail -5 "$work/errors.log" >&2; exit 1; }
  t1=$(now)
  local size; size=$(stat -c %s "$dest")
  [ "$size" = "$(stat -c %s "$data/big.bin")" ] || { echo "$name wrote $size bytes" >&2; exit 1; }
  python3 -c "print('$name,MB/s,%.1f' % ($size / ($t1 - $t0) / 1e6))" >> "$results"
  if [ -n "$server" ]; then
    # sshd reaps the session child a moment after scp exits.
    sleep 0.2
    local client; client=$(tail -1 "$work/time.txt")
    python3 -c "
u, s = map(float, '$client'.split())
srv = ($(server_ticks "$server") - $before) / $CLK_TCK
print('$name CPU,ms/GB,%.0f' % ((u + s + srv) * 1e3 / ($size / 1e9)))" >> "$results"
  fi
  rm -f "$dest"
}

ferry_get=("$BIN/ferry" get --no-progress --force --key-file "$key")
run_fetches() {
  fetch "ferry get (encrypted)" "$out/ferry.bin" "$FERRY_PID" "${ferry_get[@]}" "ferry://127.0.0.1:$FERRY_PORT/big.bin" "$out/ferry.bin"
  fetch "ferry get (CBC+HMAC)" "$out/ferryc.bin" "$FERRY_PID" "${ferry_get[@]}" --suite cbc-hmac "ferry://127.0.0.1:$FERRY_PORT/big.bin" "$out/ferryc.bin"
  fetch "ferry get (plaintext)" "$out/ferryp.bin" "$FERRY_PID" "${ferry_get[@]}" --plaintext "ferry://127.0.0.1:$FERRY_PORT/big.bin" "$out/ferryp.bin"
  fetch "scp (default cipher)" "$out/scp.bin" "$SSHD_PID" scp -q -P "$SSH_PORT" "${SSH_OPTS[@]}" "$user@127.0.0.1:$data/big.bin" "$out/scp.bin"
  fetch "scp (aes128-gcm)" "$out/scpg.bin" "$SSHD_PID" scp -q -c aes128-gcm@openssh.com -P "$SSH_PORT" "${SSH_OPTS[@]}" "$user@127.0.0.1:$data/big.bin" "$out/scpg.bin"
  fetch "sftp" "$out/sftp.bin" "$SSHD_PID" sftp -q -P "$SSH_PORT" "${SSH_OPTS[@]}" -b <(echo "get $data/big.bin $out/sftp.bin") "$user@127.0.0.1"
  fetch "rsync (over ssh)" "$out/rsync.bin" "$SSHD_PID" rsync -q -e "ssh -p $SSH_PORT ${SSH_OPTS[*]}" "$user@127.0.0.1:$data/big.bin" "$out/rsync.bin"
  # Uploads: the same file the other way, into the server's tree and sshd's.
  fetch "ferry put (encrypted)" "$data/up/big.bin" "$FERRY_PID" "$BIN/ferry" put --no-progress --force --key-file "$key" "$data/big.bin" "ferry://127.0.0.1:$FERRY_PORT/up/big.bin"
  fetch "scp upload (default cipher)" "$out/scpup.bin" "$SSHD_PID" scp -q -P "$SSH_PORT" "${SSH_OPTS[@]}" "$data/big.bin" "$user@127.0.0.1:$out/scpup.bin"
  fetch "curl from nginx" "$out/curl.bin" "$NGINX_PID" curl -fsS -o "$out/curl.bin" "http://127.0.0.1:$HTTP_PORT/big.bin"
  fetch "tmpfs copy (ceiling)" "$out/cp.bin" "" cp "$data/big.bin" "$out/cp.bin"
  "${LOAD[@]}" iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t 3 -J 2>>"$work/errors.log" \
    | python3 -c 'import json,sys; print("iperf3 loopback (ceiling),MB/s,%.1f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8e6))' >> "$results"
}

load_rate() { # name, url path, mix[, bin dir, port, server pid]
  local before rate; before=$(server_ticks "${6:-$FERRY_PID}")
  "${LOAD[@]}" /usr/bin/time -f "%U %S" -o "$work/load-time.txt" \
    "${4:-$BIN}/ferry-load" server "ferry://127.0.0.1:${5:-$FERRY_PORT}/$2" --key-file "$key" -c "$CONNS" --in-flight 1 \
    --mix "$3" --small small.bin --duration "${SECONDS_PER_RUN}s" --threads "$LOAD_THREADS" --json 2>>"$work/errors.log" \
    | python3 -c "import json,sys; r=json.load(sys.stdin); e=sum(r['errors'].values()); assert e==0, r['errors']; print('$1,req/s,%.0f' % r['requests_per_s']); print('$1 p99,us,%.0f' % r['latency_us']['p99'])" >> "$results"
  rate=$(grep "^$1,req/s," "$results" | tail -1 | cut -d, -f3)
  cpu_per_request "$1" "$before" "$(server_ticks "${6:-$FERRY_PID}")" "$rate"
  client_cpu_per_request "$1" "$rate"
}
wrk_rate() { # name, url
  local before rate; before=$(server_ticks "$NGINX_PID")
  "${LOAD[@]}" /usr/bin/time -f "%U %S" -o "$work/load-time.txt" wrk -t"$LOAD_THREADS" -c"$CONNS" -d"${SECONDS_PER_RUN}s" --latency "$2" 2>>"$work/errors.log" \
    | python3 -c "
import sys, re
t = sys.stdin.read()
m = re.search(r'Requests/sec:\s*([0-9.]+)', t)
assert m and 'Non-2xx' not in t, t
print('$1,req/s,%.0f' % float(m.group(1)))
p = re.search(r'99%\s+([0-9.]+)(us|ms|s)\b', t)
if p:
    print('$1 p99,us,%.0f' % (float(p.group(1)) * {'us': 1, 'ms': 1e3, 's': 1e6}[p.group(2)]))
" >> "$results"
  rate=$(grep "^$1,req/s," "$results" | tail -1 | cut -d, -f3)
  cpu_per_request "$1" "$before" "$(server_ticks "$NGINX_PID")" "$rate"
  client_cpu_per_request "$1" "$rate"
}
run_rates() {
  load_rate "ferry-load 1 KiB fetch" "" "fetch-small=1"
  wrk_rate "wrk+nginx 1 KiB" "http://127.0.0.1:$HTTP_PORT/small.bin"
  load_rate "ferry-load list 100" "dir100" "list=1"
  wrk_rate "wrk+nginx autoindex 100" "http://127.0.0.1:$HTTP_PORT/dir100/"
  if [ -n "$BASE_BIN" ]; then
    load_rate "ferry-load 1 KiB (base)" "" "fetch-small=1" "$BASE_BIN" "$BASE_PORT" "$BASE_PID"
    load_rate "ferry-load list 100 (base)" "dir100" "list=1" "$BASE_BIN" "$BASE_PORT" "$BASE_PID"
  fi
}

run_round() { if [ "$CASES" = all ]; then run_fetches; fi; run_rates; }
log "warm-up round"
run_round
: > "$results"
for round in $(seq 1 "$RUNS"); do
  log "round $round of $RUNS"
  run_round
done

mode="unpinned: servers and clients share all $(nproc) cores"
[ "$PIN" = 1 ] && mode="pinned: servers on cpu $PIN_SERVER_CPUS, clients on cpu $PIN_LOAD_CPUS"
python3 - "$results" "$RUNS" "$CONNS" "$mode" <<'PY'
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
runs, conns, mode = sys.argv[2], sys.argv[3], sys.argv[4]
by = {}
for name, unit, value in rows:
    by.setdefault(name, (unit, []))[1].append(float(value))
med = {k: statistics.median(v) for k, (_, v) in by.items()}
print(f"\nFerry vs the alternatives — medians of {runs} interleaved runs, min–max in brackets, {conns} connections for request rates; {mode}\n")
print(f"{'case':<36} {'median':>12} {'unit':<6} {'min–max':>22}")
for name, (unit, values) in by.items():
    print(f"{name:<36} {med[name]:>12.1f} {unit:<6} {f'[{min(values):.1f}–{max(values):.1f}]':>22}")
# (candidate, baseline, target): a target of None is a comparison without a goal; "ceiling"
# rows say how close Ferry comes to what the machine can do at all.
targets = [
    ("ferry get (encrypted)", "scp (default cipher)", 2.0),
    ("ferry get (encrypted)", "scp (aes128-gcm)", 1.0),
    ("ferry get (encrypted)", "sftp", None),
    ("ferry get (encrypted)", "rsync (over ssh)", None),
    ("ferry get (encrypted)", "curl from nginx", 1.0),
    ("ferry get (CBC+HMAC)", "scp (default cipher)", None),
    ("ferry get (plaintext)", "curl from nginx", 1.3),
    ("ferry get (plaintext)", "iperf3 loopback (ceiling)", 0.8),
    ("ferry get (plaintext)", "tmpfs copy (ceiling)", "ceiling"),
    ("ferry put (encrypted)", "scp upload (default cipher)", None),
    # CPU both ends spent per GB: the alternative's over Ferry's, so above 1.0 means Ferry spent less.
    ("curl from nginx CPU", "ferry get (encrypted) CPU", None),
    ("scp (aes128-gcm) CPU", "ferry get (encrypted) CPU", None),
    ("curl from nginx CPU", "ferry get (plaintext) CPU", None),
    ("ferry-load 1 KiB fetch", "wrk+nginx 1 KiB", 1.0),
    ("ferry-load list 100", "wrk+nginx autoindex 100", 2.0),
    ("ferry-load 1 KiB (base)", "wrk+nginx 1 KiB", None),
    ("ferry-load list 100 (base)", "wrk+nginx autoindex 100", None),
    ("ferry-load 1 KiB fetch", "ferry-load 1 KiB (base)", None),
    ("ferry-load list 100", "ferry-load list 100 (base)", None),
    # Latency: nginx's p99 over Ferry's, so 1.0 or more means Ferry's p99 is no worse.
    ("wrk+nginx 1 KiB p99", "ferry-load 1 KiB fetch p99", 1.0),
    # Server CPU per request: nginx's over Ferry's, so above 1.0 means the Ferry server spends
    # less CPU on a request (encrypted and hashed) than nginx does on a plaintext one.
    ("wrk+nginx 1 KiB server CPU", "ferry-load 1 KiB fetch server CPU", None),
    ("wrk+nginx autoindex 100 server CPU", "ferry-load list 100 server CPU", None),
    # Load generator CPU per request: wrk's over ferry-load's, so below 1.0 means ferry-load
    # (which checks every answer) costs more per request than wrk (which parses no body).
    ("wrk+nginx 1 KiB client CPU", "ferry-load 1 KiB fetch client CPU", None),
    ("ferry-load 1 KiB (base) client CPU", "ferry-load 1 KiB fetch client CPU", None),
]
print(f"\n{'ratio':<72} {'value':>7} {'target':>7}  verdict")
for a, b, target in targets:
    if a in med and b in med and med[b] > 0:
        r = med[a] / med[b]
        if target == "ceiling":
            t, verdict = "-", "(share of the ceiling)"
        elif target is None:
            t, verdict = "-", "(no target)"
        else:
            t, verdict = f"{target:.1f}", "meets" if r >= target else "BELOW"
        print(f"{a + ' / ' + b:<72} {r:>7.2f} {t:>7}  {verdict}")
PY
