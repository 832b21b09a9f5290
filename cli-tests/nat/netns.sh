#!/usr/bin/env bash
# Network namespaces for the NAT test (cli-tests/nat.rs): a "public" namespace and two homes, each
# behind a router namespace that masquerades (nftables) and silently drops unsolicited inbound
# traffic, as home routers do (answering it with a reset would also kill a hole punch's
# simultaneous open when one side's SYN arrives first).
#
#   home A 10.77.1.2 -- 10.77.1.1 router A 172.31.1.2 -- 172.31.1.1 public 172.31.2.1 -- 172.31.2.2 router B 10.77.2.1 -- 10.77.2.2 home B
#
# The public namespace forwards between the two routers (it plays the internet) and has no route
# to either home network. Every address lives inside these namespaces only.
#
#   netns.sh up SUFFIX [cone|symmetric]
#                          creates the namespaces avnat-{pub,ra,rb,ha,hb}-SUFFIX; exit 77 with the
#                          reason on stderr when this machine cannot (not root, no `ip`, no nft).
#                          cone (default): the routers keep a connection's source port when they
#                          can, so hole punching works; symmetric: they pick a random port for
#                          each connection, so a peer's observed address is useless to others
#                          and only the relay connects the homes.
#   netns.sh down SUFFIX   kills what runs in them and deletes them (never fails)
set -u
cmd=${1:-}
suffix=${2:-}
kind=${3:-cone}
if [ -z "$cmd" ] || [ -z "$suffix" ]; then
    echo "usage: $0 up|down SUFFIX" >&2
    exit 2
fi
names="pub ra rb ha hb"
ns() { echo "avnat-$1-$suffix"; }

down() {
    for n in $names; do
        if ip netns list 2>/dev/null | grep -qw "$(ns "$n")"; then
            for pid in $(ip netns pids "$(ns "$n")" 2>/dev/null); do
                kill -KILL "$pid" 2>/dev/null
            done
            ip netns del "$(ns "$n")" 2>/dev/null
        fi
    done
    return 0
}

cannot() {
    echo "$1" >&2
    exit 77
}

up() {
    case "$kind" in
        cone) masquerade="masquerade" ;;
        symmetric) masquerade="masquerade random" ;;
        *) echo "unknown NAT kind $kind" >&2; exit 2 ;;
    esac
    [ "$(id -u)" = 0 ] || cannot "not root: network namespaces need root"
    command -v ip >/dev/null || cannot "no \`ip\` command (iproute2)"
    if ! command -v nft >/dev/null; then
        # CI runs as root on Debian: install what the test needs.
        if command -v apt-get >/dev/null; then
            apt-get install -y -qq nftables >/dev/null 2>&1 \
                || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nftables >/dev/null 2>&1; }
        fi
        command -v nft >/dev/null || cannot "no \`nft\` command, and installing nftables failed"
    fi
    ip netns add "$(ns pub)" 2>/dev/null || cannot "cannot create a network namespace (ip netns add failed)"
    set -e
    trap 'echo "netns.sh: setup failed at line $LINENO" >&2; down; exit 1' ERR
    for n in ra rb ha hb; do ip netns add "$(ns "$n")"; done
    for n in $names; do ip -n "$(ns "$n")" link set lo up; done
    local side
    for side in a b; do
        local i=1; [ "$side" = b ] && i=2
        local r; r=$(ns "r$side")
        local h; h=$(ns "h$side")
        ip -n "$(ns pub)" link add "to$side" type veth peer name wan netns "$r"
        ip -n "$r" link add lan type veth peer name eth0 netns "$h"
        ip -n "$(ns pub)" addr add "172.31.$i.1/24" dev "to$side"
        ip -n "$(ns pub)" link set "to$side" up
        ip -n "$r" addr add "172.31.$i.2/24" dev wan
        ip -n "$r" addr add "10.77.$i.1/24" dev lan
        ip -n "$r" link set wan up
        ip -n "$r" link set lan up
        ip -n "$r" route add default via "172.31.$i.1"
        ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
        ip netns exec "$r" nft -f - <<NFT
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" $masquerade
    }
}
table ip filter {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state new drop
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" accept
    }
}
NFT
        ip -n "$h" addr add "10.77.$i.2/24" dev eth0
        ip -n "$h" link set eth0 up
        ip -n "$h" route add default via "10.77.$i.1"
    done
    ip netns exec "$(ns pub)" sysctl -qw net.ipv4.ip_forward=1
}

case "$cmd" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down SUFFIX" >&2; exit 2 ;;
esac
