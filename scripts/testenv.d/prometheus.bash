# Prometheus, sourced by scripts/testenv: ensure (build) and env. Nothing is started here: each test that needs
# a Prometheus runs its own, with its own data directory, port and rules, and stops it when done.
# shellcheck shell=bash

PROM_MOD=$REPO/tools/prometheus

# Built from tools/prometheus, as Contour is. remove_all_sd leaves out the cloud service discoveries (static
# and file targets stay); without the builtinassets tag the web UI is not embedded, and the HTTP API the tests
# use is all there.
ensure_prometheus() {
  local dir pver
  dir=$(go_dir prometheus "$PROM_MOD")
  PROMETHEUS_BIN=$dir/bin/prometheus
  PROMTOOL_BIN=$dir/bin/promtool
  [[ -x $PROMETHEUS_BIN && -x $PROMTOOL_BIN ]] && return
  pver=$(go_version "$PROM_MOD" github.com/prometheus/prometheus Prometheus)
  go_build "$dir" "$PROM_MOD" "minutes on 2 cores" "prometheus and promtool $pver" \
    -tags remove_all_sd -ldflags "-X github.com/prometheus/common/version.Version=$pver" -o bin/ \
    github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool
}

prometheus_env() {  # lines for .itg/env
  echo "ITG_PROMETHEUS=$PROMETHEUS_BIN"
  echo "ITG_PROMTOOL=$PROMTOOL_BIN"
}
