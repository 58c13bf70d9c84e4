#!/usr/bin/env bash
# Fault scenario: SIGKILL the backup the primary spawned. The primary reaps it
# (backup-exited), declares its peer dead, spawns a replacement that joins, and the clients
# finish every ballot. The log checker's verdict is the exit status.
#
#   scripts/kill-backup.sh         # PORT=7100 BALLOTS=100 by default, see scripts/lib.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

start_cluster kill-backup
echo "== SIGKILL the backup (pid $BACKUP)"
t0=$(now_s)
kill -KILL "$BACKUP"
echo "== the primary declares its peer dead and reaps it"
wait_for "$ERR" 'peer-dead role=primary .*reason=' "$MARK"
echo "== noticed $(ms_since "$t0") ms after the SIGKILL"
wait_for "$ERR" "backup-exited pid=$BACKUP " "$MARK"
echo "== the primary spawns a new backup, which joins"
wait_for "$ERR" 'spawned-backup' "$MARK"
echo "== respawned $(ms_since "$t0") ms after the SIGKILL"
wait_for "$ERR" 'view-change role=backup' "$LINE"

wait_clients
check_logs
