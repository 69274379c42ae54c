# kube-apiserver, sourced by scripts/testenv: ensure (build), start, healthy, for the main cluster and the extra
# ones, with their kubeconfigs, the Gateway API CRDs and the fixture Gateways an operator would provide.
# shellcheck shell=bash

TC=$REPO/tools/testcluster
FIXTURE_PORT=39999
GAT=$REPO/tools/gatewayapi

# The control plane is built from tools/testcluster, etcd and the Kubernetes binaries (one k8s binary, named
# kube-apiserver, kube-controller-manager and kubectl by links).
ensure_controlplane() {
  local dir kver
  dir=$(go_dir testcluster "$TC")
  BIN=$dir/bin
  [[ -x $BIN/etcd && -x $BIN/k8s && -L $BIN/kubectl ]] && return
  kver=$(go_version "$TC" k8s.io/kubernetes "etcd and Kubernetes")
  local ldk="-X k8s.io/component-base/version.gitVersion=$kver -X k8s.io/client-go/pkg/version.gitVersion=$kver"
  go_build "$dir" "$TC" "k8s takes several minutes on 2 cores" \
    etcd -ldflags "$ldk" -o bin/etcd ./cmd/etcd -- \
    k8s -ldflags "$ldk" -o bin/k8s ./cmd/k8s
  local n
  for n in kube-apiserver kube-controller-manager kubectl; do [[ -L $BIN/$n ]] || ln -s k8s "$BIN/$n"; done
}

# Files that running clients read are replaced by a rename, never rewritten in place under them.
kubeconfig() {  # kubeconfig FILE CERT-NAME [APISERVER]: credentials embedded, so the file works from anywhere
  cat >"$1.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: itg
  cluster:
    server: https://127.0.0.1:$(saved_port "${3:-apiserver}")
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$2.crt")
    client-key-data: $(base64 -w0 "$PKI/$2.key")
contexts:
- name: itg
  context: {cluster: itg, user: $2}
current-context: itg
EOF
  mv -f "$1.tmp" "$1"
}

# --endpoint-reconciler-type=none: the default reconciler publishes the advertise address in the
# `kubernetes` Endpoints, which rejects loopback addresses, and retries (logging an error) every 10 s.
apiserver_ready() { "$BIN/kubectl" --kubeconfig "$1" get --raw /readyz; }

# The main cluster is "apiserver" with .itg/kubeconfig; an extra cluster C is "apiserver-C" with
# .itg/kubeconfig-C and its own etcd prefix: a separate cluster on the same etcd, one process more.
cluster_server() { if [[ -z $1 ]]; then echo apiserver; else echo "apiserver-$1"; fi; }
cluster_kubeconfig() { if [[ -z $1 ]]; then echo "$ITG/kubeconfig"; else echo "$ITG/kubeconfig-$1"; fi; }

start_apiserver() {  # start_apiserver [CLUSTER]
  local c=${1:-} name kc prefix=/registry
  name=$(cluster_server "$c") kc=$(cluster_kubeconfig "$c")
  [[ -z $c ]] || prefix=/registry-$c
  MOVED=0
  if pid_of "$name" kube-apiserver >/dev/null; then
    kubeconfig "$kc" admin "$name"
    wait_for "$name" 120 apiserver_ready "$kc"
    return
  fi
  local s
  port "$name"; s=$PORT MOVED=$PORT_CHANGED
  kubeconfig "$kc" admin "$name"
  [[ -n $c ]] || kubeconfig "$ITG/controller-manager.kubeconfig" controller-manager
  log "starting kube-apiserver${c:+ ($c)} on https://127.0.0.1:$s"
  spawn "$name" "$BIN/kube-apiserver" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$s" \
    --etcd-servers="http://127.0.0.1:$(saved_port etcd)" --etcd-prefix="$prefix" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --authorization-mode=RBAC --service-cluster-ip-range=10.96.0.0/16 --allow-privileged=true \
    --cert-dir="$ITG/$name" --profiling=false --endpoint-reconciler-type=none
  wait_for "$name" 120 apiserver_ready "$kc"
}

# Upstream CRD YAML from the sigs.k8s.io/gateway-api modules pinned in tools/gatewayapi (the current
# release) and tools/testcluster (v1.5.1); never generated CRDs, which lose list types, maxItems and CEL rules.
# crd_bundle KUBECONFIG: "<bundle-version> <channel>" of the TCPRoute CRD installed, empty if none.
crd_bundle() {
  "$BIN/kubectl" --kubeconfig "$1" get crd tcproutes.gateway.networking.k8s.io -o \
    jsonpath='{.metadata.annotations.gateway\.networking\.k8s\.io/bundle-version} {.metadata.annotations.gateway\.networking\.k8s\.io/channel}' 2>/dev/null || true
}

# install_gateway_api KUBECONFIG TOOLDIR CHANNEL: applies that release's channel unless it is installed.
# A cluster only ever moves forward: once TCPRoute v1 is among the CRD's storedVersions the apiserver
# refuses the v1.5.1 CRDs, which is why the older set lives on a cluster of its own.
install_gateway_api() {
  local kc=$1 dir want have
  dir=$(module_dir "$2" sigs.k8s.io/gateway-api) || die "cannot download the Gateway API module pinned in $2"
  want="$(basename "$dir" | sed 's/.*@//') $3"
  have=$(crd_bundle "$kc")
  [[ $have == "$want" ]] && return
  log "installing Gateway API CRDs $want on $(basename "$kc")${have:+ (had $have)}"
  # The experimental channel has a kustomization; the standard one of v1.6 is plain files.
  local how=-f; [[ -f $dir/config/crd/$3/kustomization.yaml ]] && how=-k
  "$BIN/kubectl" --kubeconfig "$kc" apply --server-side --force-conflicts "$how" "$dir/config/crd/$3" \
    >>"$LOGS/crds.log"
  "$BIN/kubectl" --kubeconfig "$kc" wait --for=condition=Established crd --all --timeout=60s >>"$LOGS/crds.log"
}


# The fixture an operator would provide: a Gateway that always keeps one listener of its own, on a class no
# controller serves; on the main cluster also a class Envoy Gateway serves, with a Gateway whose placeholder
# listener envoy really binds.
fixture() {  # fixture [envoy]: the YAML
    cat <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: gateway-system}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: itg}
spec: {controllerName: internal-task-gateway.io/none}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: itg, namespace: gateway-system}
spec:
  gatewayClassName: itg
  listeners:
  - {name: placeholder, protocol: TCP, port: $FIXTURE_PORT}
EOF
    if [[ ${1:-} == envoy ]]; then
      # Each Gateway of the class is an envoy process on this host: without --disable-hot-restart the
      # second one dies on the hot-restart socket the first holds (errno 98, "see --base-id"). The envoy
      # version is pinned: since v1.9.1 the default image carries a digest, the launcher then finds no
      # version in it and asks func-e's online registry, which this machine may not reach.
      local envoy_ver
      envoy_ver=$(eg_envoy_version)
      cat <<EOF
---
apiVersion: v1
kind: Namespace
metadata: {name: envoy-gateway-system}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyProxy
metadata: {name: itg-envoy, namespace: envoy-gateway-system}
spec:
  extraArgs: [--disable-hot-restart]
  provider: {type: Host, host: {envoyVersion: "$envoy_ver"}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: itg-envoy}
spec:
  controllerName: gateway.envoyproxy.io/gatewayclass-controller
  parametersRef: {group: gateway.envoyproxy.io, kind: EnvoyProxy, name: itg-envoy, namespace: envoy-gateway-system}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: itg-envoy, namespace: gateway-system}
spec:
  gatewayClassName: itg-envoy
  listeners:
  - {name: placeholder, protocol: TCP, port: $ENVOY_FIXTURE_PORT}
EOF
    fi
}

# apply_fixture KUBECONFIG [envoy]: applied when the cluster (re)started or the fixture changed.
apply_fixture() {
  local text f=$RUN/fixture-$(basename "$1").sha
  text=$(fixture "${2:-}")
  if ((STARTED)) || [[ $(cat "$f" 2>/dev/null) != "$(sha256sum <<<"$text")" ]] ||
     ! "$BIN/kubectl" --kubeconfig "$1" get -n gateway-system gateway itg >/dev/null 2>&1; then
    "$BIN/kubectl" --kubeconfig "$1" apply --server-side --field-manager=operator -f - <<<"$text" >>"$LOGS/fixture.log"
    sha256sum <<<"$text" >"$f"
  fi
}
