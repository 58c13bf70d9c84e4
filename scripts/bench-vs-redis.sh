#!/usr/bin/env bash
# pbvote against Redis on this machine, in one run: a Redis primary with one replica,
# `redis-benchmark -t incr -c N -P 1` and `-P 16`, against `pbvote bench --clients N`
# with `--window 1` and `--window 16`. Prints the four figures and the two ratios
# (pbvote votes/s divided by Redis INCR/s). Installs Redis from Debian where missing.
#
#   scripts/bench-vs-redis.sh            # CLIENTS=100 DURATION=10 REQUESTS=1000000
#   CLIENTS=10000 scripts/bench-vs-redis.sh   # Redis gets maxclients to fit, and the
#                                             # descriptor limit is raised to the hard one
#   BUILD=static scripts/bench-vs-redis.sh   # the static (musl) build, scripts/build.sh static
#   PBVOTE_BIN=/path/to/pbvote scripts/bench-vs-redis.sh   # another binary (an older build)
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-100} DURATION=${DURATION:-10} REQUESTS=${REQUESTS:-1000000}
RPORT=${RPORT:-6390} BUILD=${BUILD:-dynamic}

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    echo "== installing redis from Debian's packages"
    apt-get update -qq && apt-get install -y -qq redis-server redis-tools >/dev/null
fi
BIN=${PBVOTE_BIN:-$(scripts/build.sh "$BUILD")}
# redis-benchmark holds a socket per client, Redis one per client plus its own; the bench
# hosts what does not fit in one process in workers.
ulimit -n "$(ulimit -Hn)"
MAXCLIENTS=$((CLIENTS + 64))
if [ $((MAXCLIENTS + 32)) -gt "$(ulimit -n)" ]; then
    echo "$CLIENTS clients need $((MAXCLIENTS + 32)) descriptors; the hard limit is $(ulimit -n)" >&2
    exit 2
fi
DIR=$(mktemp -d /tmp/pbvote-vs-redis.XXXXXX)
cleanup() {
    if [ -n "$RPORT" ]; then
        redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
        redis-cli -p $((RPORT + 1)) shutdown nosave >/dev/null 2>&1 || true
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT

for port in "$RPORT" $((RPORT + 1)); do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
        echo "a Redis already answers on :$port; set RPORT to a free pair of ports" >&2
        RPORT= # not ours: cleanup must not shut it down
        exit 2
    fi
done
echo "== redis $(redis-server --version | grep -o 'v=[0-9.]*'): primary :$RPORT, replica :$((RPORT + 1))"
redis-server --port "$RPORT" --save '' --appendonly no --daemonize yes --dir "$DIR" \
    --maxclients "$MAXCLIENTS" \
    --logfile "$DIR/primary.log" --pidfile "$DIR/primary.pid"
redis-server --port $((RPORT + 1)) --save '' --appendonly no --daemonize yes --dir "$DIR" \
    --maxclients "$MAXCLIENTS" \
    --logfile "$DIR/replica.log" --pidfile "$DIR/replica.pid" --replicaof 127.0.0.1 "$RPORT"
for _ in $(seq 100); do
    replication=$(redis-cli -p $((RPORT + 1)) info replication 2>/dev/null || true)
    grep -q 'master_link_status:up' <<<"$replication" && break
    sleep 0.1
done
grep -q 'master_link_status:up' <<<"$replication" || {
    echo "the Redis replica did not link up within 10 s; see $DIR/*.log" >&2
    exit 1
}

redis_rps() { # PIPELINE
    redis-benchmark -p "$RPORT" -t incr -c "$CLIENTS" -n "$REQUESTS" -P "$1" -q \
        | tr '\r' '\n' | grep -o 'INCR: [0-9.]*' | tail -n 1 | awk '{ print $2 }'
}
pbvote_vps() { # WINDOW
    "$BIN" bench --clients "$CLIENTS" --window "$1" --duration "$DURATION" --json \
        | grep -o '"votes_per_s":[0-9.]*' | cut -d: -f2
}

r1=$(redis_rps 1)
r16=$(redis_rps 16)
p1=$(pbvote_vps 1)
p16=$(pbvote_vps 16)
printf '== %d clients, %s build\n' "$CLIENTS" "$BUILD"
printf 'redis  INCR/s  -P 1   %12.0f\n' "$r1"
printf 'redis  INCR/s  -P 16  %12.0f\n' "$r16"
printf 'pbvote votes/s -w 1   %12.0f   ratio %.2f\n' "$p1" "$(awk -v a="$p1" -v b="$r1" 'BEGIN { print a / b }')"
printf 'pbvote votes/s -w 16  %12.0f   ratio %.2f\n' "$p16" "$(awk -v a="$p16" -v b="$r16" 'BEGIN { print a / b }')"
