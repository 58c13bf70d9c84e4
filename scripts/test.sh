#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and property tests, the simulator's seeds,
# and the process-level tests. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test "$@"
