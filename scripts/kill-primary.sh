#!/usr/bin/env bash
# Fault scenario: SIGKILL the primary in the middle of a run. Its backup sees the link close,
# takes over (took_over=true), spawns a new backup that joins it, and the clients follow the
# new view and finish every ballot. The log checker's verdict is the exit status.
#
#   scripts/kill-primary.sh        # PORT=7100 BALLOTS=100 by default, see scripts/lib.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

start_cluster kill-primary
echo "== SIGKILL the primary (pid $PRIMARY)"
t0=$(now_s)
kill -KILL "$PRIMARY"
wait "$PRIMARY" 2>/dev/null || true # reap it, without bash's "Killed" notice
echo "== the backup takes over"
wait_for "$ERR" 'took_over=true' "$MARK"
took=$LINE new=$(tag_pid)
wait_for "$ERR" "^backup\\[$new\\].*ballot-result" "$took"
echo "== first result of the new view $(ms_since "$t0") ms after the SIGKILL"
echo "== the new primary spawns a new backup, which joins"
wait_for "$ERR" 'spawned-backup' "$took"
wait_for "$ERR" 'view-change role=backup' "$LINE"

wait_clients
check_logs
