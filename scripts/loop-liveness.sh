#!/usr/bin/env bash
# Does the primary's event loop stay live under load? Prints the longest gap between two
# heartbeats the primary sent its backup, and its longest loop turn, in each of three
# phases (from `pbvote status`, which gives them since its previous answer):
#   1. CLIENTS (5000) clients voting, ballots one after another;
#   2. the same, while CHURN (10000) connections are opened and closed at the primary;
#   3. the same, with one more client that says hello and never reads (it joins: the
#      ballots then wait for its vote, and the primary keeps sending it what it does
#      not read).
# A benchmark: it prints figures against the heartbeat interval and asserts nothing.
#
#   scripts/loop-liveness.sh          # CLIENTS=5000 CHURN=10000 HEARTBEAT_MS=100 PHASE_S=5
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-5000} CHURN=${CHURN:-10000} HEARTBEAT_MS=${HEARTBEAT_MS:-100} PHASE_S=${PHASE_S:-5}
cargo build --release --quiet
BIN=$PWD/target/release/pbvote
ulimit -n "$(ulimit -Hn)" # the clients need three descriptors each, the primary one
PORT=$((20000 + RANDOM % 20000))
A1=127.0.0.1:$PORT A2=127.0.0.1:$((PORT + 1))
DIR=$(mktemp -d /tmp/pbvote-liveness.XXXXXX)
SERVERS= WORKER=

cleanup() {
    [ -n "$WORKER" ] && kill -KILL "$WORKER" 2>/dev/null || true
    [ -n "$SERVERS" ] && kill -KILL -- "-$SERVERS" 2>/dev/null || true
    { wait; } 2>/dev/null || true
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== a primary on $A1 (heartbeat every $HEARTBEAT_MS ms), its backup, $CLIENTS clients; files in $DIR"
setsid "$BIN" server --role primary --listen "$A1" --backup-listen "$A2" \
    --heartbeat-ms "$HEARTBEAT_MS" --miss-limit 5 --backup-start-delay-ms 200 \
    --ballot-interval-ms 0 --min-clients "$CLIENTS" --log-level warn 2>"$DIR/servers.err" &
SERVERS=$!
disown "$SERVERS"
"$BIN" bench-worker --servers "$A1,$A2" --dir "$DIR" --first 0 --count "$CLIENTS" 2>"$DIR/worker.err" &
WORKER=$!

field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
status() { "$BIN" status --server "$A1" --json 2>/dev/null || true; }
report() { # phase name
    local json
    json=$(status)
    printf '%-34s committed %6s  clients %5s  longest heartbeat gap %4s ms  longest turn %4s ms\n' \
        "$1" "$(field committed <<<"$json")" "$(field connected_clients <<<"$json")" \
        "$(field recent_heartbeat_gap_max_ms <<<"$json")" "$(field recent_turn_max_ms <<<"$json")"
}

tries=1200
until [ "$(status | field committed)" -ge 10 ] 2>/dev/null; do
    ((--tries > 0)) || { echo "!! no ballots within 120 s" >&2; tail -n 20 "$DIR"/*.err >&2; exit 1; }
    sleep 0.1
done
report "0. (the last 100 ms of the join)"
sleep "$PHASE_S"
report "1. $CLIENTS clients voting"

started=$(date +%s.%N)
bash -c "for i in \$(seq $CHURN); do exec {fd}<>/dev/tcp/${A1%:*}/${A1#*:} && exec {fd}>&-; done" 2>/dev/null || true
took=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
report "2. + $CHURN connections (${took} s)"

# A client's hello, framed (4-byte length, CBOR {"Client": {"id": "stalled", "last_seq": 0,
# "view": 0}}), on a connection nobody reads.
exec {stalled}<>"/dev/tcp/${A1%:*}/${A1#*:}"
printf '\x00\x00\x00\x24\xa1\x66Client\xa3\x62id\x67stalled\x68last_seq\x00\x64view\x00' >&"$stalled"
sleep "$PHASE_S"
report "3. + a client that never reads"
exec {stalled}>&-
json=$(status)
echo "== since the start: longest heartbeat gap $(field heartbeat_gap_max_ms <<<"$json") ms, longest turn $(field turn_max_ms <<<"$json") ms"
echo "== against the heartbeat interval of $HEARTBEAT_MS ms: a gap of one interval is on time; what is above it, the loop added"
