#!/usr/bin/env bash
# Builds pbvote in release mode and prints the binary's absolute path.
#
#   scripts/build.sh           # dynamic: against the system's glibc, target/release/pbvote
#   scripts/build.sh static    # one statically linked file (musl), the small-footprint
#                              # build: 1.5 MiB of RSS for an idle server (PERFORMANCE.md)
#
# The static build adds the musl target with rustup where it is missing (it links with the
# usual `cc`; no musl-gcc needed) and lands in target/<arch>-unknown-linux-musl/release/.
set -euo pipefail
cd "$(dirname "$0")/.."
case ${1:-dynamic} in
dynamic)
    cargo build --release --quiet
    echo "$PWD/target/release/pbvote"
    ;;
static)
    TARGET=$(uname -m)-unknown-linux-musl
    installed=$(rustup target list --installed 2>/dev/null || true)
    if ! grep -qx "$TARGET" <<<"$installed"; then
        echo "== adding the $TARGET target" >&2
        rustup target add "$TARGET" >&2
    fi
    cargo build --release --quiet --target "$TARGET"
    echo "$PWD/target/$TARGET/release/pbvote"
    ;;
*) echo "usage: scripts/build.sh [dynamic|static]" >&2 && exit 2 ;;
esac
