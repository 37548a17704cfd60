# Sourced by the netlab benches (swarm, fleet). Every lab host's ARP entries count against one
# kernel-wide neighbour table, whose hard limit (gc_thresh3) is 1024 by default: a full mesh of
# 33 hosts sits at that limit and 100 hosts are far over it ("neighbor table overflow" in
# dmesg). A SYN to a peer whose address is not yet resolved then never leaves its host and the
# dial times out, which starved leechers for minutes in a 100-host swarm.

NEIGH_DIR=/proc/sys/net/ipv4/neigh/default
NEIGH_SAVED=

# Raises the table for a full mesh of $1 hosts (2 x hosts^2 entries) when it is smaller;
# remembers the old thresholds for restore_neighbours.
raise_neighbours() {
    local hosts=$1 need
    need=$((hosts * hosts * 2))
    [ "$(cat "$NEIGH_DIR/gc_thresh3")" -ge "$need" ] && return 0
    NEIGH_SAVED=$(cat "$NEIGH_DIR/gc_thresh1" "$NEIGH_DIR/gc_thresh2" "$NEIGH_DIR/gc_thresh3" | tr '\n' ' ')
    echo $((need / 4)) >"$NEIGH_DIR/gc_thresh1"
    echo $((need / 2)) >"$NEIGH_DIR/gc_thresh2"
    echo "$need" >"$NEIGH_DIR/gc_thresh3"
}

# Puts back what raise_neighbours changed (nothing if it changed nothing); safe to call twice.
restore_neighbours() {
    [ -n "$NEIGH_SAVED" ] || return 0
    # shellcheck disable=SC2086 # three numbers, split on purpose
    set -- $NEIGH_SAVED
    echo "$1" >"$NEIGH_DIR/gc_thresh1"
    echo "$2" >"$NEIGH_DIR/gc_thresh2"
    echo "$3" >"$NEIGH_DIR/gc_thresh3"
    NEIGH_SAVED=
}
