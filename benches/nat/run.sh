#!/usr/bin/env bash
# The NAT matrix of issue 12 on netlab (run as root from anywhere):
#   for every ordered pair of NAT kinds (fullcone, restricted, portrestricted, symmetric: 16
#   pairs), ATTEMPTS punches per transport between peer1 (behind KIND1, dials) and peer2 (behind
#   KIND2, listens) through a rendezvous on `pub`: TCP simultaneous open (spec §14.3) and QUIC
#   over punched UDP (§14.4). Prints, per pair and transport, how many attempts came up direct,
#   the median time to first byte and to a Ferry PSK ping's answer, then the totals.
#
#   ATTEMPTS=20 DELAY=20ms benches/nat/run.sh          # the issue's 20 attempts, RTT 40 ms
#   KINDS=fullcone,symmetric ATTEMPTS=3 benches/nat/run.sh
#
# Each pair holds `flock /tmp/netlab.lock` from up-nat to down (namespace prefix "trav");
# per-attempt JSON lines go to stderr. Builds the release example first.
set -euo pipefail
cd "$(dirname "$0")/../.."
NL=${NETLAB:-$PWD/../shared/netlab/netlab}
ATTEMPTS=${ATTEMPTS:-5}
cargo build --release -q -p ferry-traversal --example punch-lab
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/punch-lab
args=(matrix --attempts "$ATTEMPTS" --netlab "$NL")
if [ -n "${DELAY:-}" ]; then args+=(--delay "$DELAY"); fi
if [ -n "${KINDS:-}" ]; then args+=(--kinds "$KINDS"); fi
exec "$BIN" "${args[@]}"
