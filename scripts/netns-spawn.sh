#!/usr/bin/env bash
# A `pbvote server --spawn-via` program: starts a spawned backup inside the network
# namespace that owns its listen address, as a backup on another host would be.
#   PBV_NETNS="10.77.0.1=ns-a 10.77.0.2=ns-b"   (inherited by every server)
#   netns-spawn.sh LISTEN_ADDR PBVOTE ARGS...   (exec: the child pbvote waits for is pbvote)
set -euo pipefail
ip=${1%:*}
shift
for pair in ${PBV_NETNS:-}; do
    if [ "${pair%%=*}" = "$ip" ]; then
        exec ip netns exec "${pair#*=}" "$@"
    fi
done
exec "$@"
