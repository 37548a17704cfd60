#!/usr/bin/env bash
# Run-to-run spread of a swarm download on loopback (issue 9 item 3: the leecher dropped its only
# seed for "too many unrequested blocks" and waited out a 15 s backoff in 5 runs of 7).
#
# For each N in NS and RUNS times: a tracker on 127.0.0.1, one seed, N `ferry-peer get`
# leechers that keep seeding; the time is from starting the leechers until every one prints
# `complete`. Prints each run, then per N the median, the max and max/median, and how many
# peers were dropped with an error (the seed's and leechers' "dropping peer" debug lines).
#
#   RUNS=30 SIZE_MIB=300 NS="1 4" benches/swarm/loopback_spread.sh
#
# Needs target/release/ferry-peer (cargo build --release -p ferry-p2p), or PEER=path. No root.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-30}
SIZE_MIB=${SIZE_MIB:-300}
NS=${NS:-"1 4"}
PORT=${PORT:-26000}
PEER=${PEER:-${CARGO_TARGET_DIR:-$PWD/target}/release/ferry-peer}
[ -x "$PEER" ] || { echo "missing $PEER" >&2; exit 2; }
base=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && base=/dev/shm
WORK=$(mktemp -d "$base/ferry-spread.XXXXXX")
PIDS=()
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT
now() { date +%s.%N; }

mkdir -p "$WORK/data"
head -c "${SIZE_MIB}M" /dev/urandom >"$WORK/data/file.bin"
"$PEER" make "$WORK/data/file.bin" -o "$WORK/file.ferry" --tracker "udp://127.0.0.1:$PORT" \
    --no-progress >/dev/null
export RUST_LOG=${RUST_LOG:-warn,ferry_p2p::swarm=debug}

for N in $NS; do
    times=()
    drops=0
    for run in $(seq "$RUNS"); do
        R=$WORK/r; rm -rf "$R"; mkdir -p "$R"
        "$PEER" tracker --listen "127.0.0.1:$PORT" --interval 5s >/dev/null 2>&1 & PIDS+=($!)
        "$PEER" seed "$WORK/file.ferry" --data "$WORK/data" --listen "127.0.0.1:$((PORT + 1))" \
            --no-progress >"$R/seed.out" 2>"$R/seed.err" & PIDS+=($!)
        for _ in $(seq 600); do grep -q seeding "$R/seed.out" 2>/dev/null && break; sleep 0.05; done
        start=$(now)
        for i in $(seq "$N"); do
            mkdir -p "$R/l$i"
            "$PEER" get "$WORK/file.ferry" --out "$R/l$i" --listen "127.0.0.1:$((PORT + 1 + i))" \
                --no-progress >"$R/l$i.out" 2>"$R/l$i.err" & PIDS+=($!)
        done
        deadline=$(( $(date +%s) + 600 ))
        while :; do
            done_all=1
            for i in $(seq "$N"); do grep -q '^complete' "$R/l$i.out" 2>/dev/null || { done_all=0; break; }; done
            [ $done_all = 1 ] && break
            [ "$(date +%s)" -gt "$deadline" ] && { echo "N=$N run $run: timeout" >&2; exit 1; }
            sleep 0.02
        done
        t=$(echo "$(now) - $start" | bc -l)
        stop_all
        for i in $(seq "$N"); do
            cmp -s "$WORK/data/file.bin" "$R/l$i/file.bin" || { echo "N=$N run $run: copy $i differs" >&2; exit 4; }
        done
        d=$(cat "$R"/*.err | grep -c 'dropping peer' || true)
        drops=$((drops + d))
        times+=("$t")
        printf "N=%d run %2d  %6.2f s  dropped %d  load %s\n" "$N" "$run" "$t" "$d" "$(cut -d' ' -f1 /proc/loadavg)"
        [ "$d" = 0 ] || grep -h 'dropping peer' "$R"/*.err | sed 's/^/    /' | head -5
    done
    printf '%s\n' "${times[@]}" | sort -g | awk -v n="$N" -v mib="$SIZE_MIB" -v drops="$drops" '
        { t[NR] = $1 }
        END {
            m = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
            printf "1 seed + %d, %d MiB, %d runs: median %.2f s, min %.2f s, max %.2f s, max/median %.2f, peers dropped %d\n",
                n, mib, NR, m, t[1], t[NR], t[NR] / m, drops
        }'
done
