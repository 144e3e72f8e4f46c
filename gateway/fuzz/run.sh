#!/usr/bin/env bash
# Runs each fuzz target (or those named) for a bounded time:
#
#   bash gateway/fuzz/run.sh                 # every target, FUZZ_SECONDS each (default 60)
#   FUZZ_SECONDS=1200 bash gateway/fuzz/run.sh frame_reader command
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). It uses a nightly toolchain
# when rustup has one, else stable with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes
# -Z flags). The seeds in corpus/TARGET are read; what the fuzzer finds goes
# to target/corpus/TARGET, and a crash or hang to artifacts/TARGET (each one
# becomes a regression test in the gateway's or storage's tests). Exits 1 at
# the first target that crashes.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame_reader command http_head token record)
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "run.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 1
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
for target in "${targets[@]}"; do
    mkdir -p "target/corpus/$target"
    echo "== $target: $seconds s" >&2
    "${fuzz[@]}" run "$target" "target/corpus/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
