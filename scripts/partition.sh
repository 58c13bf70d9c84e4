#!/usr/bin/env bash
# Fault scenario: the primary-backup link is cut and healed again and again while the
# clients reach both servers; some cuts also SIGKILL one side. Three network namespaces
# (primary host, backup host, clients host) on a bridge; a cut is a pair of blackhole
# routes. Spawned backups start in the namespace of their address (scripts/netns-spawn.sh).
# Needs root and iproute2. The log checker's verdict is the exit status.
#
#   scripts/partition.sh     # CYCLES=8 BALLOTS=80 KILL_PCT=30 CUT_MS=1500
#   STOP_PRIMARY=1 scripts/partition.sh   # each cut also SIGSTOPs the primary until the
#                                         # backup took over, then SIGCONTs it: it is fenced
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-$ROOT/target/release/pbvote}
# shellcheck source=scripts/netns.sh
. "$ROOT/scripts/netns.sh"
CYCLES=${CYCLES:-8} BALLOTS=${BALLOTS:-80} KILL_PCT=${KILL_PCT:-30} CUT_MS=${CUT_MS:-1500}
STOP_PRIMARY=${STOP_PRIMARY:-0}
[ "$(id -u)" = 0 ] || { echo "partition.sh needs root (network namespaces)" >&2; exit 2; }
command -v ip >/dev/null || { echo "partition.sh needs iproute2" >&2; exit 2; }
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release" >&2; exit 2; }

tag=pbv$$ P=10.77.0.1 B=10.77.0.2 C=10.77.0.3
NS_P=$tag-p NS_B=$tag-b NS_C=$tag-c BR=${tag}br
DIR=$(mktemp -d "/tmp/pbvote-partition.XXXXXX") ERR=
ERR=$DIR/servers.err
CLIENTS=(a:yes b:yes c:yes d:no e:no) CLIENT_PIDS=() SERVERS=

cleanup() {
    [ -n "$SERVERS" ] && kill -KILL -- "-$SERVERS" 2>/dev/null
    [ ${#CLIENT_PIDS[@]} -gt 0 ] && kill -KILL "${CLIENT_PIDS[@]}" 2>/dev/null
    wait 2>/dev/null
    netns_down "$BR" "$NS_P" "$NS_B" "$NS_C"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== hosts: primary $P ($NS_P), backup $B ($NS_B), clients $C ($NS_C); files in $DIR"
netns_up "$BR" "$tag" "$NS_P=$P" "$NS_B=$B" "$NS_C=$C"
export PBV_NETNS="$P=$NS_P $B=$NS_B"

setsid ip netns exec "$NS_P" "$BIN" server --role primary --listen $P:7000 --backup-listen $B:7000 \
    --heartbeat-ms 100 --miss-limit 5 --backup-start-delay-ms 300 --ballot-interval-ms 250 \
    --ballots "$BALLOTS" --min-clients ${#CLIENTS[@]} --spawn-via "$ROOT/scripts/netns-spawn.sh" \
    2>"$ERR" &
SERVERS=$!
for spec in "${CLIENTS[@]}"; do
    id=${spec%%:*}
    ip netns exec "$NS_C" "$BIN" client --id "$id" --servers $P:7000,$B:7000 --log "$DIR/$id.log" \
        --policy "${spec##*:}" --until "$BALLOTS" 2>"$DIR/$id.err" &
    CLIENT_PIDS+=($!)
done

count() { grep -c -- "$1" "$ERR" 2>/dev/null || true; }
last_pid() { grep -- "$1" "$ERR" | tail -n 1 | sed -E 's/^[a-z]+\[([0-9]+)\].*/\1/'; }
clients_done() { [ "$(cat "$DIR"/*.err | grep -c client-done)" -ge ${#CLIENTS[@]} ]; }
wait_backups() { # until N backups were installed, or the clients are done
    local tries=300
    while [ "$(count 'view-change role=backup')" -lt "$1" ] && ! clients_done; do
        ((--tries > 0)) || { echo "!! no backup installed; servers:" >&2; tail -n 20 "$ERR" >&2; exit 1; }
        sleep 0.1
    done
}
blackhole() { ip -n "$NS_P" route "$1" blackhole $B/32; ip -n "$NS_B" route "$1" blackhole $P/32; }

for cycle in $(seq 1 "$CYCLES"); do
    wait_backups "$cycle"
    clients_done && { echo "== the clients finished before cycle $cycle"; break; }
    echo "== cycle $cycle: cut the primary-backup link for ${CUT_MS} ms"
    blackhole add
    if [ "$STOP_PRIMARY" = 1 ]; then
        pid=$(last_pid 'view-change role=primary') took=$(count 'took_over=true')
        echo "   and SIGSTOP the primary (pid $pid) until the backup takes over"
        kill -STOP "$pid"
        tries=300
        while [ "$(count 'took_over=true')" -le "$took" ]; do
            ((--tries > 0)) || { echo "!! no takeover" >&2; tail -n 20 "$ERR" >&2; exit 1; }
            sleep 0.1
        done
        kill -CONT "$pid"
        tries=300
        until grep -q "^primary\[$pid\].*stepped-down\|^backup\[$pid\].*stepped-down" "$ERR"; do
            ((--tries > 0)) || { echo "!! pid $pid never stepped down" >&2; tail -n 20 "$ERR" >&2; exit 1; }
            sleep 0.1
        done
        echo "   resumed: $(grep "\[$pid\].*stepped-down" "$ERR" | sed -E 's/.*(stepped-down role=[a-z]+ view=[0-9]+).*/\1/')"
    elif [ $((RANDOM % 100)) -lt "$KILL_PCT" ]; then
        if [ $((RANDOM % 2)) = 0 ]; then
            # Before the cut is noticed: the backup, not yet excluded, can take over.
            pid=$(last_pid 'view-change role=primary') side=primary
        else
            pid=$(last_pid 'view-change role=backup') side=backup
        fi
        echo "   and SIGKILL the $side (pid $pid)"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep "$(awk -v ms="$CUT_MS" 'BEGIN { print ms / 1000 }')"
    blackhole del
    echo "   healed; views so far: $(grep -o 'view-change role=primary view=[0-9]*' "$ERR" | tail -n 1)"
done

echo "== waiting for every client to log ballot $BALLOTS"
for pid in "${CLIENT_PIDS[@]}"; do wait "$pid"; done
CLIENT_PIDS=()
echo "== takeovers, step-downs and backups killed as declared dead"
grep -E 'stepped-down|took_over=true|backup-killed' "$ERR" | sed -E 's/^([a-z]+\[[0-9]+\]) [^ ]+ /   \1 /' | cut -c1-150 || true
args=()
for spec in "${CLIENTS[@]}"; do args+=("$DIR/${spec%%:*}.log=${spec##*:}"); done
echo "== log checker"
"$BIN" check-logs --ballots "$BALLOTS" "${args[@]}"
