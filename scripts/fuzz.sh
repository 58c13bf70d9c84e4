#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer; nightly Rust): each target runs for
# SECONDS (default 30) from the seed corpus in fuzz/corpus/<target>, and the script fails
# on the first crash (the input is left in fuzz/artifacts/<target>/; replay it with
# `cargo +nightly fuzz run <target> <file>`). Prints each target's executions per second
# and the coverage it reached. New inputs go to a scratch corpus, not the repository's.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-30}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(frames files server_core client_core)
SCRATCH=$(mktemp -d /tmp/pbvote-fuzz.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT

cd fuzz
cargo +nightly fuzz build "${TARGETS[@]:0:1}" >/dev/null 2>&1 || true # warm the build
for target in "${TARGETS[@]}"; do
    mkdir -p "$SCRATCH/$target" "corpus/$target"
    out="$SCRATCH/$target.out"
    if ! cargo +nightly fuzz run "$target" "$SCRATCH/$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"$out" 2>&1; then
        tail -n 40 "$out"
        echo "fuzz: $target crashed (input in fuzz/artifacts/$target/)"
        exit 1
    fi
    done_line=$(grep -E '^#[0-9]+.*DONE' "$out" | tail -1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out")
    cov=$(echo "$done_line" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$done_line" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
    echo "fuzz: $target ok: ${execs} runs in ${SECONDS_EACH} s (${rate}/s), coverage ${cov} edges, ${ft} features"
done
