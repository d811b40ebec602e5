#!/usr/bin/env bash
# Fuzzes passgate's pure input parsers: runs every target for SECONDS (default 60) each and
# prints how many inputs each executed. Exits non-zero if any target crashed, hung or leaked.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]     (crash reproducers land in fuzz/artifacts/)
set -euo pipefail
secs="${1:-60}"
shift || true
cd "$(dirname "$0")"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(route_parser config_loader jwt_front)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
  cargo install cargo-fuzz --locked
fi

# cargo-fuzz needs nightly for -Zsanitizer / coverage flags. Prefer an installed nightly; with
# only a stable toolchain, RUSTC_BOOTSTRAP=1 unlocks the same flags on stable.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  echo "no nightly toolchain: using stable with RUSTC_BOOTSTRAP=1" >&2
  export RUSTC_BOOTSTRAP=1
  toolchain=()
fi
# The parsers are safe Rust: panics and hangs are what we hunt, so AddressSanitizer is off by
# default (builds and runs several times faster). FUZZ_SANITIZER=address turns it back on.
sanitizer="${FUZZ_SANITIZER:-none}"

mkdir -p logs
status=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  log="logs/$t.log"
  echo "== $t: ${secs}s" >&2
  if cargo "${toolchain[@]}" fuzz run -O -s "$sanitizer" "$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  summary+=("$t: ${execs:-?} executions in ${secs}s, $result")
  if [ "$result" = FAILED ]; then
    tail -40 "$log" >&2
  fi
done
printf '%s\n' "${summary[@]}"
exit $status
