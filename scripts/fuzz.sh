#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and fails on the
# first crash, leak or timeout. docs/fuzzing.md says how to read and replay
# what it finds.
#
#   scripts/fuzz.sh                  every target, 60 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh config
#
# The committed corpus (fuzz/corpus/<target>/) seeds each run; what the run
# finds goes to fuzz/target/corpus/<target>/, kept between runs and not
# committed. A crash leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
# The proxy is safe Rust: the signal is a panic, which needs no sanitizer.
# Without one the build takes half the time and each input runs faster;
# FUZZ_SANITIZER=address brings AddressSanitizer back for unsafe code in
# dependencies.
sanitizer=${FUZZ_SANITIZER:-none}
case $seconds in
  '' | *[!0-9]*) echo "fuzz: FUZZ_SECONDS must be a whole number of seconds, not '$seconds'" >&2; exit 2 ;;
esac

# Only stable Rust is installed; cargo fuzz needs nightly flags
# (-Zsanitizer), which RUSTC_BOOTSTRAP=1 allows on stable.
export RUSTC_BOOTSTRAP=1

# libFuzzer is C++, built by libfuzzer-sys.
if ! command -v c++ >/dev/null 2>&1; then
  echo "fuzz: installing g++" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

for target in "${targets[@]}"; do
  seeds=fuzz/corpus/$target
  found=fuzz/target/corpus/$target
  artifacts=fuzz/artifacts/$target
  mkdir -p "$seeds" "$found" "$artifacts"
  echo "fuzz: $target for ${seconds}s" >&2
  # -max_total_time bounds the run; -timeout fails any one input slower
  # than 10 s; -rss_limit_mb fails an input that makes the process grow
  # past 2 GiB. The first corpus directory is where new inputs are written.
  if ! cargo fuzz run --sanitizer "$sanitizer" --fuzz-dir fuzz "$target" "$found" "$seeds" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1; then
    echo "fuzz: $target found a failure; the input is in $artifacts/" >&2
    echo "fuzz: replay it with: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz $target $artifacts/<file>" >&2
    exit 1
  fi
done
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a failure" >&2
