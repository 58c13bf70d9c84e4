# shellcheck shell=bash
# Shared by the fault scenarios (kill-primary.sh, kill-backup.sh, pause-primary.sh): a temp
# dir, a primary on loopback with short timings, five clients, waiting for a log line, the
# log checker, and a trap that leaves no process behind. Source it after `set -euo pipefail`.
#
#   PORT (7100; the backup listens on PORT+1)  BALLOTS (100)  WAIT_S (20, per awaited line)
#   BIN (target/release/pbvote; build it first with cargo build --release, or
#        BIN=$(scripts/build.sh static) for the static build)

BIN=${BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/pbvote}
PORT=${PORT:-7100}
BALLOTS=${BALLOTS:-100}
WAIT_S=${WAIT_S:-20}
CLIENTS=(a:yes b:yes c:yes d:no e:no) # id:policy
CLIENT_PIDS=()
PRIMARY=    # pid of the first primary, which is also the servers' process group
LINE=0 HIT= # line number and text of the last line wait_for found

[ -x "$BIN" ] || { echo "no binary at $BIN: run cargo build --release first" >&2; exit 1; }

# Every server (the primary, the backups it spawns, their replacements) is in the process
# group that setsid made for the primary, so one kill stops them all, even after a takeover.
cleanup() {
    if [ -n "$PRIMARY" ]; then kill -KILL -- "-$PRIMARY" 2>/dev/null || true; fi
    if [ ${#CLIENT_PIDS[@]} -gt 0 ]; then kill -KILL "${CLIENT_PIDS[@]}" 2>/dev/null || true; fi
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

make_dir() { # NAME: sets DIR, and ERR (the stderr of every server)
    DIR=$(mktemp -d "/tmp/pbvote-$1.XXXXXX")
    ERR=$DIR/servers.err
    echo "== files in $DIR"
}

start_primary() { # sets PRIMARY; a script has no job control, so setsid execs in place
    echo "== primary on 127.0.0.1:$PORT spawns its backup on 127.0.0.1:$((PORT + 1)); servers log to $ERR"
    setsid "$BIN" server --role primary --listen "127.0.0.1:$PORT" --backup-listen "127.0.0.1:$((PORT + 1))" \
        --heartbeat-ms 100 --miss-limit 5 --backup-start-delay-ms 500 \
        --ballot-interval-ms 50 --ballots "$BALLOTS" --min-clients ${#CLIENTS[@]} 2>"$ERR" &
    PRIMARY=$!
}

start_clients() {
    echo "== ${#CLIENTS[@]} clients (${CLIENTS[*]}) vote until ballot $BALLOTS"
    local spec id
    for spec in "${CLIENTS[@]}"; do
        id=${spec%%:*}
        "$BIN" client --id "$id" --servers "127.0.0.1:$PORT,127.0.0.1:$((PORT + 1))" \
            --log "$DIR/$id.log" --policy "${spec##*:}" --until "$BALLOTS" 2>"$DIR/$id.err" &
        CLIENT_PIDS+=($!)
    done
}

wait_for() { # FILE ERE [AFTER_LINE]: the first matching line after AFTER_LINE; sets LINE, HIT
    local file=$1 tries=$((WAIT_S * 10)) found
    while :; do
        found=$(RE=$2 awk -v after="${3:-0}" 'NR > after && $0 ~ ENVIRON["RE"] { print NR; print; exit }' \
            "$file" 2>/dev/null || true)
        [ -n "$found" ] && break
        if ((--tries <= 0)); then
            echo "!! no line matching /$2/ in $file after ${WAIT_S}s; its tail:" >&2
            tail -n 15 "$file" >&2
            return 1
        fi
        sleep 0.1
    done
    LINE=${found%%$'\n'*} HIT=${found#*$'\n'}
    echo "   $HIT"
}

tag_pid() { local p=${HIT#*[}; echo "${p%%]*}"; } # the PID of HIT's tag, primary[PID] or backup[PID]

wait_clients() { # until every client logged ballot BALLOTS and exited 0
    echo "== waiting for every client to log ballot $BALLOTS and exit"
    local spec pid
    for spec in "${CLIENTS[@]}"; do wait_for "$DIR/${spec%%:*}.err" 'client-done'; done
    for pid in "${CLIENT_PIDS[@]}"; do wait "$pid"; done
    CLIENT_PIDS=()
}

check_logs() { # the last step of a scenario: its exit status is the script's
    local args=() spec
    for spec in "${CLIENTS[@]}"; do args+=("$DIR/${spec%%:*}.log=${spec##*:}"); done
    echo "== log checker"
    "$BIN" check-logs --ballots "$BALLOTS" "${args[@]}"
}

now_s() { date +%s.%N; }
# Milliseconds from epoch-seconds T0 to the timestamp of the log line HIT.
ms_since() { # T0
    local ts=${HIT#* } && ts=${ts%% *}
    awk -v a="$1" -v b="$(date -d "$ts" +%s.%N)" 'BEGIN { printf "%.1f", (b - a) * 1000 }'
}

# The common first act of every scenario: a cluster in service and a few results logged.
# Sets BACKUP (the joined backup's pid) and MARK (the servers' log length before the fault).
start_cluster() { # NAME
    make_dir "$1"
    start_primary
    start_clients
    echo "== waiting for the spawned backup to join"
    wait_for "$ERR" 'view-change role=backup'
    BACKUP=$(tag_pid)
    echo "== waiting for a few results (ballot 10 in a.log)"
    wait_for "$DIR/a.log" '^10 '
    MARK=$(wc -l <"$ERR")
}
