#!/usr/bin/env bash
# Chaos soak: a primary, its backup and six clients for MINUTES minutes (default 2) under
# random faults of every kind, one at a time (the fault model: a server fails only while
# the other is up and installed), each spaced at random around the detection time after
# the service has recovered from the one before:
#   kill-primary, kill-backup         SIGKILL of a server
#   stop-primary, stop-backup         SIGSTOP for 0.2-1.5 s, then SIGCONT
#   cut-blackhole                     the primary-backup link cut by blackhole routes
#                                     (sends fail at once)
#   cut-silent                        the same link routed to a gateway nobody answers
#                                     (packets vanish: only timeouts tell)
#   kill-client                       SIGKILL of a client, restarted 0.1-1 s later
#   garbage                           random bytes to a server
#   flood                             300 connections opened at a server, then closed
# It prints each fault as it injects it, then a summary (faults by kind, ballots
# completed, the longest time without a result) and the log checker's verdict, which is
# its exit status. It leaves nothing behind. The cuts need root (network namespaces, one
# per host); without root the processes run on loopback and the cuts are skipped.
#
#   scripts/soak.sh [MINUTES]         # MINUTES may be a fraction: 0.5
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MINUTES=${1:-2}
HEARTBEAT_MS=100 MISS=5
DETECT_MS=$((HEARTBEAT_MS * MISS))
CLIENTS=(a:yes b:yes c:yes d:no e:no f:random)
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
    BIN=$ROOT/target/release/pbvote
fi

tag=pbs$$ DIR=$(mktemp -d /tmp/pbvote-soak.XXXXXX)
ERR=$DIR/servers.err
SERVERS= CLIENT_PIDS=() ROOTED=0
[ "$(id -u)" = 0 ] && command -v ip >/dev/null && ROOTED=1
# What runs a command on the primary's host and on the clients' (nothing, on loopback).
if [ "$ROOTED" = 1 ]; then
    P=10.78.0.1 B=10.78.0.2 C=10.78.0.3 NS_P=$tag-p NS_B=$tag-b NS_C=$tag-c BR=${tag}br
    ON_P=(ip netns exec "$NS_P") ON_C=(ip netns exec "$NS_C")
    PORT=7000 PORT_B=7000
else
    P=127.0.0.1 B=127.0.0.1 C=127.0.0.1
    ON_P=() ON_C=()
    PORT=$((20000 + RANDOM % 20000)) PORT_B=$((PORT + 1))
fi
in_c() { "${ON_C[@]}" "$@"; }
# shellcheck source=scripts/netns.sh
. "$ROOT/scripts/netns.sh"
A1=$P:$PORT A2=$B:$PORT_B

cleanup() {
    trap - EXIT
    [ -n "$SERVERS" ] && kill -KILL -- "-$SERVERS" 2>/dev/null || true
    for pid in "${CLIENT_PIDS[@]}"; do [ "$pid" = - ] || kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$ROOTED" = 1 ]; then netns_down "$BR" "$NS_P" "$NS_B" "$NS_C"; fi
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$ROOTED" = 1 ]; then
    echo "== hosts: primary $P, backup $B, clients $C, each a network namespace; files in $DIR"
    netns_up "$BR" "$tag" "$NS_P=$P" "$NS_B=$B" "$NS_C=$C"
    export PBV_NETNS="$P=$NS_P $B=$NS_B"
    SPAWN=(--spawn-via "$ROOT/scripts/netns-spawn.sh")
else
    echo "== not root: everything on loopback (ports $PORT, $PORT_B), the cuts are skipped; files in $DIR"
    SPAWN=()
fi

setsid "${ON_P[@]}" "$BIN" server --role primary --listen "$A1" --backup-listen "$A2" \
    --heartbeat-ms $HEARTBEAT_MS --miss-limit $MISS --backup-start-delay-ms 300 \
    --ballot-interval-ms 50 --min-clients ${#CLIENTS[@]} "${SPAWN[@]}" 2>"$ERR" &
SERVERS=$!
disown "$SERVERS" # its SIGKILL is one of the faults, not news

start_client() { # index
    local id=${CLIENTS[$1]%%:*} policy=${CLIENTS[$1]##*:} seed=()
    [ "$policy" = random ] && seed=(--seed 11)
    local args=(client --id "$id" --servers "$A1,$A2" --log "$DIR/$id.log" --policy "$policy" "${seed[@]}")
    # Not through a function: `$!` must be the client itself (`ip netns exec` execs it).
    "${ON_C[@]}" "$BIN" "${args[@]}" 2>>"$DIR/$id.err" &
    CLIENT_PIDS[$1]=$!
}
for i in "${!CLIENTS[@]}"; do start_client "$i"; done

ms() { awk -v ms="$1" 'BEGIN { print ms / 1000 }'; }
rand() { echo $(($1 + RANDOM % ($2 - $1 + 1))); } # rand LO HI
results() { grep -c 'ballot-result' "$ERR" 2>/dev/null || true; }
# The pid serving `addr` now: its latest `listening addr=` line.
pid_at() { grep "listening addr=$1\$" "$ERR" | tail -n 1 | sed -E 's/^[a-z]+\[([0-9]+)\].*/\1/'; }
# The primary's address, once a primary with an installed, live backup serves.
steady() {
    local addr
    for addr in "$A1" "$A2"; do
        local json
        json=$(in_c "$BIN" status --server "$addr" --json 2>/dev/null) || continue
        case $json in
        *'"role":"Primary"'*'"backup":"'*'"alive":true'*) echo "$addr"; return 0 ;;
        esac
    done
    return 1
}
other() { [ "$1" = "$A1" ] && echo "$A2" || echo "$A1"; }
wait_steady() { # until steady and a result newer than $1 results
    local tries=600
    while ! steady >/dev/null || [ "$(results)" -le "$1" ]; do
        ((--tries > 0)) || { echo "!! no recovery within 60 s; servers:" >&2; tail -n 30 "$ERR" >&2; exit 1; }
        sleep 0.1
    done
}
cut() { # add|del blackhole|silent
    local how=$1 kind=$2 dev_p dev_b
    if [ "$kind" = blackhole ]; then
        ip -n "$NS_P" route "$how" blackhole "$B/32"
        ip -n "$NS_B" route "$how" blackhole "$P/32"
    else
        # Through a gateway on the bridge that nobody answers: packets vanish.
        ip -n "$NS_P" route "$how" "$B/32" via 10.78.0.99
        ip -n "$NS_B" route "$how" "$P/32" via 10.78.0.99
    fi
}

declare -A FAULTS=()
KINDS=(kill-primary kill-backup stop-primary stop-backup kill-client garbage flood)
[ "$ROOTED" = 1 ] && KINDS+=(cut-blackhole cut-silent)
END=$(($(date +%s) + $(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }')))
echo "== soak for $MINUTES min: faults from ${KINDS[*]}"
wait_steady 0
while [ "$(date +%s)" -lt "$END" ]; do
    sleep "$(ms "$(rand $((DETECT_MS / 2)) $((DETECT_MS * 3)))")"
    primary=$(steady) || { wait_steady "$(results)"; continue; }
    backup=$(other "$primary")
    kind=${KINDS[$((RANDOM % ${#KINDS[@]}))]}
    before=$(results)
    t=$(date +%H:%M:%S.%3N)
    case $kind in
    kill-primary | kill-backup)
        [ "$kind" = kill-primary ] && addr=$primary || addr=$backup
        pid=$(pid_at "$addr")
        echo "$t $kind $addr (pid $pid)"
        kill -KILL "$pid" 2>/dev/null || true
        ;;
    stop-primary | stop-backup)
        [ "$kind" = stop-primary ] && addr=$primary || addr=$backup
        pid=$(pid_at "$addr") for_ms=$(rand 200 1500)
        echo "$t $kind $addr (pid $pid) for $for_ms ms"
        kill -STOP "$pid" 2>/dev/null || true
        sleep "$(ms "$for_ms")"
        kill -CONT "$pid" 2>/dev/null || true
        ;;
    cut-blackhole | cut-silent)
        for_ms=$(rand $((DETECT_MS / 2)) $((DETECT_MS * 4)))
        echo "$t $kind between $P and $B for $for_ms ms"
        cut add "${kind#cut-}"
        sleep "$(ms "$for_ms")"
        cut del "${kind#cut-}"
        ;;
    kill-client)
        i=$((RANDOM % ${#CLIENTS[@]})) back_ms=$(rand 100 1000)
        echo "$t $kind ${CLIENTS[$i]%%:*} (pid ${CLIENT_PIDS[$i]}), restarted after $back_ms ms"
        kill -KILL "${CLIENT_PIDS[$i]}" 2>/dev/null || true
        { wait "${CLIENT_PIDS[$i]}"; } 2>/dev/null || true # bash's "Killed" is no news
        sleep "$(ms "$back_ms")"
        start_client "$i"
        ;;
    garbage)
        addr=$( ((RANDOM % 2)) && echo "$primary" || echo "$backup")
        echo "$t $kind to $addr"
        in_c bash -c "head -c $(rand 1 600) /dev/urandom > /dev/tcp/${addr%:*}/${addr#*:}" 2>/dev/null || true
        ;;
    flood)
        addr=$( ((RANDOM % 2)) && echo "$primary" || echo "$backup")
        echo "$t $kind of 300 connections to $addr"
        in_c bash -c "fds=(); for i in \$(seq 300); do exec {fd}<>/dev/tcp/${addr%:*}/${addr#*:} || break; fds+=(\$fd); done; for fd in \"\${fds[@]}\"; do exec {fd}>&-; done" 2>/dev/null || true
        ;;
    esac
    FAULTS[$kind]=$((${FAULTS[$kind]:-0} + 1))
    wait_steady "$before"
done

echo "== faults over; the service runs on a moment, then every process is stopped"
before=$(results) tries=600
until [ "$(results)" -ge $((before + 5)) ]; do
    ((--tries > 0)) || { echo "!! no results after the faults; servers:" >&2; tail -n 30 "$ERR" >&2; exit 1; }
    sleep 0.1
done
for pid in "${CLIENT_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
{ wait "${CLIENT_PIDS[@]}"; } 2>/dev/null || true
CLIENT_PIDS=()
kill -KILL -- "-$SERVERS" 2>/dev/null || true
SERVERS=

echo "== summary"
total=0
for kind in "${!FAULTS[@]}"; do
    printf '   %-14s %d\n' "$kind" "${FAULTS[$kind]}"
    total=$((total + FAULTS[$kind]))
done
echo "   faults: $total"
longest=0
for spec in "${CLIENTS[@]}"; do
    n=$(wc -l <"$DIR/${spec%%:*}.log")
    [ "$n" -gt "$longest" ] && longest=$n
done
echo "   ballots completed: $longest"
# The longest wait between two results published (from the servers' log timestamps).
# Only lines whose timestamp parses count (another process's output may share a line).
gap=$(grep 'ballot-result' "$ERR" | sed -nE 's/^[^ ]+ [0-9-]+T([0-9]{2}:[0-9]{2}:[0-9.]+)Z \[INFO\] ballot-result.*/\1/p' | awk -F: '
    { t = $1 * 3600 + $2 * 60 + $3; if (NR > 1) { d = t - last; if (d < 0) d += 86400; if (d > max) max = d }; last = t }
    END { printf "%d", max * 1000 }')
echo "   longest time without a result: $gap ms"
args=()
for spec in "${CLIENTS[@]}"; do
    policy=${spec##*:}
    [ "$policy" = random ] && policy=random:11
    args+=("$DIR/${spec%%:*}.log=$policy")
done
echo "== log checker (every client a voter of every ballot; the logs end where each was stopped)"
"$BIN" check-logs --voters ${#CLIENTS[@]} "${args[@]}"
