#!/usr/bin/env bash
# A local cluster you can watch: a primary, the backup it spawns by fork/exec, and three
# clients voting on BALLOTS ballots. Server events and every client log line scroll by;
# at the end the log checker gives its verdict. Ctrl-C stops everything.
#
#   scripts/demo.sh            # 30 ballots, one every 500 ms, backup joins after 3 s
#   BALLOTS=100 INTERVAL_MS=100 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BALLOTS=${BALLOTS:-30}
INTERVAL_MS=${INTERVAL_MS:-500}
START_DELAY_MS=${START_DELAY_MS:-3000}
PORT=${PORT:-7000}
DIR=$(mktemp -d /tmp/pbvote-demo.XXXXXX)

echo "== building"
cargo build --release --quiet
BIN=target/release/pbvote

cleanup() {
    # The watchers go first, so the servers' own shutdown does not scroll by after the
    # verdict. They are pipelines (tail | grep): `jobs -p` names one process of each, so
    # stop the `tail -F`s by what they follow, or they outlive the demo.
    pkill -f -- "-F $DIR/" 2>/dev/null
    # Every server (the primary, the backups it spawns and their replacements) is in the
    # process group setsid made for the primary: one signal stops them all at once. (Stop
    # the backup first and the primary respawns it; the primary first and the backup
    # takes over.)
    [ -n "${PRIMARY:-}" ] && kill -TERM -- "-$PRIMARY" 2>/dev/null
    kill $(jobs -p) 2>/dev/null
    wait 2>/dev/null
    return 0
}
trap cleanup EXIT INT TERM

echo "== files in $DIR"
echo "== primary on 127.0.0.1:$PORT spawns its backup on 127.0.0.1:$((PORT + 1)) (joins after ${START_DELAY_MS} ms)"
setsid "$BIN" server --role primary --listen 127.0.0.1:$PORT --backup-listen 127.0.0.1:$((PORT + 1)) \
    --heartbeat-ms 200 --miss-limit 5 --backup-start-delay-ms "$START_DELAY_MS" \
    --ballot-interval-ms "$INTERVAL_MS" --ballots "$BALLOTS" --min-clients 3 \
    2>"$DIR/servers.err" &
PRIMARY=$!

for spec in alice:yes bob:no carol:random; do  # carol votes at random, seed 7
    id=${spec%%:*}
    policy=${spec##*:}
    touch "$DIR/$id.log"
    seed=(); [ "$policy" = random ] && seed=(--seed 7)
    $BIN client --id "$id" --servers 127.0.0.1:$PORT,127.0.0.1:$((PORT + 1)) \
        --log "$DIR/$id.log" --policy "$policy" "${seed[@]}" --until "$BALLOTS" 2>"$DIR/$id.err" &
done

# Watch: server events (without the per-vote noise) and each client's log as it grows.
tail -n +1 -F "$DIR/servers.err" 2>/dev/null | grep --line-buffered -E \
    'started|spawned|join|view-change|ballot-result|peer-|backup-exited' &
for id in alice bob carol; do
    tail -n +1 -F "$DIR/$id.log" 2>/dev/null | sed -u "s/^/    $id.log: /" &
done

for id in alice bob carol; do
    while ! [ "$(wc -l <"$DIR/$id.log")" -ge "$BALLOTS" ]; do sleep 0.2; done
done
sleep 0.3
echo "== status of the primary"
$BIN status --server 127.0.0.1:$PORT
echo "== log checker"
$BIN check-logs --ballots "$BALLOTS" "$DIR/alice.log=yes" "$DIR/bob.log=no" "$DIR/carol.log=random:7"
