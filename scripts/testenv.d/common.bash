# What every server's file uses, sourced first by scripts/testenv: logging, processes and their pid files,
# ports kept across restarts, health polling, the cached Go builds, and the .itg/env quoting.
# shellcheck shell=bash

log() { printf '[testenv] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- processes, ports, state

# pid_of NAME PROGRAM: pid of a running server, from its pid file. A stale file (dead pid, or a pid since
# reused by another program, told apart by the basename of its argv[0]) is removed.
pid_of() {
  local f=$RUN/$1.pid pid argv0=""
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  if [[ $pid =~ ^[0-9]+$ ]] && IFS= read -r -d '' argv0 2>/dev/null <"/proc/$pid/cmdline" &&
     [[ ${argv0##*/} == "$2" ]]; then
    echo "$pid"; return 0
  fi
  rm -f "$f"; return 1
}

# spawn NAME CMD...: runs CMD in its own session (so it outlives this shell and its process group),
# logging to .itg/logs/NAME.log; the child writes its own pid before exec'ing.
spawn() {
  local name=$1; shift
  STARTED=1
  rm -f "$RUN/$name.pid"
  if [[ -s $LOGS/$name.log ]]; then mv -f "$LOGS/$name.log" "$LOGS/$name.log.1"; fi  # keep the last run's
  # shellcheck disable=SC2016  # $$ and $@ belong to the child shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" \
    </dev/null >>"$LOGS/$name.log" 2>&1 &
  for _ in $(seq 50); do [[ -s $RUN/$name.pid ]] && return 0; sleep 0.1; done
  die "$name did not start"
}

stop() {  # stop NAME PROGRAM: SIGTERM, then SIGKILL after 10 s
  local pid
  pid=$(pid_of "$1" "$2") || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then log "$1 ignored SIGTERM, killing"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$RUN/$1.pid"; log "stopped $1 (pid $pid)"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_is_free() {  # with SO_REUSEADDR, as the servers bind: a port whose old connections linger is reusable
  python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()' "$1" 2>/dev/null
}

# port NAME: sets PORT to the port remembered for NAME if it is still free, else to a new one (and then
# PORT_CHANGED=1). Keeping ports across restarts lets the servers still up find the ones that come back.
port() {
  local f=$RUN/$1.port
  PORT="" PORT_CHANGED=0
  [[ -f $f ]] && PORT=$(<"$f")
  if [[ -z $PORT ]] || ! port_is_free "$PORT"; then
    PORT=$(free_port); echo "$PORT" >"$f"; PORT_CHANGED=1
  fi
}
saved_port() { cat "$RUN/$1.port" 2>/dev/null || echo "?"; }

# wait_for NAME SECONDS CMD...: poll CMD until it succeeds; on timeout show the server's log and fail.
wait_for() {
  local name=$1 deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)) || ! kill -0 "$(cat "$RUN/$name.pid" 2>/dev/null)" 2>/dev/null; then
      log "$name is not healthy; last lines of $LOGS/$name.log:"; tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name failed to come up"
    fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------- Go builds (cached outside the clone)

# go_dir NAME TOOLDIR: the cache directory of a build of the Go module in TOOLDIR, keyed by a hash of its
# sources, so a changed pin builds again and an unchanged one never does.
go_dir() {
  local key
  key=$(cd "$2" && find . -name '*.go' -o -name go.mod -o -name go.sum | LC_ALL=C sort |
        xargs sha256sum | sha256sum | cut -c1-12)
  echo "$CACHE/$1-$key"
}

# go_version TOOLDIR MODULE WHAT: the version of MODULE that TOOLDIR pins; fails when go, which builds WHAT, is
# missing.
go_version() {
  command -v go >/dev/null || die "go is not installed: it builds $3 from ${1#"$REPO"/}"
  (cd "$1" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go list -m -f '{{.Version}}' "$2")
}

# go_build DIR TOOLDIR ABOUT WHAT GO-BUILD-ARGS... [-- WHAT GO-BUILD-ARGS...]...: runs each `go build` in
# TOOLDIR with the Go module proxy, its `-o` path taken inside a new directory of the cache, and moves that
# directory to DIR only when every build is complete, so an interrupted build never leaves a half-filled
# cache. ABOUT says how long it takes.
go_build() {
  local dir=$1 tooldir=$2 about=$3 tmp what args t0 ticker i
  shift 3
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/.build-XXXXXX")
  export GOTOOLCHAIN=local GOFLAGS=-mod=readonly
  while (($#)); do
    what=$1 args=()
    shift
    while (($#)) && [[ $1 != -- ]]; do args+=("$1"); shift; done
    if (($#)); then shift; fi
    for ((i = 0; i < ${#args[@]}; i++)); do
      if [[ ${args[i]} == -o ]]; then args[i + 1]=$tmp/${args[i + 1]}; fi
    done
    t0=$SECONDS
    log "building $what into $dir (first run only${about:+; $about})"
    # The ticker's sleep must not hold our stderr open after the ticker is killed.
    ( while sleep 30 >/dev/null 2>&1; do log "  still building ${what%% v*}: $((SECONDS - t0)) s"; done ) &
    ticker=$!
    if ! (cd "$tooldir" && go build "${args[@]}"); then
      kill "$ticker" 2>/dev/null; rm -rf "$tmp"; die "building ${what%% v*} failed"
    fi
    kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
    log "built ${what%% v*} in $((SECONDS - t0)) s"
  done
  # mv -T refuses a non-empty target: if a concurrent build won, keep its result.
  mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
}

# shell_safe: KEY=value lines, a value with anything but plain characters single-quoted, so that
# `set -a; . .itg/env` works for every line (a reason that testenv could not start a server has spaces).
shell_safe() {
  local line k v q="'" qq="'\\''"
  while IFS= read -r line; do
    k=${line%%=*} v=${line#*=}
    if [[ $v =~ ^[A-Za-z0-9_./:,@+%=-]*$ ]]; then
      printf '%s=%s\n' "$k" "$v"
    else
      printf "%s='%s'\n" "$k" "${v//$q/$qq}"
    fi
  done
}

module_dir() {  # module_dir TOOLDIR MODULE: the verified download of MODULE at the version TOOLDIR pins
  (cd "$1" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go mod download -json "$2") |
    python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["Dir"])'
}

# nftables, installed from Debian when absent: Contour's address mapping and the sites' link cuts need it.
# Prints why it is missing, or nothing.
ensure_nft() {
  command -v nft >/dev/null && return
  log "installing nftables (Debian): the Contour Gateway's address mapping and the sites' link cuts use it"
  { apt-get install -y nftables || { apt-get update && apt-get install -y nftables; }; } >>"$LOGS/apt.log" 2>&1 ||
    echo "nftables is not installed and apt-get could not install it (see $LOGS/apt.log)"
}
