#!/usr/bin/env bash
# Fleet update benchmark on netlab (run as root, under `flock /tmp/netlab.lock`):
#   one publisher (h1) and N followers (h2..h(N+1), default 20) on a switch where every link is
#   shaped to RATE both ways (default 20mbit); a SIZE_MIB (64) release of random data.
#
# Phase "main": the followers start and learn of each other (each is given h2 and its
# predecessor as --peer), then `ferry-peer publish` (told h2..h4 only) releases version 1.
# Printed: the time from starting `publish` until every follower's apply hook has run, against
# the fluid bound T* = max(F/u_pub, F/d, N*F/(u_pub + N*u)) with u the TCP payload rate of RATE;
# the publisher's upload (bytes out of h1's interface, frames included) against the release;
# the time from `publish` to the first follower starting its download (its log line).
#
# Phase "faults" (on the same fleet, version 2, new data):
#   - the last follower is stopped before the publish and started again once every other
#     follower has applied: the time from its start until it accepts the record (target: one
#     gossip interval, 2 s) and until it has applied it;
#   - one follower is killed (SIGKILL) when a quarter of the release has reached it and
#     restarted a second later; it must finish;
#   - the publisher is killed (SIGKILL) as soon as 1.2 x the release has left its interface;
#     every follower must still apply version 2.
# Every follower's copy is compared with the release at the end of each phase.
#
#   flock /tmp/netlab.lock env BIN=/tmp/fleetbin benches/fleet/run.sh
#   N=20 RATE=20mbit SIZE_MIB=64 PHASES="main faults" LEAVE_AT=1.2 (the defaults)
#   LEAVE_AT=0 ...   the publisher stays: the killed and the offline follower alone
#
# Needs a release ferry-peer in $BIN (default ./target/release): cargo build --release -p ferry-p2p
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/lib/neighbours.sh
NL=${NETLAB:-$PWD/../shared/netlab/netlab}
N=${N:-20}
RATE=${RATE:-20mbit}
SIZE_MIB=${SIZE_MIB:-64}
PHASES=${PHASES:-"main faults"}
LEAVE_AT=${LEAVE_AT:-1.2}   # the publisher is killed once this many releases have left it; 0: never
STUCK_S=${STUCK_S:-120}     # how long the followers get to finish after the publisher left
BIN=${BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release}
PEER=$BIN/ferry-peer
export NETLAB_PREFIX=${NETLAB_PREFIX:-fleetbench}
# Timestamps on the follower's own log lines ("download started", "release accepted").
export RUST_LOG=${RUST_LOG:-warn,ferry_p2p::fleet=info}
[ -x "$PEER" ] || { echo "missing $PEER" >&2; exit 2; }
[ "$N" -ge 4 ] && [ "$N" -le 99 ] || { echo "N must be 4..99" >&2; exit 2; }

WORK=$(mktemp -d /tmp/ferry-fleet-bench.XXXXXX)
KEEP=${KEEP:-0}   # 1: keep $WORK (logs of every follower) and say where
declare -A FPID=()
PUB=
cleanup() {
    for p in "${FPID[@]}" $PUB; do kill -9 "$p" 2>/dev/null || true; done
    "$NL" down swarm >/dev/null 2>&1 || true
    restore_neighbours
    if [ "$KEEP" = 1 ]; then rm -rf "$WORK"/rel* "$WORK"/f*/versions; echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
ip_of() { echo "198.51.100.$1"; }
# Interface counters of the namespace a process runs in (no extra process in the lab).
tx_of() { sed -n 's/^ *eth0: *//p' "/proc/$1/net/dev" | awk '{ print $9 }'; }
rx_of() { sed -n 's/^ *eth0: *//p' "/proc/$1/net/dev" | awk '{ print $1 }'; }
# The first log line matching $2 in file $1, as seconds since the epoch.
log_time() {
    local line; line=$(grep -m1 -- "$2" "$1" 2>/dev/null) || return 1
    date -d "$(echo "$line" | awk '{ print $1 }')" +%s.%N
}
applied() { [ -s "$WORK/applied/h$1.v$2" ]; }
# Waits until process $1 is ferry-peer itself (netlab's exec chain has replaced itself), so
# that /proc/$1/net/dev is the lab host's, not the machine's.
wait_exec() {
    local want; want=$(readlink -f "$PEER")
    for _ in $(seq 200); do [ "$(readlink "/proc/$1/exe" 2>/dev/null)" = "$want" ] && return 0; sleep 0.01; done
    echo "process $1 did not become ferry-peer" >&2; return 1
}
# Waits until every follower in "$2" has applied version $1 (bounded by $3 seconds).
wait_applied() {
    local v=$1 hosts=$2 deadline=$(( $(date +%s) + $3 ))
    while :; do
        local done=1
        for i in $hosts; do applied "$i" "$v" || { done=0; break; }; done
        [ $done = 1 ] && return 0
        if [ "$(date +%s)" -gt "$deadline" ]; then
            echo "timeout: not applied v$v:" >&2
            for i in $hosts; do applied "$i" "$v" || { echo "  h$i: $(tail -n 3 "$WORK/f$i.err" | tr '\n' ' ')" >&2; }; done
            return 1
        fi
        sleep 0.1
    done
}

FOLLOWERS=$(seq 2 $((N + 1)))
# The lab's kernel-wide ARP table must hold a full mesh (benches/lib/neighbours.sh).
raise_neighbours $((N + 1))
"$NL" up-swarm $((N + 1)) "$RATE" >/dev/null
mkdir -p "$WORK/ch" "$WORK/applied"
CH=$("$PEER" channel new bench --channel-dir "$WORK/ch" 2>/dev/null)

start_follower() {
    local i=$1 prev=$(( $1 > 2 ? $1 - 1 : $N + 1 ))
    "$NL" exec "h$i" "$PEER" follow "$CH" --dir "$WORK/f$i" --name "h$i" \
        --gossip-listen "$(ip_of "$i"):7070" --listen "$(ip_of "$i"):7000" \
        --peer "$(ip_of 2):7070" --peer "$(ip_of "$prev"):7070" \
        --apply "date +%s.%N > $WORK/applied/h$i.v\$FERRY_VERSION" \
        >>"$WORK/f$i.out" 2>>"$WORK/f$i.err" &
    FPID[$i]=$!
    wait_exec "${FPID[$i]}"
}
start_publisher() {
    "$NL" exec h1 "$PEER" publish "$WORK/rel$1/app" --channel bench --channel-dir "$WORK/ch" \
        --gossip-listen "$(ip_of 1):7071" --listen "$(ip_of 1):7000" \
        --peer "$(ip_of 2):7070" --peer "$(ip_of 3):7070" --peer "$(ip_of 4):7070" \
        >"$WORK/pub$1.out" 2>"$WORK/pub$1.err" &
    PUB=$!
    wait_exec "$PUB"
}
make_release() {
    mkdir -p "$WORK/rel$1/app"
    head -c "${SIZE_MIB}M" /dev/urandom > "$WORK/rel$1/app/data.bin"
}
check_copies() {
    for i in $2; do
        cmp -s "$WORK/rel$1/app/data.bin" "$WORK/f$i/current/data.bin" || { echo "h$i: copy of v$1 differs" >&2; exit 4; }
    done
}
# first / median / last apply time after $2 of the followers in "$3" for version $1
spread() {
    for i in $3; do cat "$WORK/applied/h$i.v$1"; done | sort -n | awk -v s="$2" '{ t[NR] = $1 - s }
        END { printf "%.1f / %.1f / %.1f", t[1], t[int((NR + 1) / 2)], t[NR] }'
}

F=$((SIZE_MIB * 1048576))
rate_bits=$(echo "$RATE" | awk '{ v=$1; m=1; if (v ~ /gbit$/) m=1e9; else if (v ~ /mbit$/) m=1e6; else if (v ~ /kbit$/) m=1e3; sub(/[a-z]+$/, "", v); print v*m }')
BOUND=$(awk -v F="$F" -v r="$rate_bits" -v n="$N" 'BEGIN { u = r * 1448 / 1514 / 8;
    t = F / u; t3 = n * F / (u + n * u); if (t3 > t) t = t3; printf "%.1f", t }')

echo "fleet: 1 publisher + $N followers, $RATE links, $SIZE_MIB MiB release, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
make_release 1
make_release 2
for i in $FOLLOWERS; do start_follower "$i"; done
# Membership settles before the publish: every follower has heard from at least 3 others.
deadline=$(( $(date +%s) + 60 ))
for i in $FOLLOWERS; do
    until [ "$(cat "$WORK/f$i/.fleet/members" 2>/dev/null | wc -l)" -ge 3 ]; do
        [ "$(date +%s)" -gt "$deadline" ] && { echo "h$i: membership did not settle" >&2; exit 3; }
        sleep 0.2
    done
done

case " $PHASES " in *" main "*)
    t0=$(now)
    start_publisher 1
    tx0=$(tx_of "$PUB")
    wait_applied 1 "$FOLLOWERS" 900
    tx1=$(tx_of "$PUB")
    last=$(for i in $FOLLOWERS; do cat "$WORK/applied/h$i.v1"; done | sort -n | tail -n1)
    first_dl=$(for i in $FOLLOWERS; do log_time "$WORK/f$i.err" "download started version=1" || true; done | sort -n | head -n1)
    kill "$PUB"; wait "$PUB" 2>/dev/null || true; PUB=
    check_copies 1 "$FOLLOWERS"
    awk -v t0="$t0" -v last="$last" -v b="$BOUND" -v tx=$((tx1 - tx0)) -v F="$F" -v fd="$first_dl" -v sp="$(spread 1 "$t0" "$FOLLOWERS")" 'BEGIN {
        all = last - t0
        printf "%-34s %10s %10s %8s\n", "measure", "value", "target", "ratio"
        printf "%-34s %9.1fs %9.1fs %7.2fx\n", "all followers applied (T* bound)", all, b, all / b
        printf "%-34s %9.1fM %9.1fM %7.2fx\n", "publisher upload (1.5 x release)", tx / 1048576, 1.5 * F / 1048576, tx / F
        printf "%-34s %9.2fs %9.2fs\n", "publish -> first download", fd - t0, 2
        printf "applied first / median / last: %s s after publish\n", sp }'
    ;; esac

case " $PHASES " in *" faults "*)
    # Version 1 must be in place for the offline follower to have something to come back to.
    applied "$((N + 1))" 1 || { echo "the faults phase runs after main" >&2; exit 2; }
    OFF=$((N + 1)) KILLED=$N
    kill "${FPID[$OFF]}"; wait "${FPID[$OFF]}" 2>/dev/null || true; unset "FPID[$OFF]"
    ONLINE=$(seq 2 $N)
    t0=$(now)
    start_publisher 2
    tx0=$(tx_of "$PUB") rx0=$(rx_of "${FPID[$KILLED]}")
    killed_at= left_at= left_tx=
    leave_bytes=$(awk -v f="$F" -v l="$LEAVE_AT" 'BEGIN { printf "%d", f * l }')
    [ "$leave_bytes" = 0 ] && left_at=never
    while ! { [ -n "$killed_at" ] && [ -n "$left_at" ]; }; do
        if [ -z "$killed_at" ] && [ $(( $(rx_of "${FPID[$KILLED]}") - rx0 )) -ge $((F / 4)) ]; then
            kill -9 "${FPID[$KILLED]}"; wait "${FPID[$KILLED]}" 2>/dev/null || true
            killed_at=$(now); sleep 1; start_follower "$KILLED"
        fi
        if [ -z "$left_at" ] && [ $(( $(tx_of "$PUB") - tx0 )) -ge "$leave_bytes" ]; then
            left_tx=$(( $(tx_of "$PUB") - tx0 ))
            kill -9 "$PUB"; wait "$PUB" 2>/dev/null || true; PUB=; left_at=$(now)
        fi
        applied "$KILLED" 2 && [ -z "$killed_at" ] && { echo "h$KILLED finished before a quarter was seen" >&2; exit 5; }
        [ "$(echo "$(now) - $t0 > 600" | bc)" = 1 ] && { echo "timeout waiting for the faults" >&2; exit 5; }
        sleep 0.05
    done
    if ! wait_applied 2 "$ONLINE" "$STUCK_S"; then
        n=0; for i in $ONLINE; do applied "$i" 2 && n=$((n + 1)); done
        P=262144 python3 - "$WORK/rel2/app/data.bin" $(for i in $ONLINE; do echo "$WORK/f$i/versions/.2.partial/app/data.bin"; done) <<'PY' >&2 || true
import os, sys
src = open(sys.argv[1], "rb").read(); p = int(os.environ["P"]); n = len(src) // p
missing = None
for f in sys.argv[2:]:
    if not os.path.exists(f):
        continue
    d = open(f, "rb").read()
    m = {i for i in range(n) if d[i * p:(i + 1) * p] != src[i * p:(i + 1) * p]}
    missing = m if missing is None else missing & m
print("256 KiB blocks no follower holds:", sorted(missing or []))
PY
        echo "FAILED: $n of $((N - 1)) online followers applied v2 within ${STUCK_S} s; the publisher left after $(awk -v t="$left_tx" -v F="$F" 'BEGIN { printf "%.2f", t / F }') x the release" >&2
        exit 6
    fi
    online_last=$(for i in $ONLINE; do cat "$WORK/applied/h$i.v2"; done | sort -n | tail -n1)
    back=$(now)
    start_follower "$OFF"
    wait_applied 2 "$OFF" 300
    accepted=$(grep 'release accepted' "$WORK/f$OFF.err" | grep 'version=2' | head -n1 | awk '{ print $1 }')
    accepted=$(date -d "$accepted" +%s.%N)
    check_copies 2 "$FOLLOWERS"
    awk -v t0="$t0" -v k="$killed_at" -v l="$left_at" -v lt="$left_tx" -v F="$F" -v ol="$online_last" \
        -v b="$back" -v acc="$accepted" -v app="$(cat "$WORK/applied/h$OFF.v2")" -v kd="$(cat "$WORK/applied/h$KILLED.v2")" 'BEGIN {
        printf "faults (version 2):\n"
        printf "  h%s killed at %.1f s (a quarter received), restarted 1 s later, applied at %.1f s\n", '"$KILLED"', k - t0, kd - t0
        if (l == "never") printf "  publisher stayed; all %d online followers applied by %.1f s\n", '"$((N - 1))"', ol - t0
        else printf "  publisher killed at %.1f s after %.2f x the release had left it; all %d online followers applied by %.1f s\n", l - t0, lt / F, '"$((N - 1))"', ol - t0
        printf "  h%s offline during the publish: accepted %.2f s after its restart (target 2 s), applied after %.1f s\n", '"$OFF"', acc - b, app - b }'
    ;; esac
for p in "${FPID[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${FPID[@]}"; do wait "$p" 2>/dev/null || true; done
FPID=()
