#!/bin/sh
# Memory per idle connection of ferry-hub (spec/HUB.md §7): the hub binary in its own process,
# N authenticated idle connections; prints the hub's RSS before and after and the bytes each.
# Usage: benches/hub/idle.sh [N]   (default 5000; raise `ulimit -n` for more than ~500)
set -eu
N=${1:-5000}
ulimit -n $((N * 2 + 256)) 2>/dev/null || true
cd "$(dirname "$0")/../.."
HUB_IDLE_CONNECTIONS=$N cargo test --release -p ferry-hub --test idle -- --nocapture 2>&1 | grep -E 'hub RSS|test result'
