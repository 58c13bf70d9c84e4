#!/usr/bin/env bash
# The small-footprint build: one statically linked file (musl), no libc to install, 1.5 MiB
# of RSS for an idle server (docs/PERFORMANCE.md). Adds the musl target with rustup where
# it is missing (it links with the usual `cc`; no musl-gcc needed). Prints the binary's path.
#
#   scripts/build-static.sh     # prints the absolute path of target/<arch>-unknown-linux-musl/release/pbvote
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=$(uname -m)-unknown-linux-musl
installed=$(rustup target list --installed 2>/dev/null || true)
if ! grep -qx "$TARGET" <<<"$installed"; then
    echo "== adding the $TARGET target" >&2
    rustup target add "$TARGET" >&2
fi
cargo build --release --quiet --target "$TARGET"
echo "$PWD/target/$TARGET/release/pbvote"
