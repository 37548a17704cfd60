#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer instrumentation on the stable toolchain (the flags
# cargo-fuzz would pass, minus the nightly-only sanitizer) and runs each for a few seconds.
#   fuzz/smoke.sh            # every target, 20 s each
#   fuzz/smoke.sh decoder 600
#   FUZZ_BUILD_ONLY=1 fuzz/smoke.sh   # build every target, run none (CI builds ahead this way)
set -euo pipefail
cd "$(dirname "$0")"
seconds=${2:-${FUZZ_SECONDS:-20}}
targets=${1:-$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^ferry-fuzz$')}
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
# An explicit --target keeps RUSTFLAGS away from build scripts, as cargo-fuzz does.
host=$(rustc -vV | sed -n 's/^host: //p')
# --locked: fuzz/Cargo.lock is tracked and must match, so CI never rewrites it.
cargo build --release --locked --bins --target "$host"
[ "${FUZZ_BUILD_ONLY:-0}" = 1 ] && exit 0
for target in $targets; do
  mkdir -p "corpus/$target"
  echo "== fuzz $target for ${seconds}s"
  "$CARGO_TARGET_DIR/$host/release/$target" "corpus/$target" -max_total_time="$seconds" -max_len=4096 \
    -print_final_stats=1 2>&1 | grep -E 'Done|stat::number_of_executed_units|ERROR|panicked|SUMMARY' || true
  # libFuzzer exits non-zero on a crash; re-check its status through the artifact it leaves.
  if ls crash-* leak-* oom-* timeout-* >/dev/null 2>&1; then
    echo "fuzz target $target found a failing input:" crash-* leak-* oom-* timeout-* 2>/dev/null
    exit 1
  fi
done
