# helm, sourced by scripts/testenv: ensure (build) only, for the chart tests (helm lint, helm template). HELM in
# .itg/env points at it.
# shellcheck shell=bash

HELM_MOD=$REPO/tools/helm

# Built from helm.sh/helm/v4 by tools/helm.
ensure_helm() {
  local dir hver
  dir=$(go_dir helm "$HELM_MOD")
  HELM=$dir/bin/helm
  [[ -x $HELM ]] && return
  hver=$(go_version "$HELM_MOD" helm.sh/helm/v4 helm)
  go_build "$dir" "$HELM_MOD" "" "helm $hver" \
    -ldflags "-X helm.sh/helm/v4/internal/version.version=$hver" -o bin/helm helm.sh/helm/v4/cmd/helm
}
