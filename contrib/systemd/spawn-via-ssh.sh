#!/bin/sh
# A `pbvote server --spawn-via` program for two hosts: starts the spawned backup on the
# host that owns its listen address, under that host's systemd, and stays in the
# foreground for as long as the backup runs (`systemd-run --wait`), so that the server
# that spawned it sees the backup's end as its child's exit.
#   spawn-via-ssh.sh LISTEN_ADDR PBVOTE ARGS...
# PBVOTE_REMOTE_BIN: the pbvote binary on the other host (default /usr/local/bin/pbvote).
set -eu
host=${1%:*}
shift 2 # LISTEN_ADDR, and this host's pbvote path: the other host has its own
exec ssh -o BatchMode=yes -o ServerAliveInterval=2 -o ServerAliveCountMax=3 "$host" \
    systemd-run --wait --collect --quiet --property=Type=notify \
    --property=WatchdogSec=10 --unit=pbvote-spawned-backup \
    -- "${PBVOTE_REMOTE_BIN:-/usr/local/bin/pbvote}" "$@"
