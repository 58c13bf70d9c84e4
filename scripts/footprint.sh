#!/usr/bin/env bash
# Idle server memory: starts a lone primary (no backup, no clients) from each build, waits
# for its `started` line, lets it idle for a second and prints its RSS from /proc: all of
# it, the anonymous part (its own heap and stacks) and the file-backed part (code pages of
# the binary and of any shared libraries, shared with every other process that maps them),
# and PSS. docs/PERFORMANCE.md explains the figures.
#
#   scripts/footprint.sh                # the dynamic (glibc) and static (musl) release builds
#   BUILDS=static scripts/footprint.sh  # one of them
set -euo pipefail
cd "$(dirname "$0")/.."
BUILDS=${BUILDS:-dynamic static}
DIR=$(mktemp -d /tmp/pbvote-footprint.XXXXXX)
PID=
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$DIR"
}
trap cleanup EXIT

printf '%-8s %10s %10s %10s %10s  %s\n' build 'RSS KiB' 'anon KiB' 'file KiB' 'PSS KiB' binary
for build in $BUILDS; do
    BIN=$(scripts/build.sh "$build")
    "$BIN" server --role primary --no-spawn --listen 127.0.0.1:0 2>"$DIR/$build.log" &
    PID=$!
    for _ in $(seq 100); do
        grep -q 'started role=primary' "$DIR/$build.log" && break
        kill -0 "$PID" 2>/dev/null || { cat "$DIR/$build.log" >&2; exit 1; }
        sleep 0.05
    done
    grep -q 'started role=primary' "$DIR/$build.log" || { echo "no start line" >&2; exit 1; }
    sleep 1
    field() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$PID/$2"; }
    printf '%-8s %10s %10s %10s %10s  %s\n' "$build" "$(field VmRSS status)" "$(field RssAnon status)" \
        "$(field RssFile status)" "$(field Pss smaps_rollup)" "$BIN"
    kill "$PID" && wait "$PID" 2>/dev/null || true
    PID=
done
