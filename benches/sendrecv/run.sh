#!/usr/bin/env bash
# Send/receive across two NATs (issue 12, item 2) on netlab, through the real binaries (root):
#   ferry-hub on `pub`; alice = `ferry receive alice@HUB` behind nat2 (KIND2) on peer2, with bob
#   in her authorized_clients; bob = `ferry send FILE alice@HUB` behind nat1 (KIND1) on peer1.
#   The default pair, symmetric against port-restricted, leaves only the hub's relay. Bob's
#   first send is killed (SIGKILL) once alice holds KILL_AT_MIB of the file; the second send
#   resumes it. Prints the path, each run's bytes and time, where the resume started, and
#   whether alice's file is byte-identical, as one table.
#
#   benches/sendrecv/run.sh                                   # 64 MiB, 20 Mbit/s links, RTT 40 ms
#   KIND1=fullcone KIND2=fullcone benches/sendrecv/run.sh     # a punched path instead
#   SIZE_MIB=16 KILL_AT_MIB=4 RATE=50mbit benches/sendrecv/run.sh
#
# Holds `flock /tmp/netlab.lock` from up-nat to down (namespace prefix "sendrecv"). BIN= picks
# the binaries' directory (default target/release, built first unless NOBUILD=1). Logs stay in
# $WORK (printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT_DIR=$PWD
NL=${NETLAB:-$ROOT_DIR/../shared/netlab/netlab}
BIN=${BIN:-$ROOT_DIR/target/release}
KIND1=${KIND1:-symmetric}
KIND2=${KIND2:-portrestricted}
SIZE_MIB=${SIZE_MIB:-64}
KILL_AT_MIB=${KILL_AT_MIB:-24}
RATE=${RATE:-20mbit}
DELAY=${DELAY:-20ms}
HUB_IP=198.51.100.130
export NETLAB_PREFIX=sendrecv

if [ "${1:-}" != "--locked" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "sendrecv/run.sh: netlab needs root; skipped" >&2
        exit 0
    fi
    if [ ! -x "$NL" ]; then
        echo "sendrecv/run.sh: no netlab at $NL; skipped" >&2
        exit 0
    fi
    if [ "${NOBUILD:-0}" != 1 ]; then
        cargo build --release -q -p ferry-hub -p ferry-cli
    fi
    WORK=${WORK:-$(mktemp -d /tmp/ferry-sendrecv.XXXXXX)}
    export WORK BIN NL KIND1 KIND2 SIZE_MIB KILL_AT_MIB RATE DELAY
    echo "logs in $WORK; load $(cut -d' ' -f1-3 /proc/loadavg); $RATE public links, $DELAY one way"
    exec flock /tmp/netlab.lock "$0" --locked
fi

# --- Under the lock ---
dir=$WORK
mkdir -p "$dir/hub" "$dir/alice" "$dir/bob" "$dir/in"
chmod 700 "$dir/hub" "$dir/alice" "$dir/bob"
lab() { "$NL" "$@"; }
cleanup() { lab down >/dev/null 2>&1 || true; }
trap cleanup EXIT
lab up-nat "$KIND1" "$KIND2" --rate "$RATE" --delay "$DELAY" >"$dir/netlab.log" 2>&1

# The hub, its connect line (ferry://ID@HOST:PORT) on stdout.
lab exec pub "$BIN/ferry-hub" --listen "$HUB_IP:6790" --state "$dir/hub" -v \
    >"$dir/hub.out" 2>"$dir/hub.err" &
for _ in $(seq 100); do grep -q '^ferry://' "$dir/hub.out" 2>/dev/null && break; sleep 0.1; done
hub_url=$(grep -m1 '^ferry://' "$dir/hub.out")
hub_id=${hub_url#ferry://}
hub_id=${hub_id%%@*}
AT="alice@ferry://$hub_id@$HUB_IP:6790/"

# Alice registers, authorises bob's id, and waits.
bob_id=$(HOME=$dir/bob "$BIN/ferry" id 2>/dev/null | grep -oE '[a-z2-7]{34}' | head -1)
lab exec peer2 env HOME="$dir/alice" "$BIN/ferry" register "$AT" >"$dir/register.log" 2>&1
mkdir -p "$dir/alice/.config/ferry"
printf '%s bob\n' "$bob_id" >"$dir/alice/.config/ferry/authorized_clients"
chmod 600 "$dir/alice/.config/ferry/authorized_clients"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$dir/bob/file.bin"
lab exec peer2 env HOME="$dir/alice" "$BIN/ferry" -v receive "$AT" -o "$dir/in" </dev/null \
    >"$dir/receive.out" 2>"$dir/receive.err" &
receiver=$!
for _ in $(seq 200); do grep -q 'waiting for an offer' "$dir/receive.err" 2>/dev/null && break; sleep 0.1; done

part() { find "$dir/in" -name '.*ferry-up-*' -printf '%s\n' 2>/dev/null | head -1; }
send() { lab exec peer1 env HOME="$dir/bob" "$BIN/ferry" -v send "$dir/bob/file.bin" "$AT"; }

# First run, killed once alice holds KILL_AT_MIB.
t0=$(date +%s.%N)
# netlab exec replaces itself with the command, so $! is ferry's own pid (not a subshell's).
"$NL" exec peer1 env HOME="$dir/bob" "$BIN/ferry" -v send "$dir/bob/file.bin" "$AT" \
    >"$dir/send1.out" 2>"$dir/send1.err" &
sender=$!
while kill -0 "$sender" 2>/dev/null; do
    held=$(part)
    [ -n "$held" ] && [ "$held" -ge $((KILL_AT_MIB << 20)) ] && break
    sleep 0.05
done
kill -9 "$sender" 2>/dev/null || true
wait "$sender" 2>/dev/null || true
t1=$(date +%s.%N)
for _ in $(seq 200); do grep -q 'waiting for it to send again' "$dir/receive.err" && break; sleep 0.1; done
kept=$(part)

# Second run: resumes.
t2=$(date +%s.%N)
send >"$dir/send2.out" 2>"$dir/send2.err" || echo "second send failed: $(tail -1 "$dir/send2.err")"
t3=$(date +%s.%N)
for _ in $(seq 300); do kill -0 "$receiver" 2>/dev/null || break; sleep 0.1; done
same=no
cmp -s "$dir/bob/file.bin" "$dir/in/file.bin" && same=yes
route1=$(grep -oE 'route=[a-z]+( \((tcp|quic)\))?' "$dir/send1.err" | tail -1 | sed 's/route=//')
route2=$(grep -oE 'route=[a-z]+( \((tcp|quic)\))?' "$dir/send2.err" | tail -1 | sed 's/route=//')
line=$(grep -m1 '^received ' "$dir/receive.out" || echo "no receipt")
python3 - "$SIZE_MIB" "$kept" "$t0" "$t1" "$t2" "$t3" "$same" "$route1" "$route2" "$RATE" "$KIND1/$KIND2" "$line" <<'PY'
import sys
mib, kept, t0, t1, t2, t3, same, r1, r2, rate, kinds, line = sys.argv[1:]
size = int(mib) << 20
kept = int(kept or 0)
first, second = float(t1) - float(t0), float(t3) - float(t2)
rest = size - kept
print("| NATs (bob / alice) | link | path | first send (killed) | second send (resumed) | second run goodput | byte-identical |")
print("|---|---|---|---|---|---|---|")
print(f"| {kinds} | {rate}, RTT 2x delay | {r1} / {r2} | {kept / 2**20:.1f} MiB kept after {first:.1f} s | "
      f"{rest / 2**20:.1f} MiB from byte {kept} in {second:.1f} s | {rest * 8 / second / 1e6:.2f} Mbit/s | {same} |")
print(f"receiver: {line}")
PY
