#!/usr/bin/env bash
# Swarm benchmark on netlab (run as root from anywhere):
#   1 seed + N leechers (N = 8, 32, 99 by default) on a switch where every link is shaped to
#   RATE both ways, distributing one SIZE_MIB file. For each N it prints the time until the last
#   leecher has the whole file, the time for the same N hosts to fetch it from one ferry-server on
#   the same links (unless SKIP_SERVER=1), and the fluid-model bound
#   T* = max(F/u_seed, F/d_min, N*F/(u_seed + sum u_peers)).
#   netlab takes at most 100 hosts, so the largest swarm is 1 seed + 99 leechers.
#
#   RATE=20mbit SIZE_MIB=64 NS="8 32 99" benches/swarm/run.sh
#   DELAY=100ms ...        every packet crossing the switch waits 100 ms: RTT 200 ms
#   PIECE_KIB=256 ...      piece size of the manifest (default: ferry-peer make's choice, 64 KiB
#                          for 64 MiB; 256 KiB before 2026-12); a run scaled down in rate keeps
#                          the file (RATE=5mbit SIZE_MIB=64: T* 112.3 s) so that N = 32 and 99
#                          fit this machine's CPU
#   DISCOVERY=dht ...      no tracker: h1 also runs a DHT node, every peer bootstraps from it
#                          alone (its --dht-bootstrap) and finds the others by DHT and PEX
#   PHASES=tcp ...         one leecher (N = 1) against a plain TCP copy over the same link:
#                          its steady rate (nlprobe tcp-send/tcp-sink for TCP_SECONDS, default
#                          20, after 2 s of warm-up) and the file copied whole, timed as the
#                          leecher is (set-up and slow start included)
#   TCP_CC=cubic ...       every lab host's TCP congestion control (default: what the machine's
#                          kernel gives new namespaces, printed in the header; Linux's default
#                          is cubic, this machine's bbr)
#   LOGS=dir ...           keep every peer's stderr (seed.err, N-hI.err) and `ss -tin` of the
#                          seed's connections every second (N-ss.txt) in dir; with
#                          RUST_LOG=ferry_p2p::swarm=debug the cores log what is in flight
#                          per peer once a second
#
# Besides the times, each swarm row prints what crossed the links (bytes per payload byte, and
# the frames beyond full-size ones: ACKs, HAVEs, requests) and the share of all hosts' upload
# capacity used in each tenth of the run, read from the switch's port counters.
#
# Run it under `flock /tmp/netlab.lock` where others share the lab.
#
# Second phase (PHASES="netlab loopback", default both): unshaped on loopback, 1 seed + LOOP_N
# (4) leechers on a LOOP_MIB (256) file, ferry-peer with its tracker against aria2c behind
# opentracker (Debian packages aria2, opentracker, mktorrent, installed with apt-get when
# missing; without an opentracker package the aria2 run is skipped and the script says so),
# time until all leechers complete.
#
# Needs release binaries of ferry-peer, ferry-server and ferry in $CARGO_TARGET_DIR/release
# (default ./target/release): cargo build --release -p ferry-p2p -p ferry-server -p ferry-cli
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/lib/neighbours.sh
NL=${NETLAB:-$PWD/../shared/netlab/netlab}
RATE=${RATE:-20mbit}
SIZE_MIB=${SIZE_MIB:-64}
NS=${NS:-"8 32 99"}
DELAY=${DELAY:-}
DISCOVERY=${DISCOVERY:-tracker}
PIECE_KIB=${PIECE_KIB:-}
TCP_SECONDS=${TCP_SECONDS:-20}
SKIP_SERVER=${SKIP_SERVER:-0}
BIN=${BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release}
PEER=$BIN/ferry-peer SERVER=$BIN/ferry-server CLIENT=$BIN/ferry
export NETLAB_PREFIX=${NETLAB_PREFIX:-p2pbench}
for b in "$PEER" "$SERVER" "$CLIENT"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 2; }; done

WORK=$(mktemp -d /tmp/ferry-swarm-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    "$NL" down swarm >/dev/null 2>&1 || true
    restore_neighbours
    [ -z "${ALLOWED_CC:-}" ] || sysctl -qw net.ipv4.tcp_allowed_congestion_control="$ALLOWED_CC"
    rm -rf "$WORK"
}
trap cleanup EXIT

PHASES=${PHASES:-"netlab loopback"}
LOOP_MIB=${LOOP_MIB:-256}
LOOP_N=${LOOP_N:-4}

now() { date +%s.%N; }
# Ticks (1/100 s) all CPUs spent in interrupts and softirqs so far.
softirq_ticks() { awk '/^cpu / { print $7 + $8 }' /proc/stat; }
# "bytes frames" every host has sent so far: what the switch's ports received (whole Ethernet
# frames, as the shapers count them), in one call for all hosts.
wire_sent() {
    ip -n "$NETLAB_PREFIX-sw" -s -j link show | python3 -c '
import json, sys
ports = [l for l in json.load(sys.stdin) if l["ifname"].startswith("h")]
print(sum(l["stats64"]["rx"]["bytes"] for l in ports), sum(l["stats64"]["rx"]["packets"] for l in ports))'
}
# Sets CPU to the CPU seconds (user + sys) of this script's waited-for children so far: the
# peers' own load. `times` must run in this shell, not in a command substitution.
child_cpu() { times >"$WORK/times"; CPU=$(tail -1 "$WORK/times" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } printf "%.2f", t }'); }
# Waits until every output file in $@ says complete (bounded by 20 minutes). WAIT_PIDS, when
# set, holds the process of each file in the same order: one that exits before its file says
# complete (a full disk, a crash) ends the wait with its stderr, rather than waiting out the
# deadline. A round forks nothing: the files are read and the processes checked by builtins,
# and the pause between rounds (WAIT_PAUSE seconds, default 0.05) is a `read -t` on a pipe
# nobody writes. At N = 99 a grep per file every 50 ms took a third of this 2-core machine's CPU
# from the peers it measures (and `times` counted it as theirs); the builtin reads every 50 ms
# still took 8 % (`perf record -a`), so a file is read only once it is not empty, and the swarm
# rows, which time the leechers by their files' mtimes, poll every 0.25 s.
WAIT_PIDS=()
wait_complete() {
    local deadline=$((SECONDS + 1200)) k f text pause left
    local -A complete=()
    exec {pause}<> <(:)
    while :; do
        left=0 k=0
        for f in "$@"; do
            if [ -z "${complete[$f]:-}" ]; then
                text=
                # Empty until the leecher has something to say: a stat, no open, per round.
                [ -s "$f" ] && { IFS= read -r -d '' text <"$f" 2>/dev/null || true; }
                if [[ $'\n'$text == *$'\n'complete* ]]; then
                    complete[$f]=1
                else
                    local pid=${WAIT_PIDS[$k]:-}
                    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
                        # It may have written its last line and exited since the read above.
                        IFS= read -r -d '' text <"$f" 2>/dev/null || true
                        if [[ $'\n'$text != *$'\n'complete* ]]; then
                            echo "${f%.out}: exited before completing; its stderr ends:" >&2
                            tail -5 "${f%.out}.err" >&2 2>/dev/null || true
                            exec {pause}<&-
                            return 1
                        fi
                        complete[$f]=1
                    else
                        left=$((left + 1))
                    fi
                fi
            fi
            k=$((k + 1))
        done
        [ "$left" -eq 0 ] && { exec {pause}<&-; return 0; }
        [ "$SECONDS" -gt "$deadline" ] && { echo "timeout" >&2; exec {pause}<&-; return 1; }
        read -r -t "${WAIT_PAUSE:-0.05}" -u "$pause" _ || true
    done
}
# Fails early when `dir` has less than `mib` MiB free: a full disk midway fails a leecher.
need_space() {
    local dir=$1 mib=$2 free
    free=$(df -Pm "$dir" | awk 'NR == 2 { print $4 }')
    [ "$free" -ge "$mib" ] || { echo "needs $mib MiB free in $dir, has $free MiB" >&2; exit 2; }
}
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; PIDS=(); }

# Installs the Debian packages that provide the missing commands; returns 1 if any stays missing.
need() {
    local missing=()
    for t in "$@"; do command -v "$t" >/dev/null || missing+=("$t"); done
    [ ${#missing[@]} = 0 ] && return 0
    local pkgs=()
    for t in "${missing[@]}"; do case $t in aria2c) pkgs+=(aria2) ;; *) pkgs+=("$t") ;; esac; done
    echo "installing ${pkgs[*]}" >&2
    apt-get update -qq >/dev/null 2>&1 || true
    for p in "${pkgs[@]}"; do
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null 2>&1 || echo "no package $p here" >&2
    done
    local still=0
    for t in "${missing[@]}"; do command -v "$t" >/dev/null || { echo "still missing: $t" >&2; still=1; }; done
    return $still
}

loopback() {
    local with_aria=1
    need aria2c mktorrent opentracker || {
        echo "aria2c, mktorrent or opentracker is not installable here: the loopback phase runs ferry-peer alone" >&2
        with_aria=0
    }
    local L=$WORK/loop; mkdir -p "$L/data"
    # The file and LOOP_N copies (ferry's are removed before aria2c's are written).
    need_space "$WORK" $((LOOP_MIB * (LOOP_N + 1) + 64))
    head -c "${LOOP_MIB}M" /dev/urandom > "$L/data/file.bin"
    # ---- ferry-peer: tracker, seed, 4 leechers that keep seeding.
    child_cpu; local cpu0=$CPU
    "$PEER" make "$L/data/file.bin" -o "$L/file.ferry" --tracker udp://127.0.0.1:16969 --no-progress >/dev/null
    "$PEER" tracker --listen 127.0.0.1:16969 --interval 5s >/dev/null 2>&1 & PIDS+=($!)
    "$PEER" seed "$L/file.ferry" --data "$L/data" --listen 127.0.0.1:17000 --no-progress >"$L/seed.out" 2>/dev/null & PIDS+=($!)
    for _ in $(seq 300); do grep -q seeding "$L/seed.out" 2>/dev/null && break; sleep 0.1; done
    local outs=() start
    WAIT_PIDS=()
    start=$(now)
    for i in $(seq "$LOOP_N"); do
        mkdir -p "$L/f$i"
        "$PEER" get "$L/file.ferry" --out "$L/f$i" --listen "127.0.0.1:$((17000 + i))" --no-progress >"$L/f$i.out" 2>"$L/f$i.err" & PIDS+=($!)
        outs+=("$L/f$i.out"); WAIT_PIDS+=($!)
    done
    wait_complete "${outs[@]}" || return 3
    WAIT_PIDS=()
    local ferry_s; ferry_s=$(echo "$(now) - $start" | bc -l)
    stop_all
    child_cpu; local ferry_cpu; ferry_cpu=$(echo "$CPU - $cpu0" | bc -l)
    for i in $(seq "$LOOP_N"); do cmp -s "$L/data/file.bin" "$L/f$i/file.bin" || { echo "ferry copy $i differs" >&2; return 4; }; done
    rm -rf "$L"/f*
    if [ $with_aria = 0 ]; then
        printf "\nloopback, %d MiB, 1 seed + %d leechers\nferry-peer %.2f s, CPU %.2f s, %.2f ms per MiB delivered (no aria2c + opentracker to compare)\n" \
            "$LOOP_MIB" "$LOOP_N" "$ferry_s" "$ferry_cpu" "$(echo "$ferry_cpu * 1000 / ($LOOP_N * $LOOP_MIB)" | bc -l)"
        rm -rf "$L"; return 0
    fi
    # ---- aria2c behind opentracker, same shape.
    mkdir -p "$L/ot"
    child_cpu; cpu0=$CPU
    mktorrent -a http://127.0.0.1:16970/announce -l 18 -o "$L/file.torrent" "$L/data/file.bin" >/dev/null
    # Debian's opentracker only serves whitelisted info hashes; the list is read inside its chroot.
    python3 -c 'import hashlib,sys; b=open(sys.argv[1],"rb").read(); i=b.index(b"4:info")+6; print(hashlib.sha1(b[i:-1]).hexdigest())' \
        "$L/file.torrent" > "$L/ot/wl.txt"
    (cd "$L/ot" && exec opentracker -i 127.0.0.1 -p 16970 -P 16970 -d "$L/ot" -w wl.txt >/dev/null 2>&1) & PIDS+=($!)
    local common=(--enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=true
        --seed-ratio=0.0 --file-allocation=none --summary-interval=0 --console-log-level=warn
        --bt-tracker-connect-timeout=5 --bt-tracker-interval=5 --disk-cache=64M)
    aria2c "${common[@]}" -V --dir="$L/data" --listen-port=18000 "$L/file.torrent" >/dev/null 2>&1 & PIDS+=($!)
    sleep 4  # the seed hashes its data first
    printf '#!/bin/sh\necho complete > "$3.done"\n' > "$L/hook.sh"; chmod +x "$L/hook.sh"
    outs=()
    start=$(now)
    for i in $(seq "$LOOP_N"); do
        mkdir -p "$L/a$i"
        aria2c "${common[@]}" --dir="$L/a$i" --listen-port=$((18000 + i)) --on-bt-download-complete="$L/hook.sh" "$L/file.torrent" >/dev/null 2>&1 & PIDS+=($!)
        outs+=("$L/a$i/file.bin.done")
    done
    wait_complete "${outs[@]}"
    local aria_s; aria_s=$(echo "$(now) - $start" | bc -l)
    stop_all
    child_cpu; local aria_cpu; aria_cpu=$(echo "$CPU - $cpu0" | bc -l)
    for i in $(seq "$LOOP_N"); do cmp -s "$L/data/file.bin" "$L/a$i/file.bin" || { echo "aria2 copy $i differs" >&2; return 4; }; done
    rm -rf "$L"
    # CPU: user+sys of every process of the run (make/mktorrent, tracker, seed with its start-up
    # hashing, leechers until stopped), per MiB delivered (LOOP_N copies).
    local mib_all=$((LOOP_N * LOOP_MIB))
    printf "\nloopback, %d MiB, 1 seed + %d leechers, %d cores, load %s\n%-22s %8s %8s %12s\n" "$LOOP_MIB" "$LOOP_N" "$(nproc)" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" tool all_done_s cpu_s cpu_ms/MiB
    printf "%-22s %8.2f %8.2f %12.2f\n" ferry-peer "$ferry_s" "$ferry_cpu" "$(echo "$ferry_cpu * 1000 / $mib_all" | bc -l)" \
        "aria2c+opentracker" "$aria_s" "$aria_cpu" "$(echo "$aria_cpu * 1000 / $mib_all" | bc -l)"
    printf "ferry/aria2 %.2f (time), %.2f (CPU)\n" "$(echo "$ferry_s / $aria_s" | bc -l)" "$(echo "$ferry_cpu / $aria_cpu" | bc -l)"
}

case " $PHASES " in *" netlab "*|*" tcp "*) ;; *) loopback; exit 0 ;; esac
case " $PHASES " in *" netlab "*) ;; *) NS=1 ;; esac

max_n=1; for n in $NS; do [ "$n" -gt "$max_n" ] && max_n=$n; done
[ "$max_n" -le 99 ] || { echo "netlab has at most 100 hosts: N <= 99" >&2; exit 2; }
# The lab's kernel-wide ARP table must hold a full mesh (benches/lib/neighbours.sh).
raise_neighbours $((max_n + 1))
"$NL" up-swarm $((max_n + 1)) "$RATE" ${DELAY:+--delay "$DELAY"} >/dev/null
# Each host's TCP congestion control decides how its many flows share its one queue each way.
# A namespace may only pick one the host allows unprivileged sockets (the kernel's rule), so
# the host's list takes it for the run and gets its old value back at the end.
if [ -n "${TCP_CC:-}" ]; then
    ALLOWED_CC=$(sysctl -n net.ipv4.tcp_allowed_congestion_control)
    case " $ALLOWED_CC " in
        *" $TCP_CC "*) ALLOWED_CC="" ;;
        *) sysctl -qw net.ipv4.tcp_allowed_congestion_control="$ALLOWED_CC $TCP_CC" ;;
    esac
    for i in $(seq 1 $((max_n + 1))); do "$NL" exec "h$i" sysctl -qw net.ipv4.tcp_congestion_control="$TCP_CC"; done
fi
cc=$("$NL" exec h1 sysctl -n net.ipv4.tcp_congestion_control)
ip_of() { echo "198.51.100.$1"; }
SEED_IP=$(ip_of 1)

# The seed's file, one copy per leecher, and (without SKIP_SERVER) the same again from the server.
need_space "$WORK" $((SIZE_MIB * (max_n + 1) * (SKIP_SERVER == 1 ? 1 : 2) + 64))
mkdir -p "$WORK/data"
head -c "${SIZE_MIB}M" /dev/urandom > "$WORK/data/file.bin"
piece=${PIECE_KIB:+--piece-size $((PIECE_KIB * 1024))}
if [ "$DISCOVERY" = dht ]; then
    # shellcheck disable=SC2086
    "$PEER" make "$WORK/data/file.bin" -o "$WORK/file.ferry" $piece --no-progress >/dev/null
else
    # shellcheck disable=SC2086
    "$PEER" make "$WORK/data/file.bin" -o "$WORK/file.ferry" $piece --tracker "udp://$SEED_IP:6969" --no-progress >/dev/null
fi
# Discovery flags of host i: the tracker in the manifest, or the DHT through h1's node only.
disc() {
    [ "$DISCOVERY" = dht ] || return 0
    echo --dht-bootstrap "$SEED_IP:6881" --dht-listen "$(ip_of "$1"):6882" --dht-state "$WORK/dht$1.state"
}
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/key"; chmod 600 "$WORK/key"

# Payload rate: HTB counts whole Ethernet frames, TCP payload is 1448/1514 of them (netlab README).
rate_bits=$(echo "$RATE" | awk '{ v=$1; m=1; if (v ~ /gbit$/) m=1e9; else if (v ~ /mbit$/) m=1e6; else if (v ~ /kbit$/) m=1e3; sub(/[a-z]+$/, "", v); print v*m }')
F=$((SIZE_MIB * 1048576))

echo "rate $RATE, delay ${DELAY:-0} one way, $SIZE_MIB MiB${PIECE_KIB:+ in $PIECE_KIB KiB pieces}, discovery $DISCOVERY, tcp $cc, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-3s %12s %12s %10s %10s %10s\n" N swarm_s server_s bound_s swarm/T* server/swarm
for N in $NS; do
    # ---- swarm: tracker (or DHT node) + seed on h1, leechers on h2..h(N+1), leechers keep seeding.
    child_cpu; cpu0=$CPU; sirq0=$(softirq_ticks)
    if [ "$DISCOVERY" = dht ]; then
        "$NL" exec h1 "$PEER" dht --dht-listen "$SEED_IP:6881" --dht-state "$WORK/dht-boot.state" >/dev/null 2>&1 & PIDS+=($!)
    else
        "$NL" exec h1 "$PEER" tracker --listen "$SEED_IP:6969" --interval 5s >/dev/null 2>&1 & PIDS+=($!)
    fi
    # shellcheck disable=SC2046
    "$NL" exec h1 "$PEER" seed "$WORK/file.ferry" --data "$WORK/data" --listen "$SEED_IP:7000" --no-progress $(disc 1) >"$WORK/seed.out" 2>"$WORK/seed.err" & PIDS+=($!)
    for _ in $(seq 100); do grep -q seeding "$WORK/seed.out" 2>/dev/null && break; sleep 0.1; done
    outs=(); WAIT_PIDS=()
    if [ -n "${LOGS:-}" ]; then
        mkdir -p "$LOGS"
        (while :; do date +%s.%N; "$NL" exec h1 ss -tinm 'sport = :7000'; sleep 1; done >"$LOGS/$N-ss.txt" 2>&1) & PIDS+=($!)
    fi
    read -r wire_b0 wire_f0 < <(wire_sent)
    start=$(now)
    # The links' load over the run: bytes sent by all hosts, about 40 times in one link's copy
    # time of the file (each sample forks `ip` and python), at least 1 s apart.
    period=$(awk -v F="$F" -v r="$rate_bits" 'BEGIN { p = F * 8 / r / 40; printf "%.1f", p < 1 ? 1 : p }')
    (while :; do echo "$(now) $(wire_sent)"; sleep "$period"; done >"$WORK/load.txt" 2>/dev/null) & LOAD_PID=$!; PIDS+=($LOAD_PID)
    [ -n "${LOGS:-}" ] && date -u +%FT%T.%6NZ >"$LOGS/$N-start"
    for i in $(seq 2 $((N + 1))); do
        d="$WORK/swarm$N/h$i"; mkdir -p "$d"
        # shellcheck disable=SC2046
        "$NL" exec "h$i" "$PEER" get "$WORK/file.ferry" --out "$d" --listen "$(ip_of "$i"):7000" --no-progress $(disc "$i") >"$d.out" 2>"$d.err" & PIDS+=($!)
        outs+=("$d.out"); WAIT_PIDS+=($!)
    done
    WAIT_PAUSE=0.25 wait_complete "${outs[@]}" || exit 3
    WAIT_PIDS=()
    # Until the last leecher wrote its completion line, not until the poll saw it.
    swarm_s=$(for f in "${outs[@]}"; do stat -c %.9Y "$f"; done | sort -n | tail -1 | awk -v s="$start" '{ printf "%.3f", $1 - s }')
    read -r wire_b wire_f < <(wire_sent)
    kill "$LOAD_PID" 2>/dev/null || true
    [ "$N" = 1 ] && one_s=$swarm_s   # the TCP row compares against the one-leecher run
    # Completion times of each leecher (file mtimes), to see the tail: first, median, last.
    for f in "${outs[@]}"; do stat -c %.9Y "$f"; done | sort -n | awk -v s="$start" '{ t[NR] = $1 - s }
        END { printf "    leechers done: first %.1f s, median %.1f s, last %.1f s\n", t[1], t[int((NR + 1) / 2)], t[NR] }' >&2
    # Who the tail is: the last three to finish (hosts launched in order h2, h3, ...).
    for f in "${outs[@]}"; do echo "$(stat -c %.9Y "$f") $(basename "$f" .out)"; done | sort -n | tail -3 |
        awk -v s="$start" '{ printf "%s%s %.1f s", (NR > 1 ? ", " : "    last three: "), $2, $1 - s } END { print "" }' >&2
    # What crossed the links for each payload byte delivered: the bound assumes only full
    # 1514-byte frames of 1448 payload bytes (1.046); HAVEs, requests and ACKs add to it.
    awk -v b="$((wire_b - wire_b0))" -v f="$((wire_f - wire_f0))" -v p="$((N * F))" 'BEGIN {
        printf "    wire: %.1f MiB in %d frames sent by all hosts, %.3f bytes per payload byte delivered; frames beyond one per 1448 payload bytes: %d (%.2f per 16 KiB delivered)\n",
            b / 1048576, f, b / p, f - p / 1448, (f - p / 1448) * 16384 / p }' >&2
    # Where the links idled: the share of all hosts' upload capacity used in each tenth of the
    # run (the bound needs every uplink busy from start to end, less the seed's first pieces).
    awk -v s="$start" -v b0="$wire_b0" -v end="$(echo "$start + $swarm_s" | bc -l)" -v b1="$wire_b" \
        -v cap="$(echo "$rate_bits * ($N + 1) / 8" | bc -l)" '
        $1 > s && $1 < end { n++; t[n] = $1; b[n] = $2 }
        END { t[0] = s; b[0] = b0; t[n + 1] = end; b[n + 1] = b1
              out = "    uplinks busy by tenth of the run:"
              for (k = 1; k <= 10; k++) {
                  lo = s + (end - s) * (k - 1) / 10; hi = s + (end - s) * k / 10
                  out = out sprintf(" %.0f%%", 100 * (at(hi) - at(lo)) / ((hi - lo) * cap)) }
              print out }
        # Bytes sent by time x, interpolated between samples.
        function at(x,   i) {
            for (i = 0; i <= n; i++)
                if (t[i + 1] >= x) return t[i + 1] > t[i] ? b[i] + (b[i + 1] - b[i]) * (x - t[i]) / (t[i + 1] - t[i]) : b[i + 1]
            return b[n + 1] }' \
        "$WORK/load.txt" >&2
    stop_all
    child_cpu
    # The lab's kernel work (veth, bridge, shaping, TCP) runs largely as softirq: /proc/stat
    # counts it for the whole machine (mostly the lab during the run); the share that ran while
    # a peer was on the CPU is also in that peer's user+sys, so the two do not add up.
    awk -v c="$(echo "$CPU - $cpu0" | bc -l)" -v w="$swarm_s" -v m="$((N * SIZE_MIB))" -v s="$(( $(softirq_ticks) - sirq0 ))" \
        -v k="$(nproc)" -v l="$(cut -d' ' -f1-3 /proc/loadavg)" 'BEGIN {
        printf "    peers\047 CPU: %.2f s user+sys over %.1f s wall, %.1f ms per MiB delivered (%d MiB); softirq %.2f s (%.1f ms/MiB); %d cores; load %s\n",
            c, w, c * 1000 / m, m, s / 100, s * 10 / m, k, l }' >&2
    if [ -n "${LOGS:-}" ]; then
        cp "$WORK/seed.err" "$LOGS/$N-seed.err"
        for i in $(seq 2 $((N + 1))); do cp "$WORK/swarm$N/h$i.err" "$LOGS/$N-h$i.err"; done
    fi
    for i in $(seq 2 $((N + 1))); do cmp -s "$WORK/data/file.bin" "$WORK/swarm$N/h$i/file.bin" || { echo "h$i: swarm copy differs" >&2; exit 4; }; done
    rm -rf "$WORK/swarm$N"

    # ---- one ferry-server on h1, the same N hosts fetch with `ferry get`.
    server_s=nan
    if [ "$SKIP_SERVER" != 1 ]; then
        "$NL" exec h1 "$SERVER" "$WORK/data" --listen "$SEED_IP:6789" --key-file "$WORK/key" >/dev/null 2>&1 & PIDS+=($!)
        sleep 1
        start=$(now); cpids=()
        for i in $(seq 2 $((N + 1))); do
            d="$WORK/server$N/h$i"; mkdir -p "$d"
            "$NL" exec "h$i" "$CLIENT" --key-file "$WORK/key" --no-progress -q get "ferry://$SEED_IP:6789/file.bin" "$d/file.bin" & cpids+=($!)
        done
        for p in "${cpids[@]}"; do wait "$p"; done
        server_s=$(echo "$(now) - $start" | bc -l)
        stop_all
        for i in $(seq 2 $((N + 1))); do cmp -s "$WORK/data/file.bin" "$WORK/server$N/h$i/file.bin" || { echo "h$i: server copy differs" >&2; exit 4; }; done
        rm -rf "$WORK/server$N"
    fi

    # ---- fluid bound with every rate equal to the TCP payload rate u.
    bound=$(awk -v F="$F" -v r="$rate_bits" -v n="$N" 'BEGIN { u = r * 1448 / 1514 / 8;
        t1 = F / u; t2 = F / u; t3 = n * F / (u + n * u);
        t = t1; if (t2 > t) t = t2; if (t3 > t) t = t3; printf "%.1f", t }')
    awk -v n="$N" -v s="$swarm_s" -v v="$server_s" -v b="$bound" 'BEGIN {
        printf "%-3d %12.1f %12s %10.1f %10.2f %10s\n", n, s, (v == "nan" ? "-" : sprintf("%.1f", v)), b, s / b,
            (v == "nan" ? "-" : sprintf("%.2f", v / s)) }'
done

case " $PHASES " in *" tcp "*)
    # ---- a plain TCP copy h1 -> h2 over the same link, for the one-leecher row (N = 1).
    "$NL" exec h2 python3 "$(dirname "$NL")/nlprobe.py" tcp-sink --bind "$(ip_of 2)" --port 5201 --seconds "$TCP_SECONDS" --warmup 2 >"$WORK/tcp.json" & sink=$!
    sleep 1
    "$NL" exec h1 python3 "$(dirname "$NL")/nlprobe.py" tcp-send --to "$(ip_of 2)" --port 5201 --seconds $((TCP_SECONDS + 4)) >/dev/null 2>&1 || true
    wait $sink || true
    echo "plain TCP h1 -> h2: $(cat "$WORK/tcp.json")"
    python3 -c 'import json,sys; g=json.load(open(sys.argv[1]))["goodput_bps"]; r=float(sys.argv[2])*8/float(sys.argv[3])
print("one leecher %.2f Mbit/s, plain TCP %.2f Mbit/s: %.2f of TCP (its steady rate)" % (r/1e6, g/1e6, r/g))' "$WORK/tcp.json" "$F" "${one_s:?PHASES=tcp needs N = 1 in NS}"
    # ---- the same file copied whole over one TCP connection, timed as the leecher is: from
    # starting the sender to the receiver's end of file, so connection set-up and slow start
    # count on both sides (the steady rate above leaves out TCP's first seconds, the leecher's
    # time does not).
    "$NL" exec h2 python3 -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5202)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    n += len(b)
print(n, time.time(), flush=True)' "$(ip_of 2)" >"$WORK/copy.out" & sink=$!
    for _ in $(seq 50); do grep -q ready "$WORK/copy.out" 2>/dev/null && break; sleep 0.1; done
    start=$(now)
    "$NL" exec h1 python3 -c 'import socket, sys
s = socket.create_connection((sys.argv[1], 5202)); f = open(sys.argv[2], "rb")
while True:
    b = f.read(1 << 20)
    if not b: break
    s.sendall(b)
s.shutdown(socket.SHUT_WR); s.recv(1)' "$(ip_of 2)" "$WORK/data/file.bin"
    wait $sink
    read -r got end < <(tail -n 1 "$WORK/copy.out")
    [ "$got" = "$F" ] || { echo "TCP copy: $got of $F bytes arrived" >&2; exit 4; }
    awk -v c="$(echo "$end - $start" | bc -l)" -v s="$one_s" 'BEGIN {
        printf "one leecher %.2f s, the file copied whole over TCP %.2f s: %.2f of TCP (whole copy)\n", s, c, c / s }'
    ;; esac

case " $PHASES " in *" loopback "*) loopback ;; esac
