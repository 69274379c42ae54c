# kube-controller-manager, sourced by scripts/testenv: start, healthy. Its EndpointSlice and namespace
# controllers are the ones the tests rely on.
# shellcheck shell=bash

kcm_healthy() { curl -fsSk "https://127.0.0.1:$(saved_port controller-manager)/healthz" | grep -qx ok; }

# --kube-api-qps/burst: the defaults (20/30) throttle the namespace controller, which issues ~100 requests
# per namespace; tests that delete several namespaces at once then waited a minute for each.
start_controller_manager() {
  local kc=$ITG/controller-manager.kubeconfig
  if ! pid_of controller-manager kube-controller-manager >/dev/null; then
    port controller-manager
    log "starting kube-controller-manager (healthz on https://127.0.0.1:$PORT)"
    spawn controller-manager "$BIN/kube-controller-manager" \
      --kubeconfig="$kc" --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
      --authentication-skip-lookup \
      --bind-address=127.0.0.1 --secure-port="$PORT" --cert-dir="$ITG/controller-manager" \
      --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
      --use-service-account-credentials=true --leader-elect=false --profiling=false \
      --kube-api-qps=500 --kube-api-burst=1000
  fi
  wait_for controller-manager 60 kcm_healthy
}
