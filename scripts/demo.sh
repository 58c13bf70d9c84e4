#!/usr/bin/env bash
# A local cluster you can watch fail over: a primary, the backup it spawns by fork/exec,
# and three clients voting on BALLOTS ballots. Partway, the primary is SIGKILLed: the
# backup takes over, spawns a new backup that joins with a state transfer, and the
# ballots go on. At the end the log checker gives its verdict, with the time from the
# kill to the first result of the new view. Ctrl-C stops everything.
#
#   scripts/demo.sh                      # 30 ballots, one every 300 ms, the kill at 12
#   BALLOTS=100 INTERVAL_MS=100 KILL_AT=50 scripts/demo.sh
#   KILL_AT=0 scripts/demo.sh            # no kill
set -euo pipefail
cd "$(dirname "$0")/.."

BALLOTS=${BALLOTS:-30}
INTERVAL_MS=${INTERVAL_MS:-300}
START_DELAY_MS=${START_DELAY_MS:-1000}
KILL_AT=${KILL_AT:-$((BALLOTS * 2 / 5))}
PORT=${PORT:-7000}
DIR=$(mktemp -d /tmp/pbvote-demo.XXXXXX)

echo "== building"
cargo build --release --quiet
BIN=target/release/pbvote

cleanup() {
    # The watcher goes first, so the servers' own shutdown does not scroll by after the
    # verdict. It is a pipeline (tail | grep | sed): stop the `tail -F` by what it follows.
    pkill -f -- "-F $DIR/" 2>/dev/null || true
    # Every server (the primary, the backups it spawns and their replacements) is in the
    # process group setsid made for the primary: one signal stops them all at once.
    if [ -n "${PRIMARY:-}" ]; then kill -TERM -- "-$PRIMARY" 2>/dev/null || true; fi
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    return 0
}
trap cleanup EXIT INT TERM

committed() {
    "$BIN" status --server "$1" --json 2>/dev/null | sed -n 's/.*"committed":\([0-9]*\).*/\1/p'
}

echo "== files in $DIR"
echo "== primary on 127.0.0.1:$PORT spawns its backup on 127.0.0.1:$((PORT + 1)) (joins after ${START_DELAY_MS} ms)"
setsid "$BIN" server --role primary --listen 127.0.0.1:$PORT --backup-listen 127.0.0.1:$((PORT + 1)) \
    --heartbeat-ms 200 --miss-limit 5 --backup-start-delay-ms "$START_DELAY_MS" \
    --ballot-interval-ms "$INTERVAL_MS" --ballots "$BALLOTS" --min-clients 3 \
    2>"$DIR/servers.err" &
PRIMARY=$!
disown "$PRIMARY" # its SIGKILL is the demo's, not news

for spec in alice:yes bob:no carol:random; do  # carol votes at random, seed 7
    id=${spec%%:*}
    policy=${spec##*:}
    touch "$DIR/$id.log"
    seed=(); [ "$policy" = random ] && seed=(--seed 7)
    $BIN client --id "$id" --servers 127.0.0.1:$PORT,127.0.0.1:$((PORT + 1)) \
        --log "$DIR/$id.log" --policy "$policy" "${seed[@]}" --until "$BALLOTS" 2>"$DIR/$id.err" &
done

# Watch the servers' events, one line each, without the per-vote noise (the clients'
# logs are checked at the end). `primary[P]` is the process started as primary,
# `backup[B]` each backup; a backup that takes over keeps its tag.
tail -n +1 -F "$DIR/servers.err" 2>/dev/null | grep --line-buffered -E \
    'started role|spawned-backup|view-change|ballot-result|peer-dead|takeover-start|backup-exited' |
    sed -u -E 's/^([a-z]+\[[0-9]+\]) [0-9T:.-]+Z \[[A-Z]+\] /  \1 /' &

if [ "$KILL_AT" -gt 0 ]; then
    until [ "$(committed 127.0.0.1:$PORT)" -ge "$KILL_AT" ] 2>/dev/null; do sleep 0.05; done
    KILLED_AT=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
    kill -KILL "$PRIMARY"
    echo
    echo "########  SIGKILL the primary (pid $PRIMARY) after ballot $KILL_AT: the backup takes over  ########"
    echo
fi

for id in alice bob carol; do
    while ! [ "$(wc -l <"$DIR/$id.log")" -ge "$BALLOTS" ]; do sleep 0.2; done
done
sleep 0.3
pkill -f -- "-F $DIR/" 2>/dev/null || true
# After a takeover the primary is on the old backup port.
STATUS_PORT=$PORT
[ "$KILL_AT" -gt 0 ] && STATUS_PORT=$((PORT + 1))
echo "== status of the primary (127.0.0.1:$STATUS_PORT)"
$BIN status --server 127.0.0.1:$STATUS_PORT
if [ "$KILL_AT" -gt 0 ]; then
    # The first result a backup process published: the new view's, after the kill.
    first=$(grep -m1 -E '^backup\[[0-9]+\] .*ballot-result' "$DIR/servers.err" | cut -d' ' -f2)
    ms=$(( ($(date -d "$first" +%s%N) - $(date -d "$KILLED_AT" +%s%N)) / 1000000 ))
    echo "== failover: ${ms} ms from the kill to the first result of the new view"
fi
echo "== log checker"
$BIN check-logs --ballots "$BALLOTS" "$DIR/alice.log=yes" "$DIR/bob.log=no" "$DIR/carol.log=random:7"
