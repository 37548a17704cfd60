# Pinning shared by benches/scaling/run.sh (every point) and benches/compare/run.sh (PIN=1, the
# 1-core point): a server on the first n cores, its load generator on the cores after them.
# On shared cores the rate measures the scheduler as much as either program, so both tools of a
# comparison are pinned by the same plan. Source it; it only defines functions.

# pin_plan N: sets PIN_SERVER_CPUS / PIN_SERVER_THREADS (cpus 0..N-1), PIN_LOAD_CPUS /
# PIN_LOAD_THREADS (the cores after them, at most 8) and the prefixes below. When N leaves no
# core over, the load generator shares all cores and PIN_NOTE is "shared" (the row measures
# the pair, not the server alone); otherwise PIN_NOTE is empty.
pin_plan() {
  local n=$1 cores last
  cores=$(nproc)
  PIN_SERVER_CPUS="0-$(( n - 1 ))"
  PIN_SERVER_THREADS=$n
  if [ "$cores" -gt "$n" ]; then
    last=$(( cores - 1 ))
    [ $(( last - n + 1 )) -gt 8 ] && last=$(( n + 7 ))
    PIN_LOAD_CPUS="$n-$last"; PIN_LOAD_THREADS=$(( last - n + 1 )); PIN_NOTE=""
  else
    PIN_LOAD_CPUS="0-$(( cores - 1 ))"; PIN_LOAD_THREADS=$cores; PIN_NOTE="shared"
  fi
  pin_prefixes
}

# PIN_SERVER and PIN_LOAD: command prefixes (arrays) that run a command on those cpus, with a
# tokio program's runtime sized to them (TOKIO_WORKER_THREADS: tokio already sizes itself from
# the affinity mask, but a benchmark should not depend on that default). Both exec the command,
# so `"${PIN_SERVER[@]}" server &` leaves the server's own pid in $!.
pin_prefixes() {
  PIN_SERVER=(env TOKIO_WORKER_THREADS="$PIN_SERVER_THREADS" taskset -c "$PIN_SERVER_CPUS")
  PIN_LOAD=(env TOKIO_WORKER_THREADS="$PIN_LOAD_THREADS" taskset -c "$PIN_LOAD_CPUS")
}
