# shellcheck shell=bash
# Hosts as network namespaces on one bridge, for the scenarios that cut links
# (partition.sh, soak.sh). Source it; the functions need root and iproute2.

netns_up() { # BRIDGE TAG NS=ADDR...: each namespace joins BRIDGE by a veth, with ADDR/24
    local br=$1 tag=$2 n=0 host ns addr
    shift 2
    ip link add "$br" type bridge && ip link set "$br" up
    for host in "$@"; do
        ns=${host%%=*} addr=${host#*=} n=$((n + 1))
        ip netns add "$ns"
        ip link add "$tag-v$n" type veth peer name "$tag-h$n"
        ip link set "$tag-v$n" netns "$ns"
        ip link set "$tag-h$n" master "$br" up
        ip -n "$ns" addr add "$addr/24" dev "$tag-v$n"
        ip -n "$ns" link set "$tag-v$n" up
        ip -n "$ns" link set lo up
    done
}

netns_down() { # BRIDGE NS...: removes them (the veths go with their namespaces)
    local br=$1 ns
    shift
    for ns in "$@"; do ip netns del "$ns" 2>/dev/null || true; done
    ip link del "$br" 2>/dev/null || true
}
