# Contour, sourced by scripts/testenv: ensure (build), start, healthy, stop, for Contour and its one envoy.
# shellcheck shell=bash

CTT=$REPO/tools/contour

# Built from tools/contour, as Envoy Gateway is.
ensure_contour() {
  local dir cver
  dir=$(go_dir contour "$CTT")
  CONTOUR_BIN=$dir/bin/contour
  [[ -x $CONTOUR_BIN ]] && return
  cver=$(go_version "$CTT" github.com/projectcontour/contour Contour)
  go_build "$dir" "$CTT" "minutes on 2 cores" "contour $cver" \
    -ldflags "-X github.com/projectcontour/contour/internal/build.Version=$cver" \
    -o bin/contour github.com/projectcontour/contour/cmd/contour
}

# The Contour Gateway's ports (placeholder first); envoy binds them + 8000, below the ephemeral range.
CONTOUR_PORTS_FIRST=21000
CONTOUR_PORTS_LAST=21199
CONTOUR_GATEWAY=itg-contour
CT=$ITG/contour

# The Gateway's loopback address, one per clone (from a hash of its path) so two clones' envoys never share a socket.
contour_address() {
  local f=$RUN/contour.address h i a
  if [[ -s $f ]]; then cat "$f"; return; fi
  h=$(sha256sum <<<"$REPO")
  for ((i = 0; i < 64; i++)); do
    a=127.77.$((16#${h:0:2})).$(((16#${h:2:2} + i) % 254 + 1))
    # Another clone's table maps it already: take the next.
    nft list ruleset 2>/dev/null | grep -qw "daddr $a" && continue
    echo "$a" >"$f"; echo "$a"; return
  done
  die "no free 127.77.x.y address for the Contour Gateway"
}

# The nftables table of this clone, named for its address.
contour_table() { echo "itg_contour_$(contour_address | tr . _)"; }

# Stands in for envoy's LoadBalancer Service: address:port reaches port + 8000; one transaction replaces the table.
contour_dnat() {
  local addr t p map=""
  addr=$(contour_address) t=$(contour_table)
  for ((p = CONTOUR_PORTS_FIRST; p <= CONTOUR_PORTS_LAST; p++)); do map+="${map:+, }$p : $((p + 8000))"; done
  nft -f - <<EOF2
add table ip $t
delete table ip $t
table ip $t {
  chain output {
    type nat hook output priority -100; policy accept;
    ip daddr $addr meta l4proto tcp dnat to $addr : tcp dport map { $map }
  }
}
EOF2
}

# Why Contour cannot run here, or nothing: the address mapping needs root and nftables (installed when absent).
contour_blocked() {
  if [[ $(id -u) != 0 ]]; then
    echo "mapping the Contour Gateway's address to envoy's port + 8000 needs nftables rules, which need root"
    return
  fi
  local missing
  missing=$(ensure_nft)
  [[ -z $missing ]] || { echo "$missing"; return; }
  nft list tables >/dev/null 2>&1 ||
    echo "nft cannot reach the kernel's nftables here ($(nft list tables 2>&1 | head -n1))"
}

# Contour's own CRDs, from its module (the Gateway API CRDs are installed already).
install_contour_crds() {
  local dir
  "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" get crd httpproxies.projectcontour.io >/dev/null 2>&1 &&
    [[ $(cat "$RUN/contour.crds" 2>/dev/null) == "$CONTOUR_BIN" ]] && return
  dir=$(module_dir "$CTT" github.com/projectcontour/contour) || die "cannot download the Contour module"
  log "installing Contour CRDs from $dir"
  "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" apply --server-side --force-conflicts \
    -f "$dir/examples/contour/01-crds.yaml" >>"$LOGS/crds.log"
  "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" wait --for=condition=Established crd --all --timeout=60s >>"$LOGS/crds.log"
  echo "$CONTOUR_BIN" >"$RUN/contour.crds"
}

# The operator's part: a class of Contour's controller name and the Gateway its config names, with an address.
contour_fixture() {
  cat <<EOF2
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: itg-contour}
spec: {controllerName: projectcontour.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: $CONTOUR_GATEWAY, namespace: gateway-system}
spec:
  gatewayClassName: itg-contour
  addresses: [{type: IPAddress, value: $(contour_address)}]
  listeners:
  - {name: placeholder, protocol: TCP, port: $CONTOUR_PORTS_FIRST}
EOF2
}

contour_healthy() { curl -fsS "http://127.0.0.1:$(saved_port contour-health)/healthz"; }
# envoy's stats listener comes from Contour over xDS: it answers once envoy took Contour's config.
contour_envoy_healthy() { curl -fsS "http://127.0.0.1:$(saved_port contour-envoy-stats)/ready" | grep -qx LIVE; }

start_contour() {
  CONTOUR_UNAVAILABLE=$(contour_blocked)
  if [[ -n $CONTOUR_UNAVAILABLE ]]; then log "not starting Contour: $CONTOUR_UNAVAILABLE"; return; fi
  install_contour_crds
  local text f=$RUN/fixture-contour.sha addr
  text=$(contour_fixture)
  if ((STARTED)) || [[ $(cat "$f" 2>/dev/null) != "$(sha256sum <<<"$text")" ]] ||
     ! "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" get -n gateway-system gateway "$CONTOUR_GATEWAY" >/dev/null 2>&1; then
    "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" apply --server-side --field-manager=operator -f - <<<"$text" >>"$LOGS/fixture.log"
    sha256sum <<<"$text" >"$f"
  fi
  addr=$(contour_address)
  contour_dnat || die "could not install the nftables mapping for the Contour Gateway (table $(contour_table))"
  mkdir -p "$CT/resources"
  if ! pid_of contour contour >/dev/null; then
    local n moved=0
    for n in xds metrics health debug envoy-stats envoy-admin; do port "contour-$n"; ((PORT_CHANGED)) && moved=1; done
    # envoy's bootstrap names the xDS port: a Contour on another port needs a new envoy.
    ((moved)) && stop contour-envoy envoy
    cat >"$CT/contour.yaml" <<EOF2
gateway: {gatewayRef: {namespace: gateway-system, name: $CONTOUR_GATEWAY}}
# Written into the Gateway's status addresses, as a LoadBalancer Service's address would be.
ingress-status-address: $addr
# The admin listener Contour gives envoy (9001 by default, a port another clone's envoy would hold).
network: {admin-port: $(saved_port contour-envoy-admin)}
EOF2
    log "starting contour (xDS on 127.0.0.1:$(saved_port contour-xds), Gateway gateway-system/$CONTOUR_GATEWAY at $addr)"
    spawn contour "$CONTOUR_BIN" serve --kubeconfig "$ITG/kubeconfig" --insecure --disable-leader-election \
      -c "$CT/contour.yaml" \
      --xds-address 127.0.0.1 --xds-port "$(saved_port contour-xds)" \
      --http-address 127.0.0.1 --http-port "$(saved_port contour-metrics)" \
      --health-address 127.0.0.1 --health-port "$(saved_port contour-health)" \
      --debug-http-address 127.0.0.1 --debug-http-port "$(saved_port contour-debug)" \
      --stats-address 127.0.0.1 --stats-port "$(saved_port contour-envoy-stats)" \
      --envoy-service-http-address "$addr" --envoy-service-https-address "$addr"
  fi
  wait_for contour 60 contour_healthy
  if ! pid_of contour-envoy envoy >/dev/null; then
    "$CONTOUR_BIN" bootstrap "$CT/envoy.json" --xds-address 127.0.0.1 --xds-port "$(saved_port contour-xds)" \
      --admin-address "$CT/envoy-admin.sock" --resources-dir "$CT/resources" >"$LOGS/contour-bootstrap.log" 2>&1 ||
      { cat "$LOGS/contour-bootstrap.log" >&2; die "contour bootstrap failed"; }
    log "starting envoy for Contour (listeners on $addr, at listener port + 8000)"
    # envoy 1.40 exits at once without a node id and cluster; no hot restart, whose socket another envoy holds.
    spawn contour-envoy "$ENVOY_BIN" -c "$CT/envoy.json" --disable-hot-restart \
      --service-cluster itg-contour --service-node "itg-contour-$(contour_address)"
  fi
  wait_for contour-envoy 60 contour_envoy_healthy
  wait_for contour 30 contour_gateway_has "{.status.addresses[*].value}" "$addr"
  if ! contour_address_seen; then contour_nudge; wait_for contour 30 contour_address_seen; fi
}

contour_address_seen() {
  ! contour_gateway_has '{.status.conditions[?(@.type=="Programmed")].reason}' AddressNotAssigned
}

contour_gateway_has() {  # contour_gateway_has JSONPATH VALUE: the Contour Gateway's field is VALUE
  [[ $("$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" get gateway -n gateway-system "$CONTOUR_GATEWAY" -o jsonpath="$1") == "$2" ]]
}

# Contour rereads the Gateway only on a new generation, so it misses the status address it wrote at first.
contour_nudge() {
  local head="apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: $CONTOUR_GATEWAY, namespace: gateway-system}"
  log "Contour has not seen its Gateway's address yet: adding and removing a listener so it reads the Gateway again"
  "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" apply --server-side --field-manager=testenv-nudge -f - \
    <<<"$head
spec: {listeners: [{name: testenv-nudge, protocol: TCP, port: $((CONTOUR_PORTS_FIRST - 1))}]}" >>"$LOGS/fixture.log"
  "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" apply --server-side --field-manager=testenv-nudge -f - \
    <<<"$head" >>"$LOGS/fixture.log"
}

stop_contour() {
  stop contour-envoy envoy
  stop contour contour
  if command -v nft >/dev/null && [[ -s $RUN/contour.address ]]; then
    nft delete table ip "$(contour_table)" 2>/dev/null || true
  fi
}

contour_status() {  # rows for cmd_status, by its row function
  local addr table="?"
  addr=$(cat "$RUN/contour.address" 2>/dev/null || echo "?")
  if [[ $addr != "?" ]]; then table=$(contour_table); fi
  row contour contour "xDS 127.0.0.1:$(saved_port contour-xds), health :$(saved_port contour-health); Gateway gateway-system/$CONTOUR_GATEWAY at $addr"
  row contour-envoy envoy "$addr:$CONTOUR_PORTS_FIRST-$CONTOUR_PORTS_LAST -> $addr:+8000 (nft table $table), stats :$(saved_port contour-envoy-stats)"
}

contour_env() {  # lines for .itg/env
  echo "ITG_CONTOUR_CLASS=itg-contour"
  echo "ITG_CONTOUR_GATEWAY=gateway-system/$CONTOUR_GATEWAY"
  echo "ITG_CONTOUR_ADDRESS=$(cat "$RUN/contour.address" 2>/dev/null)"
  echo "ITG_CONTOUR_PORTS=$CONTOUR_PORTS_FIRST-$CONTOUR_PORTS_LAST"
  if [[ -n ${CONTOUR_UNAVAILABLE:-} ]]; then echo "ITG_CONTOUR_UNAVAILABLE=$CONTOUR_UNAVAILABLE"; fi
}
