#!/usr/bin/env bash
# The swarm behind NATs (issue 12, "The swarm behind NATs"), run as root on netlab's building
# blocks: ferry-hub on a public host `pub`; the seed behind a NAT of kind SEED_KIND (peer1); four
# leechers behind one NAT each, of the four kinds (peer2..peer5: fullcone, restricted,
# portrestricted, symmetric). Every public link (pub and each NAT's WAN side) is shaped to RATE
# both ways, as netlab shapes its hosts. All five nodes run `ferry-peer … --hub HUB` and know
# nothing else: they find each other through the hub; with no direct path (nothing is
# forwarded) they ask the hub to coordinate a punch (TCP simultaneous open raced against QUIC),
# and only where the NATs defeat it (symmetric with port-restricted or symmetric) are relayed.
#
# Prints the time until every leecher holds the file beside the fluid bound
# T_min = max(F/u_s, F/min d_i, n·F/(u_s + Σu_i)) at the payload rate (RATE × 0.956), each
# leecher's completion time, the seed's upload (bytes on its LAN interface, so headers
# included) and the hub's (nearly all relayed bytes) against the file size, and how each of the
# ten peer paths ended: direct, punched (tcp or quic), or relayed (from the peers' logs).
#
#   benches/swarm/nat.sh                       # 32 MiB, 20mbit, seed behind portrestricted
#   SIZE_MB=16 RATE=20mbit SEED_KIND=symmetric benches/swarm/nat.sh
#
# netlab's up-nat builds two NATs; this script sources netlab's functions (namespaces, veth,
# HTB shaping, the nftables NAT rulesets) and builds five, under the namespace prefix
# "ferryswnat", holding `flock /tmp/netlab.lock` from build to `down`. BIN= picks the binaries'
# directory (default target/release, built first unless NOBUILD=1). Logs stay in $WORK.
#
# Measured 2026-12-01 (release, 32 MiB, 20mbit, seed behind portrestricted):
# - before hubpeer punched (load ~8-38): all four complete after 62.3 s against a fluid bound of
#   14.0 s (4.44x); the seed sent 1.18x the file; every path was relayed, so the hub's own
#   20 Mbit/s link carried 4.38x the file (relay-only, no run can beat 4x the bound).
# - with the hub-coordinated punch (load ~5-6): all four complete after 16.50 s (1.18x the bound,
#   target 1.3x); the seed sent 1.16x the file; 8 of the 10 peer paths punched (all TCP
#   simultaneous open), 2 relayed (symmetric with port-restricted, as the NAT matrix predicts);
#   the hub's link carried 0.55x the file. A second run (load ~8): 16.86 s (1.20x), seed 1.12x,
#   hub 0.44x, 7 paths punched over TCP and 1 over QUIC (restricted-symmetric), the same 2 relayed.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT_DIR=$PWD
NL=${NETLAB:-$ROOT_DIR/../shared/netlab/netlab}
BIN=${BIN:-$ROOT_DIR/target/release}
SIZE_MB=${SIZE_MB:-32}
RATE=${RATE:-20mbit}
SEED_KIND=${SEED_KIND:-portrestricted}
LEECH_KINDS=(fullcone restricted portrestricted symmetric)
export NETLAB_PREFIX=ferryswnat

if [ "${1:-}" != "--locked" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "nat.sh: netlab needs root; skipped" >&2
        exit 0
    fi
    if [ ! -x "$NL" ]; then
        echo "nat.sh: no netlab at $NL; skipped" >&2
        exit 0
    fi
    if [ "${NOBUILD:-0}" != 1 ]; then
        cargo build --release -q -p ferry-hub -p ferry-p2p
    fi
    exec flock /tmp/netlab.lock "$0" --locked
fi

WORK=${WORK:-$(mktemp -d /tmp/ferry-swnat.XXXXXX)}
mkdir -p "$WORK"
echo "logs in $WORK; load $(cut -d' ' -f1-3 /proc/loadavg)"

# netlab's functions without its main.
LIB=$WORK/netlab-lib.sh
sed '$d' "$NL" >"$LIB"
# shellcheck disable=SC1090
source "$LIB"
P=$NETLAB_PREFIX
need_root
ensure_tools

down_all() { "$NL" down all >/dev/null 2>&1 || true; }
trap down_all EXIT
down_all

HUB_IP=198.51.100.130
lan_base() { echo $((16 * $1)); }              # LAN i: 192.0.2.(16i)/28
host_ip() { echo "192.0.2.$(($(lan_base "$1") + 10))"; }

split_rate "$RATE"
qup=$(queue_bytes "$UP" 0); qdown=$(queue_bytes "$DOWN" 0)
segs=$(gso_segs "$(min_rate "$UP" "$DOWN")")

ns_add inet
add_bridge inet
ns_add pub
switch_port inet pub pub eth0
run ip -n "$(nsname pub)" addr add "$HUB_IP/25" dev eth0
run ip -n "$(nsname pub)" link set eth0 up
set_gso pub "$segs"
shape pub eth0 "$UP" "$qup" 0
shape inet pub "$DOWN" "$qdown" 0
kinds=("$SEED_KIND" "${LEECH_KINDS[@]}")
for i in 1 2 3 4 5; do
    nat=nat$i peer=peer$i base=$(lan_base $i)
    ns_add "$nat"; ns_add "$peer"
    switch_port inet "$nat" "$nat" wan
    run ip -n "$(nsname "$nat")" addr add "198.51.100.$((130 + i))/25" dev wan
    run ip -n "$(nsname "$nat")" link set wan up
    veth "$nat" lan "$peer" eth0
    run ip -n "$(nsname "$nat")" addr add "192.0.2.$((base + 1))/28" dev lan
    run ip -n "$(nsname "$nat")" link set lan up
    run ip -n "$(nsname "$peer")" addr add "$(host_ip $i)/28" dev eth0
    run ip -n "$(nsname "$peer")" link set eth0 up
    set_gso "$peer" "$segs"
    run ip -n "$(nsname "$peer")" route add 198.51.100.0/24 via "192.0.2.$((base + 1))"
    run ip netns exec "$(nsname "$nat")" sysctl -qw net.ipv4.ip_forward=1
    nat_ruleset "${kinds[$((i - 1))]}" | ip netns exec "$(nsname "$nat")" nft -f -
    shape "$nat" wan "$UP" "$qup" 0
    shape inet "$nat" "$DOWN" "$qdown" 0
done
echo "lab: hub $HUB_IP; seed behind ${kinds[0]}; leechers behind ${LEECH_KINDS[*]}; every public link $RATE"

inns() { local h=$1; shift; ip netns exec "$(nsname "$h")" "$@"; }
now() { date +%s.%N; }

mkdir -p "$WORK/data" "$WORK/hub"
head -c "${SIZE_MB}M" /dev/urandom >"$WORK/data/file.bin"
"$BIN/ferry-peer" make "$WORK/data/file.bin" -o "$WORK/file.ferry" --no-progress >/dev/null
F=$(stat -c %s "$WORK/data/file.bin")

PIDS=()
inns pub "$BIN/ferry-hub" --listen "$HUB_IP:6790" --state "$WORK/hub" >"$WORK/hub.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do inns pub ss -ltn | grep -q ":6790" && break; sleep 0.1; done
HUB="$HUB_IP:6790"
export RUST_LOG=${RUST_LOG:-warn,ferry_p2p::hubpeer=info}
inns peer1 "$BIN/ferry-peer" seed "$WORK/file.ferry" --data "$WORK/data" --listen 0.0.0.0:7000 \
    --hub "$HUB" --no-progress >"$WORK/seed.out" 2>"$WORK/seed.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q seeding "$WORK/seed.out" 2>/dev/null && break; sleep 0.1; done
sleep 1   # the seed's presence and announce
seed_tx0=$(inns peer1 cat /sys/class/net/eth0/statistics/tx_bytes)
hub_tx0=$(inns pub cat /sys/class/net/eth0/statistics/tx_bytes)
start=$(now)
for i in 2 3 4 5; do
    mkdir -p "$WORK/l$i"
    inns "peer$i" "$BIN/ferry-peer" get "$WORK/file.ferry" --out "$WORK/l$i" --listen 0.0.0.0:7000 \
        --hub "$HUB" --no-progress >"$WORK/l$i.out" 2>"$WORK/l$i.err" &
    PIDS+=($!)
done
declare -A done_at=()
deadline=$(( $(date +%s) + 900 ))
while [ ${#done_at[@]} -lt 4 ]; do
    for i in 2 3 4 5; do
        [ -n "${done_at[$i]:-}" ] && continue
        if grep -q '^complete' "$WORK/l$i.out" 2>/dev/null; then
            done_at[$i]=$(echo "$(now) - $start" | bc -l)
        fi
    done
    [ "$(date +%s)" -gt "$deadline" ] && { echo "timeout: not every leecher completed in 900 s" >&2; break; }
    sleep 0.05
done
total=$(echo "$(now) - $start" | bc -l)
seed_tx=$(( $(inns peer1 cat /sys/class/net/eth0/statistics/tx_bytes) - seed_tx0 ))
hub_tx=$(( $(inns pub cat /sys/class/net/eth0/statistics/tx_bytes) - hub_tx0 ))
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
for i in 2 3 4 5; do
    cmp -s "$WORK/data/file.bin" "$WORK/l$i/file.bin" || echo "leecher $i (${LEECH_KINDS[$((i - 2))]}): copy differs or is missing" >&2
done

# Payload rate: HTB counts whole frames, a TCP bulk flow gets 1448/1514 of RATE (netlab README).
rate_bps=$(rate_bps "$UP")
bound=$(echo "$F * 8 / ($rate_bps * 0.956)" | bc -l)
printf "\nswarm behind NATs: %d MiB, %s links, seed behind %s\n" "$SIZE_MB" "$RATE" "${kinds[0]}"
for i in 2 3 4 5; do
    printf "  leecher behind %-15s %7.2f s\n" "${LEECH_KINDS[$((i - 2))]}" "${done_at[$i]:-nan}"
done
printf "all complete after %.2f s; fluid bound %.2f s; ratio %.2f (target <= 1.3)\n" "$total" "$bound" "$(echo "$total / $bound" | bc -l)"
printf "seed sent %.2f x the file (%d bytes on its link; target <= 1.3)\n" "$(echo "$seed_tx / $F" | bc -l)" "$seed_tx"
printf "hub sent %.2f x the file (relayed bytes on its link)\n" "$(echo "$hub_tx / $F" | bc -l)"
# How each pair's path ended, from the dialling side's log lines (seeds never dial): a pair
# counts as punched or direct if any connection between them was, since a connection that is
# not relayed replaces a relayed one (spec/P2P.md §3.3).
python3 - "$WORK" <<'PY'
import os, re, sys
work = sys.argv[1]
names = {"seed.err": "seed"}
names.update({f"l{i}.err": f"l{i}:{k}" for i, k in zip(range(2, 6), ["fullcone", "restricted", "portrestricted", "symmetric"])})
ansi = re.compile(r"\x1b\[[0-9;]*m")
ids, lines = {}, {}
for f, who in names.items():
    try:
        text = ansi.sub("", open(os.path.join(work, f)).read())
    except OSError:
        continue
    m = re.search(r"announcing through the hub as (\S+)", text)
    if m:
        ids[m.group(1)] = who
    lines[who] = text.splitlines()
paths, attempts = {}, {}
for who, ls in lines.items():
    for line in ls:
        m = re.search(r"peer=(\S+)", line)
        if not m:
            continue
        if "peer reached directly" in line:
            kind = "direct"
        elif "peer reached by a punch" in line or "moved the peer from the relay" in line:
            kind = "punched (quic)" if "PunchedQuic" in line else "punched (tcp)"
        elif "was reached by a punch from its side" in line:
            kind = "punched"
        elif "peer reached through the hub's relay" in line:
            kind = "relayed"
        else:
            continue
        attempts[kind] = attempts.get(kind, 0) + 1
        pair = tuple(sorted([who, ids.get(m.group(1), m.group(1)[:12])]))
        paths.setdefault(pair, []).append(kind)
final = {}
for pair, kinds in sorted(paths.items()):
    better = [k for k in kinds if k != "relayed"]
    final[pair] = better[-1] if better else "relayed"
    print(f"  {pair[0]:>18} - {pair[1]:<18} {final[pair]}")
tally = {}
for k in final.values():
    tally[k] = tally.get(k, 0) + 1
print("peer paths:", ", ".join(f"{n} {k}" for k, n in sorted(tally.items())), f"(of {len(final)} pairs)")
print("connections made by the dialling side:", ", ".join(f"{n} {k}" for k, n in sorted(attempts.items())))
PY
