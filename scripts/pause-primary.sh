#!/usr/bin/env bash
# Fault scenario: SIGSTOP the primary. Its backup hears no heartbeat for miss-limit x
# heartbeat, takes over and carries on with the clients. On SIGCONT the old primary finds
# it was replaced and steps down. The log checker's verdict is the exit status.
#
#   scripts/pause-primary.sh       # PORT=7100 BALLOTS=100 by default, see scripts/lib.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

start_cluster pause-primary
echo "== SIGSTOP the primary (pid $PRIMARY)"
kill -STOP "$PRIMARY"
echo "== the backup (pid $BACKUP) misses its heartbeats and takes over"
wait_for "$ERR" 'peer-dead role=backup .*reason=missed-heartbeats' "$MARK"
wait_for "$ERR" 'took_over=true' "$LINE"
echo "== results from the new primary"
for _ in 1 2 3; do wait_for "$ERR" "^backup\[$BACKUP\].*ballot-result" "$LINE"; done

MARK=$(wc -l <"$ERR")
echo "== SIGCONT the old primary (pid $PRIMARY), which steps down"
kill -CONT "$PRIMARY"
wait_for "$ERR" "^primary\[$PRIMARY\].*stepped-down" "$MARK"

wait_clients
check_logs
