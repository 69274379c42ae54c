# etcd, sourced by scripts/testenv: start, healthy; built with the apiservers (apiserver.bash). Every cluster
# keeps its objects in it under a prefix of its own.
# shellcheck shell=bash

etcd_healthy() { curl -fsS "http://127.0.0.1:$(saved_port etcd)/health" | grep -q '"health":"true"'; }

# Each start_* sets MOVED=1 when its server came back on another port, so the ones using it restart too.
start_etcd() {
  MOVED=0
  pid_of etcd etcd >/dev/null && return
  local c p
  port etcd; c=$PORT MOVED=$PORT_CHANGED; port etcd-peer; p=$PORT
  log "starting etcd on 127.0.0.1:$c"
  # --unsafe-no-fsync: throwaway test data; fsync dominates etcd latency on small disks.
  spawn etcd "$BIN/etcd" --name itg --data-dir "$ITG/etcd" \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "itg=http://127.0.0.1:$p" --log-level warn --unsafe-no-fsync
  wait_for etcd 60 etcd_healthy
}
