#!/usr/bin/env bash
# The full-stack NAT matrix of issue 12 on netlab, through the real binaries (run as root):
#   ferry-hub on `pub`; alice = `ferry-server ROOT --listen 0.0.0.0 --hub alice@HUB` behind
#   nat2 (KIND2) on peer2; bob = `ferry` behind nat1 (KIND1) on peer1, which runs
#   `ferry -v ping -c 1 ferry://alice@HUBID@HUB/` ATTEMPTS times per ordered pair of NAT kinds
#   (each a fresh process: resolve, direct hints, hub-coordinated punch, else the relay) and one
#   `ferry get` of a 1 MiB file whose bytes are compared. Per pair it prints how many attempts
#   connected, how many took a direct path (direct or punched) and by which transport, and the
#   median time to first byte (connect time plus the first pong's round trip, as `ferry ping`
#   reports them). Then the relay row: on a RATE link (default 20 Mbit/s) with symmetric NATs on
#   both sides (so the relay must carry it), the goodput of a RELAY_MB `ferry get` through the
#   hub against a plain TCP copy (nlprobe tcp-send/tcp-sink) over the same links.
#
#   ATTEMPTS=3 DELAY=20ms benches/nat/fullstack.sh            # 16 pairs, then the relay row
#   KINDS=fullcone,symmetric ATTEMPTS=5 benches/nat/fullstack.sh
#   PHASES=relay benches/nat/fullstack.sh                      # only the relay row
#
# Each pair holds `flock /tmp/netlab.lock` from up-nat to down (namespace prefix "ferrynat").
# Per-attempt lines go to stderr; the tables to stdout. BIN= picks the binaries' directory
# (default target/release, built first unless NOBUILD=1). Logs stay in $WORK (printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT_DIR=$PWD
NL=${NETLAB:-$ROOT_DIR/../shared/netlab/netlab}
PR=${NLPROBE:-$ROOT_DIR/../shared/netlab/nlprobe.py}
BIN=${BIN:-$ROOT_DIR/target/release}
ATTEMPTS=${ATTEMPTS:-3}
DELAY=${DELAY:-20ms}
KINDS=${KINDS:-fullcone,restricted,portrestricted,symmetric}
PHASES=${PHASES:-matrix,relay}
RATE=${RATE:-20mbit}
RELAY_MB=${RELAY_MB:-32}
HUB_IP=198.51.100.130
export NETLAB_PREFIX=ferrynat

if [ "${1:-}" != "--pair" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "fullstack.sh: netlab needs root; skipped" >&2
        exit 0
    fi
    if [ ! -x "$NL" ]; then
        echo "fullstack.sh: no netlab at $NL; skipped" >&2
        exit 0
    fi
    if [ "${NOBUILD:-0}" != 1 ]; then
        cargo build --release -q -p ferry-hub -p ferry-server -p ferry-cli
    fi
    WORK=${WORK:-$(mktemp -d /tmp/ferry-nat.XXXXXX)}
    export WORK BIN NL PR ATTEMPTS DELAY RATE RELAY_MB
    echo "logs in $WORK; load $(cut -d' ' -f1-3 /proc/loadavg); delay $DELAY one way"
    if [[ $PHASES == *matrix* ]]; then
        echo
        echo "| bob (dials) | alice (serves) | connected | direct | paths | median ttfb |"
        echo "|---|---|---|---|---|---|"
        IFS=, read -r -a kinds <<<"$KINDS"
        for k1 in "${kinds[@]}"; do
            for k2 in "${kinds[@]}"; do
                flock /tmp/netlab.lock "$0" --pair matrix "$k1" "$k2" ||
                    echo "| $k1 | $k2 | setup failed (see $WORK/$k1-$k2) | | | |"
            done
        done
    fi
    if [[ $PHASES == *relay* ]]; then
        echo
        # RELAY_KINDS="fullcone fullcone" measures a punched transfer the same way.
        # shellcheck disable=SC2086
        flock /tmp/netlab.lock "$0" --pair relay ${RELAY_KINDS:-symmetric symmetric} ||
            echo "relay row: setup failed (see $WORK/relay)"
    fi
    exit 0
fi

# --- One pair, under the lock: --pair MODE KIND1 KIND2 ---
mode=$2 k1=$3 k2=$4
dir=$WORK/$([ "$mode" = relay ] && echo relay || echo "$k1-$k2")
rm -rf "$dir"
mkdir -p "$dir/hub" "$dir/alice" "$dir/bob" "$dir/root"
chmod 700 "$dir/hub" "$dir/alice" "$dir/bob"
lab() { "$NL" "$@"; }
cleanup() { lab down >/dev/null 2>&1 || true; }
trap cleanup EXIT
up=(up-nat "$k1" "$k2" --delay "$DELAY")
[ "$mode" = relay ] && up+=(--rate "$RATE")
lab "${up[@]}" >"$dir/netlab.log" 2>&1

# The hub, its connect line (ferry://ID@HOST:PORT) on stdout.
lab exec pub "$BIN/ferry-hub" --listen "$HUB_IP:6790" --state "$dir/hub" -v \
    >"$dir/hub.out" 2>"$dir/hub.err" &
for _ in $(seq 100); do grep -q '^ferry://' "$dir/hub.out" 2>/dev/null && break; sleep 0.1; done
hub_url=$(grep -m1 '^ferry://' "$dir/hub.out")
hub_id=${hub_url#ferry://}
hub_id=${hub_id%%@*}
HUB="ferry://$hub_id@$HUB_IP:6790/"

# Alice registers and serves; bob is authorised by id.
bob_id=$(HOME=$dir/bob "$BIN/ferry" id 2>/dev/null | grep -oE '[a-z2-7]{34}' | head -1)
lab exec peer2 env HOME="$dir/alice" "$BIN/ferry" register "alice@$HUB" >"$dir/register.log" 2>&1
printf '%s bob\n' "$bob_id" >"$dir/alice/authorized"
chmod 600 "$dir/alice/authorized"
if [ "$mode" = relay ]; then
    head -c $((RELAY_MB << 20)) /dev/urandom >"$dir/root/file.bin"
else
    head -c $((1 << 20)) /dev/urandom >"$dir/root/file.bin"
fi
lab exec peer2 env HOME="$dir/alice" RUST_LOG=info "$BIN/ferry-server" "$dir/root" \
    --listen 0.0.0.0:6789 --identity --authorized-clients "$dir/alice/authorized" \
    --hub "alice@$HUB" >"$dir/server.out" 2>"$dir/server.err" &
for _ in $(seq 100); do grep -q 'present at the hub' "$dir/server.err" 2>/dev/null && break; sleep 0.1; done
URL="ferry://alice@$hub_id@$HUB_IP:6790/"

bob() { lab exec peer1 env HOME="$dir/bob" timeout 60 "$BIN/ferry" "$@"; }

if [ "$mode" = matrix ]; then
    ok=0 direct=0 ttfbs=() paths=()
    for i in $(seq "$ATTEMPTS"); do
        log=$dir/ping-$i
        if bob -v ping -c 1 "$URL" >"$log.out" 2>"$log.err"; then
            ok=$((ok + 1))
            path=$(grep -m1 -oE 'pong from [^,]*, (direct|relayed|punched \((tcp|quic)\))' "$log.out" |
                sed -E 's/.*, //')
            connect=$(grep -h -m1 -oE 'connected in [0-9.]+ ms' "$log.err" "$log.out" | grep -oE '[0-9][0-9.]*' | head -1)
            rtt=$(grep -m1 -oE 'time=[0-9.]+ ms' "$log.out" | grep -oE '[0-9.]+')
            ttfb=$(python3 -c "print(round($connect + $rtt))")
            ttfbs+=("$ttfb")
            paths+=("$path")
            [ "$path" != relayed ] && direct=$((direct + 1))
            echo "$k1 $k2 attempt $i: $path, ttfb ${ttfb} ms" >&2
        else
            echo "$k1 $k2 attempt $i: failed ($(tail -1 "$log.err"))" >&2
            paths+=("failed")
        fi
    done
    # One transfer per pair, compared byte for byte.
    got=ok
    if ! bob get "${URL}file.bin" "$dir/bob/file.bin" >"$dir/get.out" 2>"$dir/get.err" ||
        ! cmp -s "$dir/root/file.bin" "$dir/bob/file.bin"; then
        got="get FAILED"
    fi
    median=$(printf '%s\n' "${ttfbs[@]:-}" | grep . | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)] " ms"; else print "—"}')
    summary=$(printf '%s\n' "${paths[@]}" | sort | uniq -c | awk '{c=$1; $1=""; printf "%s%s ×%d", (NR>1?", ":""), substr($0,2), c}')
    echo "| $k1 | $k2 | $ok/$ATTEMPTS | $direct/$ATTEMPTS | $summary; 1 MiB get $got | $median |"
else
    # The relay row: symmetric NATs on both sides leave only the relay.
    start=$(date +%s.%N)
    bob -v get "${URL}file.bin" "$dir/bob/file.bin" >"$dir/get.out" 2>"$dir/get.err" || true
    end=$(date +%s.%N)
    same=no
    cmp -s "$dir/root/file.bin" "$dir/bob/file.bin" && same=yes
    path=$(grep -oE 'INFO (relayed|punched|direct) path' "$dir/get.err" | tail -1 | sed 's/INFO //' || echo "?")
    # Connect time (resolve, direct hints, punch attempt, relay set-up) is not transfer time.
    connect=$(python3 - "$dir/get.err" <<'EOF'
import re, sys
from datetime import datetime
lines = open(sys.argv[1]).read().splitlines()
stamps = [l for l in lines if re.match(r"^\S+T\S+Z", l)]
def t(l):
    return datetime.strptime(l.split()[0][:26].rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f").timestamp()
first = next((l for l in stamps), None)
relayed = next((l for l in stamps if "INFO relayed path" in l or "INFO punched path" in l), None)
print(round(t(relayed) - t(first), 3) if first and relayed else 0)
EOF
)
    # The plain TCP copy over the same two 20 Mbit/s public links: alice's side to the hub.
    lab exec pub python3 "$PR" tcp-sink --port 5001 --seconds 8 >"$dir/tcp.json" 2>"$dir/tcp.err" &
    sink=$!
    sleep 0.5
    lab exec peer2 python3 "$PR" tcp-send --to "$HUB_IP" --port 5001 --seconds 15 >/dev/null 2>&1 || true
    wait "$sink" || true
    # The same file by plain TCP, timed as the ferry get is (first byte to end of file).
    lab exec pub python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5002)); s.listen(1); s.settimeout(60)
c, _ = s.accept(); c.settimeout(60)
n, start = 0, None
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    start = start or time.monotonic()
    n += len(b)
print(n, time.monotonic() - start)
' "$HUB_IP" >"$dir/tcpcopy.out" 2>"$dir/tcpcopy.err" &
    copy=$!
    sleep 0.5
    lab exec peer2 python3 -c '
import socket, sys
c = socket.create_connection((sys.argv[1], 5002), timeout=60)
with open(sys.argv[2], "rb") as f:
    c.sendfile(f)
c.shutdown(socket.SHUT_WR)
c.recv(1)
' "$HUB_IP" "$dir/root/file.bin" >/dev/null 2>&1 || true
    wait "$copy" || true
    python3 - "$RELAY_MB" "$start" "$end" "$connect" "$dir/tcp.json" "$same" "$path" "$RATE" "$k1/$k2" "$dir/tcpcopy.out" <<'EOF'
import json, sys
mb, start, end, connect, tcp_file, same, path, rate, kinds, copy_file = sys.argv[1:]
seconds = float(end) - float(start) - float(connect)
relay = int(mb) * 8 * 2**20 / seconds
tcp = json.load(open(tcp_file))
tcp_bps = next(v for k, v in tcp.items() if "bps" in k or "goodput" in k) if isinstance(tcp, dict) else float(tcp)
tcp_bps = float(tcp_bps)
try:
    copied, copy_s = open(copy_file).read().split()
    copy_bps = int(copied) * 8 / float(copy_s)
    copy = f"{copy_bps / 1e6:.2f} Mbit/s | {relay / copy_bps:.2f}"
except Exception:
    copy = "— | —"
print(f"| link | path | bytes | ferry goodput | TCP, steady state | ratio | TCP, same file timed alike | ratio | byte-identical |")
print(f"|---|---|---|---|---|---|---|---|---|")
print(f"| {rate}, {kinds} | {path} | {mb} MiB in {seconds:.1f} s (+{float(connect):.2f} s connect) | "
      f"{relay / 1e6:.2f} Mbit/s | {tcp_bps / 1e6:.2f} Mbit/s | {relay / tcp_bps:.2f} | {copy} | {same} |")
EOF
fi
