# kwok, sourced by scripts/testenv: ensure (build), start, healthy, stop. kwok plays the kubelets of the
# Nodes labelled below: a Pod bound to one (spec.nodeName; no scheduler runs here) gets an IP from the Node's
# podCIDR and turns Running and Ready, so the kube-controller-manager's EndpointSlice controller makes real
# endpoints for the worker's Services. Nothing listens on a Pod's IP: a test puts a backend there itself.
# shellcheck shell=bash

KWT=$REPO/tools/kwok
KW=$ITG/kwok
KWOK_NODES="itg-kwok-0 itg-kwok-1"
# kwok manages only the Nodes with this label: any other Node of the cluster is left alone.
KWOK_NODE_LABEL=tests.internal-task-gateway.io/kwok
# The annotation that holds a Pod's readiness back: a Go duration ("60s") or an RFC 3339 time.
KWOK_READY_DELAY=pod-ready.stage.kwok.x-k8s.io/delay

# Built from tools/kwok, as Contour is. The module's version is a constant in its source: no -ldflags to
# stamp it.
ensure_kwok() {
  local dir kver
  dir=$(go_dir kwok "$KWT")
  KWOK_BIN=$dir/bin/kwok
  [[ -x $KWOK_BIN ]] && return
  kver=$(go_version "$KWT" sigs.k8s.io/kwok kwok)
  go_build "$dir" "$KWT" "about a minute on 2 cores" "kwok $kver" -o bin/kwok sigs.k8s.io/kwok/cmd/kwok
}

# The Nodes' pod CIDRs, one /24 each in a /23 of 100.64.0.0/10 chosen per clone from a hash of its path:
# the tests route a Pod's IP from the host into a backend's network namespace, so two clones must never
# hand out the same IP. A /23 the host routes already (another clone's tests) is skipped.
kwok_cidrs() {
  local f=$RUN/kwok.cidrs h i n a b
  if [[ -s $f ]]; then cat "$f"; return; fi
  h=$(sha256sum <<<"$REPO")
  n=$((16#${h:0:4} % 8192))
  for ((i = 0; i < 64; i++)); do
    # 8192 /23s: the second octet carries 6 bits (64..127), the third 7 (its even half).
    a=$((64 + ((n + i) % 8192) / 128)) b=$(((((n + i) % 8192) % 128) * 2))
    [[ -z $(ip -4 route show root "100.$a.$b.0/23" 2>/dev/null) ]] || continue
    echo "100.$a.$b.0/24 100.$a.$((b + 1)).0/24" >"$f"; cat "$f"; return
  done
  die "no free /23 of 100.64.0.0/10 for the kwok Nodes' pod CIDRs"
}

# The Stages kwok plays, in its config file (not the Stage CRD: nothing else needs to change them).
#   node-initialize, node-heartbeat: the Node turns Ready and its heartbeat stays well inside the node
#     lifecycle controller's grace period (40 s), which would otherwise mark the Node's Pods not ready;
#   pod-create: at once, an IP from the Node's podCIDR, phase Pending, not Ready (so the EndpointSlice
#     controller lists it with ready: false);
#   pod-ready: Running and Ready, at once or after the Pod's $KWOK_READY_DELAY annotation;
#   pod-delete: a Pod being deleted is removed at once, its finalizers emptied, as a kubelet would after
#     its containers stopped.
kwok_config() {
  # Only Stages: a KwokConfiguration document here would replace kwok's defaults, not merge with them.
  cat <<'EOF2'
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: node-initialize}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: NotIn
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $lastTransitionTime | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}
      addresses:
      - {address: {{ NodeIP | Quote }}, type: InternalIP}
      - {address: {{ .metadata.name | Quote }}, type: Hostname}
      allocatable: {cpu: 1k, memory: 1Ti, pods: 1M}
      capacity: {cpu: 1k, memory: 1Ti, pods: 1M}
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
        kubeProxyVersion: {{ printf "kwok-%s" Version | Quote }}
        containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
        kernelVersion: {{ printf "kwok-%s" Version | Quote }}
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: node-heartbeat}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - key: '.status.phase'
      operator: In
      values: [Running]
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: In
      values: ['True']
  delay: {durationMilliseconds: 10000, jitterDurationMilliseconds: 15000}
  next:
    statusTemplate: |
      {{ $now := Now }}
      {{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $lastTransitionTime | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-create}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: DoesNotExist
    - key: '.status.podIP'
      operator: DoesNotExist
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: PodScheduled}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
      - {lastTransitionTime: {{ $now | Quote }}, status: "False", type: Ready, reason: ContainersNotReady}
      - {lastTransitionTime: {{ $now | Quote }}, status: "False", type: ContainersReady, reason: ContainersNotReady}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state: {waiting: {reason: ContainerCreating}}
      {{ end }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
      phase: Pending
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-ready}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: DoesNotExist
    - key: '.status.podIP'
      operator: Exists
    - key: '.status.phase'
      operator: In
      values: [Pending]
  delay:
    durationMilliseconds: 0
    durationFrom:
      expressionFrom: '.metadata.annotations["pod-ready.stage.kwok.x-k8s.io/delay"]'
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: PodScheduled}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Ready}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: ContainersReady}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        started: true
        state: {running: {startedAt: {{ $now | Quote }}}}
      {{ end }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-delete}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: Exists
  next:
    finalizers: {empty: true}
    delete: true
EOF2
}

# The Nodes, each with its podCIDR; a Node left with another CIDR (podCIDR is immutable) is made again.
kwok_nodes() {
  local cidrs i=0 node have
  read -ra cidrs <<<"$(kwok_cidrs)"
  for node in $KWOK_NODES; do
    have=$("$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" get node "$node" -o jsonpath='{.spec.podCIDR}' 2>/dev/null || true)
    if [[ -n $have && $have != "${cidrs[$i]}" ]]; then
      log "Node $node has podCIDR $have, not ${cidrs[$i]}: making it again"
      "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" delete node "$node" --wait >>"$LOGS/fixture.log"
    fi
    "$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" apply --server-side --field-manager=testenv -f - >>"$LOGS/fixture.log" <<EOF2
apiVersion: v1
kind: Node
metadata:
  name: $node
  labels: {$KWOK_NODE_LABEL: "true", kubernetes.io/hostname: $node, kubernetes.io/os: linux}
  annotations: {node.alpha.kubernetes.io/ttl: "0"}
spec: {podCIDR: ${cidrs[$i]}, podCIDRs: [${cidrs[$i]}]}
EOF2
    i=$((i + 1))
  done
}

kwok_healthy() { curl -fsS "http://127.0.0.1:$(saved_port kwok)/healthz" | grep -qx ok; }

kwok_node_ready() {  # kwok_node_ready NODE: kwok has played the Node's Ready condition
  [[ $("$BIN/kubectl" --kubeconfig "$ITG/kubeconfig" get node "$1" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

# Why kwok cannot run here, or nothing: a Pod's IP is only of use to the tests if they can route it.
kwok_blocked() {
  command -v ip >/dev/null || echo "iproute2 (ip) is not installed: the Pods' IPs could not be routed to backends"
}

start_kwok() {
  KWOK_UNAVAILABLE=$(kwok_blocked)
  if [[ -n $KWOK_UNAVAILABLE ]]; then log "not starting kwok: $KWOK_UNAVAILABLE"; return; fi
  mkdir -p "$KW"
  local text node
  text=$(kwok_config)
  # A new config needs a new kwok: it reads its Stages once.
  if [[ $(cat "$KW/kwok.yaml" 2>/dev/null) != "$text" ]]; then
    stop kwok kwok
    printf '%s\n' "$text" >"$KW/kwok.yaml.tmp" && mv -f "$KW/kwok.yaml.tmp" "$KW/kwok.yaml"
  fi
  kwok_nodes
  if ! pid_of kwok kwok >/dev/null; then
    port kwok
    log "starting kwok (Nodes $KWOK_NODES, pod CIDRs $(kwok_cidrs); healthz on 127.0.0.1:$PORT)"
    # KWOK_WORKDIR keeps it from reading a ~/.kwok/kwok.yaml of the host's user.
    spawn kwok env KWOK_WORKDIR="$KW" "$KWOK_BIN" --kubeconfig "$ITG/kubeconfig" --config "$KW/kwok.yaml" \
      --manage-all-nodes=false --manage-nodes-with-label-selector "$KWOK_NODE_LABEL=true" \
      --server-address "127.0.0.1:$PORT" --node-ip 127.0.0.1
  fi
  wait_for kwok 60 kwok_healthy
  for node in $KWOK_NODES; do wait_for kwok 60 kwok_node_ready "$node"; done
}

stop_kwok() { stop kwok kwok; }

kwok_status() {  # a row for cmd_status, by its row function
  row kwok kwok "healthz 127.0.0.1:$(saved_port kwok); Nodes $KWOK_NODES ($(cat "$RUN/kwok.cidrs" 2>/dev/null || echo "?"))"
}

kwok_env() {  # lines for .itg/env
  local cidrs
  read -ra cidrs <<<"$(cat "$RUN/kwok.cidrs" 2>/dev/null)"
  echo "ITG_KWOK_NODES=${KWOK_NODES// /,}"
  echo "ITG_KWOK_POD_CIDRS=$(IFS=,; echo "${cidrs[*]}")"
  echo "ITG_KWOK_READY_DELAY_ANNOTATION=$KWOK_READY_DELAY"
  if [[ -n ${KWOK_UNAVAILABLE:-} ]]; then echo "ITG_KWOK_UNAVAILABLE=$KWOK_UNAVAILABLE"; fi
}
