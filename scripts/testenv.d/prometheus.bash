# Prometheus, sourced by scripts/testenv: ensure (build) and env. Nothing is started here: each test that needs
# a Prometheus runs its own, with its own data directory, port and rules, and stops it when done.
# shellcheck shell=bash

PROM_MOD=$REPO/tools/prometheus

# Built from tools/prometheus like Contour: keyed by a hash of that module, moved into place when complete.
# remove_all_sd leaves out the cloud service discoveries (static and file targets stay); without the
# builtinassets tag the web UI is not embedded, and the HTTP API the tests use is all there.
ensure_prometheus() {
  local key tmp t0 ticker pver ld
  key=$(cd "$PROM_MOD" && find . -name '*.go' -o -name go.mod -o -name go.sum | LC_ALL=C sort |
        xargs sha256sum | sha256sum | cut -c1-12)
  PROMETHEUS_BIN=$CACHE/prometheus-$key/bin/prometheus
  PROMTOOL_BIN=$CACHE/prometheus-$key/bin/promtool
  [[ -x $PROMETHEUS_BIN && -x $PROMTOOL_BIN ]] && return
  command -v go >/dev/null || die "go is not installed: it builds Prometheus from tools/prometheus"
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/.build-XXXXXX")
  export GOTOOLCHAIN=local GOFLAGS=-mod=readonly
  pver=$(cd "$PROM_MOD" && go list -m -f '{{.Version}}' github.com/prometheus/prometheus)
  ld="-X github.com/prometheus/common/version.Version=$pver"
  t0=$SECONDS
  log "building prometheus and promtool $pver into $CACHE/prometheus-$key (first run only; minutes on 2 cores)"
  ( while sleep 30 >/dev/null 2>&1; do log "  still building prometheus: $((SECONDS - t0)) s"; done ) &
  ticker=$!
  if ! (cd "$PROM_MOD" && go build -tags remove_all_sd -ldflags "$ld" -o "$tmp/bin/" \
          github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool); then
    kill "$ticker" 2>/dev/null; rm -rf "$tmp"; die "building prometheus failed"
  fi
  kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
  log "built prometheus and promtool in $((SECONDS - t0)) s"
  mv -T "$tmp" "$CACHE/prometheus-$key" 2>/dev/null || rm -rf "$tmp"
}

prometheus_env() {  # lines for .itg/env
  echo "ITG_PROMETHEUS=$PROMETHEUS_BIN"
  echo "ITG_PROMTOOL=$PROMTOOL_BIN"
}
