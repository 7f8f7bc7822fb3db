#!/usr/bin/env bash
# prom-label-proxy for the tests: the PromQL label enforcer between the operator and Prometheus
# (the chart runs it as a sidecar of the operator, label `namespace`), built from its Go module
# (tests/prom-label-proxy/: github.com/prometheus-community/prom-label-proxy, pinned) like
# prometheus-adapter. No Docker, no downloaded binary.
#
#   scripts/prom-label-proxy.sh build   build the binary once into the cache (~/.cache/agentops, keyed by version)
#   scripts/prom-label-proxy.sh dir     print the folder holding `prom-label-proxy` (builds if missing)
#   scripts/prom-label-proxy.sh built   exit 0 when the binary is in the cache, 1 when not
#
# The tests run it themselves (tests/support/labelproxy.py) in front of the Prometheus they start.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODULE="$ROOT/tests/prom-label-proxy"
PACKAGE=github.com/prometheus-community/prom-label-proxy

log() { echo "prom-label-proxy: $*" >&2; }
die() { log "$*"; exit 1; }

proxy_version() {
    awk -v pkg="$PACKAGE" '$1 == pkg {print $2; exit}' "$MODULE/go.mod"
}

# The cache key: the pinned version plus a digest of the module's files and the build flags, so a
# change of any pin builds into a new folder and a stale binary is never reused.
LDFLAGS="-s -w"

cache_dir() {
    local digest
    digest=$( (cat "$MODULE/go.mod" "$MODULE/go.sum"; echo "$LDFLAGS") | sha256sum | cut -c1-12)
    echo "${CONTROLPLANE_TOOLS:-${AGENTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentops}}/prom-label-proxy/$(proxy_version)-${digest}"
}

built() {
    [ -x "$(cache_dir)/prom-label-proxy" ]
}

cmd_build() {
    local dir
    dir=$(cache_dir)
    if built; then
        return 0
    fi
    command -v go >/dev/null || die "Go is required to build prom-label-proxy (go 1.25 or newer)"
    log "building $PACKAGE $(proxy_version) into $dir (about 2 minutes on 2 cores, once)"
    local started tmp
    started=$(date +%s)
    tmp="$dir.partial.$$"
    mkdir -p "$tmp"
    # The module names the proxy's command as a `tool`, so go.sum pins its whole build list;
    # GOFLAGS=-mod=mod lets the module proxy serve exactly that.
    (cd "$MODULE" && GOFLAGS=-mod=mod go build -trimpath -ldflags="$LDFLAGS" -o "$tmp/prom-label-proxy" \
        "$PACKAGE") || { rm -rf "$tmp"; die "the build failed (see above)"; }
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
