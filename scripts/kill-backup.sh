#!/usr/bin/env bash
# Fault scenario: SIGKILL the backup the primary spawned. The primary reaps it
# (backup-exited), declares its peer dead, spawns a replacement that joins, and the clients
# finish every ballot. The log checker's verdict is the exit status.
#
#   scripts/kill-backup.sh         # PORT=7100 BALLOTS=100 by default, see scripts/lib.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

make_dir kill-backup
start_primary
start_clients

echo "== waiting for the spawned backup to join"
wait_for "$ERR" 'view-change role=backup'
BACKUP=$(tag_pid)
echo "== waiting for a few results (ballot 10 in a.log)"
wait_for "$DIR/a.log" '^10 '

mark=$(wc -l <"$ERR")
echo "== SIGKILL the backup (pid $BACKUP)"
t0=$(now_s)
kill -KILL "$BACKUP"
echo "== the primary declares its peer dead and reaps it"
wait_for "$ERR" 'peer-dead role=primary .*reason=' "$mark"
echo "== noticed $(ms_since "$t0") ms after the SIGKILL"
wait_for "$ERR" "backup-exited pid=$BACKUP " "$mark"
echo "== the primary spawns a new backup, which joins"
wait_for "$ERR" 'spawned-backup' "$mark"
echo "== respawned $(ms_since "$t0") ms after the SIGKILL"
wait_for "$ERR" 'view-change role=backup' "$LINE"

wait_clients
check_logs
