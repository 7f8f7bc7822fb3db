#!/usr/bin/env bash
# The Prometheus Operator for the cluster tests: the controller that turns ServiceMonitors and
# PrometheusRules into a Prometheus configuration, built from its Go module
# (tests/prometheus-operator/: github.com/prometheus-operator/prometheus-operator, pinned) like the
# control plane, prometheus-adapter and KEDA. No Docker, no downloaded binary.
#
#   scripts/prometheus-operator.sh build   build the binary once into the cache (~/.cache/agentops, keyed by version)
#   scripts/prometheus-operator.sh dir     print the folder holding `prometheus-operator` and, beside it,
#                                          the module's own CRDs (crds/) (builds if missing)
#   scripts/prometheus-operator.sh built   exit 0 when the binary is in the cache, 1 when not
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODULE="$ROOT/tests/prometheus-operator"
PACKAGE=github.com/prometheus-operator/prometheus-operator

log() { echo "prometheus-operator: $*" >&2; }
die() { log "$*"; exit 1; }

operator_version() {
    awk -v pkg="$PACKAGE" '$1 == pkg {print $2; exit}' "$MODULE/go.mod"
}

LDFLAGS="-s -w"

# The cache key: the pinned version plus a digest of the module's files and the build flags.
cache_dir() {
    local digest
    digest=$( (cat "$MODULE/go.mod" "$MODULE/go.sum"; echo "$LDFLAGS") | sha256sum | cut -c1-12)
    echo "${CONTROLPLANE_TOOLS:-${AGENTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentops}}/prometheus-operator/$(operator_version)-${digest}"
}

built() {
    local dir
    dir=$(cache_dir)
    [ -x "$dir/prometheus-operator" ] && [ -s "$dir/crds/monitoring.coreos.com_prometheuses.yaml" ] &&
        [ -s "$dir/crds/monitoring.coreos.com_podmonitors.yaml" ]
}

cmd_build() {
    local dir started tmp
    dir=$(cache_dir)
    if built; then
        return 0
    fi
    command -v go >/dev/null || die "Go is required to build the Prometheus Operator (go 1.26 or newer)"
    log "building $PACKAGE $(operator_version) into $dir (once)"
    started=$(date +%s)
    tmp="$dir.partial.$$"
    mkdir -p "$tmp"
    (cd "$MODULE" && GOFLAGS=-mod=mod nice -n 10 go build -ldflags="$LDFLAGS" -o "$tmp/prometheus-operator" "$PACKAGE/cmd/operator") ||
        { rm -rf "$tmp"; die "the build failed (see above)"; }
    # The module's own CRDs (the operator waits for every kind it watches), for the tests to install.
    local source
    source=$(cd "$MODULE" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' "$PACKAGE")
    mkdir -p "$tmp/crds"
    cp "$source"/example/prometheus-operator-crd/monitoring.coreos.com_*.yaml "$tmp/crds/"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    log "built in $(( $(date +%s) - started )) s"
}

case "${1:-}" in
    build) cmd_build ;;
    dir) cmd_build; cache_dir ;;
    built) built ;;
    *) echo "usage: $0 build | dir | built" >&2; exit 2 ;;
esac
