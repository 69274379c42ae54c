# The multi-site topology, sourced by scripts/testenv: start, healthy, stop, and the WAN verbs (delay, cut,
# heal). A hub nats-server (JetStream domain `hub`) stands for the one beside the master, and one leaf
# nats-server per site (JetStream domain = the site's name) for the one beside each cluster. Only the
# leaf-node links cross the "WAN": the hub runs in a network namespace of its own, reached by the master
# through one veth pair (the LAN, never delayed) and by each site's leaf through a veth pair of that site's
# (its WAN link). Workers and the leaves share the host's loopback, as a worker shares a network with the
# leaf beside its cluster.
# This kernel has no netem qdisc, so the round trip is added by wan.py, through which each WAN link runs
# inside the hub's namespace; a cut drops every packet on the link's veth in the kernel (an nft table), as a
# broken WAN does: silently, with no reset.
# shellcheck shell=bash

SITES="west east"
HUB_CLIENT_PORT=4222
HUB_MONITOR_PORT=8222
HUB_LEAF_PORT=7422

# sites_net: sets SITES_NS (the hub's namespace), SITES_TAG (interface prefix) and SITES_NET (a /24 of
# 10.213.0.0/16 chosen per clone from a hash of its path, skipping one the host routes already).
sites_net() {
  local f=$RUN/sites.net h n i
  if [[ -s $f ]]; then read -r SITES_NS SITES_TAG SITES_NET <"$f"; return; fi
  h=$(sha256sum <<<"$REPO")
  n=$((16#${h:0:4}))
  for ((i = 0; i < 256; i++)); do
    SITES_NET=10.213.$(((n + i) % 256))
    [[ -z $(ip -4 route show root "$SITES_NET.0/24" 2>/dev/null) ]] && break
  done
  SITES_TAG=is${h:4:4} SITES_NS=itgs-${h:4:4}
  echo "$SITES_NS $SITES_TAG $SITES_NET" >"$f"
}

# Link k of the hub's namespace: 0 is the LAN, 1.. the sites in $SITES order. Host end .4k+1, hub end .4k+2.
site_index() {
  local i=1 s
  for s in $SITES; do [[ $s == "$1" ]] && { echo "$i"; return; }; i=$((i + 1)); done
  die "no site '$1' (sites: $SITES)"
}
link_host_if() { echo "${SITES_TAG}${1}h"; }
link_ns_if() { echo "${SITES_TAG}${1}n"; }
hub_addr() { echo "$SITES_NET.$((4 * $1 + 2))"; }
sites_nft() { echo "itgs_${SITES_TAG}_$1"; }  # the nft table that cuts site $1's link

# Why the topology cannot run here, or nothing.
sites_blocked() {
  [[ $(id -u) == 0 ]] || { echo "the sites topology puts the hub in a network namespace: that needs root"; return; }
  # On a bare machine the topology starts before Contour would have installed nftables: install it here too.
  ensure_nft
}

sites_links() {
  local k host_if ns_if
  ip netns list | grep -qw "$SITES_NS" || ip netns add "$SITES_NS"
  ip -n "$SITES_NS" link set lo up
  for ((k = 0; k <= $(wc -w <<<"$SITES"); k++)); do
    host_if=$(link_host_if "$k") ns_if=$(link_ns_if "$k")
    ip link show "$host_if" >/dev/null 2>&1 && continue
    ip link add "$host_if" type veth peer name "$ns_if"
    ip link set "$ns_if" netns "$SITES_NS"
    ip addr add "$SITES_NET.$((4 * k + 1))/30" dev "$host_if"
    ip -n "$SITES_NS" addr add "$SITES_NET.$((4 * k + 2))/30" dev "$ns_if"
    ip link set "$host_if" up
    ip -n "$SITES_NS" link set "$ns_if" up
  done
}

hub_healthy() { curl -fsS "http://$(hub_addr 0):$HUB_MONITOR_PORT/healthz?js-enabled-only=true"; }
leaf_healthy() { curl -fsS "http://127.0.0.1:$(saved_port "nats-$1-monitor")/healthz?js-enabled-only=true"; }
# A leaf is linked once the hub lists a leaf-node connection from it.
leaf_linked() {
  curl -fsS "http://$(hub_addr 0):$HUB_MONITOR_PORT/leafz" |
    python3 -c 'import json,sys; sys.exit(0 if any(l.get("name")==sys.argv[1] for l in json.load(sys.stdin).get("leafs") or []) else 1)' "$1"
}

# Pings every 2 s, stale after 3 missed: a cut link is noticed within seconds rather than the default minutes.
SITES_PING='ping_interval: "2s"
ping_max: 3'

start_sites() {
  SITES_UNAVAILABLE=$(sites_blocked)
  if [[ -n $SITES_UNAVAILABLE ]]; then log "not starting the sites topology: $SITES_UNAVAILABLE"; return; fi
  sites_net
  sites_links
  local s i dir conf
  mkdir -p "$ITG/sites"
  if ! pid_of nats-hub nats-server >/dev/null; then
    dir=$ITG/sites/hub conf=$ITG/sites/hub.conf
    mkdir -p "$dir"
    cat >"$conf" <<EOF
server_name: hub
listen: "0.0.0.0:$HUB_CLIENT_PORT"
http: "0.0.0.0:$HUB_MONITOR_PORT"
$SITES_PING
jetstream { store_dir: "$dir", domain: hub }
leafnodes { listen: "127.0.0.1:$HUB_LEAF_PORT" }
EOF
    log "starting the hub nats-server in network namespace $SITES_NS on nats://$(hub_addr 0):$HUB_CLIENT_PORT"
    spawn nats-hub ip netns exec "$SITES_NS" "$NATS_BIN" -c "$conf"
  fi
  wait_for nats-hub 60 hub_healthy
  for s in $SITES; do
    [[ -f $RUN/sites-$s.rtt ]] || echo 0 >"$RUN/sites-$s.rtt"
    pid_of "wan-$s" python3 >/dev/null && continue
    i=$(site_index "$s")
    log "starting $s's WAN link: $(hub_addr "$i"):$HUB_LEAF_PORT to the hub's leaf-node port"
    spawn "wan-$s" ip netns exec "$SITES_NS" python3 "$REPO/scripts/testenv.d/wan.py" \
      "$(hub_addr "$i"):$HUB_LEAF_PORT" "127.0.0.1:$HUB_LEAF_PORT" "$RUN/sites-$s.rtt"
  done
  for s in $SITES; do
    pid_of "nats-$s" nats-server >/dev/null && continue
    i=$(site_index "$s")
    port "nats-$s"; port "nats-$s-monitor"
    dir=$ITG/sites/$s conf=$ITG/sites/$s.conf
    mkdir -p "$dir"
    # deny: the site's replies reach the hub by the hub's stream sourcing them, never as a second copy
    # across the link; KV subjects never cross, so no bucket of another domain stores this site's writes.
    cat >"$conf" <<EOF
server_name: $s
host: 127.0.0.1
port: $(saved_port "nats-$s")
http: "127.0.0.1:$(saved_port "nats-$s-monitor")"
$SITES_PING
jetstream { store_dir: "$dir", domain: $s }
leafnodes {
  reconnect: "1s"
  remotes: [ {
    url: "nats-leaf://$(hub_addr "$i"):$HUB_LEAF_PORT"
    deny_exports: ["itg.replies.>", "\$KV.>"]
    deny_imports: ["\$KV.>"]
  } ]
}
EOF
    log "starting the $s leaf nats-server on nats://127.0.0.1:$(saved_port "nats-$s") (WAN link $(link_host_if "$i"))"
    spawn "nats-$s" "$NATS_BIN" -c "$conf"
  done
  for s in $SITES; do wait_for "nats-$s" 60 leaf_healthy "$s"; wait_for "nats-$s" 60 leaf_linked "$s"; done
}

cmd_sites() {
  local verb=${1:-} s=${2:-} k i
  sites_net
  [[ -n $s ]] || die "usage: $0 sites delay SITE RTT_MS | cut SITE | heal SITE | lose SITE (sites: $SITES)"
  k=$(site_index "$s") i=$(link_host_if "$(site_index "$s")")
  case $verb in
    delay)  # delay SITE RTT_MS: the round trip of the site's WAN link; 0 for none
      local rtt=${3:?delay needs a round trip in ms}
      [[ $rtt =~ ^[0-9]+$ ]] || die "delay takes a round trip in whole ms"
      echo "$rtt" >"$RUN/sites-$s.rtt.tmp" && mv -f "$RUN/sites-$s.rtt.tmp" "$RUN/sites-$s.rtt" ;;
    cut)    # cut SITE: every packet on the site's WAN link is dropped, silently
      nft -f - <<EOF
table ip $(sites_nft "$s") {
  chain in { type filter hook input priority 0; iifname "$i" drop; }
  chain out { type filter hook output priority 0; oifname "$i" drop; }
}
EOF
      ;;
    heal)   # heal SITE: the link carries packets again, with the round trip set before
      nft delete table ip "$(sites_nft "$s")" 2>/dev/null || true ;;
    lose)   # lose SITE: the site's leaf server loses its store for good, and starts again empty
      ensure_nats
      stop "nats-$s" nats-server
      rm -rf "${ITG:?}/sites/$s"
      start_sites ;;
    *) die "usage: $0 sites delay SITE RTT_MS | cut SITE | heal SITE | lose SITE (sites: $SITES)" ;;
  esac
}

stop_sites() {
  local s k
  stop nats-hub nats-server &
  for s in $SITES; do stop "nats-$s" nats-server & stop "wan-$s" python3 & done
  wait
  [[ -s $RUN/sites.net ]] || return 0
  sites_net
  for s in $SITES; do nft delete table ip "$(sites_nft "$s")" 2>/dev/null || true; done
  for ((k = 0; k <= $(wc -w <<<"$SITES"); k++)); do ip link del "$(link_host_if "$k")" 2>/dev/null || true; done
  ip netns del "$SITES_NS" 2>/dev/null || true
  rm -f "$RUN"/sites-*.rtt
}

sites_env() {
  if [[ ! -s $RUN/sites.net ]] || ! pid_of nats-hub nats-server >/dev/null; then
    echo "ITG_SITES_UNAVAILABLE=${SITES_UNAVAILABLE:-not started: scripts/testenv up --topology sites}"
    return
  fi
  sites_net
  local s
  echo "ITG_SITES=$SITES"
  echo "ITG_HUB_URL=nats://$(hub_addr 0):$HUB_CLIENT_PORT"
  for s in $SITES; do
    echo "ITG_SITE_${s^^}_URL=nats://127.0.0.1:$(saved_port "nats-$s")"
    # Where a leaf of one's own reaches the hub over this site's WAN link.
    echo "ITG_SITE_${s^^}_LEAF_REMOTE=nats-leaf://$(hub_addr "$(site_index "$s")"):$HUB_LEAF_PORT"
  done
}

sites_status() {
  [[ -s $RUN/sites.net ]] || return 0
  sites_net
  local s
  row nats-hub nats-server "nats://$(hub_addr 0):$HUB_CLIENT_PORT in netns $SITES_NS (domain hub)"
  for s in $SITES; do
    row "wan-$s" python3 "$(hub_addr "$(site_index "$s")"):$HUB_LEAF_PORT, rtt $(cat "$RUN/sites-$s.rtt" 2>/dev/null || echo 0) ms"
    row "nats-$s" nats-server "nats://127.0.0.1:$(saved_port "nats-$s") (domain $s)"
  done
}
